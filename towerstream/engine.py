"""The recommender core: towers + index + durable state, with no Kafka in sight.

The Faust worker and ``towerstream evaluate`` drive the same ``Engine``, so what is
measured offline is what runs online. Durability order per call: dedup markers,
journal entry, id-map rows and metadata go into one RocksDB WriteBatch first; only
then are the towers trained and the Faiss index updated in memory. A restart loads
the newest checkpoint (towers + index + engine state) and replays the journal written
after it, so nothing acknowledged is lost and nothing is applied twice.
"""

from __future__ import annotations

import array
import contextlib
import functools
import json
import pickle
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog
import torch
from pydantic_core import to_json

from index_store import (
    CheckpointError, ItemAttributes, MetaStore, UnknownId, VectorIndex, load_latest_checkpoint, save_checkpoint,
)
from towers import TowerConfig, TwoTowerTrainer
from towerstream.events import Filters, Interaction, ItemDelete, ItemUpsert, UserProfile
from towerstream.events.base import epoch_ms
from towerstream.events.codec import item_from_dict
from towerstream.events.recommend import Explanation, RecommendRequest, RecommendResponse, score_scale
from towerstream.explain import filter_reasons, nearest_history, place_in, score_parts, scored_items

log = structlog.get_logger(__name__)

#: External id used for users the engine has never seen (context-only user vector).
ANONYMOUS_USER = "\x00anonymous"


@dataclass(frozen=True)
class EngineConfig:
    tower: TowerConfig = field(default_factory=TowerConfig)
    index_kind: Literal["auto", "flat", "ivf"] = "auto"
    expected_items: int = 100_000
    index_threads: int = 1
    #: Intra-op threads for PyTorch (process-wide; 0 leaves torch's default, one per core). 1 because
    #: on a 2-core worker the event loop needs the other core, and on a busy machine a 2-thread
    #: OpenMP op waits whole scheduler ticks: a 512-event train step took 5x longer with 2 threads.
    torch_threads: int = 1
    #: At most this many recent items per user are excluded as "seen".
    seen_limit: int = 2000
    #: Half-life, in interactions, of the popularity used for fallbacks.
    popularity_half_life: float = 20_000.0
    checkpoints_kept: int = 2
    #: Live items re-embedded after each learned batch besides the touched ones, round robin: the
    #: towers move with every step, so untouched vectors age (new items most, which were embedded
    #: by untrained towers). 0 leaves it to the periodic ``reembed_all``.
    reembed_per_learn: int = 2048
    #: A query whose ``include_categories`` hold at most this many items scores those items directly
    #: (exact); above it, the index is searched and the results filtered (widening if too few pass).
    include_scan_max: int = 20_000
    #: Show interactions to serving (history, seen items, so the user vector) as soon as they are
    #: durable, not after their train step: what a user did is reflected within the commit, however
    #: far behind training is. Off: visible after the step (the behaviour before this option).
    visible_at_commit: bool = True


@dataclass(frozen=True)
class SourcePos:
    """Where an event came from: stamped into the journal and item metadata."""

    topic: str
    partition: int
    offset: int


@dataclass
class Recommendations:
    items: list[tuple[str, float]]
    source: Literal["model", "popularity"]
    fallback_reason: str | None = None


@dataclass
class ItemsResult:
    upserted: int = 0
    deleted: int = 0
    duplicates: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    unknown_deletes: list[str] = field(default_factory=list)


@dataclass
class LearnResult:
    trained: int = 0
    duplicates: list[str] = field(default_factory=list)
    unknown_items: list[str] = field(default_factory=list)
    loss: float = 0.0
    seconds: float = 0.0
    #: Freshness: event time -> index upsert, per touched item (ms).
    upsert_lag_ms: list[float] = field(default_factory=list)


@dataclass
class Snapshot:
    """Everything a checkpoint holds, copied at one journal position (``Engine.snapshot``)."""

    seq: int
    index: VectorIndex
    towers: dict[str, Any]
    engine: dict[str, Any]
    meta: dict[str, Any]


@dataclass
class Committed:
    """A batch of interactions made durable (dedup markers, journal entry) but not trained yet.

    The worker acknowledges a batch once it is committed and trains it on the training thread
    while the next batch is read: a crash in between is covered by the journal replay.
    """

    events: list[Interaction]
    sources: list[SourcePos | None]
    seq: int
    duplicates: list[str] = field(default_factory=list)
    seconds: float = 0.0


#: Tie-break of equal event times in ordered mode: catalog first, then profiles, then interactions.
_STAGE_RANK = {"items": 0, "users": 1, "interactions": 2}


def _seq_key(seq: int) -> str:
    return f"j:{seq:016d}"


#: Durable next offset per source partition (``off:<topic>:<partition>``), written in the same
#: WriteBatch as the events' journal entry: Kafka commits never run ahead of it.
OFFSET_PREFIX = "off:"
#: Popularity snapshot written at each checkpoint, kept apart from the checkpoint files so that a
#: rebuild after unreadable checkpoints can serve popular items at once.
_POPULARITY_KEY = "snap:popularity"


class Engine:
    """One worker's model, index and durable state under ``data_dir``."""

    def __init__(self, data_dir: Path, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = MetaStore(self.data_dir / "meta")
        self.items = self.store.id_map("item")
        self.users = self.store.id_map("user")
        if self.config.torch_threads > 0:
            torch.set_num_threads(self.config.torch_threads)
        self.trainer = TwoTowerTrainer(self.config.tower)
        kind = self.config.index_kind
        if kind == "auto":
            kind = VectorIndex.choose_kind(self.config.expected_items)
        self.index = VectorIndex(self.config.tower.dim, kind, threads=self.config.index_threads)
        self.model_version = 0
        self.seq = 0  # last journal sequence applied
        self.popularity = np.zeros(1024, dtype=np.float64)
        self.seen: dict[int, array.array[int]] = {}
        self.item_ts: dict[int, int] = {}  # row -> event time (ms) of the content in the index
        #: Categories and creator of every live item, and rows per category (business filters).
        self.attributes = ItemAttributes()
        self.live = np.zeros(1024, dtype=bool)
        self.vector_versions = np.zeros(1024, dtype=np.int64)
        self.ready = False
        #: What the engine is doing while not ready ("loading", "rebuilding index"), then "ready".
        self.status = "loading"
        #: Interactions trained into this model lineage (checkpointed; journal replay adds to it).
        self.trained_in_model = 0
        #: Next source offset per "topic:partition" whose effects are in this state.
        self.offsets: dict[str, int] = {}
        #: Seconds the last restore spent replaying the journal.
        self.replay_s = 0.0
        #: Seconds of training since the last checkpoint: about what a restart would replay.
        self.unsaved_train_s = 0.0
        #: Held by a train step (100-600 ms), re-training and snapshots: the model's tables and weights.
        self.lock = threading.RLock()
        #: Item content, item vectors and the growth of row arrays: an item upsert takes only this
        #: lock (and ``lock`` too when arrays must grow), so it does not wait for a train step; a
        #: train step takes it for its own growth and for re-embedding touched items.
        self.items_lock = threading.RLock()
        #: Serialises the durable part of every call (id maps, counters, journal sequence), which
        #: for interactions runs apart from training (``commit_interactions``).
        self.commit_lock = threading.RLock()
        #: One checkpoint written at a time (snapshots are written off the training thread).
        self._write_lock = threading.Lock()
        #: Journal sequences of committed interaction batches not trained yet: a checkpoint covers
        #: the journal only up to just before the oldest of them.
        self._untrained: set[int] = set()
        #: (durable interactions, untrained ones), replaced whole under the commit lock: ``stats``
        #: reads it without the lock (on the event loop) and never sees half of a commit.
        self._counts: tuple[int, int] = (int(self.store.counter("trained")), 0)
        #: Event ids added to history by ``observe`` and not yet learned.
        self._observed: set[str] = set()
        self._reembed_cursor = 0
        #: Called on the items thread with the ids of the item events an ``apply_items`` call made
        #: durable and applied (not duplicates or stale ones): the trainer publishes them
        #: (``streams.publisher``). Not called by the journal replay: a version's sweep covers that.
        self.on_items_applied: Callable[[list[str]], None] | None = None
        self._anon_row = int(self.users.get_or_create([ANONYMOUS_USER])[0])

    # ----- lifecycle -------------------------------------------------------------------
    @classmethod
    def open(cls, data_dir: Path, config: EngineConfig | None = None) -> Engine:
        """Load the newest checkpoint, replay the journal after it, and mark ready."""
        eng = cls(data_dir, config)
        eng.restore()
        return eng

    def restore(self) -> None:
        """``open`` in two steps: construct, then restore; serving meanwhile answers from popularity."""
        self._restore()
        self.status = "ready"
        self.ready = True

    def _restore(self) -> None:
        try:
            loaded = load_latest_checkpoint(self.data_dir / "checkpoints", threads=self.config.index_threads)
        except CheckpointError as exc:
            log.error("checkpoints_unreadable", error=str(exc)[:1000])
            self._rebuild_from_store()
            return
        if loaded is not None:
            info, index, blobs = loaded
            try:
                self.trainer.load_state_bytes(blobs["towers"])
                state = pickle.loads(blobs["engine"])
            except Exception as exc:  # noqa: BLE001 - e.g. towers of another shape: rebuild, don't crash
                log.error("checkpoint_incompatible", path=str(info.path), error=f"{type(exc).__name__}: {exc}"[:1000])
                self.trainer = TwoTowerTrainer(self.config.tower)
                self._rebuild_from_store()
                return
            self.index = index
            self.model_version = state["model_version"]
            self.popularity = state["popularity"]
            self.seen = {u: array.array("q", v) for u, v in state["seen"].items()}
            self.item_ts = state["item_ts"]
            self.live = state["live"]
            if "attributes" in state:
                self.attributes = ItemAttributes.from_state(state["attributes"])
            else:  # a checkpoint written before attributes were kept: read them from the item records
                self._load_attributes_from_store()
            self.vector_versions = state.get("vector_versions", np.zeros(len(self.live), dtype=np.int64))
            self.trained_in_model = state.get("trained_in_model", 0)
            # Events shown to serving before the checkpoint but trained after it: the journal replay
            # trains them without adding them to histories and seen items a second time.
            self._observed = set(state.get("observed_ids", ()))
            self.offsets = dict(info.meta.get("offsets", {}))
            self.seq = info.seq
            log.info("checkpoint_loaded", seq=info.seq, items=len(self.index), model_version=self.model_version)
        replayed = 0
        t0 = time.perf_counter()
        for key, raw in self.store.scan("j:"):
            seq = int(key[2:])
            if seq <= self.seq:
                continue
            entry = json.loads(raw)
            if entry["t"] == "offsets":  # a log replaced under us: its offsets start again lower
                self.offsets.update(entry["o"])
                self.seq = seq
                continue
            if entry["t"] == "items":
                self._apply_items_now([item_from_dict(e) for e in entry["e"]])
            elif entry["t"] == "users":
                self._apply_users_now([UserProfile.model_validate(e) for e in entry["e"]])
            else:
                self._learn_now([Interaction.model_validate(e) for e in entry["e"]])
            self._note_offsets(entry.get("s"))
            self.seq = seq
            replayed += 1
        self.replay_s = time.perf_counter() - t0
        if replayed:
            log.info("journal_replayed", entries=replayed, seq=self.seq, seconds=round(self.replay_s, 3))

    def _load_attributes_from_store(self) -> None:
        for key, raw in self.store.scan("item:"):
            rec = json.loads(raw)
            row = self.items.get(key[5:])
            if row is not None and not rec.get("deleted") and self._is_live(row):
                self.attributes.set(row, rec["event"].get("categories", []), rec["event"].get("creator"))

    def _rebuild_from_store(self) -> None:
        """No readable checkpoint: rebuild the index from the item records in RocksDB.

        Item records (``item:<id>``) hold each item's last applied event, so the catalog comes back
        exact; profiles come from ``user:<id>``. Popularity comes from its last snapshot, so the
        fallback answers at once. Interactions still in the journal are trained again; tower
        training older than the journal is lost (towers restart from their initialisation).
        """
        self.status = "rebuilding index"
        ckpt_root = self.data_dir / "checkpoints"
        for path in sorted(ckpt_root.glob("ckpt-" + "[0-9]" * 16)):
            # Kept for inspection under a name the loader ignores; new checkpoints sort after them.
            self.seq = max(self.seq, int(path.name[5:]))
            path.rename(path.with_name(path.name + ".unreadable"))
        snap = self.store.get_bytes(_POPULARITY_KEY)
        snap_seq = -1
        rows_known = len(self.items)
        self._ensure_rows(max(rows_known - 1, 0))
        ups: list[ItemUpsert] = []
        for key, raw in self.store.scan("item:"):
            rec = json.loads(raw)
            row = self.items.get(key[5:])
            if row is None:
                continue
            self.item_ts[row] = int(rec["ts"])
            if not rec.get("deleted"):
                self.live[row] = True
                ups.append(ItemUpsert.model_validate(rec["event"]))
        if snap is not None:
            snap_seq = int.from_bytes(snap[:8], "big")
            pop = np.frombuffer(snap[8:], dtype=np.float64)
            self._ensure_rows(len(pop) - 1)
            self.popularity[: len(pop)] = pop
        log.warning("index_rebuild_started", items=len(ups))
        profiles = [UserProfile.model_validate({"user_id": k[5:], "features": json.loads(v), "ts": time.time()})
                    for k, v in self.store.scan("user:")]
        for s in range(0, len(profiles), 4096):
            self._apply_users_now(profiles[s : s + 4096])
        for s in range(0, len(ups), 4096):
            with self.lock:
                self._apply_items_now(ups[s : s + 4096])
        replayed = 0
        for key, raw in self.store.scan("j:"):
            entry = json.loads(raw)
            seq = int(key[2:])
            if entry["t"] == "offsets":
                self.offsets.update(entry["o"])
                self.seq = max(self.seq, seq)
                continue
            if entry["t"] == "interactions":  # items and profiles are already at their last state
                with self.lock:
                    kept = self.popularity.copy() if seq <= snap_seq else None
                    self._learn_now([Interaction.model_validate(e) for e in entry["e"]])
                    if kept is not None:  # already counted in the snapshot
                        self.popularity[: len(kept)] = kept
                replayed += 1
            self._note_offsets(entry.get("s"))
            self.seq = max(self.seq, seq)
        log.warning("index_rebuilt", items=len(self.index), journal_entries=replayed, seq=self.seq)
        self.checkpoint()

    def checkpoint(self) -> Path:
        """Persist towers + index + engine state at the current journal position, then trim the journal."""
        return self.write_snapshot(self.snapshot())

    def snapshot(self) -> Snapshot:
        """Copy what a checkpoint holds, under the locks; ``write_snapshot`` serialises it without them.

        Serialising and writing the state (torch.save, sha256, fsync) took ~2 s on a 20k-item,
        50k-user model and held the training thread; a copy takes a small part of that.
        """
        with self.lock, self.commit_lock, self.items_lock:
            seq = self.applied_seq()
            self.unsaved_train_s = 0.0
            return Snapshot(
                seq=seq,
                index=self.index.copy(),
                towers=self.trainer.state_snapshot(),
                engine={
                    "model_version": self.model_version,
                    "popularity": self.popularity.copy(),
                    "seen": {u: v[:] for u, v in self.seen.items()},
                    "item_ts": dict(self.item_ts),
                    "attributes": self.attributes.state(),
                    "live": self.live.copy(),
                    "vector_versions": self.vector_versions.copy(),
                    "trained_in_model": self.trained_in_model,
                    "observed_ids": set(self._observed),
                },
                meta={"model_version": self.model_version, "items": len(self.index), "offsets": dict(self.offsets)},
            )

    def write_snapshot(self, snap: Snapshot) -> Path:
        """Write a snapshot as a checkpoint and trim the journal; safe beside training and serving."""
        with self._write_lock:
            # Seen lists pickle as the arrays they are (raw bytes), not as lists of Python ints.
            blobs = {"towers": functools.partial(TwoTowerTrainer.write_state, snap.towers),
                     "engine": pickle.dumps(snap.engine, protocol=pickle.HIGHEST_PROTOCOL)}
            info = save_checkpoint(self.data_dir / "checkpoints", snap.seq, index=snap.index, blobs=blobs,
                                   meta=snap.meta, keep=self.config.checkpoints_kept)
            pop = snap.engine["popularity"]
            self.store.put_bytes(_POPULARITY_KEY, snap.seq.to_bytes(8, "big") + pop.astype(np.float64).tobytes())
            self.store.put_bytes("vector_versions", snap.engine["vector_versions"].tobytes())
            # Keep the journal back to the oldest kept checkpoint: if the newest one turns out
            # unreadable, the previous one plus the journal still gives every acknowledged event.
            kept = sorted(int(p.name[5:]) for p in info.path.parent.glob("ckpt-" + "[0-9]" * 16))
            self.store.delete_range("j:", upto_key=_seq_key(min(kept, default=snap.seq) + 1))
        log.info("checkpoint_saved", seq=snap.seq, path=str(info.path), items=snap.meta["items"])
        return info.path

    def applied_seq(self) -> int:
        """The journal position whose effects are all in memory (a checkpoint covers up to here).

        Item and profile entries after it may be applied already: replaying them is idempotent.
        """
        with self.commit_lock:
            return min(self._untrained) - 1 if self._untrained else self.seq

    def close(self) -> None:
        self.store.flush()
        self.store.close()

    # ----- helpers ---------------------------------------------------------------------
    def _ensure_rows(self, max_row: int) -> None:
        if max_row >= len(self.live):
            cap = max(max_row + 1, len(self.live) * 2)
            self.live = np.concatenate([self.live, np.zeros(cap - len(self.live), dtype=bool)])
            self.popularity = np.concatenate([self.popularity, np.zeros(cap - len(self.popularity))])
            self.vector_versions = np.concatenate(
                [self.vector_versions, np.zeros(cap - len(self.vector_versions), dtype=np.int64)])

    def _journal(self, batch: Any, kind: str, events: Sequence[Any], sources: Sequence[SourcePos | None] | None) -> None:
        self.seq += 1
        # The events' JSON in one pydantic-core call (what ``model_dump(mode="json")`` per event and
        # ``json.dumps`` gave, 2.5x faster): the entry reads back as {"t", "e": [...], "s": [...]}.
        entry = b'{"t":' + json.dumps(kind).encode() + b',"e":' + to_json(list(events))
        if sources:
            where = [[s.topic, s.partition, s.offset] if s else None for s in sources]
            for tp in self._note_offsets(where):
                self.store.put_bytes(OFFSET_PREFIX + tp, str(self.offsets[tp]).encode(), batch=batch)
            entry += b',"s":' + json.dumps(where).encode()
        self.store.put_bytes(_seq_key(self.seq), entry + b"}", batch=batch)

    def reset_offsets(self, offsets: dict[str, int]) -> None:
        """Set the next offset of partitions whose log was replaced (``"topic:partition"`` -> offset).

        Why not ``_note_offsets``: that only moves forward, so a new log's lower offsets would
        never be recorded, and the next restart would seek past the new log's end again. The
        lowered offsets are journaled in the same WriteBatch as their ``off:`` keys, so a journal
        replay lowers them at the same point in the order.
        """
        if not offsets:
            return
        with self.commit_lock:
            batch = self.store.batch()
            self.seq += 1
            for tp, off in offsets.items():
                self.offsets[tp] = int(off)
                self.store.put_bytes(OFFSET_PREFIX + tp, str(int(off)).encode(), batch=batch)
            entry = {"t": "offsets", "o": {tp: int(off) for tp, off in offsets.items()}}
            self.store.put_bytes(_seq_key(self.seq), json.dumps(entry).encode(), batch=batch)
            self.store.write(batch)

    def _note_offsets(self, sources: Sequence[Sequence[Any] | None] | None) -> set[str]:
        """Advance the next-offset per "topic:partition" past ``sources``; returns those that moved."""
        moved: set[str] = set()
        for src in sources or ():
            if src is not None:
                tp = f"{src[0]}:{src[1]}"
                if int(src[2]) + 1 > self.offsets.get(tp, 0):
                    self.offsets[tp] = int(src[2]) + 1
                    moved.add(tp)
        return moved

    @staticmethod
    def _item_event_key(ev: ItemUpsert | ItemDelete) -> str:
        return "iev:" + (ev.event_id or f"{ev.item_id}@{epoch_ms(ev.ts)}@{ev.op}")

    # ----- items -----------------------------------------------------------------------
    def apply_items(
        self, events: Sequence[ItemUpsert | ItemDelete], sources: Sequence[SourcePos | None] | None = None,
    ) -> ItemsResult:
        """Upsert/delete items: durable first, then embedded from content and upserted at once."""
        res = ItemsResult()
        fresh: list[ItemUpsert | ItemDelete] = []
        fresh_src: list[SourcePos | None] = []
        newest: dict[str, int] = {}
        taken: set[str] = set()  # event keys taken in this batch: a repeat in the same batch is a duplicate too
        batch = self.store.batch()
        keys = [self._item_event_key(ev) for ev in events]
        known = self.store.get_many(keys)  # one MultiGet: single misses cost up to 0.6 ms each
        for n, ev in enumerate(events):
            key = keys[n]
            if known[n] is not None or key in taken:
                res.duplicates.append(ev.item_id)
                continue
            ts = epoch_ms(ev.ts)
            row = self.items.get(ev.item_id)
            known_ts = newest.get(ev.item_id, self.item_ts.get(row, -1) if row is not None else -1)
            if ts < known_ts:
                res.stale.append(ev.item_id)  # last writer by event time wins
                continue
            if isinstance(ev, ItemDelete) and (row is None or not self._is_live(row)) and ev.item_id not in newest:
                res.unknown_deletes.append(ev.item_id)
                continue
            newest[ev.item_id] = ts
            taken.add(key)
            self.store.put_bytes(key, b"", batch=batch)
            fresh.append(ev)
            fresh_src.append(sources[n] if sources else None)
        if not fresh:
            return res
        # Before the lock: interaction commits wait for it.
        for ev, src in zip(fresh, fresh_src):
            record = {"deleted": isinstance(ev, ItemDelete), "ts": epoch_ms(ev.ts),
                      "event": ev, "model_version": self.model_version,
                      "source": [src.topic, src.partition, src.offset] if src else None}
            # pydantic's serializer writes the event as model_dump(mode="json") would: 2 us against 10
            self.store.put_bytes("item:" + ev.item_id, to_json(record), batch=batch)
        with self.commit_lock:
            self.items.get_or_create([e.item_id for e in fresh], batch=batch)
            self._journal(batch, "items", fresh, fresh_src)
            self.store.write(batch)
        res.upserted, res.deleted = self._apply_items_now(fresh)
        if self.on_items_applied is not None:
            self.on_items_applied(list(dict.fromkeys(ev.item_id for ev in fresh)))
        return res

    def _is_live(self, row: int) -> bool:
        return row < len(self.live) and bool(self.live[row])

    def _apply_items_now(self, events: Sequence[ItemUpsert | ItemDelete]) -> tuple[int, int]:
        # Collapse to the last event per item: only the final state reaches the index.
        last_at: dict[str, int] = {}
        for n, ev in enumerate(events):
            last_at[ev.item_id] = n
        if not last_at:
            return 0, 0
        last = {item_id: events[n] for item_id, n in last_at.items()}
        row_of = dict(zip(last, self.items.get_or_create(list(last)).tolist()))
        top = max(row_of.values())
        # Growing arrays replaces them, which must not race a train step's use of them.
        grows = top >= len(self.live) or top >= self.trainer.item_capacity()
        with self.lock if grows else contextlib.nullcontext(), self.items_lock:
            return self._apply_items_locked(last, row_of)

    def _apply_items_locked(
        self, last: Mapping[str, ItemUpsert | ItemDelete], row_of: Mapping[str, int]
    ) -> tuple[int, int]:
        ups = [e for e in last.values() if isinstance(e, ItemUpsert)]
        dels = [e for e in last.values() if isinstance(e, ItemDelete)]
        if ups:
            rows = np.array([row_of[e.item_id] for e in ups], dtype=np.int64)
            self._ensure_rows(int(rows.max()))
            self.trainer.set_items(rows, ups)
            vectors = self.trainer.embed_items(rows)
            self._upsert_vectors(rows, vectors)
            self.live[rows] = True
            for r, e in zip(rows.tolist(), ups):
                self.item_ts[r] = epoch_ms(e.ts)
                self.attributes.set(r, e.categories, e.creator)
        if dels:
            rows = np.array([row_of[e.item_id] for e in dels], dtype=np.int64)
            self._ensure_rows(int(rows.max()))
            self.trainer.remove_items(rows)
            self.index.delete(rows)
            self.live[rows] = False
            for r, e in zip(rows.tolist(), dels):
                self.item_ts[r] = epoch_ms(e.ts)
                self.attributes.remove(r)
        return len(ups), len(dels)

    def item_record(self, item_id: str) -> dict[str, Any] | None:
        rec = self.store.get_json("item:" + item_id)
        return rec if isinstance(rec, dict) else None

    # ----- users -----------------------------------------------------------------------
    def apply_users(self, events: Sequence[UserProfile], sources: Sequence[SourcePos | None] | None = None) -> None:
        if not events:
            return
        with self.commit_lock:
            batch = self.store.batch()
            self.users.get_or_create([e.user_id for e in events], batch=batch)
            for ev in events:
                self.store.put_json("user:" + ev.user_id, ev.features, batch=batch)
            self._journal(batch, "users", events, sources)
            self.store.write(batch)
        with self.lock:
            self._apply_users_now(events)

    def _apply_users_now(self, events: Sequence[UserProfile]) -> None:
        rows = self.users.get_or_create([e.user_id for e in events])
        self.trainer.set_user_features(rows, [e.features for e in events])

    # ----- interactions ------------------------------------------------------------------
    def learn(
        self, events: Sequence[Interaction], sources: Sequence[SourcePos | None] | None = None
    ) -> LearnResult:
        """Train on one micro-batch: dedup by event id, journal, train, re-embed touched items."""
        return self.train_committed([self.commit_interactions(events, sources)])

    def commit_interactions(
        self, events: Sequence[Interaction], sources: Sequence[SourcePos | None] | None = None
    ) -> Committed:
        """The durable half of ``learn``: dedup markers, id rows, counter and journal in one WriteBatch.

        Safe to call on another thread than training (serialised by ``commit_lock``); the
        returned batch must then go to ``train_committed``, in commit order.
        """
        t0 = time.perf_counter()
        fresh: list[Interaction] = []
        fresh_src: list[SourcePos | None] = []
        dups: list[str] = []
        in_batch: set[str] = set()
        with self.commit_lock:
            batch = self.store.batch()
            known = self.store.get_many(["ev:" + ev.event_id for ev in events])  # one MultiGet per batch
            for n, ev in enumerate(events):
                if ev.event_id in in_batch or known[n] is not None:
                    dups.append(ev.event_id)
                    continue
                in_batch.add(ev.event_id)
                self.store.put_bytes("ev:" + ev.event_id, b"", batch=batch)
                fresh.append(ev)
                fresh_src.append(sources[n] if sources else None)
            seq = 0
            if fresh:
                u = self.users.get_or_create([e.user_id for e in fresh], batch=batch)
                i = self.items.get_or_create([e.item_id for e in fresh], batch=batch)
                self.store.incr("trained", len(fresh), batch=batch)
                self._journal(batch, "interactions", fresh, fresh_src)
                self.store.write(batch)
                seq = self.seq
                self._untrained.add(seq)
                self._counts = (self._counts[0] + len(fresh), self._counts[1] + len(fresh))
                if self.config.visible_at_commit:
                    self._make_visible(fresh, u, i)
        return Committed(fresh, fresh_src, seq, dups, time.perf_counter() - t0)

    def _make_visible(self, events: Sequence[Interaction], u: np.ndarray, i: np.ndarray) -> None:
        """History and seen items now (under the history lock only, beside a train step)."""
        with self.trainer.history_lock:
            new = np.array([e.event_id not in self._observed for e in events], dtype=bool)
            if not new.any():
                return  # already observed (``towerstream evaluate`` observes each event itself)
            self._show([e for e, n in zip(events, new.tolist()) if n], u[new], i[new])

    def _show(self, events: Sequence[Interaction], u: np.ndarray, i: np.ndarray) -> None:
        """Caller holds the history lock: events into histories and seen items, ahead of training."""
        self.trainer.observe(u, i)
        self._append_seen(u, i)
        self._observed.update(e.event_id for e in events)

    def train_committed(self, batches: Sequence[Committed]) -> LearnResult:
        """The training half of ``learn``: one train step over the committed batches, merged.

        Merging batches that queued up while the previous step ran is how a backlog gets larger
        micro-batches (cheaper per event) without costing latency when traffic is light.
        """
        t0 = time.perf_counter()
        res = LearnResult(seconds=sum(c.seconds for c in batches))
        events = [ev for c in batches for ev in c.events]
        res.duplicates = [d for c in batches for d in c.duplicates]
        try:
            if events:
                with self.lock:
                    res.loss, res.unknown_items, res.upsert_lag_ms = self._learn_now(events)
                res.trained = len(events)
        finally:
            with self.commit_lock:
                done = 0
                for c in batches:
                    if c.seq in self._untrained:
                        self._untrained.discard(c.seq)
                        done += len(c.events)
                self._counts = (self._counts[0], self._counts[1] - done)
        res.seconds += time.perf_counter() - t0
        return res

    def observe(self, events: Sequence[Interaction]) -> None:
        """Add interactions to users' histories and seen items now; ``learn`` trains on them later.

        Live, a user's events are seconds apart and each is history before the next one arrives;
        ``towerstream evaluate`` replays faster than that, so it observes each event before the
        user's next one is scored. Not journaled: ``learn`` journals the events as usual.
        """
        if not events:
            return
        with self.commit_lock:
            u = self.users.get_or_create([e.user_id for e in events])
            i = self.items.get_or_create([e.item_id for e in events])
        with self.trainer.history_lock:  # no weights, no embedding growth: beside a step, as at commit
            self._show(events, u, i)

    def _append_seen(self, u: np.ndarray, i: np.ndarray) -> None:
        limit = self.config.seen_limit
        for ur, ir in zip(u.tolist(), i.tolist()):
            seen = self.seen.get(ur)
            if seen is None:
                seen = self.seen[ur] = array.array("q")
            seen.append(ir)
            if len(seen) > limit:
                del seen[: len(seen) - limit]

    def _learn_now(self, events: Sequence[Interaction]) -> tuple[float, list[str], list[float]]:
        u = self.users.get_or_create([e.user_id for e in events])
        i = self.items.get_or_create([e.item_id for e in events])
        with self.items_lock:  # growth happens here, not inside the step, where items could race it
            self._ensure_rows(int(i.max()))
            self.trainer.ensure_items(int(i.max()))
        unknown = [e.item_id for e, r in zip(events, i.tolist()) if not self.live[r]]
        kw = self.config.tower.kind_weights
        p = self.config.tower.event_weight_power
        w = np.array([kw.get(e.kind, 1.0) * e.weight**p for e in events], dtype=np.float32)
        contexts = [e.context for e in events] if any(e.context for e in events) else None
        t_train = time.perf_counter()
        loss = self.trainer.learn_batch(u, i, w, contexts)
        self.unsaved_train_s += time.perf_counter() - t_train
        self.model_version += 1
        self.trained_in_model += len(events)
        # Popularity with exponential decay, for fallbacks and the popularity-bias metric.
        self.popularity *= 0.5 ** (len(events) / self.config.popularity_half_life)
        np.add.at(self.popularity, i, 1.0)
        with self.trainer.history_lock:
            fresh = np.array([e.event_id not in self._observed for e in events], dtype=bool)
            self._observed.difference_update(e.event_id for e in events)
            self._append_seen(u[fresh], i[fresh])
        lags: list[float] = []
        with self.items_lock:  # an item upsert meanwhile must not be overwritten by its older vector
            touched = np.unique(i[self.live[i]])
            if len(touched):
                self._upsert_vectors(touched, self.trainer.embed_items(touched))
                now_ms = time.time() * 1000
                newest = {}
                for e, r in zip(events, i.tolist()):
                    newest[r] = epoch_ms(e.ts)
                lags = [now_ms - newest[r] for r in touched.tolist()]
            self._reembed_rolling(touched)
        return 0.0 if loss != loss else loss, unknown, lags

    def _reembed_rolling(self, skip: np.ndarray) -> None:
        """Re-embed the next ``config.reembed_per_learn`` live rows (round robin), ``skip`` excepted."""
        n = self.config.reembed_per_learn
        rows = np.flatnonzero(self.live)
        if n <= 0 or len(rows) == 0:
            return
        start = self._reembed_cursor % len(rows)
        part = np.take(rows, np.arange(start, start + min(n, len(rows))), mode="wrap")
        part = np.setdiff1d(part, skip)
        if len(part):
            self._upsert_vectors(part, self.trainer.embed_items(part))
        self._reembed_cursor = start + n

    # ----- event-time ordered ingestion (deterministic replays) --------------------------------
    def stage(
        self, kind: Literal["items", "users", "interactions"], events: Sequence[Any], sources: Sequence[SourcePos]
    ) -> int:
        """Durably stage events; ``drain_staged`` applies them later in a deterministic order.

        The order key is (event time, topic rank, partition, offset): it does not depend on how
        fetches from different topics and partitions happened to interleave, so the same
        recording replayed into a fresh worker gives the same model bit for bit.
        """
        batch = self.store.batch()
        for ev, src in zip(events, sources):
            key = f"stg:{epoch_ms(ev.ts):013d}:{_STAGE_RANK[kind]}:{src.partition:05d}:{src.offset:012d}"
            doc = {"t": kind, "e": ev.model_dump(mode="json"), "s": [src.topic, src.partition, src.offset]}
            self.store.put_bytes(key, json.dumps(doc).encode(), batch=batch)
        self.store.write(batch)
        return len(events)

    def drain_staged(self, batch_max: int, learn: Any = None) -> int:
        """Apply every staged event in order; interactions in micro-batches of ``batch_max``.

        An item or user event first flushes the pending interactions, as in ``evaluate``.
        Staged keys are deleted after their events are applied; a crash in between re-applies
        them on restart, which dedup by event id makes harmless. ``learn`` replaces
        ``self.learn`` (the worker passes its monitored version).
        """
        learn_fn = learn or self.learn
        pending: list[Interaction] = []
        pending_src: list[SourcePos] = []
        done_keys: list[str] = []
        n = 0

        def flush() -> None:
            nonlocal pending, pending_src
            if pending:
                learn_fn(pending, pending_src)
                pending, pending_src = [], []
            batch = self.store.batch()
            for key in done_keys:
                self.store.delete(key, batch=batch)
            self.store.write(batch)
            done_keys.clear()

        for key, raw in list(self.store.scan("stg:")):
            doc = json.loads(raw)
            src = SourcePos(*doc["s"])
            if doc["t"] == "interactions":
                pending.append(Interaction.model_validate(doc["e"]))
                pending_src.append(src)
                done_keys.append(key)
                if len(pending) >= batch_max:
                    flush()
            else:
                flush()
                if doc["t"] == "items":
                    e = doc["e"]
                    self.apply_items([item_from_dict(e)], [src])
                else:
                    self.apply_users([UserProfile.model_validate(doc["e"])], [src])
                done_keys.append(key)
            n += 1
        flush()
        return n

    def staged_count(self) -> int:
        return sum(1 for _ in self.store.scan("stg:"))

    # ----- serving ---------------------------------------------------------------------
    def seen_rows(self, user_row: int) -> set[int]:
        return set(self.seen.get(user_row, ()))

    def reembed_all(self, chunk: int = 16_384) -> int:
        """Re-embed every live item with the current item tower, in chunks (keeps the index consistent)."""
        rows = np.flatnonzero(self.live)
        for s in range(0, len(rows), chunk):
            with self.items_lock:
                part = rows[s : s + chunk]
                part = part[self.live[part]]  # deleted since the list was taken: must not come back
                if len(part):
                    self._upsert_vectors(part, self.trainer.embed_items(part))
        return len(rows)

    def refit_index(self) -> bool:
        """Re-fit IVF lists to where the towers have moved the items (after ``reembed_all``).

        Holds neither engine lock and the index's only to copy and swap, so it can run beside
        training and serving (``VectorIndex.refit``).
        """
        t0 = time.perf_counter()
        done = self.index.refit()
        if done:
            log.info("index_refit", items=len(self.index), seconds=round(time.perf_counter() - t0, 2))
        return done

    def _upsert_vectors(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Every index write goes through here, so each vector's model version is known."""
        self.index.upsert(rows, vectors)
        self.vector_versions[rows] = self.model_version

    def vector_version(self, item_id: str) -> int | None:
        """Model version of the towers that produced the item's indexed vector.

        Kept per row in memory, written to RocksDB (``vector_versions``) and the checkpoint at
        every checkpoint; the journal replay after a restart recomputes the rest.
        """
        row = self.items.get(item_id)
        if row is None or not self._is_live(row):
            return None
        return int(self.vector_versions[row])

    def popular(self, k: int, exclude: set[int] | None = None) -> list[tuple[int, float]]:
        live, pop = self.live, self.popularity  # either may be swapped for a longer array meanwhile
        n = min(len(live), len(pop))
        scores = np.where(live[:n], pop[:n], -np.inf)
        want = k + (len(exclude) if exclude else 0)
        top = np.argsort(-scores, kind="stable")[: max(want, 0)]
        out = [(int(r), float(scores[r])) for r in top if np.isfinite(scores[r]) and not (exclude and int(r) in exclude)]
        return out[:k]

    def _passes(self, row: int, filters: Filters | None) -> bool:
        if filters is None or not (filters.include_categories or filters.exclude_categories or filters.exclude_creators):
            return True
        return self.attributes.passes(row, filters.include_categories, filters.exclude_categories,
                                      filters.exclude_creators)

    def _scan_included(
        self, uvec: np.ndarray, filters: Filters, k: int, exclude: set[int]
    ) -> list[tuple[int, float]]:
        """Score the rows of ``include_categories`` directly: exact top-k among them, filters applied."""
        rows = self.attributes.rows_in(filters.include_categories)
        if exclude:
            rows = rows[~np.isin(rows, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))]
        vecs = np.zeros((0, uvec.shape[0]), dtype=np.float32)
        for _ in range(3):  # an item deleted meanwhile leaves the index before its attributes
            if not len(rows):
                return []
            try:
                vecs = self.index.get(rows)
                break
            except UnknownId as exc:
                rows = rows[~np.isin(rows, np.asarray(exc.ids, dtype=np.int64))]
        else:
            return []
        scores = vecs @ uvec
        order = np.argsort(-scores, kind="stable")
        picked: list[tuple[int, float]] = []
        for j in order.tolist():
            r = int(rows[j])
            if self._passes(r, filters):
                picked.append((r, float(scores[j])))
                if len(picked) == k:
                    break
        return picked

    def _embed_users(self, urows: np.ndarray, ctx: Sequence[Mapping[str, Any]] | None) -> np.ndarray:
        """User rows ``(B,)`` -> ``(B, D)`` user vectors, as serving reads them."""
        if int(urows.max()) < self.trainer.user_capacity():
            # Not under the engine lock: a train step holds it for 100-400 ms. The forward reads
            # weights the optimizer may be updating in place (a query can mix two steps'
            # weights); tables grow by replacement, never in place, so reads stay valid. A
            # copy of the weights per step would end the mixing but the id tables are most of
            # them (tens of MB at 100k items and users), copied as long as a step takes; a
            # serving replica answers from one published version instead.
            return self.trainer.embed_users(urows, ctx)
        # A user created since the last train step: the tables must grow.
        with self.lock:
            return self.trainer.embed_users(urows, ctx)

    def recommend_many(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        filters: Filters | None = None,
        contexts: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[Recommendations]:
        """Top-k per user: user tower -> index search -> seen/business filters; popularity if no model answer."""
        excluded_ids = set(filters.exclude_items) if filters else set()
        excl_rows = {r for r in (self.items.get(x) for x in excluded_ids) if r is not None}
        rows: list[int | None] = []
        for n, uid in enumerate(user_ids):
            r = self.users.get(uid)
            has_ctx = bool(contexts and contexts[n])
            rows.append(r if r is not None else (self._anon_row if has_ctx else None))
        out: list[Recommendations] = [Recommendations([], "popularity") for _ in user_ids]
        exclude = [(self.seen_rows(r) if (exclude_seen and r is not None) else set()) | excl_rows for r in rows]
        model_idx = [n for n, r in enumerate(rows) if r is not None]
        reason: str | None = None
        if not self.ready:
            reason = "index rebuilding" if self.status == "rebuilding index" else "index not ready"
        elif len(self.index) == 0:
            reason = "index empty"
        if model_idx and reason is None:
            urows = np.array([rows[n] for n in model_idx], dtype=np.int64)
            ctx = [dict(contexts[n]) if contexts else {} for n in model_idx] if contexts else None
            uvec = self._embed_users(urows, ctx)
            has_filters = filters is not None and bool(
                filters.include_categories or filters.exclude_categories or filters.exclude_creators)
            if (filters is not None and filters.include_categories
                    and self.attributes.count(filters.include_categories) <= self.config.include_scan_max):
                for j in range(len(model_idx)):
                    picked = self._scan_included(uvec[j], filters, k, exclude[model_idx[j]])
                    out[model_idx[j]] = Recommendations(
                        list(zip(self.items.external([p for p, _ in picked]), [sc for _, sc in picked])), "model")
            else:
                # Business filters select inside the search (a bitmap of the rows that pass), so a
                # filter that removes a user's whole neighbourhood still gets k results.
                allow = self.attributes.allowed(filters.include_categories, filters.exclude_categories,
                                                filters.exclude_creators) if has_filters and filters else None
                D, I = self.index.search(uvec, k, exclude=[exclude[n] for n in model_idx], allow=allow)
                for j, n in enumerate(model_idx):
                    picked: list[tuple[int, float]] = []  # plain ints and floats: 2x faster
                    for r, sc in zip(I[j].tolist(), D[j].tolist()):
                        # Checked again: an item may have changed since the bitmap was made.
                        if r >= 0 and (allow is None or self._passes(r, filters)):
                            picked.append((r, sc))
                    out[n] = Recommendations(
                        list(zip(self.items.external([p for p, _ in picked]), [sc for _, sc in picked])), "model")
        for n, r in enumerate(rows):
            if out[n].source == "model":
                continue
            why = reason or ("unknown user" if self.users.get(user_ids[n]) is None else "no model answer")
            cand = [(row, s) for row, s in self.popular(k * 4 if filters else k, exclude[n]) if self._passes(row, filters)][:k]
            out[n] = Recommendations(list(zip(self.items.external([c for c, _ in cand]), [s for _, s in cand])), "popularity", why)
        return out

    def recommend(self, user_id: str, k: int = 10, **kw: Any) -> Recommendations:
        return self.recommend_many([user_id], k, **kw)[0]

    def respond(self, req: RecommendRequest, k: int | None = None) -> tuple[Recommendations, RecommendResponse]:
        """The answer to a request (``k`` bounds ``req.k``), as the engine gives it and as the schema
        says it: the items with the fields asked for, the scale of their scores."""
        rec = self.recommend(req.user_id, min(req.k, k) if k else req.k, exclude_seen=req.exclude_seen,
                             filters=req.filters, contexts=[req.context] if req.context else None)
        shown = None
        if req.fields and rec.items:
            shown = [(sh[0], sh[1]) if sh is not None else None for sh in self.item_shown([i for i, _ in rec.items])]
        return rec, RecommendResponse(
            request_id=req.request_id, user_id=req.user_id, items=scored_items(rec.items, shown, req.fields),
            source=rec.source, fallback_reason=rec.fallback_reason, model_version=self.model_version,
            served_at_ms=int(time.time() * 1000), score_scale=score_scale(rec.source, "decayed_interactions"),
        )

    def item_shown(self, item_ids: Sequence[str]) -> list[tuple[str | None, list[str], str | None] | None]:
        """``(title, categories, creator)`` per item as its last upsert gave them, ``None`` for one
        not live: one RocksDB MultiGet for all of them, no scan."""
        out: list[tuple[str | None, list[str], str | None] | None] = []
        for raw in self.store.get_many(["item:" + i for i in item_ids]):
            rec = json.loads(raw) if raw is not None else None
            ev = rec.get("event") if isinstance(rec, dict) and not rec.get("deleted") else None
            out.append((ev.get("title"), list(ev.get("categories") or ()), ev.get("creator"))
                       if isinstance(ev, dict) else None)
        return out

    def _indexed(self, rows: Sequence[int]) -> list[np.ndarray | None]:
        """The indexed vectors ``(D,)`` of these rows, ``None`` for one the index lacks."""
        try:
            return list(self.index.get(np.asarray(rows, dtype=np.int64))) if len(rows) else []
        except UnknownId:
            out: list[np.ndarray | None] = []
            for r in rows:
                try:
                    out.append(self.index.get(np.asarray([r], dtype=np.int64))[0])
                except UnknownId:
                    out.append(None)
            return out

    def explain(self, user_id: str, item_id: str, k: int = 10, *, exclude_seen: bool = True,
                filters: Filters | None = None, context: Mapping[str, Any] | None = None) -> Explanation:
        """Why ``item_id`` is or is not in ``recommend``'s answer for these arguments: its rank, the
        model's score and its parts, the filters that leave it out, the user's nearest history items."""
        version = self.model_version
        rec = self.recommend(user_id, k, exclude_seen=exclude_seen, filters=filters,
                             contexts=[context] if context else None)
        rank, answer_score = place_in(rec.items, item_id)
        row = self.items.get(item_id)
        live = row is not None and self._is_live(row)
        shown = self.item_shown([item_id])[0] if live else None
        urow = self.users.get(user_id)
        if urow is None and context:
            urow = self._anon_row
        seen = exclude_seen and urow is not None and row is not None and row in self.seen_rows(urow)
        filtered = (["not live"] if shown is None else
                    filter_reasons(item_id, shown[1], shown[2], filters or Filters(), seen))
        parts, nearest = None, []
        if rec.source == "model" and row is not None and shown is not None and urow is not None:
            x = self._indexed([row])[0]
            if x is not None:
                parts = score_parts(self._embed_users(np.array([urow], dtype=np.int64),
                                                      [dict(context)] if context else None)[0], x)
                hist = [int(r) for r in self.trainer.history(urow).tolist() if r >= 0]
                ids = self.items.external(hist)
                titles = {i: sh[0] for i, sh in zip(ids, self.item_shown(ids)) if sh is not None}
                nearest = nearest_history(x, ids, self._indexed(hist), titles.get)
        return Explanation(
            user_id=user_id, item_id=item_id, title=shown[0] if shown else None,
            categories=shown[1] if shown else [], creator=shown[2] if shown else None, model_version=version,
            source=rec.source, fallback_reason=rec.fallback_reason, rank=rank, k=k, answer_score=answer_score,
            score_scale=score_scale(rec.source, "decayed_interactions"),
            model_score=parts.model + parts.exploration if parts is not None else None, parts=parts,
            filtered_by=filtered, nearest_history=nearest,
        )

    @property
    def untrained_events(self) -> int:
        """Interactions committed (durable, acknowledged) but not yet in the model or serving."""
        return self._counts[1]

    def stats(self) -> dict[str, float]:
        durable, untrained = self._counts  # one read: separate ones made durable - untrained dip
        return {
            "items_indexed": float(len(self.index)),
            "items_known": float(len(self.items)),
            "users_known": float(len(self.users)),
            "model_version": float(self.model_version),
            "journal_seq": float(self.seq),
            #: Durable (journaled) interactions; ``untrained_events`` of them are still queued for training.
            "trained_total": float(durable),
            "untrained_events": float(untrained),
            "trained_in_model": float(self.trained_in_model),
        }
