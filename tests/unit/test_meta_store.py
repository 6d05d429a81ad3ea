"""MetaStore against a real RocksDB in tmp_path, including SIGKILL of a writer process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from index_store import IndexStoreError, MetaStore

REPO = Path(__file__).resolve().parents[2]


def test_bytes_and_json_round_trip(tmp_path: Path) -> None:
    with MetaStore(tmp_path / "db") as store:
        assert store.get_bytes("k") is None and store.get_json("j") is None
        store.put_bytes("k", b"\x00\xffraw")
        store.put_json("j", {"a": [1, 2.5, None], "b": "ü"})
        assert store.get_bytes("k") == b"\x00\xffraw"
        assert store.get_json("j") == {"a": [1, 2.5, None], "b": "ü"}
        store.delete("k")
        assert store.get_bytes("k") is None
        store.delete("never-there")  # deleting a missing key is fine
    with MetaStore(tmp_path / "db") as store:
        assert store.get_json("j") == {"a": [1, 2.5, None], "b": "ü"}


def test_batch_is_invisible_until_written_then_all_there(tmp_path: Path) -> None:
    with MetaStore(tmp_path) as store:
        store.put_bytes("old", b"1")
        batch = store.batch()
        for i in range(100):
            store.put_json(f"b/{i:03d}", i, batch=batch)
        store.delete("old", batch=batch)
        store.id_map("item").get_or_create(["x"], batch=batch)
        assert store.get_bytes("b/000") is None and store.get_bytes("old") == b"1"
        store.write(batch)
        assert [v for _, v in store.scan("b/")] == [str(i).encode() for i in range(100)]
        assert store.get_bytes("old") is None


def test_scan_is_in_key_order_and_respects_the_prefix(tmp_path: Path) -> None:
    with MetaStore(tmp_path) as store:
        for key in ["a/2", "a/10", "b/1", "a", "a/1", "a0", "a/"]:
            store.put_bytes(key, key.encode())
        assert [k for k, _ in store.scan("a/")] == ["a/", "a/1", "a/10", "a/2"]
        assert list(store.scan("zzz")) == []
        assert dict(store.scan("b/")) == {"b/1": b"b/1"}


def test_delete_range_for_journal_trimming(tmp_path: Path) -> None:
    def key(seq: int) -> str:
        return f"j:{seq:016d}"

    with MetaStore(tmp_path) as store:
        for seq in range(1, 11):
            store.put_bytes(key(seq), b"e")
        store.put_bytes("j", b"not journal")
        store.put_bytes("k:1", b"other")
        assert store.delete_range("j:", upto_key=key(4)) == 3  # seqs 1..3
        assert [k for k, _ in store.scan("j:")] == [key(s) for s in range(4, 11)]
        assert store.delete_range("j:", upto_key=key(4)) == 0
        batch = store.batch()
        assert store.delete_range("j:", batch=batch) == 7  # counted now, applied on write
        assert len(list(store.scan("j:"))) == 7
        store.write(batch)
        assert list(store.scan("j:")) == []
        assert store.get_bytes("j") == b"not journal" and store.get_bytes("k:1") == b"other"
        # An upper bound past the prefix only deletes within the prefix.
        store.put_bytes("j:x", b"e")
        assert store.delete_range("j:", upto_key="zzz") == 1 and store.get_bytes("k:1") == b"other"
        store.put_bytes("\U0010ffff", b"e")  # highest code point: its prefix end is still valid
        store.put_bytes("\U0010ffffz", b"e")
        assert store.delete_range("\U0010ffff") == 2


def test_reserved_prefixes_are_protected(tmp_path: Path) -> None:
    with MetaStore(tmp_path) as store:
        store.id_map("item").get_or_create(["a"])
        for call in (
            lambda: store.put_bytes("_idmap/item/e/a", b"x"),
            lambda: store.put_json("_counter/n", 3),
            lambda: store.delete("_idmap/item/e/a"),
            lambda: store.delete_range("_"),
            lambda: store.delete_range(""),
        ):
            with pytest.raises(IndexStoreError):
                call()
        assert store.id_map("item").get("a") == 0


def test_counters_survive_reopen_and_count_up_inside_a_batch(tmp_path: Path) -> None:
    with MetaStore(tmp_path) as store:
        assert store.counter("trained") == 0
        assert store.incr("trained", 5) == 5
        batch = store.batch()
        assert store.incr("trained", batch=batch) == 6
        assert store.incr("trained", 2, batch=batch) == 8  # mirror, not the DB value
        assert store.counter("trained") == 8
        store.write(batch)
        assert store.incr("other", -3) == -3
        store.incr("trained", 100, batch=store.batch())  # dropped: mirror runs ahead until reopen
    with MetaStore(tmp_path) as store:
        assert store.counter("trained") == 8 and store.counter("other") == -3


def test_flush_and_close_are_safe(tmp_path: Path) -> None:
    store = MetaStore(tmp_path, sync=True)
    store.put_bytes("a", b"1")
    store.flush()
    store.close()
    store.close()  # idempotent
    with MetaStore(tmp_path) as again:
        assert again.get_bytes("a") == b"1"


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from index_store import MetaStore

    store = MetaStore(Path(sys.argv[1]))
    items = store.id_map("item")
    gen = 0
    while True:
        batch = store.batch()
        items.get_or_create([f"item-{gen}"], batch=batch)
        for i in range(50):
            store.put_bytes(f"g/{gen:08d}/{i:02d}", b"x" * 100, batch=batch)
        store.incr("gens", batch=batch)
        store.write(batch)
        if gen == 200:
            print("acked", gen, flush=True)  # everything up to here must survive
        gen += 1
        if gen > 200:
            time.sleep(0.0005)
    """
)


def test_writes_survive_sigkill_and_batches_stay_atomic(tmp_path: Path) -> None:
    db = tmp_path / "db"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("acked"), line
    finally:
        os.kill(child.pid, signal.SIGKILL)  # no atexit, no close: only the WAL saves us
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    with MetaStore(db) as store:
        gens = store.counter("gens")
        assert gens >= 201  # all acknowledged batches are there
        keys = [k for k, _ in store.scan("g/")]
        per_gen: dict[str, int] = {}
        for k in keys:
            g = k.split("/")[1]
            per_gen[g] = per_gen.get(g, 0) + 1
        assert len(per_gen) == gens and set(per_gen.values()) == {50}  # no half batch
        items = store.id_map("item")
        assert len(items) == gens
        assert items.external(list(range(gens))) == [f"item-{g}" for g in range(gens)]
