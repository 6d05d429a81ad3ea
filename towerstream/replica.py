"""A serving replica's state: the model versions the trainer published, and the answers from them.

Pure (no Kafka, no HTTP): ``streams/serve.py`` reads the published topics and the interactions
and hands their records here; this module decides what a version is, when it is complete, and
answers queries from exactly one version at a time.

Why a version is switched to whole: a replica that mixed one version's user tower with another
version's item vectors would score in two unrelated spaces. So the active state (version, user
model, index of that version's item vectors) is one immutable object, replaced by one attribute
assignment when the next version is complete; a query reads it once and uses only it.

Why nothing here depends on arrival order across partitions: any number of replicas read the
same topics with their own interleaving of partitions, and a client must get the same answer
from any of them. Item vectors are keyed by item id (a compacted topic has one live record per
key), a user's history is ordered by event time then event id, popularity is a plain sum.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import structlog

from index_store.errors import UnknownId
from towerstream.events import Filters, Interaction, RecommendResponse, ScoredItem
from towerstream.events.recommend import Explanation, ItemField, RecommendRequest, score_scale
from towerstream.explain import filter_reasons, nearest_history, place_in, score_parts, scored_items
from towerstream.published import (
    VERSION_KEY, ItemVector, ModelPart, VersionComplete, decode_item_vector, decode_model_part, join_parts,
)
from towerstream.replica_items import EMPTY_DIGEST, Histories, ItemInfo, Popularity, VersionItems, ts_micros
from towerstream.replica_model import ServingModel

__all__ = ["INCLUDE_SCAN_MAX", "Record", "Replica"]

log = structlog.get_logger(__name__)

#: ``(partition, offset, key, value)``: one Kafka record as the consumer read it; value ``None`` a tombstone.
Record = tuple[int, int, bytes, bytes | None]

#: An ``include_categories`` filter whose categories hold at most this many items is scored
#: exactly over them (as the worker does) instead of searched with a bitmap.
INCLUDE_SCAN_MAX = 20_000
#: Version numbers refused (unreadable model) remembered for ``status``.
BROKEN_KEPT = 8

ITEMS_TOPIC, MODEL_TOPIC, INTERACTIONS_TOPIC = "item-vectors", "model", "interactions"


@dataclass(eq=False)
class _Pending:
    """A version still arriving: its parts and completion record, then its model and items."""

    version: int
    parts: dict[int, ModelPart] = field(default_factory=dict)
    complete: VersionComplete | None = None
    model: ServingModel | None = None
    #: Item ops that came before the model (the index needs its centroids): last op per item.
    buffer: dict[str, ItemVector | None] = field(default_factory=dict)
    items: VersionItems | None = None
    parts_count: int | None = None


@dataclass(frozen=True, eq=False)
class _Active:
    """What a query reads, taken once: nothing in it ever belongs to another version."""

    version: int
    model: ServingModel
    items: VersionItems
    complete: VersionComplete
    switched_ms: int


class Replica:
    """The active version, the pending ones, the users' recent interactions and popularity.

    Thread model: one thread (the consumer's) calls the ``apply_*``/``set_item_positions``/
    ``maybe_switch`` methods; any number of threads call ``recommend``/``item``/``status``
    concurrently with it. Readers take the active state once per call and never see a version
    half built.
    """

    def __init__(self, *, max_k: int = 500, seen_limit: int = 2000, index_threads: int = 1) -> None:
        """``max_k`` bounds ``k`` (as the worker's settings do); ``seen_limit`` the seen items kept
        per user (a version's meta may exclude fewer); ``index_threads`` Faiss's OpenMP threads."""
        self.max_k = max_k
        self.seen_limit = seen_limit
        self.index_threads = index_threads
        self._active: _Active | None = None
        self._pending: dict[int, _Pending] = {}
        #: The newest version whose ``VersionComplete`` was read: the one to switch to next.
        self._target = 0
        self._positions: dict[int, int] = {}
        self._skipped: Counter[tuple[str, str]] = Counter()
        self._switches = 0
        self._broken: dict[int, str] = {}
        # Sized for the longest history a model may ask for; grown if a version asks for more.
        self._histories = Histories(max(seen_limit, 50))
        self._popularity = Popularity()
        #: Items with a live vector record of any version: popularity's candidates before a version is active.
        self._catalog: dict[str, ItemInfo] = {}
        self._lock = threading.Lock()  # the writer's state against status(); queries never take it

    # ------------------------------------------------------------------ writes (one thread)

    def apply_item_records(self, records: Sequence[Record]) -> int:
        """Item-vectors records, in the order one partition's consumer read them (any mix of partitions).

        A vector tagged with the active version is upserted into the active index; tagged with a
        newer version, into that pending version; older than the active version or than the
        newest complete version seen, ignored. A tombstone deletes the item from the active and
        every pending version. Each record also moves that partition's position to ``offset + 1``.
        Undecodable records are counted (``status()["skipped"]``) and skipped. Calls
        ``maybe_switch``. Returns the number of records applied (not skipped or ignored).
        """
        with self._lock:
            act = self._active
            # The last op per (version, item id) is the state after the whole batch, in order.
            ops: dict[int, dict[str, ItemVector | None]] = {}
            applied = 0
            for partition, offset, key, value in records:
                self._advance(partition, offset + 1)
                try:
                    item_id = key.decode()
                except (UnicodeDecodeError, AttributeError):
                    self._skip(ITEMS_TOPIC, "undecodable", partition, offset)
                    continue
                if value is None:
                    versions = set(self._pending) | set(ops)
                    if act is not None:
                        versions.add(act.version)
                    for v in versions:
                        ops.setdefault(v, {})[item_id] = None
                    self._catalog.pop(item_id, None)
                    applied += 1
                    continue
                try:
                    iv = decode_item_vector(key, value)
                except (ValueError, UnicodeDecodeError) as exc:
                    self._skip(ITEMS_TOPIC, "undecodable", partition, offset, error=str(exc))
                    continue
                if not np.isfinite(iv.vector).all():
                    self._skip(ITEMS_TOPIC, "not finite", partition, offset)
                    continue
                v = iv.version
                if not (act is not None and v == act.version) and v < max(self._target, act.version if act else 0):
                    self._skipped[(ITEMS_TOPIC, "superseded")] += 1
                    continue
                if not (act is not None and v == act.version):
                    self._pending.setdefault(v, _Pending(v))
                ops.setdefault(v, {})[item_id] = iv
                self._catalog[item_id] = ItemInfo(iv.categories, iv.creator, iv.title)
                applied += 1
            for v, vops in ops.items():
                self._apply_ops(v, vops)
            self._switch_locked()
            return applied

    def _apply_ops(self, version: int, ops: dict[str, ItemVector | None]) -> None:
        act = self._active
        items: VersionItems | None
        if act is not None and act.version == version:
            items = act.items
        else:
            pend = self._pending.get(version)
            if pend is None:  # only deletes for a version dropped meanwhile
                return
            if pend.items is None:
                pend.buffer.update(ops)
                return
            items = pend.items
        _, refused = items.apply(ops)
        for item_id in refused:
            self._skip(ITEMS_TOPIC, "dimension mismatch", None, None, item_id=item_id, version=version)

    def apply_model_records(self, records: Sequence[Record]) -> int:
        """Model-topic records: ``part-<i>`` parts and ``version`` records (``VersionComplete``).

        Parts and completions of versions at or below the active one are ignored (a compacted
        topic replays them at start). Undecodable ones are counted and skipped. Calls
        ``maybe_switch``. Returns the number of records applied.
        """
        with self._lock:
            applied = 0
            touched: set[int] = set()
            for partition, offset, key, value in records:
                floor = max(self._target, self._active.version if self._active else 0)
                if value is None:
                    self._skip(MODEL_TOPIC, "tombstone", partition, offset)
                    continue
                if key == VERSION_KEY:
                    try:
                        vc = VersionComplete.decode(value)
                    except (ValueError, KeyError, TypeError) as exc:
                        self._skip(MODEL_TOPIC, "undecodable", partition, offset, error=str(exc))
                        continue
                    active_v = self._active.version if self._active else 0
                    if vc.version <= active_v or vc.version < self._target:
                        self._skipped[(MODEL_TOPIC, "superseded")] += 1
                        continue
                    pend = self._pending.setdefault(vc.version, _Pending(vc.version))
                    pend.complete = vc
                    self._target = vc.version
                    for old in [v for v in self._pending if v < vc.version]:
                        del self._pending[old]  # never needed: the next switch is to this version or later
                    touched.add(vc.version)
                    applied += 1
                elif key.startswith(b"part-"):
                    try:
                        part = decode_model_part(value)
                    except ValueError as exc:
                        self._skip(MODEL_TOPIC, "undecodable", partition, offset, error=str(exc))
                        continue
                    if part.version < floor or (self._active is not None and part.version <= self._active.version):
                        self._skipped[(MODEL_TOPIC, "superseded")] += 1
                        continue
                    pend = self._pending.setdefault(part.version, _Pending(part.version))
                    if pend.model is not None or part.version in self._broken:
                        continue  # a redelivered part of a model already read
                    if pend.parts_count is not None and pend.parts_count != part.count:
                        pend.parts.clear()  # a part count that changed: start the version again
                    pend.parts_count = part.count
                    pend.parts[part.index] = part
                    touched.add(part.version)
                    applied += 1
                else:
                    self._skip(MODEL_TOPIC, "unknown key", partition, offset, key=key[:64].decode(errors="replace"))
            for v in sorted(touched):
                pend = self._pending.get(v)
                if pend is not None:
                    self._load_model(pend)
            self._switch_locked()
            return applied

    def _load_model(self, pend: _Pending) -> None:
        """Build the version's model and index once all its parts are in."""
        if pend.model is not None or pend.parts_count is None or len(pend.parts) != pend.parts_count:
            return
        if pend.version in self._broken:
            return
        try:
            model = ServingModel.from_payload(pend.version, join_parts(list(pend.parts.values())))
        except ValueError as exc:
            self._broken[pend.version] = str(exc)
            while len(self._broken) > BROKEN_KEPT:
                del self._broken[min(self._broken)]
            self._skipped[(MODEL_TOPIC, "bad model")] += 1
            log.warning("replica_model_refused", topic=MODEL_TOPIC, version=pend.version, error=str(exc))
            pend.parts.clear()
            return
        pend.parts.clear()  # the payload is in the model now
        pend.model = model
        if model.history_len > self._histories.keep:
            self._histories.keep = model.history_len
        items = VersionItems(model.dim, model.centroids, model.nprobe, self.index_threads)
        if pend.buffer:
            _, refused = items.apply(pend.buffer)
            for item_id in refused:
                self._skip(ITEMS_TOPIC, "dimension mismatch", None, None, item_id=item_id, version=pend.version)
        pend.buffer = {}
        pend.items = items
        log.info("replica_model_loaded", version=pend.version, users=len(model.user_rows), items=len(items),
                 lists=len(model.centroids))

    def apply_interactions(self, events: Sequence[Interaction]) -> int:
        """Validated interactions into each user's history and seen items, and into popularity.

        Applied at once, without waiting for the trainer; an ``event_id`` already applied is
        skipped. Returns the number applied.
        """
        with self._lock:
            fresh: list[Interaction] = []
            for e in events:
                if self._popularity.seen_event(e.event_id):
                    self._skipped[(INTERACTIONS_TOPIC, "duplicate")] += 1
                    continue
                fresh.append(e)
            for e in fresh:
                self._histories.add(e.user_id, ts_micros(e), e.item_id)
            self._popularity.add(e.item_id for e in fresh)
            return len(fresh)

    def count_skipped(self, topic: str, reason: str, n: int = 1) -> None:
        """Records the caller refused before they got here (e.g. interactions that fail validation)."""
        with self._lock:
            self._skipped[(topic, reason)] += n

    def set_item_positions(self, positions: Mapping[int, int]) -> None:
        """The consumer's next offset per item-vectors partition (it may pass compacted gaps and
        control records no record reports). Positions only move forward. Calls ``maybe_switch``."""
        with self._lock:
            for p, o in positions.items():
                self._advance(int(p), int(o))
            self._switch_locked()

    def maybe_switch(self) -> int | None:
        """Switch to the newest complete version whose item offsets have been read; return it, or ``None``.

        Complete: every part and its ``VersionComplete`` are in, and every item-vectors position is
        at or past its ``item_offsets``. Pending versions older than the one switched to are dropped.
        """
        with self._lock:
            return self._switch_locked()

    def _switch_locked(self) -> int | None:
        pend = self._pending.get(self._target)
        if pend is None or pend.complete is None or pend.model is None or pend.items is None:
            return None
        if pend.parts_count != pend.complete.parts:
            return None
        if any(self._positions.get(p, 0) < o for p, o in pend.complete.item_offsets.items()):
            return None
        # The switch: one assignment. A query holding the previous _Active finishes on it, whole.
        self._active = _Active(pend.version, pend.model, pend.items, pend.complete, int(time.time() * 1000))
        for v in [v for v in self._pending if v <= pend.version]:
            del self._pending[v]
        self._switches += 1
        log.info("replica_version_switched", version=pend.version, items=len(pend.items),
                 expected_items=pend.complete.items)
        return pend.version

    def _advance(self, partition: int, position: int) -> None:
        if position > self._positions.get(partition, 0):
            self._positions[partition] = position

    def _skip(self, topic: str, reason: str, partition: int | None, offset: int | None, **detail: Any) -> None:
        self._skipped[(topic, reason)] += 1
        log.warning("replica_record_skipped", topic=topic, partition=partition, offset=offset, reason=reason, **detail)

    # ------------------------------------------------------------------ reads (any thread)

    def recommend(self, req: RecommendRequest, *, now_ms: int | None = None) -> RecommendResponse:
        """Top ``req.k`` at the active version, as the worker answers (seen items and business
        filters applied inside the search), or popularity with a ``fallback_reason``."""
        return self._recommend(self._active, req, now_ms)  # once: everything below uses this version only

    def _recommend(self, act: _Active | None, req: RecommendRequest, now_ms: int | None) -> RecommendResponse:
        k = max(1, min(req.k, self.max_k))
        f = req.filters
        excluded = set(f.exclude_items)
        if req.exclude_seen:
            excluded.update(self._histories.recent(req.user_id, self._seen_n(act)))
        picked: list[tuple[str, float]] | None = None
        reason = self._no_model_reason(act, req)
        if act is not None and reason is None:
            history = self._histories.recent(req.user_id, act.model.history_len)
            uvec = act.model.embed_user(req.user_id, act.items.vectors(history), req.context or None)
            picked = self._search(act.items, uvec, k, excluded, f)
        if picked is None:
            picked = self._popular(act, k, excluded, f)
        source: Literal["model", "popularity"] = "model" if reason is None else "popularity"
        return RecommendResponse(
            request_id=req.request_id, user_id=req.user_id, items=self._shown(act, picked, req.fields),
            source=source, fallback_reason=reason, model_version=act.version if act is not None else 0,
            served_at_ms=now_ms if now_ms is not None else int(time.time() * 1000),
            score_scale=score_scale(source, "interactions"),
        )

    def _seen_n(self, act: _Active | None) -> int:
        return min(self.seen_limit, act.model.seen_limit) if act is not None else self.seen_limit

    def _no_model_reason(self, act: _Active | None, req: RecommendRequest) -> str | None:
        """Why the model cannot answer this request (popularity does), ``None`` if it can."""
        if act is None:
            return "no model version yet"
        if len(act.items) == 0:
            return "index empty"
        if (not req.context and not act.model.knows(req.user_id)
                and not self._histories.recent(req.user_id, act.model.history_len)):
            return "unknown user"
        return None

    def _info(self, act: _Active | None, item_id: str) -> ItemInfo | None:
        """A live item's info: of the active version, or (before the first switch) as last published."""
        if act is None:
            return self._catalog.get(item_id)
        r = act.items.live_row(item_id)
        return act.items.info[r] if r is not None else None

    def _shown(self, act: _Active | None, picked: list[tuple[str, float]], fields: Sequence[ItemField]) -> list[ScoredItem]:
        """The answer's items with the fields asked for: a dict lookup per item, no scan."""
        infos = [self._info(act, i) for i, _ in picked] if fields else []
        return scored_items(picked, [(f.title, f.categories) if f is not None else None for f in infos], fields)

    def explain(self, req: RecommendRequest, item_id: str, *, now_ms: int | None = None) -> Explanation:
        """Why ``item_id`` is or is not in the answer to ``req``: its rank, the model's score and its
        parts, the filters that leave it out, and the user's history items nearest to it."""
        act = self._active  # once, as in recommend: the answer and the scores are of one version
        answer = self._recommend(act, req, now_ms)
        rank, answer_score = place_in(((it.item_id, it.score) for it in answer.items), item_id)
        info = self._info(act, item_id)
        seen = req.exclude_seen and item_id in self._histories.recent(req.user_id, self._seen_n(act))
        filtered = (["not live"] if info is None else
                    filter_reasons(item_id, info.categories, info.creator, req.filters, seen))
        parts, nearest = None, []
        if act is not None and info is not None and self._no_model_reason(act, req) is None:
            history = self._histories.recent(req.user_id, act.model.history_len)
            vectors = act.items.vectors([item_id, *history])
            x = vectors[0]
            if x is not None:
                uvec = act.model.embed_user(req.user_id, vectors[1:], req.context or None)
                parts = score_parts(uvec, x)

                def title_of(i: str) -> str | None:
                    got = self._info(act, i)
                    return got.title if got is not None else None

                nearest = nearest_history(x, history, vectors[1:], title_of)
        return Explanation(
            user_id=req.user_id, item_id=item_id, title=info.title if info else None,
            categories=list(info.categories) if info else [], creator=info.creator if info else None,
            model_version=answer.model_version, source=answer.source, fallback_reason=answer.fallback_reason,
            rank=rank, k=max(1, min(req.k, self.max_k)), answer_score=answer_score, score_scale=answer.score_scale or "cosine",
            model_score=parts.model + parts.exploration if parts is not None else None, parts=parts,
            filtered_by=filtered, nearest_history=nearest,
        )

    def user_vector(self, user_id: str, context: Mapping[str, object] | None = None) -> tuple[int, np.ndarray] | None:
        """``(version, (dim,) vector)`` of the user at the active version, ``None`` before the first switch."""
        act = self._active
        if act is None:
            return None
        history = self._histories.recent(user_id, act.model.history_len)
        return act.version, act.model.embed_user(user_id, act.items.vectors(history), context or None)

    def _search(self, items: VersionItems, uvec: np.ndarray, k: int, excluded: set[str], f: Filters) -> list[tuple[str, float]]:
        excl_rows = {r for r in (items.live_row(i) for i in excluded) if r is not None}
        inc, exc, creators = f.include_categories, f.exclude_categories, f.exclude_creators
        if inc and items.attrs.count(inc) <= INCLUDE_SCAN_MAX:
            return self._scan_included(items, uvec, k, excl_rows, f)
        has_filters = bool(inc or exc or creators)
        allow = items.attrs.allowed(inc, exc, creators) if has_filters else None
        # Ties by item id, not row: rows are assigned in arrival order, which differs between
        # replicas, and the index orders equal scores by row. One more than k is searched for (more
        # while the last one still ties the k-th), so which of the tied items make the cut does
        # not depend on rows either.
        want = k + 1
        while True:
            D, I = items.index.search(uvec[None, :], want, exclude=[excl_rows], allow=allow)
            hits = [(r, sc) for r, sc in zip(I[0].tolist(), D[0].tolist()) if r >= 0]
            if len(hits) < want or hits[-1][1] < hits[k - 1][1]:
                break
            want *= 2
        out: list[tuple[str, float]] = []
        for r, sc in hits:
            # Checked again: an item may have changed since the bitmap was made.
            if allow is None or items.passes(r, inc, exc, creators):
                out.append((items.ids[r], sc))
        out.sort(key=lambda p: (-p[1], p[0]))
        return out[:k]

    def _scan_included(self, items: VersionItems, uvec: np.ndarray, k: int, excl_rows: set[int],
                       f: Filters) -> list[tuple[str, float]]:
        """Score the rows of ``include_categories`` directly: exact top-k among them, filters applied."""
        rows = items.attrs.rows_in(f.include_categories)
        if excl_rows:
            rows = rows[~np.isin(rows, np.fromiter(excl_rows, dtype=np.int64, count=len(excl_rows)))]
        for _ in range(3):  # an item deleted meanwhile leaves the index before its attributes
            if not len(rows):
                return []
            try:
                vecs = items.index.get(rows)
                break
            except UnknownId as exc:
                rows = rows[~np.isin(rows, np.asarray(exc.ids, dtype=np.int64))]
        else:
            return []
        scores = vecs @ uvec
        out: list[tuple[str, float]] = []
        # Ties by item id, not row: rows differ between replicas, answers must not.
        for j in sorted(range(len(rows)), key=lambda j: (-float(scores[j]), items.ids[int(rows[j])])):
            r = int(rows[j])
            if items.passes(r, f.include_categories, f.exclude_categories, f.exclude_creators):
                out.append((items.ids[r], float(scores[j])))
                if len(out) == k:
                    break
        return out

    def _popular(self, act: _Active | None, k: int, excluded: set[str], f: Filters) -> list[tuple[str, float]]:
        """The most interacted-with live items passing the filters; then never-interacted ones, by item id."""

        def ok(item_id: str) -> bool:
            if item_id in excluded:
                return False
            info = self._info(act, item_id)
            return info is not None and _passes(info, f)

        out: list[tuple[str, float]] = []
        want = k + len(excluded)
        while True:
            ranked = self._popularity.top(want)
            out = [(i, s) for i, s in ranked if ok(i)][:k]
            if len(out) >= k or len(ranked) < want:
                break
            want *= 4
        if len(out) < k:  # fewer popular items than k: the rest of the catalog, in item id order
            have = {i for i, _ in out}
            rest = act.items.live_ids() if act is not None else list(self._catalog)
            for i in sorted(rest):
                if len(out) >= k:
                    break
                if i not in have and ok(i) and self._popularity.count(i) == 0:
                    out.append((i, 0.0))
        return out

    def item(self, item_id: str) -> dict[str, Any] | None:
        """``{"item_id", "version", "categories", "creator", "title"}`` of a live item of the active version."""
        act = self._active
        info = self._info(act, item_id) if act is not None else None
        if act is None or info is None:
            return None
        return {"item_id": item_id, "version": act.version, "categories": list(info.categories),
                "creator": info.creator, "title": info.title}

    @property
    def version(self) -> int | None:
        act = self._active
        return act.version if act is not None else None

    @property
    def active(self) -> _Active | None:
        """The active version's whole state, taken once (``None`` before the first switch)."""
        return self._active

    def status(self) -> dict[str, Any]:
        """What ``/healthz`` and ``/metrics`` report (JSON-able).

        ``version`` (``None`` before the first switch), ``pending`` (versions arriving),
        ``items``/``items_digest`` (live items of the active version), ``users`` (users with
        interactions held), ``skipped`` (``{topic: {reason: count}}``, topics ``item-vectors``,
        ``model``, ``interactions``), ``switches``, ``positions`` (item-vectors next offsets),
        ``waiting_for`` (what the next version still needs, or ``None``), ``broken`` (versions
        refused: ``{version: why}``), ``switched_ms`` (when the active version became active).
        """
        act = self._active
        with self._lock:
            skipped: dict[str, dict[str, int]] = {}
            for (topic, reason), n in sorted(self._skipped.items()):
                skipped.setdefault(topic, {})[reason] = n
            pending = sorted(self._pending)
            positions = dict(sorted(self._positions.items()))
            waiting = self._waiting_locked()
            broken = {str(v): why for v, why in sorted(self._broken.items())}
        items = act.items if act is not None else None
        return {
            "version": act.version if act is not None else None,
            "pending": pending,
            "items": len(items) if items is not None else 0,
            "items_digest": items.digest() if items is not None else EMPTY_DIGEST,
            "users": len(self._histories),
            "model_users": len(act.model.user_rows) if act is not None else 0,
            "skipped": skipped,
            "switches": self._switches,
            "switched_ms": act.switched_ms if act is not None else None,
            "positions": positions,
            "waiting_for": waiting,
            "broken": broken,
        }

    def _waiting_locked(self) -> dict[str, Any] | None:
        pend = self._pending.get(self._target)
        if pend is None:
            return None
        out: dict[str, Any] = {"version": pend.version}
        if pend.model is None:
            out["parts"] = f"{len(pend.parts)}/{pend.parts_count if pend.parts_count is not None else '?'}"
        if pend.complete is None:
            out["complete"] = False
        else:
            behind = {str(p): o - self._positions.get(p, 0) for p, o in pend.complete.item_offsets.items()
                      if self._positions.get(p, 0) < o}
            if behind:
                out["item_records_behind"] = behind
        return out


def _passes(info: ItemInfo, f: Filters) -> bool:
    cats = info.categories
    return ((not f.include_categories or any(c in f.include_categories for c in cats))
            and not any(c in f.exclude_categories for c in cats)
            and not (info.creator is not None and info.creator in f.exclude_creators))
