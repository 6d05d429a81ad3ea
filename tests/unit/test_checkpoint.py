"""Checkpoints on a real filesystem (tmp_path) with a real Faiss index."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest

from index_store import (
    CheckpointError,
    IndexStoreError,
    VectorIndex,
    load_latest_checkpoint,
    save_checkpoint,
)

DIM = 4


def _index(n: int, seed: int = 0) -> VectorIndex:
    index = VectorIndex(DIM, "flat")
    index.upsert(np.arange(n), np.random.default_rng(seed).standard_normal((n, DIM)))
    return index


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    index = _index(30)
    blobs = {"towers": b"\x00weights" * 1000, "engine": b"", "user.tower-v2": b"x"}
    info = save_checkpoint(tmp_path, 7, index=index, blobs=blobs, meta={"model_version": 3})
    assert info.path == tmp_path / "ckpt-0000000000000007" and info.seq == 7
    assert info.meta == {"model_version": 3} and info.created_at_ms > 1_600_000_000_000
    assert _names(info.path) == sorted(["index.faiss", "meta.json", "towers.bin", "engine.bin", "user.tower-v2.bin"])

    loaded = load_latest_checkpoint(tmp_path, threads=2)
    assert loaded is not None
    got_info, got_index, got_blobs = loaded
    assert got_info == info
    assert got_blobs == blobs
    assert got_index.threads == 2
    np.testing.assert_array_equal(got_index.ids(), index.ids())
    xq = np.random.default_rng(1).standard_normal((3, DIM)).astype(np.float32)
    np.testing.assert_array_equal(got_index.search(xq, 5)[1], index.search(xq, 5)[1])


def test_nothing_to_load(tmp_path: Path) -> None:
    assert load_latest_checkpoint(tmp_path / "missing") is None
    assert load_latest_checkpoint(tmp_path) is None
    (tmp_path / "ckpt-0000000000000009.tmp").mkdir()  # only a crash leftover
    (tmp_path / "unrelated").mkdir()
    assert load_latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keeps_only_the_newest_n(tmp_path: Path, keep: int) -> None:
    for seq in (1, 5, 3, 10, 12):
        save_checkpoint(tmp_path, seq, index=_index(seq), blobs={}, meta={}, keep=keep)
    expected = [f"ckpt-{s:016d}" for s in (3, 5, 10, 12)][-keep:]
    assert _names(tmp_path) == expected
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None and loaded[0].seq == 12 and len(loaded[1]) == 12


def test_leftover_tmp_is_ignored_and_cleaned_up(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, index=_index(5), blobs={"b": b"one"}, meta={})
    crashed = tmp_path / "ckpt-0000000000000002.tmp"  # a save that died half-way
    crashed.mkdir()
    (crashed / "index.faiss").write_bytes(b"partial")
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None and loaded[0].seq == 1 and loaded[2] == {"b": b"one"}
    save_checkpoint(tmp_path, 3, index=_index(6), blobs={}, meta={})
    assert _names(tmp_path) == ["ckpt-0000000000000001", "ckpt-0000000000000003"]


@pytest.mark.parametrize(
    "damage",
    ["flip-index-byte", "truncate-blob", "garbage-meta", "missing-blob", "empty-dir"],
)
def test_corrupt_newest_falls_back_to_previous(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    save_checkpoint(tmp_path, 1, index=_index(5), blobs={"b": b"old"}, meta={"v": 1})
    newest = save_checkpoint(tmp_path, 2, index=_index(8), blobs={"b": b"new" * 100}, meta={"v": 2}).path
    if damage == "flip-index-byte":
        raw = bytearray((newest / "index.faiss").read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # still parses as a Faiss index; only the checksum catches it
        (newest / "index.faiss").write_bytes(bytes(raw))
    elif damage == "truncate-blob":
        (newest / "b.bin").write_bytes(b"new")
    elif damage == "garbage-meta":
        (newest / "meta.json").write_text("{not json")
    elif damage == "missing-blob":
        (newest / "b.bin").unlink()
    else:
        for p in newest.iterdir():
            p.unlink()
    with caplog.at_level(logging.WARNING, logger="index_store.checkpoint"):
        loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None
    info, index, blobs = loaded
    assert (info.seq, info.meta, blobs, len(index)) == (1, {"v": 1}, {"b": b"old"}, 5)
    assert "ckpt-0000000000000002" in caplog.text


def test_all_unreadable_raises_with_every_reason(tmp_path: Path) -> None:
    for seq in (1, 2):
        info = save_checkpoint(tmp_path, seq, index=_index(3), blobs={}, meta={})
        (info.path / "meta.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(CheckpointError) as e:
        load_latest_checkpoint(tmp_path)
    assert [p.name for p, _ in e.value.failures] == ["ckpt-0000000000000002", "ckpt-0000000000000001"]
    assert isinstance(e.value, IndexStoreError)


def test_saving_the_same_seq_again_replaces_it(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 4, index=_index(3), blobs={"b": b"first"}, meta={"try": 1})
    save_checkpoint(tmp_path, 4, index=_index(9), blobs={"b": b"second"}, meta={"try": 2})
    assert _names(tmp_path) == ["ckpt-0000000000000004"]
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None
    assert loaded[0].meta == {"try": 2} and loaded[2] == {"b": b"second"} and len(loaded[1]) == 9


def test_rejects_bad_arguments_before_touching_disk(tmp_path: Path) -> None:
    root = tmp_path / "ckpts"
    index = _index(2)
    for kwargs in (
        {"blobs": {"../escape": b""}, "meta": {}},
        {"blobs": {"a/b": b""}, "meta": {}},
        {"blobs": {}, "meta": {"not json": object()}},
    ):
        with pytest.raises(IndexStoreError):
            save_checkpoint(root, 1, index=index, **kwargs)
    with pytest.raises(IndexStoreError):
        save_checkpoint(root, -1, index=index, blobs={}, meta={})
    with pytest.raises(IndexStoreError):
        save_checkpoint(root, 1, index=index, blobs={}, meta={}, keep=0)
    assert not root.exists()


def test_a_streamed_blob_is_written_hashed_and_checked_like_bytes(tmp_path: Path) -> None:
    """Large blobs (the towers at 1M items: ~1.5 GB) are written by a callable, never held whole."""
    payload = bytes(range(256)) * 400

    def stream(f: BinaryIO) -> None:
        for i in range(0, len(payload), 7_000):
            f.write(payload[i : i + 7_000])

    info = save_checkpoint(tmp_path, 3, index=_index(5), blobs={"towers": stream, "engine": b"e"}, meta={})
    manifest = json.loads((info.path / "meta.json").read_text())
    assert manifest["files"]["towers.bin"]["size"] == len(payload)
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None and loaded[2] == {"towers": payload, "engine": b"e"}
    data = bytearray((info.path / "towers.bin").read_bytes())
    data[100] ^= 0xFF  # the recorded digest catches a damaged streamed blob too
    (info.path / "towers.bin").write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_latest_checkpoint(tmp_path)
