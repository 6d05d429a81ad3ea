"""Generated streams with planted structure, for the demo, tests and benchmarks.

Users belong to taste clusters and mostly interact with items of their cluster;
item titles, categories and creators carry the cluster, so content alone can place
a new item. Part of the catalog appears mid-stream (cold items); optionally tastes
jump to another cluster part-way (a planted drift).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from towerstream.events import Interaction, ItemUpsert, UserProfile
from towerstream.recording import RecordedRecord, record_of

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
_KINDS = ("view", "view", "view", "click", "click", "like", "purchase")


@dataclass(frozen=True)
class StreamSpec:
    users: int = 200
    items: int = 300
    interactions: int = 5000
    clusters: int = 8
    #: Probability that an interaction stays inside the user's cluster.
    affinity: float = 0.85
    #: Fraction of items that are announced mid-stream (cold start), not up front.
    late_items: float = 0.2
    #: Fraction of the stream after which tastes jump to the next cluster (None: never).
    shift_at: float | None = None
    #: Seconds of event time between consecutive interactions.
    spacing_s: float = 1.0
    seed: int = 0
    #: Emit user profile records before the interactions.
    profiles: bool = True
    #: Put in front of every interaction's event id (``e<n>``): a demo run stamps its own, so a
    #: second run into the same worker is new events, not duplicates of the first.
    event_prefix: str = ""


def offset_to_now(now_ms: int | None = None) -> int:
    """Milliseconds that move the generated stream's start (``START``) to now.

    Why: the worker measures freshness (event time -> index upsert) and rejects times more than
    a day ahead; a stream stamped 2024 reads as years of lag. The demo and ``produce generate``
    both shift by this.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return now - int(START.timestamp() * 1000)


def shifted(rec: RecordedRecord, offset_ms: int) -> RecordedRecord:
    """Move a generated record's event time by ``offset_ms`` (value ``ts`` and record timestamp)."""
    if not offset_ms:
        return rec
    value = dict(rec.value) if isinstance(rec.value, dict) else rec.value
    if isinstance(value, dict) and isinstance(value.get("ts"), int):
        value["ts"] += offset_ms
    ts = rec.timestamp + offset_ms if rec.timestamp is not None else None
    return rec.model_copy(update={"value": value, "timestamp": ts})


def item_cluster(item_index: int, clusters: int) -> int:
    return item_index % clusters


def user_cluster(user_index: int, clusters: int) -> int:
    return user_index % clusters


def make_item(i: int, spec: StreamSpec, rng: np.random.Generator, ts: datetime) -> ItemUpsert:
    c = item_cluster(i, spec.clusters)
    words = [f"w{c}x{int(rng.integers(0, 12))}" for _ in range(4)] + [f"n{int(rng.integers(0, 50))}"]
    return ItemUpsert(
        event_id=f"item-{i}-v1",
        item_id=f"i{i}",
        title=" ".join(words[:3]),
        text=" ".join(words),
        categories=[f"genre{c}", f"shelf{int(rng.integers(0, 3))}"],
        numbers={"price": float(round(rng.uniform(1, 100), 2)), "year": float(1990 + c)},
        creator=f"studio{c}",
        ts=ts,
    )


def generate(spec: StreamSpec) -> Iterator[RecordedRecord]:
    """Yield item, user and interaction records in event-time order."""
    rng = np.random.default_rng(spec.seed)
    n_late = int(spec.items * spec.late_items)
    early = list(range(spec.items - n_late))
    late = list(range(spec.items - n_late, spec.items))
    # Late items are announced evenly through the middle 80% of the stream.
    late_at = {
        int(spec.interactions * (0.1 + 0.8 * j / max(1, n_late))): i for j, i in enumerate(late)
    }
    t0 = START.timestamp()

    def at(seconds: float) -> datetime:
        return datetime.fromtimestamp(t0 + seconds, tz=timezone.utc)

    live_by_cluster: dict[int, list[int]] = {c: [] for c in range(spec.clusters)}
    for i in early:
        item = make_item(i, spec, rng, at(0))
        live_by_cluster[item_cluster(i, spec.clusters)].append(i)
        yield record_of("items", item, key=item.item_id, timestamp_ms=int(t0 * 1000))
    if spec.profiles:
        for u in range(spec.users):
            c = user_cluster(u, spec.clusters)
            prof = UserProfile(user_id=f"u{u}", features={"segment": f"s{c}", "age": 20 + c}, ts=at(0))
            yield record_of("users", prof, key=prof.user_id, timestamp_ms=int(t0 * 1000))
    # Zipf-like popularity inside each cluster, so popularity is a real baseline.
    shift_idx = int(spec.interactions * spec.shift_at) if spec.shift_at is not None else None
    for n in range(spec.interactions):
        ts_s = (n + 1) * spec.spacing_s
        if n in late_at:
            i = late_at[n]
            item = make_item(i, spec, rng, at(ts_s))
            live_by_cluster[item_cluster(i, spec.clusters)].append(i)
            yield record_of("items", item, key=item.item_id, timestamp_ms=int((t0 + ts_s) * 1000))
        u = int(rng.integers(0, spec.users))
        c = user_cluster(u, spec.clusters)
        if shift_idx is not None and n >= shift_idx:
            c = (c + spec.clusters // 2) % spec.clusters
        if rng.random() >= spec.affinity:
            c = int(rng.integers(0, spec.clusters))
        pool = live_by_cluster[c] or early
        # Newer items in the pool get a boost so cold items do receive traffic.
        ranks = np.arange(1, len(pool) + 1, dtype=np.float64)
        p = 1.0 / ranks**0.8
        p /= p.sum()
        i = pool[int(rng.choice(len(pool), p=p))] if rng.random() < 0.8 else pool[-1 - int(rng.integers(0, min(5, len(pool))))]
        kind = _KINDS[int(rng.integers(0, len(_KINDS)))]
        ev = Interaction(
            event_id=f"{spec.event_prefix}e{n}",
            user_id=f"u{u}",
            item_id=f"i{i}",
            kind=kind,  # type: ignore[arg-type]
            weight=1.0,
            ts=at(ts_s),
            context={"device": "mobile" if u % 2 else "web"},
        )
        yield record_of("interactions", ev, key=ev.user_id, timestamp_ms=int((t0 + ts_s) * 1000))
