"""Queries do not wait for a train step, and every query gets its answer.

A train step holds the engine lock for 100-600 ms: a known user is answered meanwhile without
it. A user created since the last step needs the tables grown, so that query waits for the lock
and then answers. Filters that remove most of the catalog, a filtered IVF search that must probe
more lists, and a direct scan of a category all answer with k results.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from index_store import VectorIndex
from towers import TowerConfig
from towerstream.engine import Engine, EngineConfig, Recommendations
from towerstream.events import Filters, Interaction, ItemUpsert

SMALL = EngineConfig(tower=TowerConfig(dim=16, hidden=32, uniform_negatives=16, seed=1), index_kind="flat")
T0 = 1_700_000_000_000


def engine(path: Path) -> Engine:
    eng = Engine.open(path, SMALL)
    eng.apply_items([ItemUpsert(item_id=f"i{i}", title=f"t{i % 3}", categories=[f"g{i % 3}"], ts=T0) for i in range(30)])
    eng.learn([Interaction(event_id=f"e{n}", user_id=f"u{n % 5}", item_id=f"i{n % 30}", ts=T0 + n) for n in range(60)])
    return eng


def test_known_users_are_served_while_a_train_step_holds_the_engine_lock(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    answers: list[Recommendations] = []
    done = threading.Event()

    def query() -> None:
        answers.append(eng.recommend("u1", 5))
        done.set()

    with eng.lock:  # a train step in progress on the training thread; released only after the wait
        t = threading.Thread(target=query, daemon=True)
        t.start()
        answered_under_lock = done.wait(30)
    t.join(30)
    assert answered_under_lock, "a known user's query waited for the engine lock"
    assert answers[0].source == "model" and len(answers[0].items) == 5


def test_a_user_beyond_the_tables_waits_for_the_lock_then_is_answered_by_the_model(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    cap = eng.trainer.user_capacity()
    # Id rows are made at commit time, before the train step grows the tables to them.
    rows = eng.users.get_or_create([f"new{n}" for n in range(cap + 1)])
    assert int(rows.max()) >= eng.trainer.user_capacity()
    newest = eng.users.external([int(rows.max())])[0]
    answers: list[Recommendations] = []
    done = threading.Event()

    def query() -> None:
        answers.append(eng.recommend(newest, 5))
        done.set()

    with eng.lock:
        t = threading.Thread(target=query, daemon=True)
        t.start()
        assert not done.wait(0.5), "tables grew without the engine lock"
    t.join(30)
    assert answers and answers[0].source == "model" and len(answers[0].items) == 5
    assert eng.trainer.user_capacity() > int(rows.max())


def test_a_filter_that_removes_most_of_the_catalog_still_gets_k_results(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    # Two thirds of the catalog excluded: the filter selects inside the search (a bitmap).
    most = Filters(exclude_categories=["g0", "g1"])
    rec = eng.recommend("u1", 5, filters=most, exclude_seen=False)
    assert len(rec.items) == 5 and all(int(i[1:]) % 3 == 2 for i, _ in rec.items)


def test_an_ivf_search_whose_allowed_ids_are_far_probes_more_lists_and_answers() -> None:
    rng = np.random.default_rng(3)
    index = VectorIndex(8, "ivf", nlist=64, nprobe=2)
    a = rng.normal(size=(3000, 8)).astype(np.float32) * 0.1 + np.float32(3)
    b = rng.normal(size=(3000, 8)).astype(np.float32) * 0.1 - np.float32(3)
    index.upsert(np.arange(6000), np.concatenate([a, b]))
    assert index.is_trained
    allow = np.zeros(6000, dtype=bool)
    allow[3000:] = True  # only the second cluster; the query sits in the first
    _, ids = index.search(a[:1], 5, allow=allow)
    assert (ids >= 0).all() and allow[ids].all()


def test_a_large_category_is_scored_directly_with_k_results(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    eng.config = replace(eng.config, include_scan_max=20)  # g2 has 10 items: scanned directly
    rec = eng.recommend("u1", 5, filters=Filters(include_categories=["g2"]), exclude_seen=False)
    assert len(rec.items) == 5 and all(int(i[1:]) % 3 == 2 for i, _ in rec.items)
