"""Run an engine call for a batch of records; dead-letter the batch if the call raises.

A batch is a sequence of Faust events (``.message``) or of records read straight from aiokafka
(``streams.batch_consumer``): both carry .topic .partition .offset .key .value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from streams.runtime import WorkerRuntime
from towerstream.engine import SourcePos

log = structlog.get_logger(__name__)


def record_of(event: Any) -> Any:
    """The record behind a Faust event (its ``.message``), or the record itself (aiokafka)."""
    return getattr(event, "message", event)


#: What ``apply_batch`` returns when the engine call raised (its records were dead-lettered).
FAILED = object()


async def apply_batch(runtime: WorkerRuntime, events: Sequence[Any], sources: Sequence[SourcePos],
                      fn: Callable[..., Any], *args: Any,
                      on: Callable[..., Awaitable[Any]] | None = None) -> Any:
    """Run an engine call for a batch on the training thread, or with ``on`` (``runtime.run_commit``,
    ``runtime.run_items``) on another one.

    If it raises, the batch's valid records go to the dead-letter topic with the error as the
    reason: the batch's offsets are acknowledged either way, so swallowing or re-raising would lose
    them silently. Returns ``FAILED`` after a failure.
    """
    try:
        return await (on or runtime.run)(fn, *args)
    except Exception as exc:  # noqa: BLE001 - the edge decides: dead-letter, never lose
        log.exception("batch_failed", records=len(sources), error=type(exc).__name__)
        positions = {(src.topic, src.partition, src.offset) for src in sources}
        for event in events:
            msg = record_of(event)
            if (msg.topic, msg.partition, msg.offset) in positions:
                await runtime.dead_letter(msg, f"processing failed: {type(exc).__name__}: {exc}"[:1000], "internal")
        return FAILED
