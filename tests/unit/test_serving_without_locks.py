"""Queries do not wait for a train step, and with a wait limit they give up instead of blocking.

The worker answers on its event loop: a held lock (a train step, an index save or re-train)
must not stall it, so ``wait_s`` makes the call raise ``WouldBlock`` and the worker retries the
query on a serving thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from index_store import VectorIndex, WouldBlock
from towers import TowerConfig
from towerstream.engine import Engine, EngineConfig
from towerstream.events import Interaction, ItemUpsert

SMALL = EngineConfig(tower=TowerConfig(dim=16, hidden=32, uniform_negatives=16, seed=1), index_kind="flat")
T0 = 1_700_000_000_000


def engine(path: Path) -> Engine:
    eng = Engine.open(path, SMALL)
    eng.apply_items([ItemUpsert(item_id=f"i{i}", title=f"t{i % 3}", categories=[f"g{i % 3}"], ts=T0) for i in range(30)])
    eng.learn([Interaction(event_id=f"e{n}", user_id=f"u{n % 5}", item_id=f"i{n % 30}", ts=T0 + n) for n in range(60)])
    return eng


def test_index_search_gives_up_after_wait_s_while_the_lock_is_held() -> None:
    index = VectorIndex(8, "flat")
    rng = np.random.default_rng(0)
    index.upsert(np.arange(100), rng.normal(size=(100, 8)).astype(np.float32))
    q = rng.normal(size=(1, 8)).astype(np.float32)
    with index._lock:  # as an upsert, save or re-train would hold it; this thread releases it only after
        with pytest.raises(WouldBlock):  # so a search that waited for it would never return
            index.search(q, 5, wait_s=0.01)
    _, ids = index.search(q, 5, wait_s=0.01)
    assert (ids >= 0).all()


def test_known_users_are_served_while_a_train_step_holds_the_engine_lock(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    answers: list[object] = []

    def query() -> None:
        answers.append(eng.recommend("u1", 5, wait_s=0.01))

    with eng.lock:  # a train step in progress on the training thread
        t = threading.Thread(target=query)
        t.start()
        t.join(5)
    assert answers and answers[0].source == "model" and len(answers[0].items) == 5  # type: ignore[attr-defined]


def test_a_user_beyond_the_tables_waits_for_the_lock_or_gives_up(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    cap = eng.trainer.user_capacity()
    # Id rows are made at commit time, before the train step grows the tables to them.
    rows = eng.users.get_or_create([f"new{n}" for n in range(cap + 1)])
    assert int(rows.max()) >= eng.trainer.user_capacity()
    newest = eng.users.external([int(rows.max())])[0]
    errors: list[BaseException] = []

    def query() -> None:
        try:
            eng.recommend(newest, 5, wait_s=0.01)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    with eng.lock:
        t = threading.Thread(target=query)
        t.start()
        t.join(5)
    assert errors and isinstance(errors[0], WouldBlock)
    assert eng.recommend(newest, 5).source == "model"  # without a limit it waits, grows and answers


def test_a_filtered_query_is_answered_inline_even_when_the_filter_removes_most_of_the_catalog(tmp_path: Path) -> None:
    from towerstream.events import Filters

    eng = engine(tmp_path)
    # Two thirds of the catalog excluded: the filter selects inside the search (a bitmap), so
    # there is no over-fetch to widen and nothing to hand to a serving thread.
    most = Filters(exclude_categories=["g0", "g1"])
    rec = eng.recommend("u1", 5, filters=most, exclude_seen=False, wait_s=0.01)
    assert len(rec.items) == 5 and all(int(i[1:]) % 3 == 2 for i, _ in rec.items)


def test_an_ivf_search_that_must_probe_more_lists_gives_up_with_a_wait_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import index_store.vector_index as vi

    index, q, allow = _ivf_with_allowed_ids_far_from(np.random.default_rng(3))
    monkeypatch.setattr(vi, "INLINE_SCAN_MAX", 100)  # a few lists: widening past them is not inline work
    with pytest.raises(WouldBlock):
        index.search(q, 5, allow=allow, wait_s=0.01)
    _, ids = index.search(q, 5, allow=allow)  # without a limit it probes more lists and answers
    assert (ids >= 0).all() and allow[ids].all()


def _ivf_with_allowed_ids_far_from(rng: np.random.Generator) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    """A trained IVF of two far-apart clusters; only the second cluster's ids allowed; a query in the first."""
    index = VectorIndex(8, "ivf", nlist=64, nprobe=2)
    a = rng.normal(size=(3000, 8)).astype(np.float32) * 0.1 + np.float32(3)
    b = rng.normal(size=(3000, 8)).astype(np.float32) * 0.1 - np.float32(3)
    index.upsert(np.arange(6000), np.concatenate([a, b]))
    assert index.is_trained
    allow = np.zeros(6000, dtype=bool)
    allow[3000:] = True
    return index, a[:1], allow


def test_a_large_category_scan_goes_off_the_loop_with_a_wait_limit(tmp_path: Path) -> None:
    from dataclasses import replace

    from towerstream.events import Filters

    eng = engine(tmp_path)
    eng.config = replace(eng.config, include_scan_inline_max=5)  # g2 has 10 items
    g2 = Filters(include_categories=["g2"])
    with pytest.raises(WouldBlock):
        eng.recommend("u1", 5, filters=g2, exclude_seen=False, wait_s=0.01)
    rec = eng.recommend("u1", 5, filters=g2, exclude_seen=False)
    assert len(rec.items) == 5 and all(int(i[1:]) % 3 == 2 for i, _ in rec.items)
