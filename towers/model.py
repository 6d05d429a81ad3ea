"""The user tower and the item tower.

Item tower: item id embedding (dynamic, one row per item, no hash collisions)
+ content (text tokens, categories, creator, numbers) -> MLP -> L2-normalised (D,).
User tower: user id embedding + mean of the user's recent items' base embeddings
(the same tables as the item tower) + profile/context features -> MLP -> (D,).
"""

from __future__ import annotations

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
    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        d, h = cfg.dim, cfg.hidden
        self.item_id = DynamicEmbedding(cfg.initial_capacity, d, std=0.01)
        self.user_id = DynamicEmbedding(cfg.initial_capacity, d, std=0.01)
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
        self.user_mlp = nn.Sequential(nn.Linear(3 * d, h), nn.ReLU(), nn.Linear(h, d))

    def item_base(
        self,
        rows: torch.Tensor,
        tokens: torch.Tensor,
        cats: torch.Tensor,
        creator: torch.Tensor,
        nums: torch.Tensor,
        id_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N,) rows + content -> (N, D) pre-MLP item representation."""
        ids = self.item_id(rows)
        if id_keep is not None:
            ids = ids * id_keep.unsqueeze(1)
        content = self.text(tokens) + self.cats(cats) + self.num(nums)
        content = content + self.creator_w * F.embedding(creator, self.cats.weight, sparse=True)
        return ids + content

    def item_out(self, base: torch.Tensor) -> torch.Tensor:
        """(N, D) base -> (N, D) L2-normalised item embedding."""
        return F.normalize(base + self.item_mlp(base), dim=-1)

    def user_out(self, user_rows: torch.Tensor, hist_pool: torch.Tensor, feat_ids: torch.Tensor) -> torch.Tensor:
        """(B,) rows, (B, D) pooled history, (B, F) feature buckets -> (B, D) normalised."""
        u = self.user_id(user_rows)
        x = torch.cat([u, hist_pool, self.feats(feat_ids)], dim=-1)
        return F.normalize(u + hist_pool + self.user_mlp(x), dim=-1)
