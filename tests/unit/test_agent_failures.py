"""An engine call that raises must not lose its batch: the records go to the dead-letter topic."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from streams.batch_apply import FAILED
from streams.batch_apply import apply_batch as _apply
from towerstream.engine import SourcePos


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None = b"k"
    value: bytes = b"{}"


@dataclass
class Event:
    message: Message


class Runtime:
    """Stands in for WorkerRuntime: the Faust dead-letter producer needs a running app, and what is
    tested here is only the edge's decision (which records are dead-lettered, with what reason)."""

    def __init__(self) -> None:
        self.letters: list[tuple[Message, str, str]] = []

    async def run(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    async def dead_letter(self, message: Message, reason: str, kind: str, event_id: str | None = None) -> None:
        self.letters.append((message, reason, kind))


def test_a_failing_batch_is_dead_lettered_not_lost() -> None:
    rt = Runtime()
    events = [Event(Message("t", 0, n)) for n in range(4)]
    sources = [SourcePos("t", 0, n) for n in (0, 2, 3)]  # offset 1 was invalid: already dead-lettered

    def boom(*_: Any) -> None:
        raise RuntimeError("CUDA out of memory")

    assert asyncio.run(_apply(rt, events, sources, boom)) is FAILED  # type: ignore[arg-type]
    assert [m.offset for m, _, _ in rt.letters] == [0, 2, 3]
    assert all(kind == "internal" and "CUDA out of memory" in reason for _, reason, kind in rt.letters)


def test_a_successful_batch_returns_the_engine_result() -> None:
    rt = Runtime()
    assert asyncio.run(_apply(rt, [], [], lambda: None)) is None  # type: ignore[arg-type]
    assert asyncio.run(_apply(rt, [], [], lambda x: x + 1, 1)) == 2  # type: ignore[arg-type]
    assert rt.letters == []
