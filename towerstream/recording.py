"""The recording format: JSON Lines, one Kafka record a line.

``{"topic": ..., "key": ..., "value": {...event JSON...}, "timestamp": ms, "headers": {...}}``
(``timestamp`` and ``headers`` optional). ``record``, ``replay``, ``evaluate`` and
``datasets`` all read and write this, so any file made by one works with the others.
``topic`` may be the logical name (``interactions``) or the full one
(``towerstream.interactions``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field

from towerstream.errors import TowerstreamError


class RecordingError(TowerstreamError):
    """A recording line that cannot be read; carries the line number."""

    def __init__(self, line_no: int, reason: str) -> None:
        super().__init__(f"line {line_no}: {reason}")
        self.line_no = line_no


class RecordedRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str = Field(min_length=1)
    key: str | None = None
    #: The event JSON (a dict), or a string for records that were not JSON objects.
    value: Any
    timestamp: int | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    def logical_topic(self, prefix: str = "towerstream") -> str:
        """``towerstream.items`` -> ``items``; already-logical names pass through."""
        head = prefix + "."
        return self.topic[len(head) :] if self.topic.startswith(head) else self.topic

    def value_bytes(self) -> bytes:
        if isinstance(self.value, str):
            return self.value.encode()
        return json.dumps(self.value, separators=(",", ":"), ensure_ascii=False).encode()


def record_of(topic: str, event: BaseModel, key: str | None, timestamp_ms: int | None = None) -> RecordedRecord:
    return RecordedRecord(
        topic=topic, key=key, value=event.model_dump(mode="json"), timestamp=timestamp_ms
    )


def decode_record(rec: RecordedRecord) -> Any:
    """The stream event a recorded line holds (``Interaction``, ``ItemUpsert``/``ItemDelete``,
    ``UserProfile``); None for other topics (drift reports, requests, dead letters...)."""
    from towerstream.events import Interaction, UserProfile
    from towerstream.events.codec import item_from_dict

    topic = rec.logical_topic()
    if topic == "interactions":
        return Interaction.model_validate(rec.value)
    if topic == "items":
        return item_from_dict(rec.value)
    if topic == "users":
        return UserProfile.model_validate(rec.value)
    return None


def iter_recording(path: str | Path | IO[str]) -> Iterator[RecordedRecord]:
    """Yield records in file order; blank lines are skipped, bad lines raise RecordingError."""
    if isinstance(path, (str, Path)):
        with open(path, encoding="utf-8") as fh:
            yield from iter_recording(fh)
        return
    for line_no, line in enumerate(path, start=1):
        if not line.strip():
            continue
        try:
            yield RecordedRecord.model_validate_json(line)
        except ValueError as exc:
            raise RecordingError(line_no, str(exc).splitlines()[0]) from None


def write_recording(records: Iterable[RecordedRecord], path: str | Path | IO[str]) -> int:
    """Write records as JSON Lines; returns how many were written."""
    if isinstance(path, (str, Path)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            return write_recording(records, fh)
    n = 0
    for rec in records:
        path.write(rec.model_dump_json(exclude_none=False) + "\n")
        n += 1
    return n
