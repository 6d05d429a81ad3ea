"""structlog setup: JSON lines (or console) with bound context (topic, partition, offset, event id)."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "info", json: bool = True, *, cache: bool = True) -> None:
    """Logs go to stderr (stdout stays free for data, e.g. ``record -o -``).

    ``cache=False`` looks ``sys.stderr`` up on every logger creation, for in-process CLI
    runs whose streams are swapped (pytest's capture).
    """
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(message)s")
    # kafka-python narrates every connection at INFO; keep its warnings and errors only.
    logging.getLogger("kafka").setLevel(max(lvl, logging.WARNING))
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
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
