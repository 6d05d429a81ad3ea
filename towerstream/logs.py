"""structlog setup: JSON lines (or console) with bound context (topic, partition, offset, event id)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog


class RepeatLimiter:
    """Lets one warning or error per (logger, message template) through per ``window_s``.

    Why: with the broker away, aiokafka, kafka-python, Faust and our own retry loops log the
    same few failures hundreds of times a second (gigabytes a day). The first of a kind is
    logged at once; repeats within the window are counted, and the first one after it is
    logged with ``suppressed`` (how many were left out), so nothing disappears silently.
    Below WARNING nothing is limited: info lines are events an operator (and the tests) read.
    """

    def __init__(self, window_s: float, on_suppressed: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.on_suppressed = on_suppressed
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (window start, suppressed)

    def admit(self, logger: str, template: str) -> int | None:
        """``None``: drop this line; else log it, with this many repeats suppressed before it."""
        if self.window_s <= 0:
            return 0
        now = self.clock()
        key = (logger, template)
        with self._lock:
            started, suppressed = self._seen.get(key, (-1e18, 0))
            if now - started < self.window_s:
                self._seen[key] = (started, suppressed + 1)
                admitted = None
            else:
                if len(self._seen) > 10_000:  # templates that embed values: forget old keys
                    self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window_s}
                self._seen[key] = (now, 0)
                admitted = suppressed
        if admitted is None and self.on_suppressed is not None:
            self.on_suppressed(logger)
        return admitted


class RepeatFilter(logging.Filter):
    """``RepeatLimiter`` for the standard library's loggers (aiokafka, kafka-python, Faust, mode)."""

    def __init__(self, limiter: RepeatLimiter) -> None:
        super().__init__()
        self.limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        suppressed = self.limiter.admit(record.name, str(record.msg))
        if suppressed is None:
            return False
        if suppressed:
            record.msg = f"{record.msg} [{suppressed} similar suppressed in the last {self.limiter.window_s:g} s]"
        return True


#: One limiter per process, shared by structlog and the standard library's handlers.
_LIMITER = RepeatLimiter(10.0)


def _limit_repeats(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    if method in ("debug", "info", "msg"):
        return event_dict
    # A warning about one partition is not a repeat of the same warning about another (an
    # offset reset of each partition must be seen): topic and partition are part of the kind.
    kind = f"{method}:{event_dict.get('event')}:{event_dict.get('topic', '')}:{event_dict.get('partition', '')}"
    suppressed = _LIMITER.admit(f"structlog.{event_dict.get('logger', '')}", kind)
    if suppressed is None:
        raise structlog.DropEvent
    if suppressed:
        event_dict["suppressed"] = suppressed
    return event_dict


def forget_repeats() -> None:
    """Start every kind afresh (tests that configure logging in process more than once)."""
    with _LIMITER._lock:
        _LIMITER._seen.clear()


def install_repeat_filter(window_s: float, on_suppressed: Callable[[str], None] | None = None) -> RepeatLimiter:
    """Limit repeated warnings and errors on every root handler (again after Faust replaces them)."""
    _LIMITER.window_s = window_s
    if on_suppressed is not None:
        _LIMITER.on_suppressed = on_suppressed
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(RepeatFilter(_LIMITER))
    return _LIMITER


def stream_is_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``) is a terminal: colour and progress bars only then."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed, or a file-like object without isatty
        return False


def configure_logging(level: str = "info", json: bool = True, *, cache: bool = True,
                      repeat_window_s: float = 10.0) -> None:
    """Logs go to stderr (stdout stays free for data, e.g. ``record -o -``).

    ``cache=False`` looks ``sys.stderr`` up on every logger creation, for in-process CLI
    runs whose streams are swapped (pytest's capture).
    """
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(message)s")
    # kafka-python narrates every connection at INFO; keep its warnings and errors only.
    logging.getLogger("kafka").setLevel(max(lvl, logging.WARNING))
    install_repeat_filter(repeat_window_s)
    # Colour only for a person at a terminal: redirected logs (files, pipes) get no ANSI codes.
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=stream_is_terminal())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _limit_repeats,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=(
            structlog.PrintLoggerFactory(file=sys.stderr) if cache else (lambda *_: structlog.PrintLogger(file=sys.stderr))
        ),
        cache_logger_on_first_use=cache,
    )


def undo_spinner_debug_level(level: str) -> None:
    """Put the root logger back to ``level`` once ``faust worker`` has set up logging.

    At ``-l warn`` and above Faust adds a terminal spinner that turns on every log record and,
    for it, lowers the root logger to DEBUG: aiokafka then builds a record for each request and
    response it debug-logs (hundreds per second under load, on the event loop), all dropped by
    the handlers. Records below ``level`` are never shown, so nothing visible changes.
    """
    lvl = getattr(logging, level.upper(), logging.INFO)
    root = logging.getLogger()
    if root.level < lvl:
        root.setLevel(lvl)
