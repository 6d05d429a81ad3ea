"""A refused record -> its dead letter (the original bytes, where they came from, why).

Shared by the worker (``WorkerRuntime.dead_letter``, sent with Faust's producer) and a serving
replica (``streams.serve``, sent with its own producer).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from towerstream.events import DeadLetter, encode

log = structlog.get_logger(__name__)


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


async def send_dead_letter(
    send: Callable[[bytes | None, bytes], Awaitable[Any]], message: Any, reason: str, kind: str,
    event_id: str | None = None, *, sent: Callable[[str, str], None], failed: Callable[[], None],
) -> None:
    """Send ``message``'s dead letter with ``send(key, value)`` (which returns the delivery future);
    never raises on bad input.

    ``sent(source topic, kind)`` counts it; ``failed()`` counts one the producer or the broker
    refused, which is logged with the record's position: the reader goes on either way.
    """
    key, value = dead_letter_of(message, reason, kind, event_id)
    sent(message.topic, kind)
    where = {"topic": message.topic, "partition": message.partition, "offset": message.offset}
    log.warning("dead_letter", event_id=event_id, kind=kind, reason=reason[:300], **where)

    def delivered(fut: Any) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            failed()
            log.error("dead_letter_not_delivered", error=repr(fut.exception())[:300], **where)

    try:
        fut = await send(key, value)
    except Exception as exc:  # noqa: BLE001 - e.g. a record over the producer's size limit
        failed()
        log.error("dead_letter_not_sent", error=repr(exc)[:300], **where)
    else:
        fut.add_done_callback(delivered)
