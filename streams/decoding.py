"""Raw records -> events, or why not: one loop shared by every reader (kept apart from the engine,
which a reader's decoding never needs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from towerstream.events import InvalidEvent


def decode_all(messages: list[Any], decode: Callable[[bytes], Any]) -> list[Any]:
    """Each record's event, or ``(reason, kind)`` where it does not validate."""
    out: list[Any] = []
    for msg in messages:
        try:
            out.append(decode(msg.value))
        except InvalidEvent as exc:
            out.append((exc.reason, exc.kind))
        except Exception as exc:  # noqa: BLE001 - bad input must never stop the agent
            out.append((f"{type(exc).__name__}: {exc}", "invalid"))
    return out


class Record(NamedTuple):
    """What the worker needs of a record: where it came from (offsets, the journal) and its bytes
    (to dead-letter it if the engine call fails)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
