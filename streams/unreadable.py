"""Record batches a reader cannot decode: which partition, which offsets, and why.

Why this exists: aiokafka raises a decoding error (``CorruptRecordException`` for a bad CRC,
``UnsupportedCodecError``, a decompressor's own error) out of ``getmany`` without naming the
partition, keeps its position, and fetches the same bytes again at the next poll. A partition
holding such a batch then makes no progress, and so do the records behind it, while every other
sign says the reader is fine. The error alone cannot say where the batch is, so the reader asks
the broker itself: it fetches the raw bytes at each partition's position with the consumer's own
connection and walks the batch headers (offset, length, magic and the v2 header are never
compressed), decoding each batch as aiokafka would until one fails. That batch's offset range
and raw bytes are what an operator (or the ``skip`` policy's dead letter) needs.

The fetch goes through the consumer's client (``AIOKafkaConsumer._client``), the same leader
lookup, connection and credentials aiokafka's fetcher uses; aiokafka is pinned.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.errors import CorruptRecordException, KafkaError, UnsupportedCodecError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

log = structlog.get_logger(__name__)

#: Bytes asked for per partition: the broker returns at least the first whole batch anyway.
FETCH_BYTES = 1024 * 1024
#: How long the broker may wait for data (the test broker returns nothing at 0).
FETCH_WAIT_MS = 100
#: Codec ids of the record batch attributes (the low three bits).
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}

_HEADER = struct.Struct(">qi")  # base offset, batch length (every magic)


@dataclass(frozen=True)
class UnreadableBatch:
    """One record batch no decoder here can read: ``[offset, next_offset)`` of ``topic:partition``."""

    topic: str
    partition: int
    offset: int
    next_offset: int
    reason: str
    #: The batch byte for byte, as the broker returned it (header included).
    raw: bytes

    @property
    def key(self) -> str:
        """Its key in the health registry: one condition per partition."""
        return f"unreadable_batch:{self.topic}:{self.partition}"

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def last_offset(self) -> int:
        return self.next_offset - 1


def is_decoding_error(exc: BaseException) -> bool:
    """Whether ``getmany`` raised because a fetched batch could not be decoded.

    Any error that is not a Kafka error comes from unpacking records (a decompressor's, the
    record parser's): the fetcher's network and protocol errors are all ``KafkaError``.
    """
    if isinstance(exc, (CorruptRecordException, UnsupportedCodecError)):
        return True
    return isinstance(exc, Exception) and not isinstance(exc, KafkaError)


def first_unreadable(tp: TopicPartition, message_set: bytes, from_offset: int) -> UnreadableBatch | None:
    """The first batch in a fetched ``message_set`` that ends after ``from_offset`` and cannot be read."""
    data = memoryview(message_set)
    pos = 0
    while pos + _HEADER.size <= len(data):
        base, length = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if length <= 0 or end > len(data):
            break  # a partial batch at the end of a fetch: the next fetch starts with it
        chunk = bytes(data[pos:end])
        pos = end
        next_offset = _next_offset(chunk, base)
        if next_offset <= from_offset:
            continue  # the broker returns whole batches: this one ends before what was asked
        reason = _why_unreadable(chunk)
        if reason is not None:
            return UnreadableBatch(tp.topic, tp.partition, base, next_offset, reason, chunk)
    return None


def _next_offset(chunk: bytes, base: int) -> int:
    """The offset after the batch, from its header alone (v2: base + last offset delta + 1)."""
    magic = chunk[16] if len(chunk) > 16 else -1
    if magic == 2 and len(chunk) >= 27:
        (last_delta,) = struct.unpack_from(">i", chunk, 23)
        return base + max(last_delta, 0) + 1
    return base + 1  # v0/v1: a compressed wrapper carries the offset of its last inner record


def _why_unreadable(chunk: bytes) -> str | None:
    """None if aiokafka decodes every record of the batch, else why it does not."""
    magic = chunk[16] if len(chunk) > 16 else -1
    codec = f"codec {CODECS.get(chunk[22] & 0x07, chunk[22] & 0x07)}" if magic == 2 and len(chunk) > 22 else "codec ?"
    try:
        batch = MemoryRecords(chunk).next_batch()
        if batch is None:
            return f"no record batch could be parsed (magic {magic})"
        if not batch.validate_crc():
            return f"CRC mismatch: the batch is corrupt ({codec})"
        for _ in batch:
            pass
    except Exception as exc:  # noqa: BLE001 - whatever the decoder raises is the reason
        name, text = type(exc).__name__, str(exc)[:200]
        return f"{text if text.startswith(name) else f'{name}: {text}'} ({codec})"
    return None


async def find_unreadable(consumer: Any, tp: TopicPartition, offset: int) -> UnreadableBatch | None:
    """Fetch ``tp`` at ``offset`` with ``consumer``'s connection; its first unreadable batch, if any.

    Raises ``KafkaError`` when the broker cannot be asked (no leader, connection lost, an error
    code for the partition): the caller tries again later.
    """
    client = consumer._client
    node_id = client.cluster.leader_for_partition(tp)
    if node_id is None or node_id == -1:
        raise kafka_errors.LeaderNotAvailableError(f"no leader for {tp}")
    request = FetchRequest(FETCH_WAIT_MS, 1, FETCH_BYTES, 0, [(tp.topic, [(tp.partition, offset, FETCH_BYTES)])])
    response = await client.send(node_id, request)
    for topic, partitions in response.topics:
        for partition, error_code, _highwater, *rest in partitions:
            if topic != tp.topic or partition != tp.partition:
                continue
            if error_code:
                raise kafka_errors.for_code(error_code)(f"fetching {tp} at {offset}")
            return first_unreadable(tp, bytes(rest[-1] or b""), offset)
    return None


async def report_faust_unreadable(consumer: Any, health: Any, count: Any, exc: BaseException) -> None:
    """Faust's own consumer hit an undecodable batch (users, recommend-requests): say where.

    Faust's fetcher crashes on the error, so its topics stop; this only makes that visible on
    /healthz and /metrics with the batch's position. Skipping is the operator's, with the
    worker stopped: move the Faust group's offset past the batch (``kafka-consumer-groups
    --reset-offsets --to-offset <last_offset + 1>``).
    """
    for tp in sorted(consumer.assignment() - consumer.paused(), key=lambda t: (t.topic, t.partition)):
        try:
            bad = await find_unreadable(consumer, tp, await consumer.position(tp))
        except Exception:  # noqa: BLE001 - the broker cannot be asked now: nothing to add to the crash
            continue
        if bad is None:
            continue
        if bad.key not in health.conditions():
            count(bad.topic, "stalled")
        health.degrade(bad.key, f"unreadable record batch at offset {bad.offset}: {bad.reason}",
                       topic=bad.topic, partition=bad.partition, offset=bad.offset, last_offset=bad.last_offset,
                       action="Faust's consumer stopped; with the worker stopped, reset the group's offset "
                              "past last_offset")
        log.error("faust_unreadable_batch", topic=bad.topic, partition=bad.partition, offset=bad.offset,
                  last_offset=bad.last_offset, reason=bad.reason, error=repr(exc)[:300])
