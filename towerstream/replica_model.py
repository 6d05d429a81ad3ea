"""One published model version as a replica serves it: the user tower and what feeds it.

Why a module of its own: the payload is checked once, here, where it enters the replica (shapes,
a forward pass that must give finite numbers), so a malformed version is refused whole instead of
failing queries after the switch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from towerstream.published import unpack_model
from towers.features import encode_features
from towers.numpy_towers import UserWeights, user_vectors_from

__all__ = ["ServingModel", "item_tower_output"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

_HALF = np.float32(np.sqrt(0.5))
_REQUIRED = ("user_ids", "user_id", "user_feats", "feats", "pos_logit", "recent_logit",
             "user_w1", "user_b1", "user_w2", "user_b2", "centroids")


def item_tower_output(x: F32) -> F32:
    """Published item vectors ``(N, D)`` ``[sqrt(1 - b^2) * v, b]`` -> the item tower's unit outputs ``v`` ``(N, D - 1)``.

    History pooling needs ``v`` itself (the trainer pools the tower's outputs, not the index's
    tilted vectors); the bonus ``b`` is at most 0.99, so the division is well conditioned.
    """
    b = x[:, -1:].astype(np.float64)
    out: F32 = (x[:, :-1] / np.sqrt(1.0 - b * b)).astype(np.float32)
    return out


@dataclass(frozen=True, eq=False)
class ServingModel:
    """The user side of one version. ``weights.user_id`` and ``user_feats`` carry one extra zero row
    at the end (``unknown_row``): a user the version does not know gets a zero id embedding and no
    profile features, as the contract says."""

    version: int
    dim: int
    weights: UserWeights
    user_rows: Mapping[str, int]
    user_feats: I64
    #: ``(nlist, dim)`` coarse quantizer of the version's IVF index; 0 rows: an exact flat index.
    centroids: F32
    history_len: int
    recent_len: int
    feat_buckets: int
    max_feats: int
    seen_limit: int
    nprobe: int
    meta: Mapping[str, Any]

    @property
    def unknown_row(self) -> int:
        return len(self.user_feats) - 1

    @classmethod
    def from_payload(cls, version: int, payload: bytes) -> ServingModel:
        """Parse and check a joined payload; ``ValueError`` says what is wrong with it."""
        try:
            arrays, meta = unpack_model(payload)
        except Exception as exc:  # a truncated zip, bad JSON: all mean "not a payload"
            raise ValueError(f"model payload unreadable: {exc}") from exc
        missing = [k for k in _REQUIRED if k not in arrays]
        if missing:
            raise ValueError(f"model payload lacks {missing}")
        try:
            dim, hist_len = int(meta["dim"]), int(meta["history_len"])
            recent_len, buckets, max_feats = int(meta["recent_len"]), int(meta["feat_buckets"]), int(meta["max_feats"])
            seen_limit, nprobe = int(meta["seen_limit"]), int(meta.get("nprobe") or 16)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"model meta incomplete: {exc}") from exc
        if int(meta.get("version", version)) != version:
            raise ValueError(f"payload of version {meta.get('version')} in parts of version {version}")
        dm = dim - 1
        user_ids = json.loads(arrays["user_ids"].tobytes().decode() or "[]")
        if not isinstance(user_ids, list) or not all(isinstance(u, str) for u in user_ids):
            raise ValueError("user_ids is not a JSON list of strings")
        n_users = len(user_ids)
        user_id = np.asarray(arrays["user_id"], dtype=np.float32).reshape(-1, dm) if n_users else \
            np.zeros((0, dm), dtype=np.float32)
        user_feats = np.asarray(arrays["user_feats"], dtype=np.int64)
        if user_feats.size == 0:
            user_feats = np.zeros((n_users, max_feats), dtype=np.int64)
        if user_id.shape != (n_users, dm) or user_feats.shape != (n_users, max_feats):
            raise ValueError(f"user tables {user_id.shape}, {user_feats.shape} for {n_users} users, "
                             f"dim {dim}, max_feats {max_feats}")
        centroids = np.asarray(arrays["centroids"], dtype=np.float32)
        centroids = centroids.reshape(-1, dim) if centroids.size else np.zeros((0, dim), dtype=np.float32)
        feats = np.asarray(arrays["feats"], dtype=np.float32)
        if feats.shape != (buckets, dm):
            raise ValueError(f"feats {feats.shape}, expected {(buckets, dm)}")
        if int(user_feats.max(initial=0)) >= buckets or int(user_feats.min(initial=0)) < 0:
            raise ValueError("user_feats holds a bucket outside feats")
        weights = UserWeights(
            user_id=np.concatenate([user_id, np.zeros((1, dm), dtype=np.float32)]),
            feats=feats,
            pos_logit=np.asarray(arrays["pos_logit"], dtype=np.float32),
            recent_logit=np.asarray(arrays["recent_logit"], dtype=np.float32),
            user_w1=np.asarray(arrays["user_w1"], dtype=np.float32),
            user_b1=np.asarray(arrays["user_b1"], dtype=np.float32),
            user_w2=np.asarray(arrays["user_w2"], dtype=np.float32),
            user_b2=np.asarray(arrays["user_b2"], dtype=np.float32),
        )
        if len(weights.pos_logit) < hist_len or len(weights.recent_logit) != recent_len:
            raise ValueError(f"position logits {len(weights.pos_logit)}, {len(weights.recent_logit)} "
                             f"for history_len {hist_len}, recent_len {recent_len}")
        model = cls(version, dim, weights, {u: n for n, u in enumerate(user_ids)},
                    np.concatenate([user_feats, np.zeros((1, max_feats), dtype=np.int64)]), centroids,
                    hist_len, recent_len, buckets, max_feats, seen_limit, nprobe, dict(meta))
        try:  # the whole forward once, on a full history and a context: shapes that disagree fail here
            probe = model.embed_user(None, [np.eye(1, dim, dtype=np.float32)[0]] * hist_len, {"probe": 1})
        except (ValueError, IndexError) as exc:
            raise ValueError(f"user tower weights do not fit together: {exc}") from exc
        if probe.shape != (dim,) or not np.isfinite(probe).all():
            raise ValueError("user tower gives a non-finite vector")
        return model

    def knows(self, user_id: str) -> bool:
        return user_id in self.user_rows

    def embed_user(
        self, user_id: str | None, history: Sequence[F32 | None], context: Mapping[str, object] | None
    ) -> F32:
        """The user's vector ``(dim,)`` as ``TwoTowerTrainer.embed_users`` gives it: ``[u, 1] / sqrt(2)``.

        ``history``: published item vectors ``(dim,)`` of the user's recent items, most recent
        first (``None``: an item this version's index lacks, counted as padding); only the
        first ``history_len`` are used.
        """
        hist = list(history[: self.history_len])
        present = [x for x in hist if x is not None]
        width = max(len(hist), 1)
        valid = np.zeros((1, width), dtype=bool)
        inv = np.zeros((1, width), dtype=np.int64)
        if present:
            vecs = item_tower_output(np.stack(present).astype(np.float32, copy=False))
            j = 0
            for pos, x in enumerate(hist):
                if x is not None:
                    valid[0, pos], inv[0, pos] = True, j
                    j += 1
        else:
            vecs = np.zeros((1, self.dim - 1), dtype=np.float32)
        row = self.user_rows.get(user_id, self.unknown_row) if user_id is not None else self.unknown_row
        feats = self.user_feats[row : row + 1]
        if context:
            ctx = encode_features(context, "c:", buckets=self.feat_buckets, limit=self.max_feats)
            feats = np.concatenate([feats, ctx[None, :]], axis=1)
        u = user_vectors_from(self.weights, vecs, inv, valid, np.array([row], dtype=np.int64), feats)[0]
        out: F32 = np.concatenate([u * _HALF, np.array([_HALF], dtype=np.float32)]).astype(np.float32)
        return out
