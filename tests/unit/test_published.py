"""The published topics' encoding: what the trainer writes is what a replica reads, and a record
this code cannot read is refused, never half-read."""

from __future__ import annotations

import numpy as np
import pytest

from towerstream.published import (
    ItemVector, ModelPart, VersionComplete, decode_item_vector, decode_model_part, encode_item_vector,
    encode_model_part, join_parts, pack_model, split_model, unpack_model,
)


def test_item_vector_round_trip() -> None:
    v = ItemVector("m1", 7, np.linspace(-1, 1, 64, dtype=np.float32), ("sci-fi", "n:year"), "ridley", "Alien")
    got = decode_item_vector(b"m1", encode_item_vector(v))
    assert (got.item_id, got.version, got.categories, got.creator, got.title) == ("m1", 7, ("sci-fi", "n:year"),
                                                                                   "ridley", "Alien")
    np.testing.assert_array_equal(got.vector, v.vector)


@pytest.mark.parametrize("cut", [3, 20, -1])
def test_item_vector_truncated_is_refused(cut: int) -> None:
    raw = encode_item_vector(ItemVector("m1", 1, np.ones(8, dtype=np.float32)))
    with pytest.raises(ValueError):
        decode_item_vector(b"m1", raw[:cut])


def test_model_split_and_join_in_any_order() -> None:
    arrays = {"user_id": np.random.default_rng(0).normal(size=(300, 63)).astype(np.float32),
              "user_ids": np.frombuffer(b'["u1","u2"]', dtype=np.uint8)}
    payload = pack_model(arrays, {"dim": 64, "version": 3})
    parts = [decode_model_part(encode_model_part(p)) for p in split_model(3, payload, part_bytes=10_000)]
    assert len(parts) > 3
    got, meta = unpack_model(join_parts(parts[::-1]))
    assert meta == {"dim": 64, "version": 3}
    np.testing.assert_array_equal(got["user_id"], arrays["user_id"])


def test_join_refuses_missing_or_mixed_parts() -> None:
    parts = split_model(3, b"x" * 100, part_bytes=10)
    with pytest.raises(ValueError):
        join_parts(parts[:-1])
    with pytest.raises(ValueError):
        join_parts([*parts[:-1], ModelPart(4, 9, 10, b"y" * 10)])


def test_version_complete_round_trip() -> None:
    c = VersionComplete(5, 3, {0: 120, 3: 7}, 1000, 1_700_000_000_000, 1_700_000_004_000, trained=42)
    assert VersionComplete.decode(c.encode()) == c
