"""An in-memory stand-in for the published topics, written from a real ``TwoTowerTrainer`` the way
the contract says the trainer publishes (model parts, sweep, ``VersionComplete``), for feeding
``towerstream.replica.Replica`` in tests. No Kafka: the replica core never sees Kafka either, only
``(partition, offset, key, value)`` records, which this produces with real offsets per partition.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from towerstream.events import Interaction
from towerstream.published import (
    VERSION_KEY, ItemVector, VersionComplete, encode_item_vector, encode_model_part, pack_model, part_key, split_model,
)
from towers import TowerConfig, TwoTowerTrainer
from towers import numpy_towers
from tests.unit.test_engine import item

Record = tuple[int, int, bytes, "bytes | None"]
ITEM_PARTITIONS = 3


def trainer(n_items: int = 120, n_users: int = 30, steps: int = 6, seed: int = 3) -> TwoTowerTrainer:
    cfg = TowerConfig(dim=24, hidden=32, history_len=12, uniform_negatives=8, seed=seed, device="cpu", recent_len=5)
    tr = TwoTowerTrainer(cfg)
    tr.set_items(np.arange(n_items), [item(i) for i in range(n_items)])
    tr.set_user_features(np.array([1, 2]), [{"country": "fr", "age": 31}, {"plan": "pro"}])
    train(tr, steps, n_users, n_items, seed)
    return tr


def train(tr: TwoTowerTrainer, steps: int, n_users: int, n_items: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        tr.learn_batch(rng.integers(1, n_users, size=48), rng.integers(0, n_items, size=48))


def user_id(row: int) -> str:
    return f"u{row}"


def item_id(row: int) -> str:
    return f"i{row}"


def payload(tr: TwoTowerTrainer, version: int, n_users: int, nlist: int = 0, nprobe: int = 4,
            seen_limit: int = 2000) -> tuple[bytes, np.ndarray]:
    """The contract's model payload from the trainer's arrays; centroids: ``nlist`` of the item vectors."""
    w = numpy_towers.weights(tr.model)
    cfg = tr.cfg
    live = np.flatnonzero(tr.item_live)
    centroids = tr.embed_items(live[:: max(1, len(live) // nlist)][:nlist]) if nlist else np.zeros((0, cfg.dim))
    arrays = {
        "user_ids": np.frombuffer(json.dumps([user_id(r) for r in range(n_users)]).encode(), dtype=np.uint8),
        "user_id": np.array(w.user_id[:n_users], dtype=np.float32),
        "user_feats": np.array(tr.user_feats[:n_users], dtype=np.int64),
        "feats": np.array(w.feats, dtype=np.float32),
        "pos_logit": np.array(w.pos_logit, dtype=np.float32),
        "recent_logit": np.array(w.recent_logit, dtype=np.float32),
        "user_w1": np.array(w.user_w1), "user_b1": np.array(w.user_b1),
        "user_w2": np.array(w.user_w2), "user_b2": np.array(w.user_b2),
        "centroids": np.asarray(centroids, dtype=np.float32),
    }
    meta = {"version": version, "dim": cfg.dim, "history_len": cfg.history_len, "recent_len": cfg.recent_len,
            "feat_buckets": cfg.feat_buckets, "max_feats": cfg.max_feats, "seen_limit": seen_limit,
            "taken_ms": 1, "trained": tr.steps, "nprobe": nprobe}
    return pack_model(arrays, meta), np.asarray(centroids, dtype=np.float32)


def item_partition(key: bytes) -> int:
    return zlib.crc32(key) % ITEM_PARTITIONS


@dataclass
class Log:
    """The ``item-vectors`` (ITEM_PARTITIONS partitions) and ``model`` (one partition) topics."""

    items: list[list[Record]] = field(default_factory=lambda: [[] for _ in range(ITEM_PARTITIONS)])
    model: list[Record] = field(default_factory=list)
    #: version -> item id -> the vector published for it (what the version's index holds).
    vectors: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    def put_item(self, iv: ItemVector | None, key: str) -> None:
        k = key.encode()
        p = item_partition(k)
        self.items[p].append((p, len(self.items[p]), k, encode_item_vector(iv) if iv is not None else None))
        if iv is None:
            for vecs in self.vectors.values():
                vecs.pop(key, None)
        else:
            self.vectors.setdefault(iv.version, {})[key] = iv.vector

    def put_model(self, key: bytes, value: bytes | None) -> None:
        self.model.append((0, len(self.model), key, value))

    def end_offsets(self) -> dict[int, int]:
        return {p: len(recs) for p, recs in enumerate(self.items)}

    def publish(self, tr: TwoTowerTrainer, version: int, n_users: int, *, nlist: int = 0, complete: bool = True,
                part_bytes: int = 4000, **kw: Any) -> None:
        """Parts, then the sweep of every live item, then (``complete``) the ``VersionComplete``."""
        blob, _ = payload(tr, version, n_users, nlist=nlist, **kw)
        parts = split_model(version, blob, part_bytes)
        for part in parts:
            self.put_model(part_key(part.index), encode_model_part(part))
        live = np.flatnonzero(tr.item_live)
        for row, vec in zip(live.tolist(), tr.embed_items(live)):
            self.put_item(item_vector(row, version, vec), item_id(row))
        if complete:
            self.complete(version, len(parts), len(live))

    def complete(self, version: int, parts: int, items: int) -> None:
        self.put_model(VERSION_KEY, VersionComplete(version, parts, self.end_offsets(), items, 1, 2).encode())


def item_vector(row: int, version: int, vec: np.ndarray) -> ItemVector:
    return ItemVector(item_id(row), version, np.asarray(vec, dtype=np.float32), (f"genre{row % 4}",),
                      f"studio{row % 4}", f"title {row}")


def interactions(tr: TwoTowerTrainer, users: range, start: int = 0) -> list[Interaction]:
    """Each user's trainer history as interactions, oldest first, keyed ``u<row>``/``i<row>``."""
    out: list[Interaction] = []
    hist = tr._ordered_history(np.asarray(list(users), dtype=np.int64))
    n = start
    for u, h in zip(users, hist):
        for r in reversed([int(x) for x in h if x >= 0]):
            n += 1
            out.append(Interaction(event_id=f"e{n}", user_id=user_id(u), item_id=item_id(r), kind="click",
                                   ts=1_700_000_000_000 + n))
    return out


def items_digest(ids: Iterable[str]) -> str:
    """The live items' digest as a replica reports it (``items_digest``): the sum of the ids'
    sha256, mod 2**256, written out here rather than taken from the replica's code."""
    total = sum(int.from_bytes(hashlib.sha256(i.encode()).digest(), "big") for i in set(ids))
    return f"{total % (1 << 256):064x}"
