"""A published version's frozen copy: its vectors are the trainer's at that moment, and stay so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from towers import TowerConfig
from towerstream.engine import Engine, EngineConfig
from towerstream.events import Interaction, ItemDelete, ItemUpsert, UserProfile
from towerstream.published import join_parts, pack_model, split_model, unpack_model
from towerstream.versions import freeze, live_rows, read_items

SMALL = EngineConfig(tower=TowerConfig(dim=16, hidden=32, uniform_negatives=16, seed=1, device="cpu"))
TS = 1_700_000_000_000


def item(i: int, **kw: object) -> ItemUpsert:
    base: dict[str, object] = dict(item_id=f"i{i}", title=f"title {i}", categories=[f"genre{i % 3}", "all"],
                                   creator=f"studio{i % 2}", numbers={"price": float(i)}, ts=TS + i)
    base.update(kw)
    return ItemUpsert(**base)  # type: ignore[arg-type]


def clicks(start: int, n: int, users: int = 7, items: int = 20) -> list[Interaction]:
    return [Interaction(event_id=f"e{k}", user_id=f"u{k % users}", item_id=f"i{(k * 3) % items}", kind="click",
                        ts=TS + k) for k in range(start, start + n)]


def trained_engine(tmp_path: Path) -> Engine:
    eng = Engine.open(tmp_path / "eng", SMALL)
    eng.apply_items([item(i) for i in range(20)])
    eng.apply_users([UserProfile(user_id="u1", features={"age": 30, "country": "fr"}, ts=TS)])
    for s in range(0, 300, 50):
        eng.learn(clicks(s, 50))
    return eng


def by_id(eng: Engine, frozen_rows: np.ndarray, frozen: object) -> dict[str, np.ndarray]:
    batch = read_items(eng, frozen_rows)
    return {v.item_id: v.vector for v in batch.vectors(frozen)}  # type: ignore[arg-type]


def test_frozen_vectors_are_the_trainers_at_that_moment_and_do_not_move_with_training(tmp_path: Path) -> None:
    eng = trained_engine(tmp_path)
    rows = live_rows(eng)
    expected = eng.trainer.embed_items(rows)
    frozen = freeze(eng, 3)
    got = read_items(eng, rows).vectors(frozen)
    assert [v.item_id for v in got] == eng.items.external(rows)
    assert all(v.version == 3 for v in got)
    np.testing.assert_allclose(np.stack([v.vector for v in got]), expected, atol=1e-5)
    # The vector recovers the item tower's unit output: v = x[:D-1] / sqrt(1 - x[D-1]^2).
    x = got[0].vector
    np.testing.assert_allclose(np.linalg.norm(x[:-1] / np.sqrt(1 - x[-1] ** 2)), 1.0, rtol=1e-5)
    # What a replica filters on and shows comes from the item's record.
    i5 = next(v for v in got if v.item_id == "i5")
    assert (i5.categories, i5.creator, i5.title) == (("genre2", "all"), "studio1", "title 5")

    for s in range(300, 600, 50):  # the towers move; the frozen copy does not
        eng.learn(clicks(s, 50))
    moved = eng.trainer.embed_items(rows)
    assert np.abs(moved - expected).max() > 1e-3
    again = read_items(eng, rows).vectors(frozen)
    # Only the exploration bonus (interaction counts, read when embedded) may differ: compare the
    # recovered tower output.
    def unit(vs: list) -> np.ndarray:  # type: ignore[type-arg]
        a = np.stack([v.vector for v in vs])
        return a[:, :-1] / np.sqrt(1 - a[:, -1:] ** 2)
    np.testing.assert_allclose(unit(again), unit(got), atol=1e-5)


def test_an_item_new_since_the_version_is_embedded_with_a_zero_id_row(tmp_path: Path) -> None:
    eng = trained_engine(tmp_path)
    frozen = freeze(eng, 1)
    eng.apply_items([item(99, title="brand new")])
    row = eng.items.get("i99")
    assert row is not None and row >= frozen.known_items
    got = read_items(eng, np.array([row])).vectors(frozen)[0].vector
    # No training since the freeze: the live towers with the new row's id embedding zeroed are V's.
    with torch.no_grad():
        eng.trainer.model.item_id.weight[row].zero_()
    np.testing.assert_allclose(got, eng.trainer.embed_items(np.array([row]))[0], atol=1e-5)
    # ...whereas with its (random, untrained) id row the trainer's own vector differs.
    assert not np.allclose(got, read_items(eng, np.array([0])).vectors(frozen)[0].vector)


def test_deleted_items_are_left_out_of_a_read(tmp_path: Path) -> None:
    eng = trained_engine(tmp_path)
    eng.apply_items([ItemDelete(op="delete", item_id="i4", ts=TS + 10_000)])
    frozen = freeze(eng, 1)
    ids = [v.item_id for v in read_items(eng, np.arange(25)).vectors(frozen)]
    assert "i4" not in ids and len(ids) == 19


def test_the_model_payload_has_the_contracts_arrays_and_round_trips(tmp_path: Path) -> None:
    eng = trained_engine(tmp_path)
    frozen = freeze(eng, 7)
    arrays, meta = frozen.model_payload()
    parts = split_model(7, pack_model(arrays, meta), part_bytes=4096)
    assert len(parts) > 1
    back, meta2 = unpack_model(join_parts(list(reversed(parts))))
    assert meta2 == meta
    assert meta["version"] == 7 and meta["dim"] == 16 and meta["history_len"] == SMALL.tower.history_len
    assert meta["recent_len"] == SMALL.tower.recent_len and meta["feat_buckets"] == SMALL.tower.feat_buckets
    assert meta["max_feats"] == SMALL.tower.max_feats and meta["seen_limit"] == SMALL.seen_limit
    assert meta["trained"] == 300
    dm = 15
    users = json.loads(back["user_ids"].tobytes())
    assert set(users) >= {f"u{k}" for k in range(7)}
    assert back["user_id"].shape == (len(users), dm) and back["user_id"].dtype == np.float32
    assert back["user_feats"].shape == (len(users), SMALL.tower.max_feats) and back["user_feats"].dtype == np.int64
    u1 = users.index("u1")
    np.testing.assert_array_equal(back["user_feats"][u1], eng.trainer.user_feats[eng.users.get("u1")])
    assert back["user_feats"][u1].any()
    np.testing.assert_array_equal(back["user_id"][u1],
                                  eng.trainer.model.user_id.weight.detach().numpy()[eng.users.get("u1")])
    assert back["feats"].shape == (SMALL.tower.feat_buckets, dm)
    assert back["pos_logit"].shape == (SMALL.tower.history_len,)
    assert back["recent_logit"].shape == (SMALL.tower.recent_len,)
    h = SMALL.tower.hidden
    assert back["user_w1"].shape == (4 * dm, h) and back["user_b1"].shape == (h,)
    assert back["user_w2"].shape == (h, dm) and back["user_b2"].shape == (dm,)
    assert back["centroids"].shape == (0, 16)  # an exact index at this size
