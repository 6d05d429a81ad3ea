"""Interactions committed (durable, acknowledged) but not trained yet, as the worker's queue leaves them.

A checkpoint taken while a committed batch waits must not cover it: a restart trains it from
the journal, exactly once, and item events applied in between stay as they are.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from towers import TowerConfig
from towerstream.engine import Engine, EngineConfig, SourcePos
from towerstream.events import Interaction, ItemUpsert

SMALL = EngineConfig(tower=TowerConfig(dim=16, hidden=32, uniform_negatives=16, seed=1))
T0 = 1_700_000_000_000


def item(i: int, ts: int = T0) -> ItemUpsert:
    return ItemUpsert(item_id=f"i{i}", title=f"w{i % 4}x1 w{i % 4}x2", categories=[f"genre{i % 4}"], ts=ts)


def clicks(start: int, n: int) -> list[Interaction]:
    return [Interaction(event_id=f"e{k}", user_id=f"u{k % 3}", item_id=f"i{k % 10}", kind="click", ts=T0 + k)
            for k in range(start, start + n)]


def src(events: list[Interaction]) -> list[SourcePos | None]:
    return [SourcePos("t.interactions", 0, int(e.event_id[1:])) for e in events]


def test_checkpoint_between_commit_and_train_does_not_cover_the_batch(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(i) for i in range(10)])
    first = clicks(0, 30)
    eng.learn(first, src(first))
    waiting = clicks(30, 20)
    committed = eng.commit_interactions(waiting, src(waiting))
    assert eng.stats()["trained_total"] == 50 and eng.stats()["untrained_events"] == 20
    eng.apply_items([item(i, T0 + 1) for i in range(10, 12)])  # journaled after the waiting batch
    before_ckpt = eng.applied_seq()
    assert before_ckpt == committed.seq - 1
    eng.checkpoint()
    eng.close()

    back = Engine.open(tmp_path, SMALL)  # killed before training the batch: the journal has it
    assert back.trained_in_model == 50
    assert back.stats()["untrained_events"] == 0
    assert len(back.index) == 12  # the items journaled after the batch were replayed idempotently
    # Another committed copy of the same events is a duplicate, not a second training.
    again = back.commit_interactions(waiting, src(waiting))
    assert again.events == [] and len(again.duplicates) == 20
    assert back.train_committed([again]).trained == 0 and back.trained_in_model == 50


def test_merged_batches_train_once_each_and_release_the_checkpoint_watermark(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(i) for i in range(10)])
    a, b = clicks(0, 16), clicks(16, 16)
    ca, cb = eng.commit_interactions(a, src(a)), eng.commit_interactions(b, src(b))
    assert eng.applied_seq() == ca.seq - 1
    res = eng.train_committed([ca, cb])
    assert res.trained == 32 and eng.trained_in_model == 32 and eng.model_version == 1
    assert eng.applied_seq() == eng.seq and eng.stats()["untrained_events"] == 0


def test_commit_runs_beside_a_train_step(tmp_path: Path) -> None:
    """The worker commits on one thread while the training thread holds the engine lock."""
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(i) for i in range(10)])
    first = clicks(0, 32)
    c1 = eng.commit_interactions(first, src(first))
    done = threading.Event()
    with eng.lock:  # as if a train step were running
        def commit_next() -> None:
            nxt = clicks(32, 32)
            eng.commit_interactions(nxt, src(nxt))
            done.set()

        t = threading.Thread(target=commit_next)
        t.start()
        assert done.wait(10), "commit must not wait for the train step"
    t.join()
    assert eng.stats()["trained_total"] == 64 and eng.stats()["untrained_events"] == 64
    eng.train_committed([c1])
    assert eng.stats()["untrained_events"] == 32


def test_stats_count_durable_and_untrained_events_as_one_pair(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(i) for i in range(4)])
    c = eng.commit_interactions(clicks(0, 20), src(clicks(0, 20)))
    s = eng.stats()
    assert (s["trained_total"], s["untrained_events"]) == (20.0, 20.0)
    eng.train_committed([c])
    s = eng.stats()
    assert (s["trained_total"], s["untrained_events"], s["trained_in_model"]) == (20.0, 0.0, 20.0)
    eng.checkpoint()
    eng.close()
    again = Engine.open(tmp_path, SMALL)
    try:  # the durable count survives a restart
        assert (again.stats()["trained_total"], again.stats()["untrained_events"]) == (20.0, 0.0)
    finally:
        again.close()


def history(eng: Engine, user: str) -> list[int]:
    row = eng.users.get(user)
    assert row is not None
    return [r for r in eng.trainer.history(row).tolist() if r >= 0]


def test_a_committed_interaction_is_served_before_its_train_step(tmp_path: Path) -> None:
    """visible_at_commit: history, seen items and so the user vector move at commit, not at training."""
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(i) for i in range(20)])  # clicks reach i0-i9 only
    eng.learn(clicks(0, 30))
    before = eng.recommend("u1", 10)
    take = next(i for i, _ in before.items)
    ev = [Interaction(event_id="x1", user_id="u1", item_id=take, kind="click", ts=T0 + 100)]
    version = eng.model_version
    hist_before = history(eng, "u1")
    uvec_before = eng.trainer.embed_users(np.array([eng.users.get("u1")]))
    with eng.lock:  # a train step is running: the commit must not wait for it
        done = threading.Event()
        t = threading.Thread(target=lambda: (eng.commit_interactions(ev), done.set()))
        t.start()
        assert done.wait(5), "the commit waited for the train step"
        assert take not in {i for i, _ in eng.recommend("u1", 10).items}
        assert history(eng, "u1") == [eng.items.get(take), *hist_before][: SMALL.tower.history_len]
        assert (eng.trainer.embed_users(np.array([eng.users.get("u1")])) != uvec_before).any()
        assert eng.model_version == version  # nothing trained yet
    t.join()


def test_visible_events_are_trained_and_replayed_without_a_second_history_entry(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(i) for i in range(10)])
    eng.learn(clicks(0, 30), src(clicks(0, 30)))
    waiting = clicks(30, 9)  # u0, u1, u2 three times each
    committed = eng.commit_interactions(waiting, src(waiting))
    shown = {u: history(eng, u) for u in ("u0", "u1", "u2")}
    seen = {u: sorted(eng.seen_rows(eng.users.get(u))) for u in ("u0", "u1", "u2")}  # type: ignore[arg-type]
    eng.checkpoint()  # covers the journal up to just before the waiting batch
    eng.train_committed([committed])
    assert {u: history(eng, u) for u in shown} == shown  # training added nothing a second time
    eng.close()

    back = Engine.open(tmp_path, SMALL)  # the waiting batch is replayed from the journal
    assert back.trained_in_model == 39
    assert {u: history(back, u) for u in shown} == shown
    assert {u: sorted(back.seen_rows(back.users.get(u))) for u in shown} == seen  # type: ignore[arg-type]


def test_without_visible_at_commit_serving_moves_at_the_train_step(tmp_path: Path) -> None:
    from dataclasses import replace

    eng = Engine.open(tmp_path, replace(SMALL, visible_at_commit=False))
    eng.apply_items([item(i) for i in range(10)])
    eng.learn(clicks(0, 30))
    hist = history(eng, "u1")
    committed = eng.commit_interactions([Interaction(event_id="x1", user_id="u1", item_id="i3", ts=T0 + 100)])
    assert history(eng, "u1") == hist
    eng.train_committed([committed])
    assert history(eng, "u1")[0] == eng.items.get("i3")
