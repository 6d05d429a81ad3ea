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
