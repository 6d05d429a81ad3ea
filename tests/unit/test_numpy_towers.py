"""Serving embeds users, and small item batches are embedded, with ``towers.numpy_towers``;
training uses PyTorch. Same vectors.

The numpy path is what every CPU query runs, so it must agree with the PyTorch towers the
trainer learns with, for every kind of user: a long history, a short one, none, profile
features, query context, and a history item the item tables do not hold yet; with the
last-items path over fewer positions than the history holds.
"""

from __future__ import annotations

import numpy as np
import torch

from towers import TowerConfig, TwoTowerTrainer
from tests.unit.test_engine import item


def trained() -> TwoTowerTrainer:
    cfg = TowerConfig(dim=24, hidden=32, history_len=12, uniform_negatives=8, seed=3, device="cpu", recent_len=5)
    tr = TwoTowerTrainer(cfg)
    tr.set_items(np.arange(60), [item(i) for i in range(60)])
    tr.set_user_features(np.array([1, 2]), [{"country": "fr", "age": 31}, {"plan": "pro"}])
    rng = np.random.default_rng(7)
    for _ in range(6):  # trained weights, and histories of every length (user 0 has none)
        tr.learn_batch(rng.integers(1, 25, size=48), rng.integers(0, 60, size=48))
    return tr


def torch_vectors(tr: TwoTowerTrainer, rows: np.ndarray, contexts: list[dict[str, object]] | None = None) -> np.ndarray:
    with torch.no_grad():
        vecs = tr._user_vectors(rows, tr._ordered_history(rows), contexts).numpy()
    half = np.float32(np.sqrt(0.5))
    return np.concatenate([vecs * half, np.full((len(vecs), 1), half, dtype=np.float32)], axis=1)


def test_numpy_and_pytorch_user_towers_give_the_same_vectors() -> None:
    tr = trained()
    rows = np.arange(0, 26)
    lengths = np.minimum(tr.user_hist_n[rows], tr.cfg.history_len)
    assert lengths.min() == 0 and lengths.max() == tr.cfg.history_len and len(set(lengths.tolist())) > 3
    got = tr.embed_users(rows)  # the serving path: numpy on the CPU
    np.testing.assert_allclose(got, torch_vectors(tr, rows), atol=2e-6)
    assert not np.allclose(got[1], got[2], atol=1e-3)  # and users differ: not a constant


def test_they_agree_with_query_context_and_one_user_at_a_time() -> None:
    tr = trained()
    ctx: list[dict[str, object]] = [{"device": "tv", "hour": 21}, {}, {"device": "phone"}]
    rows = np.array([3, 0, 17])
    np.testing.assert_allclose(tr.embed_users(rows, ctx), torch_vectors(tr, rows, ctx), atol=2e-6)
    for r in (0, 5, 24):
        one = np.array([r])
        np.testing.assert_allclose(tr.embed_users(one), torch_vectors(tr, one), atol=2e-6)


def test_a_history_item_the_tables_do_not_hold_yet_counts_as_padding_in_both() -> None:
    tr = trained()
    rows = np.array([4, 0])
    beyond = tr.item_capacity() + 5
    tr.observe(rows, np.array([beyond, beyond]))  # shown to serving before a train step grew the tables
    assert (tr._ordered_history(rows)[:, 0] == beyond).all()
    np.testing.assert_allclose(tr.embed_users(rows), torch_vectors(tr, rows), atol=2e-6)


def test_numpy_and_pytorch_item_towers_give_the_same_vectors() -> None:
    tr = trained()
    rows = np.arange(60)
    got = tr.embed_items(rows)  # 60 rows: the numpy path
    with torch.no_grad():
        ref = tr.model.item_out(tr._item_base(rows)).numpy()
    bonus = np.clip(tr.exploration_bonus(rows), 0.0, 0.99)[:, None]
    np.testing.assert_allclose(got, np.concatenate([ref * np.sqrt(1.0 - bonus**2), bonus], axis=1), atol=2e-6)
    # A batch over NUMPY_ITEMS_MAX takes the PyTorch path: the same vectors for the same rows.
    import towers.trainer as trainer_module

    big = np.resize(rows, trainer_module.NUMPY_ITEMS_MAX + 1)
    np.testing.assert_allclose(tr.embed_items(big)[:60], got, atol=2e-6)


def test_cached_weight_views_follow_training_and_table_growth() -> None:
    """``numpy_towers`` keeps numpy views of the parameters between queries: a train step (in
    place) and a grown id table (a new parameter) must both show in the next query."""
    tr = trained()
    rows = np.array([3, 7])
    before = tr.embed_users(rows)
    tr.learn_batch(np.array([3, 7] * 8), np.arange(16))  # in-place updates of the same parameters
    after = tr.embed_users(rows)
    assert not np.allclose(before, after, atol=1e-6)
    np.testing.assert_allclose(after, torch_vectors(tr, rows), atol=2e-6)
    old = tr.model.user_id.weight
    tr.ensure_users(tr.model.user_id.capacity * 2)  # grows: a new parameter, a new view
    assert tr.model.user_id.weight is not old
    with torch.no_grad():
        tr.model.user_id.weight[7] += 0.5  # changes only the new table
    grown = tr.embed_users(rows)
    assert not np.allclose(grown[1], after[1], atol=1e-4)
    np.testing.assert_allclose(grown, torch_vectors(tr, rows), atol=2e-6)


def test_a_padding_row_that_is_not_zero_is_still_left_out() -> None:
    """The numpy bags sum the padding rows in when they are zero (as the model keeps them);
    should one ever hold a value (e.g. a state written by other code), the masked sum is used."""
    tr = trained()
    rows = np.arange(1, 12)
    with torch.no_grad():
        for bag in (tr.model.text, tr.model.cats, tr.model.feats):
            bag.weight[0] = 0.3
    np.testing.assert_allclose(tr.embed_users(rows), torch_vectors(tr, rows), atol=2e-6)
    items = np.arange(60)
    with torch.no_grad():
        ref = tr.model.item_out(tr._item_base(items)).numpy()
    got = tr.embed_items(items)
    bonus = np.clip(tr.exploration_bonus(items), 0.0, 0.99)[:, None]
    np.testing.assert_allclose(got[:, :-1], ref * np.sqrt(1.0 - bonus**2), atol=2e-6)
