"""Tower and trainer hyperparameters: one frozen config, plain values only."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Default weight of each interaction kind in the loss (stronger intent, larger weight).
KIND_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 1.5,
    "like": 2.0,
    "purchase": 3.0,
    "rating": 1.0,
}


@dataclass(frozen=True)
class TowerConfig:
    dim: int = 64
    hidden: int = 128
    #: Hash buckets for text tokens, categories/creators, and user/context features.
    text_buckets: int = 1 << 15
    cat_buckets: int = 1 << 12
    feat_buckets: int = 1 << 12
    num_slots: int = 16
    max_tokens: int = 24
    max_cats: int = 8
    max_feats: int = 16
    history_len: int = 50
    temperature: float = 0.05
    sparse_lr: float = 0.02
    dense_lr: float = 0.003
    #: Uniform negatives sampled from the live catalog per step (mixed negatives).
    uniform_negatives: int = 128
    #: Streaming logQ correction of in-batch negatives (Yi et al. 2019).
    logq: bool = True
    freq_hash_size: int = 1 << 20
    freq_alpha: float = 0.05
    #: Probability of dropping the id embedding in training, so content alone must work (cold items).
    id_dropout: float = 0.2
    kind_weights: dict[str, float] = field(default_factory=lambda: dict(KIND_WEIGHTS))
    seed: int = 0
    device: str = "auto"
    initial_capacity: int = 1024
