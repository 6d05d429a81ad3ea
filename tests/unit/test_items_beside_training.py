"""Item upserts are applied beside training: a new item must not wait for a train step.

A train step holds the engine lock for 100-600 ms; an item upsert takes only ``items_lock``
(and the engine lock only when row arrays must grow), so it reaches the index meanwhile.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from towers import TowerConfig
from towerstream.engine import Engine, EngineConfig
from towerstream.events import Filters, Interaction, ItemDelete, ItemUpsert

T0 = 1_700_000_000_000
SMALL = EngineConfig(tower=TowerConfig(dim=16, hidden=32, uniform_negatives=16, seed=2, initial_capacity=256),
                     index_kind="flat", reembed_per_learn=64)


def up(i: int, ts: int = T0, cat: str | None = None) -> ItemUpsert:
    return ItemUpsert(item_id=f"i{i}", title=f"w{i % 5} v{i % 3}", categories=[cat or f"g{i % 4}"], ts=ts)


def clicks(start: int, n: int, items: int) -> list[Interaction]:
    return [Interaction(event_id=f"e{start + k}", user_id=f"u{(start + k) % 13}", item_id=f"i{(start + k) * 7 % items}",
                        ts=T0 + start + k) for k in range(n)]


def in_thread(fn: object) -> threading.Thread:
    t = threading.Thread(target=fn)  # type: ignore[arg-type]
    t.start()
    t.join(10)
    return t


def test_an_item_upsert_completes_while_a_train_step_holds_the_engine(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([up(i) for i in range(100)])
    eng.learn(clicks(0, 200, 100))
    with eng.lock:  # as a train step would
        t = in_thread(lambda: eng.apply_items([up(100, cat="fresh")]))
        assert not t.is_alive(), "the upsert waited for the train step"
        rec = eng.recommend("u1", 1, filters=Filters(include_categories=["fresh"]), exclude_seen=False)
        assert [i for i, _ in rec.items] == ["i100"]
        # A delete does not wait either.
        t = in_thread(lambda: eng.apply_items([ItemDelete(item_id="i100", op="delete", ts=T0 + 1)]))
        assert not t.is_alive() and eng.items.get("i100") not in eng.index


def test_an_upsert_that_must_grow_the_arrays_waits_for_the_step(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([up(i) for i in range(100)])
    eng.learn(clicks(0, 100, 100))
    done = threading.Event()

    def grow() -> None:
        eng.apply_items([up(i) for i in range(100, 400)])  # past the capacity of 256 rows
        done.set()

    with eng.lock:
        t = threading.Thread(target=grow)
        t.start()
        assert not done.wait(0.3), "arrays grew under a running train step"
    t.join(10)
    assert done.is_set() and len(eng.index) == 400


def test_training_and_item_churn_at_once_leave_index_and_filters_consistent(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([up(i) for i in range(150)])
    errors: list[BaseException] = []
    last_cat: dict[int, str | None] = {i: f"g{i % 4}" for i in range(150)}  # None: deleted

    def train() -> None:
        try:
            for b in range(25):
                eng.learn(clicks(1000 + 40 * b, 40, 150))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def churn() -> None:
        rng = np.random.default_rng(0)
        try:
            for n in range(200):
                i = int(rng.integers(0, 600))  # new rows too: arrays grow while training runs
                if rng.random() < 0.3:
                    eng.apply_items([ItemDelete(item_id=f"i{i}", op="delete", ts=T0 + 10 + n)])
                    if i in last_cat:
                        last_cat[i] = None
                else:
                    eng.apply_items([up(i, ts=T0 + 10 + n, cat=f"c{n % 3}")])
                    last_cat[i] = f"c{n % 3}"
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=train), threading.Thread(target=churn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    live = set(np.flatnonzero(eng.live).tolist())
    assert set(eng.index.ids().tolist()) == live
    assert {r for r in live if eng.attributes.get(r) is not None} == live
    assert len(eng.attributes) == len(live)
    want = {eng.items.get(f"i{i}"): c for i, c in last_cat.items() if c is not None}
    assert live == set(want)
    assert all(eng.attributes.get(r) == ((c,), None) for r, c in want.items())
