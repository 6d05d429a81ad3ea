"""Incremental training of the two towers on micro-batches of interactions.

Loss: sampled softmax over in-batch positives plus uniform negatives from the live
catalog (mixed negatives), with streaming logQ correction of in-batch negatives
(Yi et al. 2019: a hash array estimates each item's gap between occurrences) and
masking of accidental hits (the same item, or another item the same user took in the batch).

Each event is trained with the user's history as it was just before that event (the same
history serving saw), so a rating session packed into one micro-batch is learned in order.
``observe`` records history the moment an event arrives; ``learn_batch`` then reuses those
snapshots. A small reservoir of past events replays alongside each batch, and a micro-batch
may take several steps. Everything per step is vectorised; the Python loops are O(1) per
event (history snapshots and appends).
"""

from __future__ import annotations

import io
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from towers import numpy_towers
from towers.config import TowerConfig
from towers.features import ItemContentLike, ItemEncoding, encode_features
from towers.model import DynamicEmbedding, TwoTowerModel


#: Item batches up to this size are embedded with the numpy towers on the CPU: for tens of items
#: PyTorch's per-op cost dominates. Larger ones (a full re-embedding, the items a big train step
#: touched) stay in PyTorch, whose ops release the GIL while they compute.
NUMPY_ITEMS_MAX = 256


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _copy_tree(obj: Any) -> Any:
    """Deep copy of nested dicts/lists/tuples of tensors, arrays and plain values.

    Numeric arrays come back as tensors sharing the copy's memory: ``torch.save`` writes a tensor's
    bytes straight into the file, where a NumPy array is pickled into an in-memory buffer first
    (all of the feature tables at 1M items: several hundred MB, and the GIL held meanwhile).
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, np.ndarray):
        copied = obj.copy()
        return torch.from_numpy(copied) if copied.dtype.kind in "biuf" else copied
    if isinstance(obj, dict):
        return {k: _copy_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy_tree(v) for v in obj)
    return obj


def _as_array(x: Any) -> Any:
    """A table saved as a tensor (``_copy_tree``) or, by older checkpoints, as an array -> array."""
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else x


def _grow(arr: np.ndarray, capacity: int, fill: float | int) -> np.ndarray:
    out = np.full((capacity, *arr.shape[1:]), fill, dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


def exploration_bonus(counts: np.ndarray, bonus: float, power: float, until: int) -> np.ndarray:
    """(N,) interaction counts -> (N,) float32 ``bonus / (1 + n) ** power``, 0 from ``until`` on (0: never)."""
    n = counts.astype(np.float64)
    b = bonus / (1.0 + n) ** power
    if until > 0:
        b = np.where(n < until, b, 0.0)
    out: np.ndarray = b.astype(np.float32)
    return out


class FrequencyEstimator:
    """Streaming estimate of each item's probability of appearing in a batch (hash arrays A, B)."""

    def __init__(self, size: int, alpha: float) -> None:
        self.size = size
        self.alpha = alpha
        self.last = np.zeros(size, dtype=np.float64)
        self.gap = np.full(size, 100.0, dtype=np.float64)
        self.step = 0

    def _h(self, rows: np.ndarray) -> np.ndarray:
        return (rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) >> np.uint64(40)).astype(np.int64) % self.size

    def update(self, rows: np.ndarray) -> None:
        self.step += 1
        h = np.unique(self._h(rows))
        seen = self.last[h] > 0
        gap_obs = self.step - self.last[h]
        self.gap[h] = np.where(seen, (1 - self.alpha) * self.gap[h] + self.alpha * gap_obs, self.gap[h])
        self.last[h] = self.step

    def log_prob(self, rows: np.ndarray) -> np.ndarray:
        """log p(item in a batch), clipped to (0, 1]."""
        out: np.ndarray = -np.log(np.maximum(self.gap[self._h(rows)], 1.0))
        return out


class TwoTowerTrainer:
    """Owns feature tables, towers, optimizers and frequency estimates. Rows are dense ints from an id map."""

    def __init__(self, config: TowerConfig) -> None:
        self.cfg = config
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.model = TwoTowerModel(config).to(self.device)
        cap = config.initial_capacity
        self.item_tokens = np.zeros((cap, config.max_tokens), dtype=np.int64)
        self.item_cats = np.zeros((cap, config.max_cats), dtype=np.int64)
        self.item_creator = np.zeros(cap, dtype=np.int64)
        self.item_nums = np.zeros((cap, config.num_slots), dtype=np.float32)
        self.item_live = np.zeros(cap, dtype=bool)
        #: Interactions learned per item row: drives the exploration bonus of few-interaction items.
        self.item_count = np.zeros(cap, dtype=np.int64)
        self.user_feats = np.zeros((cap, config.max_feats), dtype=np.int64)
        self.user_hist = np.full((cap, config.history_len), -1, dtype=np.int64)
        self.user_hist_n = np.zeros(cap, dtype=np.int64)
        self.freq = FrequencyEstimator(config.freq_hash_size, config.freq_alpha)
        self.steps = 0
        #: (user row, item row) -> pre-event history snapshots taken by ``observe``, not yet learned.
        self._observed: dict[tuple[int, int], deque[np.ndarray]] = {}
        self._n_observed = 0
        #: Histories (rings, observed snapshots) and the user tables' growth: ``observe`` may run on
        #: another thread than training (a worker shows events to serving as soon as they are durable).
        self.history_lock = threading.RLock()
        r = max(config.replay_size, 0)
        self.replay_users = np.zeros(r, dtype=np.int64)
        self.replay_items = np.zeros(r, dtype=np.int64)
        self.replay_weights = np.zeros(r, dtype=np.float32)
        self.replay_hist = np.full((r, config.history_len), -1, dtype=np.int64)
        self.replay_n = 0  # events offered to the reservoir so far
        self._build_optimizers()

    # ----- capacity -------------------------------------------------------------------
    def _build_optimizers(self) -> None:
        sparse = [self.model.user_id.weight, self.model.text.weight, self.model.cats.weight, self.model.feats.weight]
        sparse_ids = {id(p) for p in sparse} | {id(self.model.item_id.weight)}
        dense = [p for p in self.model.parameters() if id(p) not in sparse_ids]
        # The item id table is a group of its own, so the burn-in can leave it out.
        self.opt_sparse = torch.optim.SparseAdam(
            [{"params": [self.model.item_id.weight], "burn_in": self.cfg.lr_burn_in_item_ids},
             {"params": sparse, "burn_in": True}], lr=self.cfg.sparse_lr)
        self.opt_dense = torch.optim.Adam(dense, lr=self.cfg.dense_lr)

    def _grow_embedding(self, emb: DynamicEmbedding, needed: int) -> None:
        cap = emb.capacity
        if needed <= cap:
            return
        new_cap = max(needed, cap * 2)
        old = emb.weight
        extra = torch.randn(new_cap - cap, old.shape[1], device=old.device) * emb.std
        new = nn.Parameter(torch.cat([old.data, extra]))
        emb.weight = new
        for group in self.opt_sparse.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        state = self.opt_sparse.state.pop(old, None)
        if state is not None:
            for key, val in list(state.items()):
                if torch.is_tensor(val) and val.dim() == 2:
                    state[key] = torch.cat([val, torch.zeros(new_cap - cap, val.shape[1], device=val.device)])
            self.opt_sparse.state[new] = state

    def ensure_items(self, max_row: int) -> None:
        needed = max_row + 1
        cap = self.item_tokens.shape[0]
        if needed > cap:
            new_cap = max(needed, cap * 2)
            self.item_tokens = _grow(self.item_tokens, new_cap, 0)
            self.item_cats = _grow(self.item_cats, new_cap, 0)
            self.item_creator = _grow(self.item_creator, new_cap, 0)
            self.item_nums = _grow(self.item_nums, new_cap, 0.0)
            self.item_live = _grow(self.item_live, new_cap, False)
            self.item_count = _grow(self.item_count, new_cap, 0)
        self._grow_embedding(self.model.item_id, needed)

    def ensure_users(self, max_row: int) -> None:
        self._ensure_user_tables(max_row)
        self._grow_embedding(self.model.user_id, max_row + 1)

    def _ensure_user_tables(self, max_row: int) -> None:
        """Grow the user arrays (not the id embedding, which only the training thread may swap)."""
        with self.history_lock:
            needed = max_row + 1
            cap = self.user_feats.shape[0]
            if needed > cap:
                new_cap = max(needed, cap * 2)
                self.user_feats = _grow(self.user_feats, new_cap, 0)
                self.user_hist = _grow(self.user_hist, new_cap, -1)
                self.user_hist_n = _grow(self.user_hist_n, new_cap, 0)

    # ----- content -------------------------------------------------------------------
    def set_items(self, rows: np.ndarray, contents: Sequence[ItemContentLike]) -> None:
        """Encode content for these item rows and mark them live (candidates for negatives)."""
        if len(rows) == 0:
            return
        self.ensure_items(int(rows.max()))
        encoded = ItemEncoding.of(self.cfg).encode(contents)
        self.item_tokens[rows], self.item_cats[rows] = encoded.tokens, encoded.cats
        self.item_creator[rows], self.item_nums[rows] = encoded.creator, encoded.nums
        self.item_live[rows] = True

    def remove_items(self, rows: np.ndarray) -> None:
        rows = rows[rows < self.item_live.shape[0]]
        self.item_live[rows] = False

    def set_user_features(self, rows: np.ndarray, features: Sequence[Mapping[str, object]]) -> None:
        if len(rows) == 0:
            return
        self.ensure_users(int(rows.max()))
        with self.history_lock:  # a concurrent growth must not drop these writes
            for row, feats in zip(rows.tolist(), features):
                self.user_feats[row] = encode_features(
                    feats, "p:", buckets=self.cfg.feat_buckets, limit=self.cfg.max_feats)

    def history(self, user_row: int) -> np.ndarray:
        """The user's recent item rows, most recent first, -1 padded -> (L,)."""
        if user_row >= self.user_hist.shape[0]:
            return np.full(self.cfg.history_len, -1, dtype=np.int64)
        out: np.ndarray = self._ordered_history(np.array([user_row], dtype=np.int64))[0]
        return out

    def _ordered_history(self, user_rows: np.ndarray) -> np.ndarray:
        """(B,) user rows -> (B, L) item rows, most recent first, -1 padded (reads the rings)."""
        n_hist = self.cfg.history_len
        n = self.user_hist_n[user_rows]
        p = np.arange(n_hist)
        idx = (n[:, None] - 1 - p[None, :]) % n_hist
        hist: np.ndarray = self.user_hist[user_rows[:, None], idx]
        hist[p[None, :] >= np.minimum(n, n_hist)[:, None]] = -1
        return hist

    def observe(self, user_rows: np.ndarray, item_rows: np.ndarray) -> None:
        """Add events to histories now (serving sees them at once); the train step comes later.

        Each event's pre-event history is kept for ``learn_batch``, which must then be given
        the same events (in any grouping) and will not append them again.
        """
        if len(user_rows) == 0:
            return
        with self.history_lock:  # safe beside a train step: grows no embedding, touches no weights
            self._ensure_user_tables(int(user_rows.max()))
            snaps = self._sequential_histories(user_rows, item_rows)
            for u, i, snap in zip(user_rows.tolist(), item_rows.tolist(), snaps):
                self._observed.setdefault((u, i), deque()).append(snap)
            self._n_observed += len(user_rows)
            if self._n_observed > 1_000_000:  # events observed but never learned: drop, do not leak
                self._observed.clear()
                self._n_observed = 0

    def _sequential_histories(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """Append events to the rings in order; -> (B, L) each event's history just before it."""
        snaps = self._ordered_history(user_rows)
        n_hist = self.cfg.history_len
        # Events of a user already seen in this batch need the batch's earlier items in front.
        first: dict[int, int] = {}
        for j, u in enumerate(user_rows.tolist()):
            if u in first:
                snaps[j, 1:] = snaps[first[u], :-1]
                snaps[j, 0] = item_rows[first[u]]
            first[u] = j
        for u, i in zip(user_rows.tolist(), item_rows.tolist()):
            self.user_hist[u, self.user_hist_n[u] % n_hist] = i
            self.user_hist_n[u] += 1
        return snaps

    def _histories_for(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """Pre-event histories for a batch: observed snapshots, else computed (and appended) now."""
        with self.history_lock:
            return self._histories_locked(user_rows, item_rows)

    def _histories_locked(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        if not self._observed:
            return self._sequential_histories(user_rows, item_rows)
        out = np.empty((len(user_rows), self.cfg.history_len), dtype=np.int64)
        missing: list[int] = []
        for j, key in enumerate(zip(user_rows.tolist(), item_rows.tolist())):
            q = self._observed.get(key)
            if q:
                out[j] = q.popleft()
                self._n_observed -= 1
                if not q:
                    del self._observed[key]
            else:
                missing.append(j)
        if missing:
            m = np.asarray(missing)
            out[m] = self._sequential_histories(user_rows[m], item_rows[m])
        return out

    # ----- forward helpers -------------------------------------------------------------
    def _t(self, arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)

    def item_content(self, rows: np.ndarray) -> numpy_towers.ItemContent:
        """Rows with their content rows from the feature tables (the numpy towers' input)."""
        return numpy_towers.ItemContent(rows, self.item_tokens[rows], self.item_cats[rows], self.item_creator[rows],
                                        self.item_nums[rows])

    def _item_base(
        self, rows: np.ndarray, id_keep: torch.Tensor | None = None, id_trainable: int | None = None
    ) -> torch.Tensor:
        c = self.item_content(rows)
        return self.model.item_base(self._t(c.rows), self._t(c.tokens), self._t(c.cats), self._t(c.creator),
                                    self._t(c.nums), id_keep, id_trainable)

    def _user_inputs(
        self, user_rows: np.ndarray, hist: np.ndarray, contexts: Sequence[Mapping[str, object]] | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """History rows -> (U,) distinct item rows, (B, W) positions into them, (B, W) valid, (B, F) features."""
        # A row the item tables do not hold yet (an event shown to serving before its train step
        # grew them) counts as padding until then.
        valid = (hist >= 0) & (hist < self.item_capacity())
        # Histories are most recent first and -1 padded at the end: drop the columns no user in
        # the batch fills (the pooling is the same; short histories no longer cost a full L).
        filled = np.flatnonzero(valid.any(0)) if len(hist) else np.zeros(0, dtype=np.int64)
        width = int(filled[-1]) + 1 if len(filled) else 1
        hist, valid = hist[:, :width], valid[:, :width]
        rows = np.where(valid, hist, 0)
        uniq = np.unique(rows)  # and positions by search: 7 us against 11 for return_inverse
        inv = np.searchsorted(uniq, rows)
        feats = self.user_feats[user_rows]
        if contexts is not None:
            ctx = np.stack([
                encode_features(c, "c:", buckets=self.cfg.feat_buckets, limit=self.cfg.max_feats) for c in contexts
            ])
            feats = np.concatenate([feats, ctx], axis=1)
        return uniq, inv, valid, feats

    def _user_vectors(
        self, user_rows: np.ndarray, hist: np.ndarray, contexts: Sequence[Mapping[str, object]] | None
    ) -> torch.Tensor:
        """(B,) user rows, (B, L) history rows (most recent first, -1 padded) -> (B, D)."""
        uniq, inv, valid, feats = self._user_inputs(user_rows, hist, contexts)
        vecs = self.model.item_out(self._item_base(uniq))  # (U, D): the item tower's own embeddings
        inv_t, valid_t = self._t(inv), self._t(valid)
        pooled = self.model.pool_history(vecs, inv_t, valid_t)
        recent = self.model.pool_recent(vecs, inv_t, valid_t)
        return self.model.user_out(self._t(user_rows), pooled, self._t(feats), recent)

    # ----- public API --------------------------------------------------------------------
    def learn_batch(
        self,
        user_rows: np.ndarray,
        item_rows: np.ndarray,
        weights: np.ndarray | None = None,
        contexts: Sequence[Mapping[str, object]] | None = None,
    ) -> float:
        """Incremental training on a micro-batch (B,) of (user, item) positives; returns the mean loss.

        Every event is trained with its user's history as it was just before the event
        (snapshots from ``observe``, or computed here and appended), never with itself in it.
        """
        b = len(user_rows)
        if b == 0:
            return 0.0
        self.ensure_users(int(user_rows.max()))
        self.ensure_items(int(item_rows.max()))
        cfg = self.cfg
        w = np.ones(b, dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
        hist = self._histories_for(user_rows, item_rows)
        self.freq.update(item_rows)
        np.add.at(self.item_count, item_rows, 1)
        losses = []
        steps = max(cfg.steps_per_batch, 1) if b <= cfg.single_step_above else 1
        for _ in range(steps):
            u, i, ww, h = user_rows, item_rows, w, hist
            ctx = contexts
            if cfg.replay_per_step > 0 and self.replay_n > 0:
                n_res = min(self.replay_n, len(self.replay_users))
                # As many replayed as new events (at most replay_per_step): with small live batches a
                # fixed 512 would drown the fresh events in old ones.
                n_pick = min(cfg.replay_per_step, int(np.ceil(cfg.replay_ratio * b)), n_res)
                pick = self.rng.integers(0, n_res, size=n_pick)
                u = np.concatenate([u, self.replay_users[pick]])
                i = np.concatenate([i, self.replay_items[pick]])
                ww = np.concatenate([ww, self.replay_weights[pick]])
                h = np.concatenate([h, self.replay_hist[pick]])
                ctx = None if contexts is None else [*contexts, *({} for _ in pick)]
            losses.append(self._step(u, i, ww, h, ctx))
        self._remember(user_rows, item_rows, w, hist)
        return float(np.mean(losses))

    def _remember(self, user_rows: np.ndarray, item_rows: np.ndarray, w: np.ndarray, hist: np.ndarray) -> None:
        """Reservoir sampling (Vitter's algorithm R) of events for replay, vectorised over the batch."""
        cap = len(self.replay_users)
        if cap == 0:
            return
        n = self.replay_n + np.arange(len(user_rows))
        slots = np.where(n < cap, n, self.rng.integers(0, n + 1))
        keep = slots < cap  # a slot drawn twice keeps the later event, as the sequential algorithm would
        s = slots[keep]
        self.replay_users[s], self.replay_items[s] = user_rows[keep], item_rows[keep]
        self.replay_weights[s], self.replay_hist[s] = w[keep], hist[keep]
        self.replay_n += len(user_rows)

    def _step(
        self,
        user_rows: np.ndarray,
        item_rows: np.ndarray,
        w: np.ndarray,
        hist: np.ndarray,
        contexts: Sequence[Mapping[str, object]] | None,
    ) -> float:
        """One sampled-softmax step: (B,) positives vs in-batch + uniform negatives."""
        cfg = self.cfg
        b = len(user_rows)
        live = np.flatnonzero(self.item_live)
        m = min(cfg.uniform_negatives, len(live))
        negs = live[self.rng.integers(0, len(live), size=m)] if m > 0 else np.zeros(0, dtype=np.int64)
        cand = np.concatenate([item_rows, negs])
        keep = (self.rng.random(len(cand)) >= cfg.id_dropout).astype(np.float32)
        n_id = None if cfg.negative_id_grad else b
        items = self.model.item_out(self._item_base(cand, self._t(keep), n_id))  # (B+M, D)
        users = self._user_vectors(user_rows, hist, contexts)  # (B, D)
        scaled = users * self.model.inv_temperature()  # 1/T on the (B, D) side
        correction = np.zeros(len(cand), dtype=np.float32)
        if cfg.logq:
            correction[:b] = self.freq.log_prob(item_rows)
            if m > 0:
                correction[b:] = np.log(m / len(live))
        correction *= cfg.logq_strength
        wt = self._t(w)
        # In-batch negatives within blocks of rows: a block's rows see the block's positives and all
        # uniform negatives, so a step costs O(B) rather than O(B^2) once B exceeds the block.
        n_blocks = max(-(-b // cfg.in_batch_block), 1) if cfg.in_batch_block > 0 else 1
        bounds = np.linspace(0, b, n_blocks + 1).astype(np.int64)
        total = torch.zeros((), device=self.device)
        for r0, r1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            cols = np.r_[r0:r1, b : b + m] if n_blocks > 1 else np.arange(b + m)
            block_items = items if n_blocks == 1 else items[self._t(cols)]
            logits = scaled[r0:r1] @ block_items.T - self._t(correction[cols])  # (rows, block + M)
            # Accidental hits: the positive item elsewhere in the candidates, and (optionally) other
            # items this user took in the batch, which are positives for the row, not negatives.
            rows_items, rows_users = item_rows[r0:r1], user_rows[r0:r1]
            hit = cand[cols][None, :] == rows_items[:, None]
            if cfg.mask_same_user:
                hit[:, : r1 - r0] |= rows_users[None, :] == rows_users[:, None]
            diag = np.arange(r1 - r0)
            hit[diag, diag] = False
            logits = logits.masked_fill(self._t(hit), float("-inf"))
            total = total + (F.cross_entropy(logits, self._t(diag), reduction="none") * wt[r0:r1]).sum()
        loss = total / wt.sum().clamp(min=1e-6)
        burn = max(0.0, 1.0 - self.steps / max(cfg.lr_burn_in_steps, 1))
        scale = 1.0 + (cfg.lr_burn_in_factor - 1.0) * burn
        for opt, lr in ((self.opt_sparse, cfg.sparse_lr), (self.opt_dense, cfg.dense_lr)):
            for group in opt.param_groups:
                group["lr"] = lr * (scale if group.get("burn_in", True) else 1.0)
        self.opt_sparse.zero_grad(set_to_none=True)
        self.opt_dense.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.opt_sparse.step()  # type: ignore[no-untyped-call]
        self.opt_dense.step()
        self.steps += 1
        return float(loss.detach())

    def push_history(self, user_rows: np.ndarray, item_rows: np.ndarray) -> None:
        """Append items to users' recent-item rings (in event order)."""
        self.ensure_users(int(user_rows.max()))
        n_hist = self.cfg.history_len
        with self.history_lock:
            for u, i in zip(user_rows.tolist(), item_rows.tolist()):
                self.user_hist[u, self.user_hist_n[u] % n_hist] = i
                self.user_hist_n[u] += 1

    def exploration_bonus(self, rows: np.ndarray) -> np.ndarray:
        """(N,) -> (N,) optimism for items with few interactions: ``bonus / (1 + count) ** power``,
        and none from ``explore_until`` interactions on (when it is not 0).

        A new item's id embedding has not been trained yet, so its score is uncertain and,
        next to items with thousands of updates, biased low; this UCB-style bonus lets items
        that content places near the user into the list until interactions speak for them.
        An item that reaches ``explore_until`` is in the batch that takes it there, so its
        vector is re-embedded, without the bonus, by that batch's step.
        """
        cfg = self.cfg
        return exploration_bonus(self.item_count[rows], cfg.explore_bonus, cfg.explore_power, cfg.explore_until)

    @torch.no_grad()
    def embed_items(self, rows: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """(N,) item rows -> (N, D) float32, unit norm: ``[sqrt(1 - b^2) * v, b]``, b the exploration bonus.

        With users ``[u, 1] / sqrt(2)``, inner product ranks by ``sqrt(1 - b^2) * cos(u, v) + b``.
        """
        if len(rows) == 0:
            return np.zeros((0, self.cfg.dim), dtype=np.float32)
        self.ensure_items(int(rows.max()))
        if self.device.type == "cpu" and len(rows) <= NUMPY_ITEMS_MAX:  # e.g. a live item batch
            vecs = numpy_towers.item_vectors(self.model, self.item_content(rows))
        else:
            out = [self.model.item_out(self._item_base(rows[s : s + chunk])).cpu().numpy()
                   for s in range(0, len(rows), chunk)]
            vecs = np.concatenate(out).astype(np.float32, copy=False)
        bonus = np.clip(self.exploration_bonus(rows), 0.0, 0.99)[:, None]
        # Unit norm kept: the bonus tilts the vector towards the users' constant coordinate.
        return np.concatenate([vecs * np.sqrt(1.0 - bonus**2), bonus], axis=1)

    def item_capacity(self) -> int:
        """Item rows ``set_items``/``embed_items`` can use without growing anything."""
        return min(self.item_tokens.shape[0], self.model.item_id.capacity)

    def user_capacity(self) -> int:
        """Rows ``embed_users`` can read without growing anything (tables grow before the id table)."""
        return min(self.user_feats.shape[0], self.model.user_id.capacity)

    def embed_users(self, user_rows: np.ndarray, contexts: Sequence[Mapping[str, object]] | None = None) -> np.ndarray:
        """(B,) user rows -> (B, D) float32, unit norm: ``[u, 1] / sqrt(2)`` (the last is the bias channel)."""
        if len(user_rows) == 0:
            return np.zeros((0, self.cfg.dim), dtype=np.float32)
        self.ensure_users(int(user_rows.max()))
        hist = self._ordered_history(user_rows)
        if self.device.type == "cpu":  # the same maths without PyTorch's per-call cost (towers.numpy_towers)
            uniq, inv, valid, feats = self._user_inputs(user_rows, hist, contexts)
            vecs = numpy_towers.user_vectors(self.model, self.item_content(uniq), inv, valid, user_rows, feats)
        else:
            with torch.no_grad():  # not on the numpy path: entering it costs a query ~10 us
                vecs = self._user_vectors(user_rows, hist, contexts).cpu().numpy().astype(np.float32, copy=False)
        half = np.float32(np.sqrt(0.5))
        return np.concatenate([vecs * half, np.full((len(vecs), 1), half, dtype=np.float32)], axis=1)

    # ----- persistence ---------------------------------------------------------------------
    def state_snapshot(self) -> dict[str, Any]:
        """A copy of the whole training state (tensors cloned, arrays copied): cheap enough to take
        under the engine lock; ``write_state`` serialises it later, off the training thread."""
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "opt_sparse": self.opt_sparse.state_dict(),
            "opt_dense": self.opt_dense.state_dict(),
            "tables": {
                name: getattr(self, name)
                for name in ("item_tokens", "item_cats", "item_creator", "item_nums", "item_live", "item_count",
                             "user_feats", "user_hist", "user_hist_n",
                             "replay_users", "replay_items", "replay_weights", "replay_hist", "replay_n")
            },
            "freq": (self.freq.last, self.freq.gap, self.freq.step),
            "steps": self.steps,
            # Events shown to serving (history) but not learned yet: their pre-event snapshots.
            "observed": {key: list(q) for key, q in self._observed.items()},
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }
        copied: dict[str, Any] = _copy_tree(state)
        return copied

    @staticmethod
    def write_state(state: dict[str, Any], f: BinaryIO) -> None:
        """Serialise a ``state_snapshot`` into a file: at 1M items the bytes are ~1.5 GB, which
        are never held in memory this way (a checkpoint streams them to disk)."""
        torch.save(state, f)

    def state_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.write_state(self.state_snapshot(), buf)
        return buf.getvalue()

    def load_state_bytes(self, blob: bytes) -> None:
        state = torch.load(io.BytesIO(blob), map_location=self.device, weights_only=False)
        tables = state["tables"]
        for name, arr in tables.items():
            setattr(self, name, _as_array(arr))
        self.model.item_id.weight = nn.Parameter(torch.empty_like(state["model"]["item_id.weight"]))
        self.model.user_id.weight = nn.Parameter(torch.empty_like(state["model"]["user_id.weight"]))
        self.model.load_state_dict(state["model"])
        self._build_optimizers()
        self.opt_sparse.load_state_dict(state["opt_sparse"])
        self.opt_dense.load_state_dict(state["opt_dense"])
        last, gap, self.freq.step = state["freq"]
        self.freq.last, self.freq.gap = _as_array(last), _as_array(gap)
        self.steps = state["steps"]
        self._observed = {tuple(k): deque(_as_array(x) for x in v)
                          for k, v in state.get("observed", {}).items()}
        self._n_observed = sum(len(q) for q in self._observed.values())
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
