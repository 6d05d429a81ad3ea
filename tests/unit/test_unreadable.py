"""Finding the unreadable batch in fetched bytes: its offset range and why it cannot be read.

The batches are built with aiokafka's own builder and then damaged the ways a broken producer
or disk damages them; some of these (an unknown codec id) the test broker refuses to store, so
only here can they be checked.
"""

from __future__ import annotations

import struct

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaConnectionError, UnsupportedCodecError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from streams.unreadable import first_unreadable, is_decoding_error

TP = TopicPartition("t", 0)


def batch(base: int, n: int, codec: int = 0) -> bytes:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False, producer_id=-1,
                                  producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i in range(n):
        b.append(i, timestamp=1_700_000_000_000, key=b"k", value=b'{"n": %d}' % i, headers=[])
    raw = bytearray(b.build())
    struct.pack_into(">q", raw, 0, base)
    return bytes(raw)


def with_crc(raw: bytearray) -> bytes:
    struct.pack_into(">I", raw, 17, calc_crc32c(bytes(raw[21:])))
    return bytes(raw)


def bad_crc(raw: bytes) -> bytes:
    out = bytearray(raw)
    out[-1] ^= 0xFF
    return bytes(out)


def unknown_codec(raw: bytes) -> bytes:
    out = bytearray(raw)
    (attrs,) = struct.unpack_from(">h", out, 21)
    struct.pack_into(">h", out, 21, (attrs & ~0x07) | 0x05)
    return with_crc(out)


def garbage_gzip(raw: bytes) -> bytes:
    """Codec gzip, a valid CRC, a payload that is not gzip."""
    out = bytearray(raw)
    (attrs,) = struct.unpack_from(">h", out, 21)
    struct.pack_into(">h", out, 21, (attrs & ~0x07) | 0x01)
    return with_crc(out)


@pytest.mark.parametrize("codec", [0, 1, 2, 3, 4])
def test_readable_batches_in_every_codec_are_not_reported(codec: int) -> None:
    data = batch(0, 3, codec) + batch(3, 2, codec)
    assert first_unreadable(TP, data, 0) is None


@pytest.mark.parametrize(("damage", "why"), [(bad_crc, "CRC mismatch"), (unknown_codec, "codec 5"),
                                             (garbage_gzip, "codec gzip")])
def test_the_damaged_batch_is_found_with_its_range_and_reason(damage: object, why: str) -> None:
    bad = damage(batch(10, 4))  # type: ignore[operator]
    data = batch(0, 3) + bad + batch(14, 2)
    found = first_unreadable(TP, data, 0)
    assert found is not None
    assert (found.offset, found.last_offset, found.next_offset) == (10, 13, 14)
    assert why in found.reason, found.reason
    assert found.raw == bad and found.key == "unreadable_batch:t:0"


def test_batches_before_the_position_and_a_partial_last_batch_are_ignored() -> None:
    earlier_bad = bad_crc(batch(0, 3))
    later_bad = bad_crc(batch(5, 2))
    data = earlier_bad + batch(3, 2) + later_bad
    assert first_unreadable(TP, data, 3).offset == 5  # type: ignore[union-attr]
    assert first_unreadable(TP, data[:-5], 3) is None  # the later batch only partly fetched


def test_decoding_errors_are_told_from_network_errors() -> None:
    assert is_decoding_error(CorruptRecordException("crc"))
    assert is_decoding_error(UnsupportedCodecError("codec"))
    assert is_decoding_error(ValueError("a decompressor's own error"))
    assert not is_decoding_error(KafkaConnectionError("gone"))
