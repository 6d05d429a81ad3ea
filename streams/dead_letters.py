"""A refused record -> its dead letter (the original bytes, where they came from, why).

Shared by the worker (``WorkerRuntime.dead_letter``, sent with Faust's producer) and the items
reader's child process (``streams.items_reader_child``, sent with its own producer).
"""

from __future__ import annotations

import time
from typing import Any

from towerstream.events import DeadLetter, encode


def dead_letter_of(message: Any, reason: str, kind: str, event_id: str | None = None) -> tuple[bytes | None, bytes]:
    """The key and encoded ``DeadLetter`` for ``message`` (``.topic .partition .offset .key .value``)."""
    value = message.value if isinstance(message.value, (bytes, bytearray)) else (
        b"" if message.value is None else str(message.value).encode())
    key = message.key if isinstance(message.key, (bytes, bytearray)) or message.key is None else str(message.key).encode()
    dl = DeadLetter.from_raw(
        topic=message.topic, partition=message.partition, offset=message.offset, key=key,
        value=bytes(value), reason=reason[:2000], error_kind=kind, received_at_ms=int(time.time() * 1000),
        event_id=event_id,
    )
    return key, encode(dl)
