"""The user tower and the item tower.

Item tower: item id embedding (dynamic, one row per item, no hash collisions)
+ content (text tokens, categories, creator, numbers) -> residual MLP -> L2-normalised (D,).
User tower: the user's recent items, embedded by the item tower itself and pooled with
learned recency weights (most recent first), + a last-items path (the few most recent items,
pooled with weights of their own) + user id embedding + profile/context features -> residual
MLP -> L2-normalised (D,). Because history items go through the item tower, a new
item is useful in a history from its content alone, and a user vector exists from the first
event on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from towers.config import TowerConfig


class DynamicEmbedding(nn.Module):
    """An id embedding table that grows (capacity doubling) as new ids arrive."""

    def __init__(self, capacity: int, dim: int, std: float) -> None:
        super().__init__()
        self.std = std
        self.weight = nn.Parameter(torch.randn(capacity, dim) * std)

    @property
    def capacity(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return F.embedding(rows, self.weight, sparse=True)


class TwoTowerModel(nn.Module):
    """No layer depends on train/eval mode (no dropout, no batch norm; id dropout is the trainer's).

    So the trainer never switches modes: serving threads embed users while the training thread
    steps, and a mode flag flipped by one would be seen by the other (and ``eval()`` walks every
    submodule on each call).
    """

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        # The last of ``cfg.dim`` coordinates is the serving bias channel (see the trainer's embed_*).
        d, h = cfg.dim - 1, cfg.hidden
        self.item_id = DynamicEmbedding(cfg.initial_capacity, d, std=cfg.id_init_std)
        self.user_id = DynamicEmbedding(cfg.initial_capacity, d, std=cfg.id_init_std)
        self.text = nn.EmbeddingBag(cfg.text_buckets, d, mode="mean", padding_idx=0, sparse=True)
        self.cats = nn.EmbeddingBag(cfg.cat_buckets, d, mode="mean", padding_idx=0, sparse=True)
        self.feats = nn.EmbeddingBag(cfg.feat_buckets, d, mode="mean", padding_idx=0, sparse=True)
        for bag in (self.text, self.cats, self.feats):
            nn.init.normal_(bag.weight, std=0.05)
            with torch.no_grad():
                bag.weight[0].zero_()
        self.creator_w = nn.Parameter(torch.ones(1))
        self.num = nn.Linear(cfg.num_slots, d)
        self.item_mlp = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, d))
        # Recency weights over history positions (0 = most recent), initialised to a decay.
        decay = cfg.recency_init
        self.pos_logit = nn.Parameter(torch.tensor([-decay * p for p in range(cfg.history_len)]))
        #: Last-items path (``cfg.recent_len`` positions; 0: none, and the tower is the one without it).
        self.recent_len = max(min(cfg.recent_len, cfg.history_len), 0)
        self.recent_logit = nn.Parameter(torch.tensor([-cfg.recent_init * p for p in range(self.recent_len)]))
        n_in = 4 if self.recent_len else 3
        self.user_mlp = nn.Sequential(nn.Linear(n_in * d, h), nn.ReLU(), nn.Linear(h, d))
        last = self.user_mlp[2]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.weight.mul_(0.1)  # start close to "pooled history + id": the MLP learns a correction
        #: log(1 / temperature), learned when ``cfg.learn_temperature``.
        self.log_inv_temp = nn.Parameter(
            torch.tensor(math.log(1.0 / cfg.temperature)), requires_grad=cfg.learn_temperature
        )

    def item_base(
        self,
        rows: torch.Tensor,
        tokens: torch.Tensor,
        cats: torch.Tensor,
        creator: torch.Tensor,
        nums: torch.Tensor,
        id_keep: torch.Tensor | None = None,
        id_trainable: int | None = None,
    ) -> torch.Tensor:
        """(N,) rows + content -> (N, D) pre-MLP item representation.

        ``id_trainable``: only the first n rows' id embeddings get gradients (the rest are
        sampled negatives: with Adam, a rare item drawn as a negative would otherwise take a
        full-size step away from everyone each time it is drawn).
        """
        if id_trainable is None or id_trainable >= len(rows):
            ids = self.item_id(rows)
        else:
            ids = torch.cat([self.item_id(rows[:id_trainable]),
                             F.embedding(rows[id_trainable:], self.item_id.weight.detach())])
        if id_keep is not None:
            ids = ids * id_keep.unsqueeze(1)
        content = self.text(tokens) + self.cats(cats) + self.num(nums)
        content = content + self.creator_w * F.embedding(creator, self.cats.weight, sparse=True)
        out: torch.Tensor = ids + content
        return out

    def item_out(self, base: torch.Tensor) -> torch.Tensor:
        """(N, D) base -> (N, D) L2-normalised item embedding."""
        return F.normalize(base + self.item_mlp(base), dim=-1)

    def pool_history(self, vecs: torch.Tensor, hist: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(U, D) item vectors, (B, L) rows into them (most recent first), (B, L) bool -> (B, D).

        Recency-weighted mean. ``embedding_bag`` with per-sample weights sums without building
        the (B, L, D) gather, which with its backward was most of a train step's memory traffic.
        """
        logits = self.pos_logit[: hist.shape[1]].unsqueeze(0).expand(valid.shape)
        logits = logits.masked_fill(~valid, float("-inf"))
        w = torch.softmax(logits, dim=1)
        w = torch.nan_to_num(w, nan=0.0)  # users without history: all -inf -> zero vector
        return F.embedding_bag(hist, vecs, per_sample_weights=w, mode="sum")

    def pool_recent(self, vecs: torch.Tensor, hist: torch.Tensor, valid: torch.Tensor) -> torch.Tensor | None:
        """The last-items path: as ``pool_history`` over the first ``recent_len`` positions, with
        position weights of its own -> (B, D); None when the tower has no such path."""
        if not self.recent_len:
            return None
        r = min(self.recent_len, hist.shape[1])
        h, v = hist[:, :r].contiguous(), valid[:, :r]
        logits = self.recent_logit[:r].unsqueeze(0).expand(v.shape).masked_fill(~v, float("-inf"))
        w = torch.nan_to_num(torch.softmax(logits, dim=1), nan=0.0)
        return F.embedding_bag(h, vecs, per_sample_weights=w, mode="sum")

    def user_out(
        self, user_rows: torch.Tensor, hist_pool: torch.Tensor, feat_ids: torch.Tensor,
        recent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B,) rows, (B, D) pooled history, (B, F) feature buckets, (B, D) last items -> (B, D) normalised."""
        u = self.user_id(user_rows)
        if recent is None:
            x = torch.cat([u, hist_pool, self.feats(feat_ids)], dim=-1)
            return F.normalize(u + hist_pool + self.user_mlp(x), dim=-1)
        x = torch.cat([u, hist_pool, recent, self.feats(feat_ids)], dim=-1)
        return F.normalize(u + hist_pool + recent + self.user_mlp(x), dim=-1)

    def inv_temperature(self) -> torch.Tensor:
        return self.log_inv_temp.clamp(max=math.log(100.0)).exp()
