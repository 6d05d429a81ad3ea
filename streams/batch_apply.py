"""Run an engine call for a batch of records; dead-letter the batch if the call raises."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import structlog

from streams.runtime import WorkerRuntime
from towerstream.engine import SourcePos

log = structlog.get_logger(__name__)

#: What ``apply_batch`` returns when the engine call raised (its records were dead-lettered).
FAILED = object()


async def apply_batch(runtime: WorkerRuntime, events: Sequence[Any], sources: Sequence[SourcePos],
                      fn: Callable[..., Any], *args: Any, commit: bool = False) -> Any:
    """Run an engine call for a batch on the training thread (``commit``: the commit thread).

    If it raises, the batch's valid records go to the dead-letter topic with the error as the
    reason: ``take_events`` acks the batch either way, so swallowing or re-raising would lose
    them silently. Returns ``FAILED`` after a failure.
    """
    try:
        if commit:
            return await runtime.run_commit(fn, *args)
        return await runtime.run(fn, *args)
    except Exception as exc:  # noqa: BLE001 - the edge decides: dead-letter, never lose
        log.exception("batch_failed", records=len(sources), error=type(exc).__name__)
        positions = {(src.topic, src.partition, src.offset) for src in sources}
        for event in events:
            msg = event.message
            if (msg.topic, msg.partition, msg.offset) in positions:
                await runtime.dead_letter(msg, f"processing failed: {type(exc).__name__}: {exc}"[:1000], "internal")
        return FAILED
