"""What the dead-letter topic holds: the original bytes, where they came from, and why."""

from __future__ import annotations

import base64

from pydantic import Field

from towerstream.events.base import EventModel


class DeadLetter(EventModel):
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key_b64: str | None = None
    #: The original record value, byte for byte, base64-encoded.
    value_b64: str
    reason: str
    #: A short machine-readable category: not_json, invalid, too_large, duplicate, unknown_item...
    error_kind: str
    event_id: str | None = None
    received_at_ms: int = Field(ge=0)

    @property
    def original(self) -> bytes:
        return base64.b64decode(self.value_b64)

    @classmethod
    def from_raw(
        cls,
        *,
        topic: str,
        partition: int | None,
        offset: int | None,
        key: bytes | None,
        value: bytes,
        reason: str,
        error_kind: str,
        received_at_ms: int,
        event_id: str | None = None,
    ) -> DeadLetter:
        return cls(
            source_topic=topic,
            partition=partition,
            offset=offset,
            key_b64=base64.b64encode(key).decode() if key is not None else None,
            value_b64=base64.b64encode(value).decode(),
            reason=reason,
            error_kind=error_kind,
            event_id=event_id,
            received_at_ms=received_at_ms,
        )
