"""IdMap against a real RocksDB in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rocksdict

from index_store import IdMap, IndexStoreError, MetaStore, UnknownId


def test_rows_are_dense_in_first_seen_order(tmp_path: Path) -> None:
    with MetaStore(tmp_path) as store:
        ids = store.id_map("item")
        rows = ids.get_or_create(["b", "a", "b", "c"])
        assert rows.dtype == np.int64 and rows.tolist() == [0, 1, 0, 2]
        assert ids.get_or_create(["c", "d"]).tolist() == [2, 3]
        assert len(ids) == 4
        assert ids.external([3, 0, 0]) == ["d", "b", "b"]
        assert ids.external(np.array([1], dtype=np.int32)) == ["a"]


def test_rows_are_stable_across_reopen(tmp_path: Path) -> None:
    names = [f"item-{i}" for i in range(500)] + ["ünïcødé", "with/slash", "", "e/x"]
    with MetaStore(tmp_path) as store:
        first = store.id_map("item").get_or_create(names)
    with MetaStore(tmp_path) as store:
        ids = store.id_map("item")
        assert len(ids) == len(names)
        assert np.array_equal(ids.rows(names), first)
        assert ids.external(first) == names
        assert ids.get_or_create(["new"]).tolist() == [len(names)]  # continues, never reuses


def test_batch_mode_is_durable_only_once_the_caller_writes(tmp_path: Path) -> None:
    with MetaStore(tmp_path) as store:
        ids = store.id_map("user")
        batch = store.batch()
        assert ids.get_or_create(["u1", "u2"], batch=batch).tolist() == [0, 1]
        assert ids.get("u2") == 1  # the cache knows at once
        store.put_bytes("state", b"v1", batch=batch)
        assert store.get_bytes("state") is None
        store.write(batch)
    with MetaStore(tmp_path) as store:
        assert store.id_map("user").rows(["u1", "u2"]).tolist() == [0, 1]
        assert store.get_bytes("state") == b"v1"


def test_dropped_batch_rows_are_reassigned_never_reused(tmp_path: Path) -> None:
    with MetaStore(tmp_path) as store:
        ids = store.id_map("item")
        ids.get_or_create(["a"])  # row 0, durable
        ids.get_or_create(["lost1", "lost2"], batch=store.batch())  # rows 1, 2: batch dropped
        assert ids.get_or_create(["b"]).tolist() == [3]  # row 3, durable
    with MetaStore(tmp_path) as store:
        ids = store.id_map("item")
        assert len(ids) == 2 and ids.get("lost1") is None
        assert ids.rows(["a", "b"]).tolist() == [0, 3]
        with pytest.raises(UnknownId):
            ids.external([1])
        assert ids.get_or_create(["lost1"]).tolist() == [4]


def test_namespaces_are_independent(tmp_path: Path) -> None:
    with MetaStore(tmp_path) as store:
        items, users = store.id_map("item"), store.id_map("user")
        assert store.id_map("item") is items
        assert items.get_or_create(["x", "y"]).tolist() == [0, 1]
        assert users.get_or_create(["y"]).tolist() == [0]
        assert (len(items), len(users)) == (2, 1)
        assert users.get("x") is None
    with MetaStore(tmp_path) as store:
        assert len(store.id_map("item")) == 2 and len(store.id_map("user")) == 1
        assert len(store.id_map("itemx")) == 0  # a namespace is not a prefix of another


def test_unknown_ids_and_rows(tmp_path: Path) -> None:
    with MetaStore(tmp_path) as store:
        ids = store.id_map("item")
        ids.get_or_create(["a"])
        assert ids.get("zz") is None
        assert ids.rows(["a", "zz"]).tolist() == [0, -1]
        assert ids.rows([]).shape == (0,)
        assert "a" in ids and "zz" not in ids
        for bad in ([1], [-1], [0, 7]):
            with pytest.raises(IndexStoreError) as e:
                ids.external(bad)
            assert isinstance(e.value, UnknownId) and e.value.ids == [r for r in bad if r != 0]


def test_ints_are_accepted_as_their_decimal_string(tmp_path: Path) -> None:
    with MetaStore(tmp_path) as store:
        ids = store.id_map("item")
        assert ids.get_or_create([42, "42", np.int64(42)]).tolist() == [0, 0, 0]  # type: ignore[list-item]
        assert ids.external([0]) == ["42"] and ids.get(42) == 0
        with pytest.raises(IndexStoreError):
            ids.get_or_create([1.5])  # type: ignore[list-item]
        with pytest.raises(IndexStoreError):
            ids.get_or_create([True])


def test_bad_namespace_is_rejected(tmp_path: Path) -> None:
    with MetaStore(tmp_path) as store:
        for ns in ("", "a/b"):
            with pytest.raises(IndexStoreError):
                store.id_map(ns)


def test_failed_write_leaves_cache_untouched(tmp_path: Path) -> None:
    store = MetaStore(tmp_path)
    ids = store.id_map("item")
    ids.get_or_create(["a"])
    store.db.close()
    with pytest.raises(rocksdict.DbClosedError):
        ids.get_or_create(["b", "c"])
    assert len(ids) == 1 and ids.get("b") is None and ids.get_or_create(["a"]).tolist() == [0]


def test_works_on_a_plain_raw_rdict(tmp_path: Path) -> None:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    db = rocksdict.Rdict(str(tmp_path / "db"), opts)
    try:
        assert IdMap(db, "item").get_or_create(["q"]).tolist() == [0]
        assert IdMap(db, "item").get("q") == 0
    finally:
        db.close()


def test_lookups_hit_the_memory_cache(tmp_path: Path) -> None:
    names = [f"i{i}" for i in range(50_000)]
    with MetaStore(tmp_path) as store:
        store.id_map("item").get_or_create(names)
    with MetaStore(tmp_path) as store:
        ids = store.id_map("item")
    # The store is closed: a lookup that read RocksDB would fail, so these answers come from memory.
    assert ids.rows(names).tolist() == list(range(50_000))
    assert ids.get("i49999") == 49_999 and ids.external([7, 49_999]) == ["i7", "i49999"]
