"""The replica's per-version item index, and its version-free interaction state (histories, popularity).

Each model version has a ``VersionItems`` of its own (its vectors live in that version's space).
Histories, seen items and popularity belong to no version: a switch keeps them.

Why every ordering here is by item id or event time and never by row or arrival across
partitions: replicas read partitions in their own interleaving, and must answer alike.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from index_store.item_attributes import ItemAttributes
from index_store.vector_index import VectorIndex
from towerstream.events import Interaction
from towerstream.published import ItemVector

__all__ = ["Histories", "ItemInfo", "Popularity", "VersionItems"]

F32 = npt.NDArray[np.float32]

#: Event ids remembered to apply a duplicate once; past this the oldest are forgotten (a
#: redelivery comes within seconds or minutes of the original, not millions of events later).
EVENT_IDS_KEPT = 2_000_000


class ItemInfo(NamedTuple):
    """What serving filters on and shows, as the item's vector record carried it."""

    categories: tuple[str, ...]
    creator: str | None
    title: str | None


_MOD = 1 << 256
#: ``VersionItems.digest`` of no live items.
EMPTY_DIGEST = f"{0:064x}"


def id_hash(item_id: str) -> int:
    """An item id's sha256 (UTF-8) as an integer: one term of ``VersionItems.digest``."""
    return int.from_bytes(hashlib.sha256(item_id.encode()).digest(), "big")


class VersionItems:
    """One version's live items: a Faiss index over rows this replica assigns, row <-> item id, attributes.

    An item id keeps its row for the life of the version (a delete marks it dead, a new upsert
    revives it): a reader that got a row from a search maps it to the right id even if the item
    was deleted meanwhile. One writer; readers on other threads (the index has its own lock).
    """

    def __init__(self, dim: int, centroids: F32, nprobe: int, threads: int = 1) -> None:
        self.dim = dim
        self.index = (VectorIndex.on_centroids(centroids, nprobe=nprobe, threads=threads) if len(centroids)
                      else VectorIndex(dim, "flat", threads=threads))
        self.attrs = ItemAttributes()
        self.rows: dict[str, int] = {}
        self.ids: list[str] = []
        #: row -> its item's info, ``None`` while the item is deleted.
        self.info: list[ItemInfo | None] = []
        #: Sum of the live ids' hashes mod 2**256 (``digest``), kept as items come and go.
        self._id_sum = 0

    def __len__(self) -> int:
        return len(self.index)

    def apply(self, ops: Mapping[str, ItemVector | None]) -> tuple[int, list[str]]:
        """Upserts (a vector) and deletes (``None``), at most one per item id.

        Returns ``(applied, refused)``: refused are item ids whose vector does not have this
        version's dimension (left as they were).
        """
        refused = [i for i, v in ops.items() if v is not None and v.vector.shape != (self.dim,)]
        gone = [self.rows[i] for i, v in ops.items() if v is None and i in self.rows and self.info[self.rows[i]]]
        ups = [v for v in ops.values() if v is not None and v.vector.shape == (self.dim,)]
        if gone:
            self.index.delete(np.asarray(gone, dtype=np.int64))
            for r in gone:
                self.info[r] = None
                self.attrs.remove(r)
                self._id_sum = (self._id_sum - id_hash(self.ids[r])) % _MOD
        if ups:
            rows = np.empty(len(ups), dtype=np.int64)
            for n, v in enumerate(ups):
                r = self.rows.get(v.item_id)
                if r is None:
                    r = self.rows[v.item_id] = len(self.ids)
                    self.ids.append(v.item_id)
                    self.info.append(None)
                rows[n] = r
            self.index.upsert(rows, np.stack([v.vector for v in ups]))
            for r, v in zip(rows.tolist(), ups):
                if self.info[r] is None:  # comes alive (new, or back after a delete)
                    self._id_sum = (self._id_sum + id_hash(v.item_id)) % _MOD
                self.info[r] = ItemInfo(v.categories, v.creator, v.title)
                self.attrs.set(r, v.categories, v.creator)
        return len(gone) + len(ups), refused

    def live_row(self, item_id: str) -> int | None:
        r = self.rows.get(item_id)
        return r if r is not None and self.info[r] is not None else None

    def vectors(self, item_ids: Sequence[str]) -> list[F32 | None]:
        """The published vectors ``(dim,)`` of the items, ``None`` for one the version lacks."""
        rows = [self.live_row(i) for i in item_ids]
        present = [r for r in rows if r is not None]
        if not present:
            return [None] * len(rows)
        try:
            got = self.index.get(np.asarray(present, dtype=np.int64))
        except Exception:  # deleted between the look and the read (a writer on another thread)
            got = None
        out: list[F32 | None] = []
        j = 0
        for r in rows:
            if r is None:
                out.append(None)
            else:
                out.append(got[j] if got is not None else self._one(r))
                j += 1
        return out

    def _one(self, row: int) -> F32 | None:
        try:
            vec: F32 = self.index.get(np.array([row], dtype=np.int64))[0]
            return vec
        except Exception:
            return None

    def live_ids(self) -> list[str]:
        return [i for i, info in zip(self.ids, self.info) if info is not None]

    def digest(self) -> str:
        """Which items are live, as 64 hex digits: the sum of ``id_hash`` over live ids, mod 2**256.

        Why a sum: it is the same whatever order the items came in, and it is kept up to date per
        change, so ``/healthz`` never sorts a million ids on the loop that answers queries.
        """
        return f"{self._id_sum:064x}"

    def passes(self, row: int, include: Collection[str], exclude: Collection[str], creators: Collection[str]) -> bool:
        return self.attrs.passes(row, include, exclude, creators)


class Histories:
    """Per user: recent interactions ordered by event time (then arrival), the newest ``keep`` of them.

    The set kept is the newest ``keep`` by (event time, arrival) whatever order the events came
    in, so replicas agree as long as a user's events reach them in one order (the interactions
    topic is keyed by user: one partition per user).
    """

    def __init__(self, keep: int) -> None:
        self.keep = max(1, keep)
        self._by_user: dict[str, list[tuple[int, int, str]]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._by_user)

    def add(self, user_id: str, ts_us: int, item_id: str) -> None:
        self._seq += 1
        events = self._by_user.get(user_id)
        if events is None:
            self._by_user[user_id] = [(ts_us, self._seq, item_id)]
            return
        entry = (ts_us, self._seq, item_id)
        if not events or entry >= events[-1]:
            events.append(entry)
        else:
            bisect.insort(events, entry)
        if len(events) > self.keep:
            del events[: len(events) - self.keep]

    def recent(self, user_id: str, n: int) -> list[str]:
        """The user's last ``n`` item ids, most recent first (repeats kept, as the trainer's history)."""
        events = self._by_user.get(user_id)
        if not events or n <= 0:
            return []
        snapshot = events[-n:]  # a slice is one C-level copy: safe beside the writer
        return [e[2] for e in reversed(snapshot)]


class Popularity:
    """Interactions per item id: a plain count, so that it does not depend on the order events arrive in."""

    def __init__(self) -> None:
        self._slot: dict[str, int] = {}
        # Replaced whole when it grows (a reader takes the pair once).
        self._state: tuple[npt.NDArray[np.float64], list[str]] = (np.zeros(1024), [])
        self._event_ids: dict[str, None] = {}

    def seen_event(self, event_id: str) -> bool:
        """Remember the event id; True if it was already applied."""
        if event_id in self._event_ids:
            return True
        self._event_ids[event_id] = None
        if len(self._event_ids) > EVENT_IDS_KEPT:
            del self._event_ids[next(iter(self._event_ids))]
        return False

    def add(self, item_ids: Iterable[str]) -> None:
        counts, names = self._state
        for i in item_ids:
            s = self._slot.get(i)
            if s is None:
                s = self._slot[i] = len(names)
                if s >= len(counts):
                    grown = np.zeros(2 * len(counts))
                    grown[: len(counts)] = counts
                    counts = grown
                    self._state = (counts, names)
                names.append(i)
            counts[s] += 1.0

    def count(self, item_id: str) -> float:
        counts, _ = self._state
        s = self._slot.get(item_id)
        return float(counts[s]) if s is not None and s < len(counts) else 0.0

    def top(self, want: int) -> list[tuple[str, float]]:
        """At least the ``want`` most counted items (all ties at the edge too), by count then item id."""
        counts, names = self._state
        n = min(len(names), len(counts))
        if n == 0 or want <= 0:
            return []
        c = counts[:n]
        if want < n:
            edge = np.partition(c, n - want)[n - want]
            picked = np.flatnonzero(c >= edge)
        else:
            picked = np.flatnonzero(c > 0)
        pairs = [(names[s], float(c[s])) for s in picked.tolist() if c[s] > 0]
        pairs.sort(key=lambda p: (-p[1], p[0]))
        return pairs


def ts_micros(e: Interaction) -> int:
    return int(round(e.ts.timestamp() * 1_000_000))
