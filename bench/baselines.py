"""Streaming baselines for the quality benchmark, on the evaluation's ``StreamingRecommender`` protocol.

They are what a user could run instead of towerstream, so each is given its best usual form:

* ``Popularity``: interaction counts so far.
* ``EASE``: Steck (2019) closed form on the binary user-item matrix, refit every 5,000 events;
  user rows are always current, the item-item weights lag by at most one refit.
* ``CoOccurrence``: online item-to-item co-occurrence: pairs of items the same user took within
  ``window`` positions of each other are counted, and the catalog is scored from the user's last
  ``last`` items, decayed by position and normalised by both items' counts. No training.
* ``RiverMF``: river's ``reco.FunkMF`` (or ``BiasedMF``) trained per event on the positive
  (target 1) and ``n_negatives`` items drawn uniformly from the catalog (target 0). Ranking uses
  river's own factor tables as one matrix product instead of ``predict_one`` per item.

All of them update per event (``observe``), their usual and best form; ``learn`` (the
micro-batch step) does nothing. None of them uses item content: an item with no interactions cannot be ranked by any of them.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from towerstream.events import Interaction, ItemDelete, ItemUpsert, UserProfile


class _Catalog:
    """Item id <-> row, per-user seen rows; shared bookkeeping of the baselines."""

    def __init__(self) -> None:
        self.row: dict[str, int] = {}
        self.ids: list[str] = []
        self.live: list[bool] = []
        self.seen: dict[str, set[int]] = defaultdict(set)

    def add(self, item_id: str) -> int:
        r = self.row.get(item_id)
        if r is None:
            r = self.row[item_id] = len(self.ids)
            self.ids.append(item_id)
            self.live.append(True)
        else:
            self.live[r] = True
        return r

    def delete(self, item_id: str) -> None:
        r = self.row.get(item_id)
        if r is not None:
            self.live[r] = False

    def top(self, scores: np.ndarray, user_id: str, k: int, exclude_seen: bool) -> list[tuple[str, float]]:
        """Top-k of ``scores`` (n_items,) over live, (optionally) unseen items."""
        s = scores.astype(np.float64, copy=True)
        s[~np.asarray(self.live, dtype=bool)] = -np.inf
        if exclude_seen and self.seen.get(user_id):
            s[list(self.seen[user_id])] = -np.inf
        k = min(k, len(s))
        if k <= 0:
            return []
        part = np.argpartition(-s, k - 1)[:k]
        part = part[np.lexsort((part, -s[part]))]  # ties: lower row (older item) first, deterministic
        return [(self.ids[r], float(s[r])) for r in part if np.isfinite(s[r])]


class _Base:
    """Item events feed the catalog; baselines that ignore content and profiles need nothing else."""

    name = "base"

    def __init__(self) -> None:
        self.cat = _Catalog()

    def apply_items(self, events: Sequence[ItemUpsert | ItemDelete]) -> None:
        # Content-free baselines cannot rank an item before its first interaction; they only
        # honour deletes. (Adding the row here would only give it a zero score.)
        for ev in events:
            if isinstance(ev, ItemDelete):
                self.cat.delete(ev.item_id)

    def apply_users(self, events: Sequence[UserProfile]) -> None:
        pass

    def _scores(self, user_ids: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def observe(self, events: Sequence[Interaction]) -> None:
        raise NotImplementedError

    def learn(self, events: Sequence[Interaction]) -> None:
        """Nothing to do per micro-batch: every event was learned in ``observe``."""

    def recommend_many(self, user_ids: Sequence[str], k: int, *, exclude_seen: bool = True) -> list[list[tuple[str, float]]]:
        if not self.cat.ids:
            return [[] for _ in user_ids]
        scores = self._scores(user_ids)
        return [self.cat.top(scores[j], u, k, exclude_seen) for j, u in enumerate(user_ids)]


class Popularity(_Base):
    name = "popularity"

    def __init__(self) -> None:
        super().__init__()
        self.counts = np.zeros(0)

    def observe(self, events: Sequence[Interaction]) -> None:
        for ev in events:
            r = self.cat.add(ev.item_id)
            if r >= len(self.counts):
                self.counts = np.concatenate([self.counts, np.zeros(max(r + 1 - len(self.counts), 1024))])
            self.counts[r] += 1
            self.cat.seen[ev.user_id].add(r)

    def _scores(self, user_ids: Sequence[str]) -> np.ndarray:
        return np.broadcast_to(self.counts[: len(self.cat.ids)], (len(user_ids), len(self.cat.ids)))


class EASE(_Base):
    """Embarrassingly Shallow Autoencoder; ``B = I - P / diag(P)``, ``P = (X'X + lambda I)^-1``."""

    name = "ease"

    def __init__(self, lam: float = 400.0, refit_every: int = 5000) -> None:
        super().__init__()
        self.lam, self.refit_every = lam, refit_every
        self.pairs: list[tuple[int, int]] = []
        self.users: dict[str, int] = {}
        self.B = np.zeros((0, 0), dtype=np.float32)
        self.since_fit = 0

    def observe(self, events: Sequence[Interaction]) -> None:
        for ev in events:
            r = self.cat.add(ev.item_id)
            u = self.users.setdefault(ev.user_id, len(self.users))
            if r not in self.cat.seen[ev.user_id]:
                self.pairs.append((u, r))
                self.cat.seen[ev.user_id].add(r)
            self.since_fit += 1
            if self.since_fit >= self.refit_every or not len(self.B):
                self._fit()

    def _fit(self) -> None:
        n = len(self.cat.ids)
        X = np.zeros((len(self.users), n), dtype=np.float64)
        uu, ii = np.asarray(self.pairs).T
        X[uu, ii] = 1.0
        G = X.T @ X
        G[np.diag_indices(n)] += self.lam
        P = np.linalg.inv(G)
        B = -P / np.diag(P)
        B[np.diag_indices(n)] = 0.0
        self.B = B.astype(np.float32)
        self.since_fit = 0

    def _scores(self, user_ids: Sequence[str]) -> np.ndarray:
        n, m = len(self.cat.ids), len(self.B)
        X = np.zeros((len(user_ids), m), dtype=np.float32)
        for j, u in enumerate(user_ids):
            rows = [r for r in self.cat.seen.get(u, ()) if r < m]
            X[j, rows] = 1.0
        out = np.zeros((len(user_ids), n), dtype=np.float32)
        out[:, :m] = X @ self.B
        return out


class RiverMF(_Base):
    """river's FunkMF / BiasedMF, learned one event at a time with sampled negatives."""

    def __init__(
        self,
        kind: str = "funk",
        n_factors: int = 64,
        n_negatives: int = 32,
        lr: float = 0.05,
        l2: float = 0.0,
        seed: int = 0,
    ) -> None:
        from river import optim, reco

        super().__init__()
        self.kind, self.n_negatives = kind, n_negatives
        self.name = f"river {'FunkMF' if kind == 'funk' else 'BiasedMF'}"
        self.rng = np.random.default_rng(seed)
        init = optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed)
        self.model: Any
        if kind == "funk":
            self.model = reco.FunkMF(n_factors=n_factors, optimizer=optim.SGD(lr), l2=l2, initializer=init, seed=seed)
        else:
            self.model = reco.BiasedMF(
                n_factors=n_factors, bias_optimizer=optim.SGD(lr), latent_optimizer=optim.SGD(lr),
                l2_bias=l2, l2_latent=l2, latent_initializer=init, seed=seed,
            )  # fmt: skip

    def observe(self, events: Sequence[Interaction]) -> None:
        learn_one = self.model.learn_one
        for ev in events:
            r = self.cat.add(ev.item_id)
            self.cat.seen[ev.user_id].add(r)
            learn_one(ev.user_id, ev.item_id, 1.0)
            negs = self.rng.integers(0, len(self.cat.ids), size=self.n_negatives)
            for n in negs.tolist():
                learn_one(ev.user_id, self.cat.ids[n], 0.0)

    def _scores(self, user_ids: Sequence[str]) -> np.ndarray:
        m = self.model
        zeros = np.zeros(self.model.n_factors)
        # Read the tables directly; indexing the defaultdicts would create entries as a side effect.
        I = np.stack([m.i_latents.get(i, zeros) for i in self.cat.ids])
        U = np.stack([m.u_latents.get(u, zeros) for u in user_ids])
        s = U @ I.T
        if self.kind != "funk":
            s += np.array([m.i_biases.get(i, 0.0) for i in self.cat.ids])[None, :]
            s += np.array([m.u_biases.get(u, 0.0) for u in user_ids])[:, None] + m.global_mean.get()
        return s


class CoOccurrence(_Base):
    """Item-to-item co-occurrence, updated per event.

    ``C[i, j]`` counts the times one user took ``i`` and ``j`` within ``window`` positions of each
    other (either order); a user's last ``last`` items ``h_1`` (most recent) .. ``h_L`` score item
    ``j`` as ``sum_k decay**(k-1) * C[h_k, j] / (n[h_k]**alpha * n[j]**beta)``, ``n`` the items'
    interaction counts. ``C`` is a dense matrix: fine for a benchmark catalog of thousands of items.
    """

    name = "co-occurrence"

    def __init__(self, window: int = 10, last: int = 10, decay: float = 0.8, alpha: float = 0.5,
                 beta: float = 0.2) -> None:
        super().__init__()
        self.window, self.last, self.decay, self.alpha, self.beta = window, last, decay, alpha, beta
        self.C = np.zeros((0, 0), dtype=np.float64)
        self.n = np.zeros(0, dtype=np.float64)
        self.recent: dict[str, deque[int]] = defaultdict(lambda: deque(maxlen=max(window, last)))

    def _ensure(self, r: int) -> None:
        if r < len(self.n):
            return
        cap = max(r + 1, 2 * len(self.n), 256)
        C = np.zeros((cap, cap), dtype=np.float64)
        C[: len(self.n), : len(self.n)] = self.C
        self.C, self.n = C, np.concatenate([self.n, np.zeros(cap - len(self.n))])

    def observe(self, events: Sequence[Interaction]) -> None:
        for ev in events:
            r = self.cat.add(ev.item_id)
            self._ensure(r)
            hist = self.recent[ev.user_id]
            near = [h for h in list(hist)[-self.window:] if h != r]  # the deque is oldest first
            if near:
                np.add.at(self.C[r], near, 1.0)
                np.add.at(self.C[:, r], near, 1.0)
            self.n[r] += 1
            hist.append(r)
            self.cat.seen[ev.user_id].add(r)

    def _scores(self, user_ids: Sequence[str]) -> np.ndarray:
        m = len(self.cat.ids)
        n = np.maximum(self.n[:m], 1.0)
        out = np.zeros((len(user_ids), m), dtype=np.float64)
        for j, u in enumerate(user_ids):
            hist = list(self.recent.get(u, ()))[::-1][: self.last]  # most recent first
            if hist:
                w = self.decay ** np.arange(len(hist)) / n[hist] ** self.alpha
                out[j] = w @ self.C[hist, :m]
        out /= n[None, :] ** self.beta
        return out
