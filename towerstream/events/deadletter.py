"""What the dead-letter topic holds: the original bytes, where they came from, and why."""

from __future__ import annotations

import base64

from pydantic import Field

from towerstream.events.base import EventModel

#: Originals up to this size are kept whole (a 1 MB record, the default Kafka limit, always is).
MAX_ORIGINAL_BYTES = 2 * 1024 * 1024
#: Largest dead-letter record (base64 inflates by 4/3): the dead-letter topic is created with
#: ``max.message.bytes`` at least this, and the worker's producer allows requests this large.
MAX_RECORD_BYTES = 4 * 1024 * 1024
_B64_MAX = 4 * ((MAX_ORIGINAL_BYTES + 2) // 3)


class DeadLetter(EventModel):
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key_b64: str | None = Field(default=None, max_length=_B64_MAX)
    #: The original record value, byte for byte, base64-encoded (its first ``MAX_ORIGINAL_BYTES``
    #: if ``truncated``).
    value_b64: str = Field(max_length=_B64_MAX)
    #: Size of the original value in bytes, and whether ``value_b64`` holds only its beginning.
    original_size: int | None = Field(default=None, ge=0)
    truncated: bool = False
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
        truncated = len(value) > MAX_ORIGINAL_BYTES
        if truncated:
            reason = f"{reason} (original of {len(value)} bytes truncated to {MAX_ORIGINAL_BYTES})"
        return cls(
            source_topic=topic,
            partition=partition,
            offset=offset,
            key_b64=base64.b64encode(key[:MAX_ORIGINAL_BYTES]).decode() if key is not None else None,
            value_b64=base64.b64encode(value[:MAX_ORIGINAL_BYTES]).decode(),
            original_size=len(value),
            truncated=truncated,
            reason=reason,
            error_kind=error_kind,
            event_id=event_id,
            received_at_ms=received_at_ms,
        )
