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
    #: Index dimension: dim-1 learned, L2-normalised coordinates + 1 serving bias channel.
    dim: int = 64
    hidden: int = 128
    #: Hash buckets for text tokens, categories/creators, and user/context features.
    text_buckets: int = 1 << 15
    cat_buckets: int = 1 << 12
    feat_buckets: int = 1 << 12
    num_slots: int = 16
    max_tokens: int = 24
    #: Category tokens per item, number tokens included (see features.number_tokens).
    max_cats: int = 12
    max_feats: int = 16
    history_len: int = 50
    temperature: float = 0.1
    #: Learn the softmax temperature (log 1/T is a parameter) instead of fixing it.
    learn_temperature: bool = False
    #: Initial recency decay of the history pooling weights (learned afterwards).
    recency_init: float = 0.2
    #: Last-items path of the user tower: the ``recent_len`` most recent history items pooled with
    #: position weights of their own, beside the pooled history, so the tower can weigh what the
    #: user took last apart from the long-term mean. 0 = off (the tower without it).
    recent_len: int = 10
    #: Initial decay of the last-items path's position logits (learned afterwards).
    recent_init: float = 0.3
    id_init_std: float = 0.01
    sparse_lr: float = 0.002
    dense_lr: float = 0.001
    #: Learning rates start at ``lr_burn_in_factor`` x and fall linearly to 1x over ``lr_burn_in_steps``
    #: steps: a fresh model must become useful within a few thousand events, a mature one must not drift.
    lr_burn_in_factor: float = 5.0
    lr_burn_in_steps: int = 100
    #: Apply the burn-in to the item id table too. Off: a hot start inflates the id embeddings of the
    #: items that happen to come first, and content-only (cold) items then score low against them
    #: (ml-100k seed 0: cold HR@10 0.0477 -> 0.0519, HR@10 0.1996 -> 0.2005, NDCG@10 0.1002 -> 0.1013).
    lr_burn_in_item_ids: bool = False
    #: Uniform negatives sampled from the live catalog per step (mixed negatives).
    uniform_negatives: int = 512
    #: Streaming logQ correction of in-batch negatives (Yi et al. 2019).
    logq: bool = True
    #: Fraction of the logQ correction applied (1 = Yi et al.; < 1 leaves some popularity penalty in).
    logq_strength: float = 0.8
    freq_hash_size: int = 1 << 20
    freq_alpha: float = 0.05
    #: Serving-time optimism for few-interaction items: score ~ cosine + explore_bonus / (1 + count) ** explore_power
    #: while count < explore_until. The defaults (a flat 0.07 for an item's first 5 interactions)
    #: were chosen on the dev split (docs/benchmarks.md, learning quality round 2).
    explore_bonus: float = 0.07
    #: Decay of the bonus with the item's interaction count n: bonus / (1 + n) ** power (0.5: UCB-like, 0: flat).
    explore_power: float = 0.0
    #: Interactions after which an item gets no bonus at all (0: never; the bonus only decays). A
    #: decaying bonus also lifts items with tens of interactions over better-matched ones; a window
    #: gives the lift only to items whose vectors interactions have not placed yet.
    explore_until: int = 5
    #: Let uniform negatives update their own id embeddings (off: only content and towers learn from them).
    negative_id_grad: bool = False
    #: Mask in-batch candidates that the same user also took in this batch (true positives, not negatives).
    mask_same_user: bool = True
    #: Gradient steps per micro-batch; each step sees the batch plus a replay sample.
    steps_per_batch: int = 2
    #: In-batch negatives are drawn within blocks of at most this many rows (events + replay), plus
    #: every uniform negative: a step then costs O(B), not O(B^2). Live 512-event batches (1,024
    #: rows with replay) are one block, as before; only merged backlog batches are split. 0: one block.
    in_batch_block: int = 1024
    #: Micro-batches of more than this many events take one step: only a backlog merges batches
    #: this large, and a worker catches up faster with one step than with two (in process at 2,048
    #: events, ``bench/engine_costs.py learn --steps-per-batch 1`` vs ``2``: 4,795 vs 3,774
    #: events/s). Live 512-event batches keep both steps.
    single_step_above: int = 1024
    #: Reservoir of past events (with their histories) replayed alongside each batch; 0 = off.
    replay_size: int = 20_000
    replay_per_step: int = 512
    #: Replayed events per step relative to the batch's new events (capped by replay_per_step).
    replay_ratio: float = 1.0
    #: Probability of dropping the id embedding in training, so content alone must work (cold items).
    id_dropout: float = 0.2
    #: Loss weight of an event = kind_weights[kind] * event.weight ** event_weight_power. 0 ignores the
    #: event's own weight (e.g. MovieLens stars: every rating counts as one interaction), 1 uses it as is.
    event_weight_power: float = 0.0
    kind_weights: dict[str, float] = field(default_factory=lambda: dict(KIND_WEIGHTS))
    seed: int = 0
    device: str = "auto"
    initial_capacity: int = 1024
