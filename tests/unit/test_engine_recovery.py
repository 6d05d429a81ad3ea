"""Engine recovery: unreadable checkpoints, journal kept for the previous checkpoint, durable offsets.

The worker must come back from any crash without losing an item: these tests damage the
checkpoints on disk and check that what the engine serves afterwards is the live catalog.
"""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np

from index_store import load_latest_checkpoint
from towers import TowerConfig
from towerstream.engine import OFFSET_PREFIX, Engine, EngineConfig, SourcePos
from towerstream.events import Interaction, ItemDelete, ItemUpsert, UserProfile

SMALL = EngineConfig(tower=TowerConfig(dim=16, hidden=32, uniform_negatives=16, seed=1))
T0 = 1_700_000_000_000


def item(i: int, ts: int = T0) -> ItemUpsert:
    return ItemUpsert(item_id=f"i{i}", title=f"w{i % 4}x1 w{i % 4}x2", categories=[f"genre{i % 4}"], ts=ts)


def click(n: int, u: int, i: int) -> Interaction:
    return Interaction(event_id=f"e{n}", user_id=f"u{u}", item_id=f"i{i}", kind="click", ts=T0 + n)


def src(offset: int, topic: str = "t.interactions", partition: int = 0) -> SourcePos:
    return SourcePos(topic, partition, offset)


def live_ids(eng: Engine) -> set[str]:
    return set(eng.items.external(eng.index.ids().tolist()))


def corrupt(ckpt: Path) -> None:
    index = ckpt / "index.faiss"
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index.write_bytes(bytes(data))


def build(path: Path) -> tuple[Engine, set[str]]:
    """Two checkpoints with events before, between and after them; returns the live item ids."""
    eng = Engine.open(path, SMALL)
    eng.apply_items([item(i) for i in range(10)])
    eng.learn([click(n, n % 3, n % 10) for n in range(30)], [src(n) for n in range(30)])
    eng.checkpoint()
    eng.apply_items([item(i) for i in range(10, 15)] + [ItemDelete(op="delete", item_id="i2", ts=T0 + 5)])
    eng.apply_users([UserProfile(user_id="u1", features={"country": "fr"}, ts=T0)])
    eng.learn([click(n, n % 3, 10 + n % 5) for n in range(30, 50)], [src(n) for n in range(30, 50)])
    eng.checkpoint()
    eng.apply_items([item(i) for i in range(15, 18)] + [ItemDelete(op="delete", item_id="i3", ts=T0 + 5)])
    eng.learn([click(n, n % 3, n % 18) for n in range(50, 60)], [src(n) for n in range(50, 60)])
    live = {f"i{i}" for i in range(18)} - {"i2", "i3"}
    assert live_ids(eng) == live
    eng.close()  # no checkpoint at close: the last events live only in the journal
    return eng, live


def checkpoints(path: Path) -> list[Path]:
    return sorted((path / "checkpoints").glob("ckpt-" + "[0-9]" * 16))


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one_without_losing_items(tmp_path: Path) -> None:
    _, live = build(tmp_path)
    ckpts = checkpoints(tmp_path)
    assert len(ckpts) == 2
    corrupt(ckpts[-1])
    eng = Engine.open(tmp_path, SMALL)
    # The journal was kept back to the previous checkpoint, so its replay restores everything.
    assert live_ids(eng) == live
    assert eng.trained_in_model == 60 == eng.store.counter("trained")
    assert eng.offsets == {"t.interactions:0": 60}
    eng.close()


def test_no_readable_checkpoint_rebuilds_the_index_from_item_records(tmp_path: Path) -> None:
    _, live = build(tmp_path)
    for ckpt in checkpoints(tmp_path):
        corrupt(ckpt)
    eng = Engine.open(tmp_path, SMALL)
    assert eng.ready and eng.status == "ready"
    assert live_ids(eng) == live
    assert len(eng.index) == len(live)
    # Damaged checkpoints are set aside, and a fresh one is written after the rebuild.
    assert len(list((tmp_path / "checkpoints").glob("*.unreadable"))) == 2
    assert len(checkpoints(tmp_path)) == 1
    rec = eng.recommend("u1", 5)
    assert rec.source == "model" and len(rec.items) == 5
    eng.learn([click(100, 1, 4)], [src(100)])
    seq = eng.seq
    eng.close()
    again = Engine.open(tmp_path, SMALL)  # the new checkpoint and journal load normally
    assert live_ids(again) == live and again.seq == seq
    again.close()


def test_rebuild_serves_popularity_from_the_snapshot_while_it_runs(tmp_path: Path) -> None:
    _, live = build(tmp_path)
    for ckpt in checkpoints(tmp_path):
        corrupt(ckpt)
    eng = Engine(tmp_path, SMALL)
    seen_during: list[tuple[str, str | None, set[str]]] = []
    started = threading.Event()
    original = eng._apply_items_now

    def slow_apply(events):  # type: ignore[no-untyped-def]
        started.set()
        rec = eng.recommend("u9", 5)
        seen_during.append((rec.source, rec.fallback_reason, {i for i, _ in rec.items}))
        return original(events)

    eng._apply_items_now = slow_apply  # type: ignore[method-assign]
    eng.restore()
    assert started.is_set()
    source, reason, items = seen_during[0]
    assert (source, reason) == ("popularity", "index rebuilding")
    # The snapshot (taken at the second checkpoint) is served before anything is re-embedded:
    # i10..i14 had 4 clicks each then, i0..i9 had 3.
    assert items == {f"i{i}" for i in range(10, 15)}
    assert eng.recommend("u1", 5).source == "model"
    assert live_ids(eng) == live
    eng.close()


def test_offsets_are_written_in_the_same_batch_as_the_events(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(1)], [src(7, "t.items", 1)])
    eng.learn([click(1, 1, 1), click(2, 1, 1)], [src(40, partition=2), src(41, partition=2)])
    eng.learn([click(1, 1, 1)], [src(42, partition=2)])  # a duplicate: no new effect, no offset
    durable = {k[len(OFFSET_PREFIX):]: int(v) for k, v in eng.store.scan(OFFSET_PREFIX)}
    assert durable == {"t.items:1": 8, "t.interactions:2": 42} == eng.offsets
    eng.checkpoint()
    eng.close()
    again = Engine.open(tmp_path, SMALL)
    assert again.offsets == durable
    again.close()


def test_popular_tolerates_arrays_growing_concurrently(tmp_path: Path) -> None:
    eng = Engine(tmp_path, SMALL)
    eng.popularity = np.arange(3000, dtype=np.float64)  # longer than live, as mid-_ensure_rows
    eng.live[:5] = True
    assert [r for r, _ in eng.popular(3)] == [4, 3, 2]
    eng.close()


def test_checkpoint_of_towers_with_another_shape_is_rebuilt_not_fatal(tmp_path: Path) -> None:
    _, live = build(tmp_path)
    wider = EngineConfig(tower=TowerConfig(dim=24, hidden=32, uniform_negatives=16, seed=1))
    eng = Engine.open(tmp_path, wider)  # e.g. a model upgrade meets an old checkpoint
    assert eng.ready and live_ids(eng) == live
    assert eng.index.dim == 24 and eng.recommend("u1", 3).source == "model"
    eng.close()


def test_unsaved_training_is_measured_and_reset_by_a_checkpoint(tmp_path: Path) -> None:
    """What a restart would replay: the worker checkpoints once it exceeds CHECKPOINT_MAX_REPLAY_S."""
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(i) for i in range(5)])
    assert eng.unsaved_train_s == 0.0
    eng.learn([click(n, n % 3, n % 5) for n in range(20)])
    first = eng.unsaved_train_s
    eng.learn([click(n, n % 3, n % 5) for n in range(20, 40)])
    assert 0.0 < first < eng.unsaved_train_s
    eng.checkpoint()
    assert eng.unsaved_train_s == 0.0
    eng.learn([click(40, 1, 1)])
    eng.close()
    again = Engine.open(tmp_path, SMALL)  # the replay of the last batch counts as unsaved again
    assert again.unsaved_train_s > 0.0 and again.replay_s >= again.unsaved_train_s
    again.close()


def test_a_snapshot_written_after_more_training_holds_its_own_moment(tmp_path: Path) -> None:
    """The worker writes checkpoints off the training thread: what lands on disk is the state at
    ``snapshot()``, however far training went on meanwhile; a restart replays the rest."""
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(i) for i in range(10)])
    eng.learn([click(n, n % 3, n % 10) for n in range(30)], [src(n) for n in range(30)])
    snap = eng.snapshot()
    at_snapshot = (eng.model_version, eng.trained_in_model, live_ids(eng))
    eng.apply_items([item(i) for i in range(10, 14)])
    eng.learn([click(n, n % 3, 10 + n % 4) for n in range(30, 50)], [src(n) for n in range(30, 50)])
    path = eng.write_snapshot(snap)
    assert (eng.model_version, eng.trained_in_model) != at_snapshot[:2]
    final = (eng.model_version, eng.trained_in_model, live_ids(eng))
    eng.close()

    loaded = load_latest_checkpoint(path.parent)  # the checkpoint alone, before any journal replay
    assert loaded is not None
    info, index, blobs = loaded
    assert info.meta["model_version"] == at_snapshot[0]
    assert pickle.loads(blobs["engine"])["trained_in_model"] == at_snapshot[1]
    assert len(index) == len(at_snapshot[2]) == 10
    again = Engine.open(tmp_path, SMALL)
    try:  # checkpoint + journal replay: every event, once
        assert (again.model_version, again.trained_in_model, live_ids(again)) == final
    finally:
        again.close()


def test_offsets_lowered_after_a_log_reset_survive_replay_checkpoint_and_rebuild(tmp_path: Path) -> None:
    """A replaced log starts again at lower offsets: ``reset_offsets`` records them durably, at
    their place in the journal, so no restart seeks the new log to the old log's positions."""
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(1)], [src(7, "t.items", 0)])
    eng.learn([click(n, 1, 1) for n in range(5)], [src(300 + n) for n in range(5)])
    eng.checkpoint()
    eng.learn([click(n, 1, 1) for n in range(5, 8)], [src(400 + n) for n in range(3)])  # journal only
    eng.reset_offsets({"t.interactions:0": 0})
    eng.learn([click(n, 1, 1) for n in range(8, 10)], [src(n - 8) for n in range(8, 10)])  # the new log
    assert eng.offsets == {"t.items:0": 8, "t.interactions:0": 2}
    durable = {k[len(OFFSET_PREFIX):]: int(v) for k, v in eng.store.scan(OFFSET_PREFIX)}
    assert durable == eng.offsets
    eng.close()  # the reset lives only in the journal: replay must lower the offset at its place
    again = Engine.open(tmp_path, SMALL)
    assert again.offsets == {"t.items:0": 8, "t.interactions:0": 2}
    again.checkpoint()  # ...and a checkpoint taken after it carries the lowered offset
    again.close()
    third = Engine.open(tmp_path, SMALL)
    assert third.offsets == {"t.items:0": 8, "t.interactions:0": 2}
    third.close()
    for ckpt in checkpoints(tmp_path):  # the rebuild path replays the journal too
        corrupt(ckpt)
    rebuilt = Engine.open(tmp_path, SMALL)
    assert rebuilt.offsets["t.interactions:0"] == 2
    rebuilt.close()
