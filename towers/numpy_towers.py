"""The towers' forward passes in numpy, for queries and small item batches on the CPU.

Why: a query embeds one user with ~35 small tensor operations (the history items through the
item tower, pooling, the user MLP), and on these sizes PyTorch's per-call dispatch costs more
than the arithmetic: 0.68 ms of CPU per query against 0.21 ms for the same maths in numpy
(``bench/engine_costs.py query``). Serving is where that CPU competes with the training,
upserts and the broker on a small box, and a live item batch (tens of items) is the same case.
Training stays in PyTorch (autograd, sparse gradients); ``tests/unit/test_numpy_towers.py``
holds the two to the same vectors.

The weights are read as numpy views of the live parameters, never copied: a query sees the
optimizer's in-place updates exactly as the PyTorch path does (and may mix two steps' weights
in the same way), and a table that grows is replaced, so the views are taken anew.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from towers.model import TwoTowerModel

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class ItemContent(NamedTuple):
    """Item rows and their content rows, as the trainer's tables hold them."""

    rows: I64
    tokens: I64
    cats: I64
    creator: I64
    nums: F32


class Weights(NamedTuple):
    """Numpy views of every parameter a forward reads (``W1``/``W2`` transposed: ``x @ W1``)."""

    item_id: F32
    user_id: F32
    text: F32
    cats: F32
    feats: F32
    creator_w: F32
    num_w: F32
    num_b: F32
    item_w1: F32
    item_b1: F32
    item_w2: F32
    item_b2: F32
    pos_logit: F32
    user_w1: F32
    user_b1: F32
    user_w2: F32
    user_b2: F32
    recent_logit: F32


class _Held(NamedTuple):
    weights: Weights
    params: tuple[torch.Tensor, ...]
    addresses: tuple[int, ...]


#: model -> its views, the parameters they were taken from and their storage addresses. Taking
#: the ~17 views costs ~35 us, which was a tenth of a query; checking them costs ~6 us. The
#: optimizers and ``load_state_dict`` update parameters in place (same storage); only the id
#: tables are ever replaced (growth, a loaded state), which the identity check sees.
_held: weakref.WeakKeyDictionary[TwoTowerModel, _Held] = weakref.WeakKeyDictionary()


def _params(model: TwoTowerModel) -> tuple[torch.Tensor, ...]:
    im0, im2, um0, um2 = model.item_mlp[0], model.item_mlp[2], model.user_mlp[0], model.user_mlp[2]
    assert isinstance(im0, torch.nn.Linear) and isinstance(im2, torch.nn.Linear)
    assert isinstance(um0, torch.nn.Linear) and isinstance(um2, torch.nn.Linear)
    return (model.item_id.weight, model.user_id.weight, model.text.weight, model.cats.weight, model.feats.weight,
            model.creator_w, model.num.weight, model.num.bias, im0.weight, im0.bias, im2.weight, im2.bias,
            model.pos_logit, um0.weight, um0.bias, um2.weight, um2.bias, model.recent_logit)


def weights(model: TwoTowerModel) -> Weights:
    """The model's weights as numpy views, taken again only when a parameter has changed storage."""
    held = _held.get(model)
    if held is not None and model.item_id.weight is held.params[0] and model.user_id.weight is held.params[1] \
            and all(p.data_ptr() == a for p, a in zip(held.params, held.addresses)):
        return held.weights
    params = _params(model)
    views = [p.detach().numpy() for p in params]
    for n in (6, 8, 10, 13, 15):  # Linear weights, as (in, out)
        views[n] = views[n].T
    held = _Held(Weights(*views), params, tuple(p.data_ptr() for p in params))
    _held[model] = held
    return held.weights


def _bag_mean(idx: I64, weight: F32) -> F32:
    """``EmbeddingBag(mode="mean", padding_idx=0)`` on 2-D input: 0s are left out of sum and count."""
    keep = idx != 0
    count = keep.sum(axis=1)  # np.count_nonzero with an axis is 3x slower on these sizes
    if np.count_nonzero(weight[0]):  # never so in practice (the padding row starts at 0, gets no gradient)
        total = (weight[idx] * keep[..., None]).sum(axis=1)
    else:  # a sum with the padding rows in adds zeros: the same sum
        total = weight[idx].sum(axis=1)
    total /= np.maximum(count, 1).astype(np.float32)[:, None]
    out: F32 = total
    return out


def _normalize(x: F32) -> F32:
    """``F.normalize(x, dim=-1)``, in place."""
    x /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), np.float32(1e-12))[:, None]
    return x


def _mlp(x: F32, w1: F32, b1: F32, w2: F32, b2: F32) -> F32:
    """``Linear -> ReLU -> Linear`` (the towers' ``nn.Sequential``), weights as (in, out)."""
    hidden: F32 = x @ w1
    hidden += b1
    np.maximum(hidden, np.float32(0), out=hidden)
    out: F32 = hidden @ w2
    out += b2
    return out


def _item_vectors(w: Weights, items: ItemContent) -> F32:
    base = _bag_mean(items.tokens, w.text)
    base += _bag_mean(items.cats, w.cats)
    base += items.nums @ w.num_w
    base += w.num_b
    base += w.creator_w * w.cats[items.creator]
    base += w.item_id[items.rows]
    out = _mlp(base, w.item_w1, w.item_b1, w.item_w2, w.item_b2)
    out += base
    return _normalize(out)


def item_vectors(model: TwoTowerModel, items: ItemContent) -> F32:
    """As ``model.item_out(model.item_base(*items))``: (N, D) unit vectors."""
    return _item_vectors(weights(model), items)


class UserWeights(NamedTuple):
    """The user tower's weights alone (what a serving replica receives; ``W1``/``W2`` as ``(in, out)``).

    ``Weights`` has the same fields among its own, so either can be passed to ``user_vectors_from``.
    """

    user_id: F32
    feats: F32
    pos_logit: F32
    recent_logit: F32
    user_w1: F32
    user_b1: F32
    user_w2: F32
    user_b2: F32


def user_vectors(
    model: TwoTowerModel, items: ItemContent, inv: I64, valid: npt.NDArray[np.bool_], user_rows: I64, feats: I64
) -> F32:
    """As ``model.user_out(user_rows, model.pool_history(model.item_out(model.item_base(...)), inv, valid), feats)``.

    ``items`` the (U,) distinct history items, ``inv``/``valid`` (B, L) positions into them
    (most recent first), ``user_rows`` (B,), ``feats`` (B, F) -> (B, D) unit vectors.
    """
    w = weights(model)
    return user_vectors_from(w, _item_vectors(w, items), inv, valid, user_rows, feats)


def user_vectors_from(
    w: Weights | UserWeights, vecs: F32, inv: I64, valid: npt.NDArray[np.bool_], user_rows: I64, feats: I64
) -> F32:
    """The user tower from given history item vectors: ``vecs`` (U, D) the item tower's unit outputs,
    ``inv``/``valid`` (B, L) positions into them (most recent first), ``user_rows`` (B,) rows of
    ``w.user_id``, ``feats`` (B, F) feature buckets (0 = none) -> (B, D) unit vectors.

    Why apart from ``user_vectors``: a serving replica has no item tower, only the item vectors
    the trainer published, and the user tower's weights of one model version.
    """
    # Recency-weighted means: softmax of the position logits over the valid positions.
    pooled = np.einsum("bl,bld->bd", _position_weights(w.pos_logit, valid), vecs[inv])
    u = w.user_id[user_rows]
    parts = [u, pooled]
    if len(w.recent_logit):  # the last-items path
        r = min(len(w.recent_logit), inv.shape[1])
        wr = _position_weights(w.recent_logit, valid[:, :r])
        parts.append(np.einsum("bl,bld->bd", wr, vecs[inv[:, :r]]))
    x = np.concatenate([*parts, _bag_mean(feats, w.feats)], axis=1)
    out = _mlp(x, w.user_w1, w.user_b1, w.user_w2, w.user_b2)
    for p in parts:
        out += p
    return _normalize(out)


def _position_weights(logit: F32, valid: npt.NDArray[np.bool_]) -> F32:
    """Softmax of the position logits over the valid positions (B, L); rows with none: zeros."""
    logits = np.where(valid, logit[: valid.shape[1]], np.float32(-np.inf))
    top = logits.max(axis=1, keepdims=True)
    top[~np.isfinite(top)] = 0
    weights_ = np.exp(logits - top)
    total = weights_.sum(axis=1, keepdims=True)
    total[total == 0] = 1  # no history: zero weights
    weights_ /= total
    out: F32 = weights_
    return out


def item_vectors_with(w: Weights, items: ItemContent) -> F32:
    """As ``item_vectors`` with given weights (e.g. a published version's frozen copy): (N, D) unit vectors."""
    return _item_vectors(w, items)
