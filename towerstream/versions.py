"""Model versions as the trainer publishes them: a frozen copy of what serving needs.

Why a copy: a version must stay the same while it is published (the sweep of every item takes
seconds) and afterwards, while item upserts are published with it, but the trainer's weights
change in place at every train step. ``freeze`` copies them between two steps, under the engine
lock; everything else here works on the copy, with no lock and no Kafka (``streams.publisher``
is the I/O around it).

What a replica gets (``towerstream.published``): the user tower's weights, the user id table
and profile features, the index's coarse quantizer (the model payload), and every item's
vector at that version. An item the version did not know (created since it was frozen) is
embedded from its content alone: a zero id embedding, since the version has no row for it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from towers import numpy_towers
from towerstream.published import ItemVector

if TYPE_CHECKING:
    from towerstream.engine import Engine

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

#: Arrays of ``numpy_towers.Weights`` the user tower reads, by their names in the model payload.
_USER_ARRAYS = {"user_id": "user_id", "feats": "feats", "pos_logit": "pos_logit", "recent_logit": "recent_logit",
                "user_w1": "user_w1", "user_b1": "user_b1", "user_w2": "user_w2", "user_b2": "user_b2"}


@dataclass(frozen=True)
class FrozenVersion:
    """One version's weights (copies), and what it knew when it was taken.

    ``weights.item_id`` holds the ``known_items`` rows the version knew plus one zero row at the
    end, which items created since then use (``embed``).
    """

    version: int
    weights: numpy_towers.Weights
    known_items: int
    user_ids: list[str]
    #: (U, max_feats) profile feature buckets of ``user_ids``, 0 = none.
    user_feats: I64
    #: (nlist, dim) coarse quantizer of the trainer's IVF index; 0 rows while it is exact.
    centroids: F32
    dim: int
    history_len: int
    feat_buckets: int
    max_feats: int
    seen_limit: int
    nprobe: int
    taken_ms: int
    #: Interactions trained into the version (the engine's ``trained_in_model``).
    trained: int
    #: The engine's ``model_version`` (train steps) when it was taken: has it trained since?
    steps: int

    def model_payload(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The arrays and meta of ``towerstream.published.pack_model`` (see the issue's contract)."""
        w = self.weights
        arrays: dict[str, np.ndarray] = {name: getattr(w, field) for name, field in _USER_ARRAYS.items()}
        arrays["user_ids"] = np.frombuffer(json.dumps(self.user_ids).encode(), dtype=np.uint8)
        arrays["user_feats"] = self.user_feats
        arrays["centroids"] = self.centroids
        meta = {"version": self.version, "dim": self.dim, "history_len": self.history_len,
                "recent_len": int(len(w.recent_logit)), "feat_buckets": self.feat_buckets,
                "max_feats": self.max_feats, "seen_limit": self.seen_limit, "taken_ms": self.taken_ms,
                "trained": self.trained, "nprobe": self.nprobe}
        return arrays, meta

    def embed(self, content: numpy_towers.ItemContent, bonus: F32) -> F32:
        """Items' content (rows as the trainer's) + exploration bonus (N,) -> (N, dim) vectors at this version.

        As ``TwoTowerTrainer.embed_items``: ``[sqrt(1 - b^2) * v, b]``, ``v`` the item tower's unit output.
        """
        if len(content.rows) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = np.where(content.rows < self.known_items, content.rows, self.known_items)
        vecs = numpy_towers.item_vectors_with(self.weights, content._replace(rows=rows))
        b = np.clip(np.asarray(bonus, dtype=np.float32), 0.0, 0.99)[:, None]
        out: F32 = np.concatenate([vecs * np.sqrt(1.0 - b**2), b], axis=1).astype(np.float32, copy=False)
        return out


def freeze(engine: Engine, version: int) -> FrozenVersion:
    """Copy what version ``version`` serves, between two train steps (under the engine lock).

    Copies, not views: the optimizers update the live weights in place. At 100k items and users
    the copy is a few tens of MB (mostly the two id tables), a short hold of the lock.
    """
    trainer = engine.trainer
    cfg = trainer.cfg
    with engine.lock:
        live = numpy_towers.weights(trainer.model)
        known_items = min(len(engine.items), live.item_id.shape[0])
        n_users = min(len(engine.users), trainer.user_capacity())
        copied = {name: np.array(arr, dtype=arr.dtype, copy=True) for name, arr in live._asdict().items()
                  if name not in ("item_id", "user_id")}
        item_id = np.zeros((known_items + 1, live.item_id.shape[1]), dtype=np.float32)
        item_id[:known_items] = live.item_id[:known_items]
        user_id = np.array(live.user_id[:n_users], dtype=np.float32, copy=True)
        user_feats = np.array(trainer.user_feats[:n_users], dtype=np.int64, copy=True)
        steps, trained = int(engine.model_version), int(engine.trained_in_model)
    weights = type(live)(item_id=item_id, user_id=user_id, **copied)
    return FrozenVersion(
        version=version, weights=weights, known_items=known_items, user_ids=engine.users.external(np.arange(n_users)),
        user_feats=user_feats, centroids=engine.index.centroids(), dim=cfg.dim, history_len=cfg.history_len,
        feat_buckets=cfg.feat_buckets, max_feats=cfg.max_feats, seen_limit=engine.config.seen_limit,
        nprobe=int(engine.index.nprobe), taken_ms=int(time.time() * 1000), trained=trained, steps=steps,
    )


@dataclass(frozen=True)
class ItemBatch:
    """Live items read from the engine at one moment: what embedding and publishing them needs."""

    ids: list[str]
    content: numpy_towers.ItemContent
    bonus: F32
    #: (categories, creator, title) per item, from its stored record.
    shown: list[tuple[tuple[str, ...], str | None, str | None]]

    def vectors(self, frozen: FrozenVersion) -> list[ItemVector]:
        vecs = frozen.embed(self.content, self.bonus)
        return [ItemVector(item_id, frozen.version, vecs[n], *self.shown[n]) for n, item_id in enumerate(self.ids)]


def read_items(engine: Engine, rows: I64) -> ItemBatch:
    """The live ones of ``rows`` with their content, bonus and shown fields (items lock held briefly).

    Content and the live flag are read together under the items lock, so an upsert or delete
    applied after this read is published after what is built from it.
    """
    trainer = engine.trainer
    with engine.items_lock:
        live = engine.live
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[(rows < len(live)) & (rows < trainer.item_capacity())]
        rows = rows[live[rows]]
        content = trainer.item_content(rows)
        content = numpy_towers.ItemContent(*(np.array(a, copy=True) for a in content))
        bonus = trainer.exploration_bonus(rows).astype(np.float32)
        ids = engine.items.external(rows)
    # An item deleted since the live read has no fields: it is published bare, then its tombstone.
    shown = [(tuple(sh[1]), sh[2], sh[0]) if sh is not None else ((), None, None) for sh in engine.item_shown(ids)]
    return ItemBatch(ids, content, bonus, shown)


def live_rows(engine: Engine) -> I64:
    """Every live item row now (the sweep's list; an item created later is published as an upsert)."""
    with engine.items_lock:
        out: I64 = np.flatnonzero(engine.live).astype(np.int64)
    return out
