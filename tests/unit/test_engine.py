"""The pure core: towers' shapes, and the Engine's idempotence, durability and serving rules."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from towers import TowerConfig, TwoTowerTrainer
from towerstream.engine import Engine, EngineConfig
from towerstream.events import Filters, Interaction, ItemDelete, ItemUpsert, UserProfile
from towerstream.synthetic import StreamSpec, generate

SMALL = EngineConfig(tower=TowerConfig(dim=16, hidden=32, uniform_negatives=16, seed=1))


def item(i: int, ts: int = 1_700_000_000_000, **kw: object) -> ItemUpsert:
    base: dict[str, object] = dict(item_id=f"i{i}", title=f"w{i % 4}x1 w{i % 4}x2", categories=[f"genre{i % 4}"],
                                   creator=f"studio{i % 4}", numbers={"price": float(i)}, ts=ts)
    base.update(kw)
    return ItemUpsert(**base)  # type: ignore[arg-type]


def click(n: int, u: int, i: int) -> Interaction:
    return Interaction(event_id=f"e{n}", user_id=f"u{u}", item_id=f"i{i}", kind="click", ts=1_700_000_000_000 + n)


def feed(engine: Engine, spec: StreamSpec, batch: int = 64) -> None:
    pending: list[Interaction] = []
    for rec in generate(spec):
        if rec.topic == "items":
            engine.apply_items([ItemUpsert.model_validate(rec.value)])
        elif rec.topic == "users":
            engine.apply_users([UserProfile.model_validate(rec.value)])
        else:
            pending.append(Interaction.model_validate(rec.value))
            if len(pending) == batch:
                engine.learn(pending)
                pending = []
    engine.learn(pending)


def test_towers_produce_normalised_vectors_of_the_configured_shape() -> None:
    tr = TwoTowerTrainer(TowerConfig(dim=24, hidden=32, device="cpu"))
    rows = np.arange(5)
    tr.set_items(rows, [item(i) for i in range(5)])
    iv = tr.embed_items(rows)
    assert iv.shape == (5, 24) and iv.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(iv, axis=1), 1.0, rtol=1e-5)
    loss = tr.learn_batch(np.array([0, 1, 2]), np.array([0, 1, 2]))
    assert np.isfinite(loss)
    uv = tr.embed_users(np.array([0, 1, 2, 3000]))  # an unseen row grows the tables
    assert uv.shape == (4, 24) and tr.device == torch.device("cpu")
    np.testing.assert_allclose(np.linalg.norm(uv, axis=1), 1.0, rtol=1e-5)


def test_a_backlog_sized_batch_takes_one_step_and_a_live_one_takes_steps_per_batch() -> None:
    cfg = TowerConfig(dim=16, hidden=32, uniform_negatives=8, steps_per_batch=2, single_step_above=64, seed=0)
    tr = TwoTowerTrainer(cfg)
    tr.set_items(np.arange(50), [item(i) for i in range(50)])
    rng = np.random.default_rng(0)

    def steps_for(b: int) -> int:
        before = tr.steps
        tr.learn_batch(rng.integers(0, 30, size=b), rng.integers(0, 50, size=b))
        return tr.steps - before

    assert steps_for(64) == 2 and steps_for(10) == 2
    assert steps_for(65) == 1 and steps_for(500) == 1


def test_in_batch_blocks_change_nothing_below_the_block_and_split_larger_batches() -> None:
    def trained(block: int) -> tuple[TwoTowerTrainer, list[float]]:
        cfg = TowerConfig(dim=16, hidden=32, uniform_negatives=8, in_batch_block=block, replay_size=0, seed=0)
        tr = TwoTowerTrainer(cfg)
        tr.set_items(np.arange(40), [item(i) for i in range(40)])
        rng = np.random.default_rng(1)
        losses = [tr.learn_batch(rng.integers(0, 20, size=32), rng.integers(0, 40, size=32)) for _ in range(5)]
        return tr, losses

    whole, whole_loss = trained(0)
    same, same_loss = trained(32)  # the batch fits one block: the very same step
    assert same_loss == whole_loss
    for a, b in zip(whole.model.parameters(), same.model.parameters()):
        assert torch.equal(a, b)
    split, split_loss = trained(8)  # 4 blocks of 8 rows: fewer in-batch negatives per row
    assert all(np.isfinite(split_loss)) and split_loss != whole_loss
    # Fewer negatives per row: the softmax over 8 + 8 candidates starts from a lower loss than 32 + 8.
    assert split_loss[0] < whole_loss[0]


def test_same_seed_same_model(tmp_path: Path) -> None:
    spec = StreamSpec(users=20, items=30, interactions=300, seed=2)
    a = Engine.open(tmp_path / "a", SMALL)
    b = Engine.open(tmp_path / "b", SMALL)
    feed(a, spec)
    feed(b, spec)
    np.testing.assert_array_equal(a.index.ids(), b.index.ids())
    np.testing.assert_allclose(a.index.get(a.index.ids()), b.index.get(b.index.ids()), atol=1e-6)


def test_new_item_is_searchable_at_once_and_upserts_are_idempotent(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(i) for i in range(10)])
    assert len(eng.index) == 10
    again = eng.apply_items([item(3, ts=1_700_000_000_500, title="renamed")])
    assert again.upserted == 1 and len(eng.index) == 10  # replaced, not duplicated
    assert eng.item_record("i3")["event"]["title"] == "renamed"
    dup = eng.apply_items([item(3, ts=1_700_000_000_500, title="renamed")])
    assert dup.duplicates == ["i3"] and dup.upserted == 0
    # The same event twice in one batch (a producer's retry read in the same fetch): one applied, one duplicate.
    twice = eng.apply_items([item(5, ts=1_700_000_000_600), item(5, ts=1_700_000_000_600)])
    assert twice.duplicates == ["i5"] and twice.upserted == 1
    stale = eng.apply_items([item(3, ts=1_600_000_000_000, title="older")])
    assert stale.stale == ["i3"] and eng.item_record("i3")["event"]["title"] == "renamed"
    gone = eng.apply_items([ItemDelete(op="delete", item_id="i4", ts=1_700_000_001_000)])
    assert gone.deleted == 1 and len(eng.index) == 9 and eng.items.get("i4") not in set(eng.index.ids().tolist())
    unknown = eng.apply_items([ItemDelete(op="delete", item_id="never", ts=1_700_000_001_000)])
    assert unknown.unknown_deletes == ["never"] and len(eng.index) == 9


def test_duplicate_event_ids_are_trained_once(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(i) for i in range(4)])
    first = eng.learn([click(1, 1, 1), click(2, 1, 2), click(1, 1, 1)])
    assert first.trained == 2 and first.duplicates == ["e1"]
    second = eng.learn([click(2, 1, 2)])
    assert second.trained == 0 and second.duplicates == ["e2"]
    assert eng.store.counter("trained") == 2


def test_interactions_on_unknown_items_train_but_do_not_enter_the_index(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(0)])
    res = eng.learn([click(1, 1, 99)])
    assert res.trained == 1 and res.unknown_items == ["i99"]
    assert len(eng.index) == 1


def test_restart_without_checkpoint_replays_the_journal(tmp_path: Path) -> None:
    spec = StreamSpec(users=20, items=30, interactions=400, seed=4)
    eng = Engine.open(tmp_path, SMALL)
    feed(eng, spec)
    eng.checkpoint()
    eng.learn([click(10_001, 1, 2), click(10_002, 2, 3)])
    eng.apply_items([item(500), ItemDelete(op="delete", item_id="i1", ts=1_750_000_000_000)])
    ids, version, rec = eng.index.ids(), eng.model_version, eng.recommend("u1", 5)
    vecs = eng.index.get(ids)
    eng.close()  # like a crash: no checkpoint after the last events
    back = Engine.open(tmp_path, SMALL)
    np.testing.assert_array_equal(back.index.ids(), ids)
    assert back.model_version == version
    np.testing.assert_allclose(back.index.get(ids), vecs, atol=1e-5)
    assert [i for i, _ in back.recommend("u1", 5).items] == [i for i, _ in rec.items]
    # Replayed events are still known: sending them again changes nothing.
    assert back.learn([click(10_001, 1, 2)]).trained == 0


def test_checkpoint_trims_the_journal(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(i) for i in range(3)])
    eng.learn([click(1, 1, 1)])
    assert list(eng.store.scan("j:"))
    eng.checkpoint()
    assert list(eng.store.scan("j:")) == []


def test_serving_excludes_seen_items_and_applies_filters(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(i) for i in range(20)])
    eng.learn([click(n, 1, n) for n in range(5)])
    rec = eng.recommend("u1", 20)
    got = {i for i, _ in rec.items}
    assert rec.source == "model" and len(got) == 15 and not got & {f"i{n}" for n in range(5)}
    with_seen = {i for i, _ in eng.recommend("u1", 20, exclude_seen=False).items}
    assert len(with_seen) == 20
    only = eng.recommend("u1", 10, filters=Filters(include_categories=["genre2"]))
    assert only.items and all(int(i[1:]) % 4 == 2 for i, _ in only.items)
    no_studio = eng.recommend("u1", 10, filters=Filters(exclude_creators=["studio3"], exclude_items=["i6"]))
    assert all(int(i[1:]) % 4 != 3 and i != "i6" for i, _ in no_studio.items)


def test_unknown_users_get_popularity_or_a_context_vector(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    eng.apply_items([item(i) for i in range(6)])
    eng.learn([click(n, n % 3, 5) for n in range(6)] + [click(10 + n, n, 4) for n in range(2)])
    pop = eng.recommend("stranger", 3)
    assert pop.source == "popularity" and pop.fallback_reason == "unknown user"
    assert [i for i, _ in pop.items][:2] == ["i5", "i4"]
    ctx = eng.recommend("stranger", 3, contexts=[{"device": "web"}])
    assert ctx.source == "model" and len(ctx.items) == 3


def test_not_ready_engine_answers_from_popularity(tmp_path: Path) -> None:
    eng = Engine(tmp_path, SMALL)  # constructed, not opened: index not loaded yet
    rec = eng.recommend("u1", 3)
    assert rec.source == "popularity" and rec.fallback_reason == "index not ready"


@pytest.mark.parametrize("module", ["towers", "index_store", "towerstream.engine", "towerstream.events"])
def test_the_core_imports_neither_faust_nor_kafka(module: str) -> None:
    code = f"import sys, {module}; bad = [m for m in ('faust', 'kafka', 'aiokafka') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_learning_beats_popularity_on_planted_clusters(tmp_path: Path) -> None:
    spec = StreamSpec(users=80, items=120, interactions=4000, late_items=0.0, seed=8)
    eng = Engine.open(tmp_path, EngineConfig(tower=TowerConfig(seed=3)))
    feed(eng, spec, batch=128)
    model_hits = pop_hits = 0
    for u in range(spec.users):
        model = [int(i[1:]) for i, _ in eng.recommend(f"u{u}", 10).items]
        pop = [r for r, _ in eng.popular(10, eng.seen_rows(eng.users.get(f"u{u}") or -1))]
        model_hits += sum(i % spec.clusters == u % spec.clusters for i in model)
        pop_hits += sum(int(eng.items.external([r])[0][1:]) % spec.clusters == u % spec.clusters for r in pop)
    assert model_hits > 3 * pop_hits, (model_hits, pop_hits)


def test_each_vector_knows_the_model_version_that_produced_it(tmp_path: Path) -> None:
    from dataclasses import replace

    eng = Engine.open(tmp_path / "a", replace(SMALL, reembed_per_learn=0))
    eng.apply_items([item(i) for i in range(6)])
    assert {eng.vector_version(f"i{i}") for i in range(6)} == {0}
    eng.learn([click(1, 1, 1), click(2, 2, 2)])
    eng.learn([click(3, 1, 3)])
    assert eng.model_version == 2
    assert [eng.vector_version(f"i{i}") for i in range(5)] == [0, 1, 1, 2, 0]
    eng.checkpoint()
    stored = np.frombuffer(eng.store.get_bytes("vector_versions") or b"", dtype=np.int64)
    assert [int(stored[eng.items.get(f"i{i}")]) for i in range(5)] == [0, 1, 1, 2, 0]
    before_reembed = eng.index.get(eng.items.rows(["i0"]))
    eng.reembed_all()
    assert {eng.vector_version(f"i{i}") for i in range(6)} == {2}
    eng.apply_items([ItemDelete(op="delete", item_id="i5", ts=1_700_000_001_000)])
    assert eng.vector_version("i5") is None and eng.vector_version("nope") is None
    eng.learn([click(4, 1, 4)])
    eng.close()
    back = Engine.open(tmp_path / "a", replace(SMALL, reembed_per_learn=0))  # checkpoint + journal
    # The checkpoint predates reembed_all (not journaled), so its vectors and versions come back
    # together; the journaled batch after it re-embeds i4 at version 3.
    assert [back.vector_version(f"i{i}") for i in range(5)] == [0, 1, 1, 2, 3]
    np.testing.assert_allclose(back.index.get(back.items.rows(["i0"])), before_reembed, atol=1e-6)
    rolling = Engine.open(tmp_path / "b", replace(SMALL, reembed_per_learn=100))
    rolling.apply_items([item(i) for i in range(6)])
    rolling.learn([click(1, 1, 1)])
    assert {rolling.vector_version(f"i{i}") for i in range(6)} == {1}  # the rolling re-embed covers all


def test_the_towers_have_no_mode_dependent_layers() -> None:
    """The trainer never calls train()/eval() (serving and training share the module across threads)."""
    from torch import nn

    model = TwoTowerTrainer(TowerConfig(dim=16, hidden=32, device="cpu")).model
    mode_dependent = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase, nn.AlphaDropout)
    assert not [m for m in model.modules() if isinstance(m, mode_dependent)]
