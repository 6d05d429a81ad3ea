"""The towers' forward passes in numpy, for queries and small item batches on the CPU.

Why: a query embeds one user with ~35 small tensor operations (the history items through the
item tower, pooling, the user MLP), and on these sizes PyTorch's per-call dispatch costs more
than the arithmetic: 0.77 ms of CPU per query against 0.58 ms for the same maths in numpy
(``bench/engine_costs.py query``). Serving is where that CPU competes with the training,
upserts and the broker on a small box, and a live item batch (tens of items) is the same case.
Training stays in PyTorch (autograd, sparse gradients); ``tests/unit/test_numpy_towers.py``
holds the two to the same vectors.

The weights are read as numpy views of the live parameters, never copied: a query sees the
optimizer's in-place updates exactly as the PyTorch path does (and may mix two steps' weights
in the same way), and a table that grows is replaced, so each call takes the views anew.
"""

from __future__ import annotations

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


#: id(parameter) -> (its storage address, shape, the numpy view): ``detach().numpy()`` costs a few
#: microseconds, ~15 times per query. A view stays valid while the parameter keeps its storage
#: (the optimizer updates in place); a table that grows is a new parameter, so a new view.
_views: dict[int, tuple[int, tuple[int, ...], F32]] = {}


def _w(p: torch.Tensor) -> F32:
    key = id(p)
    hit = _views.get(key)
    addr = p.data_ptr()
    if hit is not None and hit[0] == addr and hit[1] == p.shape:
        return hit[2]
    out: F32 = p.detach().numpy()
    if len(_views) > 256:  # parameters of replaced tables (and of closed engines) do not pile up
        _views.clear()
    _views[key] = (addr, tuple(p.shape), out)
    return out


def _bag_mean(idx: npt.NDArray[np.int64], weight: F32) -> F32:
    """``EmbeddingBag(mode="mean", padding_idx=0)`` on 2-D input: 0s are left out of sum and count."""
    keep = idx != 0
    total = (weight[idx] * keep[..., None]).sum(axis=1)
    out: F32 = total / np.maximum(keep.sum(axis=1, keepdims=True), 1).astype(np.float32)
    return out


def _normalize(x: F32) -> F32:
    """``F.normalize(x, dim=-1)``."""
    out: F32 = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))
    return out


def _mlp(x: F32, seq: torch.nn.Module) -> F32:
    """``Linear -> ReLU -> Linear`` (the towers' ``nn.Sequential``)."""
    first, last = seq[0], seq[2]  # type: ignore[index]
    hidden = np.maximum(x @ _w(first.weight).T + _w(first.bias), np.float32(0))
    out: F32 = hidden @ _w(last.weight).T + _w(last.bias)
    return out


def item_vectors(model: TwoTowerModel, items: ItemContent) -> F32:
    """As ``model.item_out(model.item_base(*items))``: (N, D) unit vectors."""
    cats_w = _w(model.cats.weight)
    content = _bag_mean(items.tokens, _w(model.text.weight)) + _bag_mean(items.cats, cats_w) \
        + (items.nums @ _w(model.num.weight).T + _w(model.num.bias))
    content = content + _w(model.creator_w) * cats_w[items.creator]
    base = _w(model.item_id.weight)[items.rows] + content
    return _normalize(base + _mlp(base, model.item_mlp))


def user_vectors(
    model: TwoTowerModel, items: ItemContent, inv: I64, valid: npt.NDArray[np.bool_], user_rows: I64, feats: I64
) -> F32:
    """As ``model.user_out(user_rows, model.pool_history(model.item_out(model.item_base(...)), inv, valid), feats)``.

    ``items`` the (U,) distinct history items, ``inv``/``valid`` (B, L) positions into them
    (most recent first), ``user_rows`` (B,), ``feats`` (B, F) -> (B, D) unit vectors.
    """
    vecs = item_vectors(model, items)
    # Recency-weighted mean: softmax of the position logits over the valid positions.
    logits = np.where(valid, _w(model.pos_logit)[: inv.shape[1]][None, :], np.float32(-np.inf))
    top = logits.max(axis=1, keepdims=True)
    weights = np.exp(logits - np.where(np.isfinite(top), top, np.float32(0)))
    total = weights.sum(axis=1, keepdims=True)
    weights = weights / np.where(total > 0, total, np.float32(1))  # no history: zero weights
    pooled = np.einsum("bl,bld->bd", weights, vecs[inv])
    u = _w(model.user_id.weight)[user_rows]
    x = np.concatenate([u, pooled, _bag_mean(feats, _w(model.feats.weight))], axis=1)
    return _normalize(u + pooled + _mlp(x, model.user_mlp))
