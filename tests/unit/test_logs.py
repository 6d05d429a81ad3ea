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
