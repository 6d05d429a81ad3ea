"""Logging set-up that the worker depends on."""

from __future__ import annotations

import logging

from towerstream.logs import undo_spinner_debug_level


def test_the_root_logger_goes_back_to_the_configured_level_after_faust_lowered_it() -> None:
    root = logging.getLogger()
    before = root.level
    try:
        root.setLevel(logging.DEBUG)  # what faust worker's spinner does at -l warn
        undo_spinner_debug_level("warning")
        assert root.level == logging.WARNING
        assert not logging.getLogger("aiokafka.conn").isEnabledFor(logging.DEBUG)
        root.setLevel(logging.ERROR)  # a stricter level set elsewhere is kept
        undo_spinner_debug_level("info")
        assert root.level == logging.ERROR
    finally:
        root.setLevel(before)


def test_repeated_warnings_are_logged_once_per_window_with_the_count_left_out() -> None:
    import io

    from towerstream.logs import RepeatFilter, RepeatLimiter

    now = [0.0]
    suppressed: list[str] = []
    limiter = RepeatLimiter(10.0, on_suppressed=suppressed.append, clock=lambda: now[0])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RepeatFilter(limiter))
    logger = logging.getLogger("aiokafka.test_repeat")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        for port in range(200):  # the same failure, different arguments: one template
            logger.error("Unable connect to node with id %s: %s", 1, port)
        logger.error("Unable to update metadata from %s", [1])  # another kind: its own line
        logger.info("Joined group %s", "g")  # info lines are never limited
        logger.info("Joined group %s", "g")
        lines = stream.getvalue().splitlines()
        assert lines == ["Unable connect to node with id 1: 0", "Unable to update metadata from [1]",
                         "Joined group g", "Joined group g"]
        assert suppressed == ["aiokafka.test_repeat"] * 199
        now[0] = 10.5  # the window has passed: the next one is logged, with the count
        logger.error("Unable connect to node with id %s: %s", 1, "again")
        assert stream.getvalue().splitlines()[-1] == (
            "Unable connect to node with id 1: again [199 similar suppressed in the last 10 s]")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_a_window_of_zero_logs_every_line() -> None:
    from towerstream.logs import RepeatLimiter

    limiter = RepeatLimiter(0.0)
    assert [limiter.admit("x", "same") for _ in range(3)] == [0, 0, 0]


def test_structlog_warnings_about_different_partitions_are_not_repeats() -> None:
    """An offset reset of each partition must be seen; the same warning twice for one is a repeat."""
    import structlog

    from towerstream import logs

    before = logs._LIMITER.window_s
    logs._LIMITER.window_s = 60.0
    try:
        seen = []
        for partition in (0, 1, 2, 0):
            try:
                seen.append(logs._limit_repeats(None, "warning", {"event": "offset_reset_test", "topic": "t",
                                                                   "partition": partition}))
            except structlog.DropEvent:
                seen.append(None)
        assert [e is not None for e in seen] == [True, True, True, False]
    finally:
        logs._LIMITER.window_s = before
