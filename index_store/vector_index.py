"""An ID-mapped, thread-safe Faiss index over item embeddings (inner-product metric).

Two kinds, one API:

- ``"flat"``: ``IndexIDMap2(IndexFlatIP)``. Exact search; ``remove_ids`` is O(N), which is fine
  for catalogs up to a few hundred thousand items.
- ``"ivf"``: ``IndexIVFFlat`` with a hashtable direct map, so ``remove_ids`` and ``reconstruct``
  are O(1) per id. IVF needs training, and a stream starts empty, so vectors are buffered in a
  flat index (searched exactly) until there are enough to train k-means, then moved over.

Every Faiss call runs under one per-instance lock, right after ``omp_set_num_threads``: Faiss
releases the GIL and its indexes are not safe for concurrent writes, and the OpenMP thread count
is set per calling thread, so it must be set next to each call.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import threading
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal, cast, get_args

import faiss
import numpy as np
import numpy.typing as npt

from index_store._fs import fsync_dir
from index_store.errors import DimensionMismatch, IndexStoreError, UnknownId

__all__ = ["IndexKind", "VectorIndex"]

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "ivf"]

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]

#: Below this many expected items "auto" picks the exact flat index, above it IVF. A flat query
#: reads every vector: on one core of the CI machines (low memory bandwidth) 100k x 64 floats
#: took 2.9 ms p50 (docs/benchmarks.md), too slow for a 5 ms p99 with the rest of a request. An "ivf" index is
#: itself exact (a flat scan) until it first trains at ~24k vectors, so small catalogs stay exact.
FLAT_MAX_ITEMS = 50_000
#: Faiss warns below 39 training points per centroid; k-means centroids are noisy with fewer.
MIN_POINTS_PER_LIST = 39
#: Re-train IVF once the catalog has grown this much since the last training. The first training
#: happens on the first ~30k items (embedded by barely trained towers); at 1M items those lists
#: gave recall@10 0.74 at nprobe 16, re-trained ones 0.998. Growth by 4x keeps the total
#: re-training work O(N) (each k-means samples at most 256 points per list).
RETRAIN_GROWTH = 4.0
#: Exclusion lists up to this many live ids are handled by over-fetching k + m results and
#: filtering (one batched search). Longer ones use a per-query Faiss IDSelector instead, so a
#: user with a long history does not make every query fetch thousands of results.
OVERFETCH_LIMIT = 1024
#: A filtered IVF search (``allow``) that finds fewer than k allowed results probes this many
#: times more lists, up to all of them (then it is exact over the allowed ids).
WIDEN_FACTOR = 8

#: faiss ships stubs for its SWIG C++ signatures, not for the numpy-friendly Python wrappers
#: (remove_ids(array), SearchParameters(sel=...), DirectMap, PyCallbackIO*). Calls that the
#: stubs describe wrongly go through this alias instead of scattered `type: ignore`s.
_fx: Any = faiss

_MAGIC = b"TSVIDX1\n"
_HEADER_LEN = struct.Struct("<I")
_NEG_INF = np.float32(-np.inf)


def _selecting(index: faiss.Index, sel: Any, nprobe: int) -> Any:
    """Search parameters that keep results to ``sel`` (and probe ``nprobe`` lists of an IVF index)."""
    if isinstance(index, faiss.IndexIVF):
        return _fx.SearchParametersIVF(sel=sel, nprobe=nprobe)
    return _fx.SearchParameters(sel=sel)


class VectorIndex:
    """Thread-safe (one internal threading.Lock around every faiss call) ID-mapped Faiss index, inner-product metric.

    Ids are non-negative int64 (Faiss reserves -1 for "no result"); vectors are ``(N, D)``
    float32. ``upsert`` is idempotent, so replaying a stream after a crash changes nothing.
    """

    dim: int
    kind: IndexKind
    nlist: int
    threads: int
    #: Lists given by the caller (``on_centroids``): never re-trained or re-fit here.
    _fixed: bool = False

    def __init__(
        self,
        dim: int,
        kind: IndexKind = "flat",
        *,
        nlist: int = 1024,
        nprobe: int = 16,
        threads: int = 1,
    ) -> None:
        if dim <= 0:
            raise IndexStoreError(f"dim must be positive, got {dim}")
        if kind not in get_args(IndexKind):
            raise IndexStoreError(f"kind must be one of {get_args(IndexKind)}, got {kind!r}")
        if nlist < 1 or nprobe < 1 or threads < 1:
            raise IndexStoreError(
                f"nlist, nprobe and threads must be >= 1, got {nlist}, {nprobe}, {threads}"
            )
        self.dim = dim
        self.kind = kind
        self.nlist = nlist  # upper bound; the list count actually used is chosen at training
        self.threads = threads
        self._nprobe = nprobe
        self._lock = threading.Lock()
        self._live: set[int] = set()
        # Exactly one of these is set: the flat index (kind "flat", or "ivf" before training),
        # or the trained IVF index.
        self._flat: faiss.IndexIDMap2 | None = _new_flat(dim)
        self._ivf: faiss.IndexIVFFlat | None = None
        #: id -> position in the flat index's storage, built on demand; None after any removal.
        self._pos: dict[int, int] | None = None
        #: Vectors the IVF was last trained on (0: not trained).
        self._trained_n = 0
        #: While ``refit`` trains new lists off the lock: ids written meanwhile (None otherwise).
        self._changed: set[int] | None = None

    @classmethod
    def on_centroids(cls, centroids: npt.ArrayLike, *, nprobe: int = 16, threads: int = 1) -> VectorIndex:
        """An "ivf" index whose lists are the given centroids ``(nlist, D)``: trained from the start, never re-trained.

        Why: serving replicas of one model version must put every item in the same list as each
        other (so that they answer alike), whatever order the items reach each of them in; so
        the lists come with the version (the trainer's), not from a k-means over what a replica
        happened to hold. Not for ``save``/``load`` (a loaded index forgets that its lists are fixed).
        """
        c = np.asarray(centroids)
        if c.ndim != 2 or c.shape[0] < 1:
            raise IndexStoreError(f"centroids must be (nlist >= 1, D), got shape {c.shape}")
        out = cls(int(c.shape[1]), "ivf", nlist=int(c.shape[0]), nprobe=nprobe, threads=threads)
        xc = out._as_vectors(c, "centroids")
        quantizer = faiss.IndexFlatIP(out.dim)
        quantizer.add(xc)
        ivf = faiss.IndexIVFFlat(quantizer, out.dim, out.nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.set_direct_map_type(_fx.DirectMap.Hashtable)
        ivf.nprobe = min(nprobe, out.nlist)
        assert ivf.is_trained
        out._ivf, out._flat, out._fixed = ivf, None, True
        return out

    # ------------------------------------------------------------------ sizing

    @staticmethod
    def choose_kind(expected_items: int) -> IndexKind:
        """Pick "flat" below 50k expected items, "ivf" above.

        Why: a flat scan is exact and needs no training, but reads all N vectors per query and
        deletes in O(N). IVF keeps query cost roughly O(N * nprobe / nlist) and deletes O(1), at
        a small recall cost (docs/benchmarks.md: recall@10 against exact search, nprobe 16).
        """
        return "flat" if expected_items < FLAT_MAX_ITEMS else "ivf"

    @property
    def nprobe(self) -> int:
        """Lists probed per IVF query (ignored by flat search); settable to trade speed for recall."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if value < 1:
            raise IndexStoreError(f"nprobe must be >= 1, got {value}")
        with self._lock:
            self._nprobe = value
            if self._ivf is not None:
                self._ivf.nprobe = min(value, self._ivf.nlist)

    @property
    def is_trained(self) -> bool:
        """True once an "ivf" index has trained (always True for "flat")."""
        return self.kind == "flat" or self._ivf is not None

    def _nlist_for(self, n: int) -> int:
        """Lists to train for n vectors: ~4*sqrt(n) (the Faiss guideline), capped at `nlist`."""
        return max(1, min(self.nlist, int(4 * math.sqrt(n))))

    # ----------------------------------------------------------------- writes

    def upsert(self, ids: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Insert or replace vectors.

        ids ``(N,)`` non-negative ints, vectors ``(N, D)`` float (cast to float32). Existing ids
        are removed first, because Faiss would otherwise keep both copies. When an id occurs
        twice in one call, the last row wins.
        """
        ids_ = _as_ids(ids)
        if ids_.size and int(ids_.min()) < 0:
            bad = sorted({int(i) for i in ids_[ids_ < 0]})
            raise IndexStoreError(f"ids must be >= 0 (Faiss reserves -1), got {bad[:10]}")
        xb = self._as_vectors(vectors, "vectors")
        if xb.shape[0] != ids_.shape[0]:
            raise IndexStoreError(
                f"got {ids_.shape[0]} ids but {xb.shape[0]} vectors; shapes must be (N,), (N, D)"
            )
        n = ids_.shape[0]
        if n == 0:
            return
        # Last row wins: unique over the reversed ids gives each id's last occurrence.
        uniq, first_in_rev = np.unique(ids_[::-1], return_index=True)
        if uniq.shape[0] != n:
            keep = n - 1 - first_in_rev
            ids_, xb = ids_[keep], np.ascontiguousarray(xb[keep])
        id_list = ids_.tolist()
        # The coarse assignment (which list each vector joins) is most of an IVF add: ~1.5 ms of
        # 1.8 ms for 200 vectors at 100k items. Done here, off the lock, searches go on meanwhile.
        # Safe: a re-fit or re-train builds a new index and swaps it, never changes this one's
        # quantizer, and holding ``ivf`` keeps it alive; the assignment is used only if ``ivf``
        # is still the index once the lock is held.
        ivf = self._ivf
        assign: Ids | None = None
        if ivf is not None:
            self._set_threads()
            assign = np.ascontiguousarray(ivf.quantizer.assign(xb, 1).ravel(), dtype=np.int64)
        with self._lock:
            live = self._live
            existing = [i for i in id_list if i in live]
            index = self._active()
            self._set_threads()
            if existing and self._ivf is None:
                # Flat: overwrite stored vectors in place. remove_ids is O(N) (a scan, a compaction
                # and a full rebuild of IndexIDMap2's reverse map): 3.3 ms for 50 ids at 100k.
                assert self._flat is not None
                new = np.fromiter((i not in live for i in id_list), dtype=bool, count=len(id_list))
                pos = self._positions()
                store = _flat_storage(self._flat)
                store[[pos[i] for i in existing]] = xb[~new]
                ids_, xb = ids_[new], np.ascontiguousarray(xb[new])
                existing = []
            if existing:
                _remove(index, np.asarray(existing, dtype=np.int64))
            if ids_.shape[0]:
                start = int(index.ntotal)
                if assign is not None and index is ivf:
                    ivf.add_core(ids_.shape[0], faiss.swig_ptr(np.ascontiguousarray(xb)),
                                 faiss.swig_ptr(np.ascontiguousarray(ids_)), faiss.swig_ptr(assign))
                else:
                    index.add_with_ids(xb, ids_)
                if self._pos is not None and self._ivf is None:
                    self._pos.update(zip(ids_.tolist(), range(start, start + ids_.shape[0])))
            live.update(id_list)
            if self._changed is not None:
                self._changed.update(id_list)
            if self._ivf is None and self.kind == "ivf":
                self._maybe_train()
            elif self._ivf is not None and not self._fixed and len(live) >= RETRAIN_GROWTH * self._trained_n:
                self._retrain_locked()  # blocks this call (~1 s per 100k vectors), rarely: O(log N) times

    def delete(self, ids: npt.ArrayLike) -> int:
        """Remove ids; returns how many were actually stored. Unknown ids are ignored."""
        ids_ = _as_ids(ids)
        with self._lock:
            present = sorted({i for i in ids_.tolist() if i in self._live})
            if not present:
                return 0
            self._set_threads()
            removed = _remove(self._active(), np.asarray(present, dtype=np.int64))
            self._pos = None  # flat storage was compacted: positions moved
            if removed != len(present):  # pragma: no cover - would mean _live drifted from Faiss
                raise IndexStoreError(
                    f"faiss removed {removed} of {len(present)} live ids; index is inconsistent"
                )
            self._live.difference_update(present)
            if self._changed is not None:
                self._changed.update(present)
            return len(present)

    def retrain(self) -> None:
        """Re-train IVF centroids on the vectors stored now (no-op for "flat").

        Why: in a streaming two-tower model the item tower keeps learning, so centroids fit to
        early embeddings drift away from where items are now and recall drops. Calling this
        after a large re-embedding (or when the catalog has grown a lot) re-fits them, with
        the list count re-chosen for the current size. Costs a full k-means and re-add.
        """
        with self._lock:
            if self.kind != "ivf" or self._fixed:
                return
            if self._ivf is None:
                self._maybe_train()
                return
            self._retrain_locked()

    def refit(self) -> bool:
        """Re-train IVF lists on the vectors stored now, holding the lock only to copy and to swap.

        Why: lists are fit to the embeddings of their training time; once the towers have moved
        every item (the rolling and periodic re-embedding), queries probe the wrong lists
        (measured: recall@10 0.33 at 100k items after 248k interactions, 0.975 after a re-fit).
        ``retrain`` holds the index for the whole k-means (8 s at 100k); here searches and
        upserts go on meanwhile, and ids written during the fit are copied over before the swap.
        Returns False when there was nothing to do (flat, untrained, or a re-fit in progress).
        """
        with self._lock:
            if self._ivf is None or self._fixed or self._changed is not None:
                return False
            ids_ = np.fromiter(self._live, dtype=np.int64, count=len(self._live))
            if ids_.size == 0:
                return False
            self._set_threads()
            xb = self._ivf.reconstruct_batch(ids_)
            self._changed = set()
        try:
            fresh = self._build_ivf(ids_, xb)
        except BaseException:
            with self._lock:
                self._changed = None
            raise
        with self._lock:
            changed, self._changed = self._changed, None
            old = self._ivf
            if old is None:  # pragma: no cover - an IVF index never goes back to flat
                return False
            if changed:
                ch = np.fromiter(changed, dtype=np.int64, count=len(changed))
                _remove(fresh, ch)
                now = ch[np.fromiter((i in self._live for i in ch.tolist()), dtype=bool, count=ch.size)]
                if now.size:
                    fresh.add_with_ids(old.reconstruct_batch(now), now)
            self._ivf = fresh
            self._trained_n = int(ids_.shape[0])
        return True

    def _retrain_locked(self) -> None:
        """Re-train a trained IVF on everything stored now (caller holds the lock, or owns self)."""
        assert self._ivf is not None
        ids_ = np.fromiter(self._live, dtype=np.int64, count=len(self._live))
        if ids_.size == 0:
            return
        self._set_threads()
        xb = self._ivf.reconstruct_batch(ids_)
        self._ivf = self._build_ivf(ids_, xb)
        self._trained_n = int(ids_.shape[0])

    # ------------------------------------------------------------------ reads

    def search(
        self,
        xq: npt.ArrayLike,
        k: int,
        exclude: Sequence[Collection[int]] | None = None,
        *,
        allow: npt.NDArray[np.bool_] | None = None,
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """Top-k by inner product.

        xq ``(B, D)`` -> ``(D (B, k) float32 scores, I (B, k) int64 ids)``, best first; rows with
        fewer than k results are padded with score -inf and id -1. ``exclude[b]`` holds ids that
        must not appear in row b (items the user has seen). ``allow`` (indexed by id; ids past
        its end count as not allowed) keeps results to the ids it marks, inside the search (a
        Faiss bitmap selector), so a business filter that removes a user's whole neighbourhood
        still gets k results: a trained IVF probes more lists until it has k or has probed them
        all. Exact for "flat" (and for "ivf" before it trains); for trained "ivf" as good as its
        nprobe.
        """
        q = self._as_vectors(xq, "xq")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise IndexStoreError(f"k must be a positive int, got {k!r}")
        k = int(k)
        nq = q.shape[0]
        if exclude is not None and len(exclude) != nq:
            raise IndexStoreError(f"exclude has {len(exclude)} rows but xq has {nq} queries")
        D = np.full((nq, k), _NEG_INF, dtype=np.float32)
        I = np.full((nq, k), -1, dtype=np.int64)
        if nq == 0:
            return D, I
        with self._lock:
            n_live = len(self._live)
            if n_live == 0:
                return D, I
            index = self._active()
            if allow is not None:
                self._search_allowed(index, q, k, allow, exclude, D, I)
            elif exclude is None:
                self._set_threads()
                Dk, Ik = index.search(q, min(k, n_live))
                D[:, : Ik.shape[1]], I[:, : Ik.shape[1]] = Dk, Ik
            else:
                self._search_excluding(index, q, k, exclude, D, I)
        missing = I < 0
        I[missing] = -1
        D[missing] = _NEG_INF  # Faiss pads with -FLT_MAX; -inf is unambiguous
        return D, I

    def _search_allowed(
        self,
        index: faiss.Index,
        q: Vectors,
        k: int,
        allow: npt.NDArray[np.bool_],
        exclude: Sequence[Collection[int]] | None,
        D: npt.NDArray[np.float32],
        I: Ids,
    ) -> None:
        """Fill D, I with the best ids that ``allow`` marks and ``exclude[b]`` does not (caller holds the lock)."""
        n = len(allow)
        packed = np.packbits(allow, bitorder="little")  # bit i of byte i >> 3: Faiss' IDSelectorBitmap
        ivf = index if isinstance(index, faiss.IndexIVF) else None
        self._set_threads()
        for b in range(q.shape[0]):
            bitmap = packed
            ex = np.fromiter((int(x) for x in exclude[b]), dtype=np.int64) if exclude is not None else None
            if ex is not None and ex.size:
                ex = ex[(ex >= 0) & (ex < n)]
                bitmap = packed.copy()
                np.bitwise_and.at(bitmap, ex >> 3, ~np.left_shift(1, ex & 7).astype(np.uint8))
            sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))  # its size is in bytes
            nprobe = ivf.nprobe if ivf is not None else 0
            while True:
                params = _selecting(index, sel, nprobe)
                Db, Ib = index.search(np.ascontiguousarray(q[b : b + 1]), k, params=params)
                del params
                if ivf is None or Ib[0, -1] >= 0 or nprobe >= ivf.nlist:
                    break
                nprobe = min(nprobe * WIDEN_FACTOR, ivf.nlist)
            D[b], I[b] = Db[0], Ib[0]
            del sel, bitmap  # the selector reads the bitmap: both outlive the search

    def _search_excluding(
        self,
        index: faiss.Index,
        q: Vectors,
        k: int,
        exclude: Sequence[Collection[int]],
        D: npt.NDArray[np.float32],
        I: Ids,
    ) -> None:
        """Fill D, I with results that skip `exclude[b]` (caller holds the lock)."""
        live = self._live
        n_live = len(live)
        # Only live excluded ids can take a result slot, so only they count toward over-fetch.
        live_excl = [[i for i in {int(x) for x in ex} if i in live] for ex in exclude]
        counts = np.array([len(ex) for ex in live_excl], dtype=np.int64)
        small = np.flatnonzero(counts <= OVERFETCH_LIMIT)
        if small.size:
            kk = min(k + int(counts[small].max()), n_live)
            self._set_threads()
            Dk, Ik = index.search(np.ascontiguousarray(q[small]), kk)
            for row, b in enumerate(small.tolist()):
                ids_row = Ik[row]
                if counts[b]:  # a set, not np.isin: ~5 us against ~80 us on these sizes (sorting)
                    banned = set(live_excl[b])
                    picked = [j for j, i in enumerate(ids_row.tolist()) if i >= 0 and i not in banned][:k]
                    sel = np.asarray(picked, dtype=np.int64)
                else:
                    sel = np.arange(min(k, kk))
                D[b, : sel.size], I[b, : sel.size] = Dk[row, sel], ids_row[sel]
        for b in np.flatnonzero(counts > OVERFETCH_LIMIT).tolist():
            kb = min(k, n_live - int(counts[b]))
            if kb <= 0:
                continue
            banned_sel = faiss.IDSelectorBatch(np.asarray(live_excl[b], dtype=np.int64))
            allowed = faiss.IDSelectorNot(banned_sel)
            params = _selecting(index, allowed, index.nprobe if isinstance(index, faiss.IndexIVF) else 0)
            self._set_threads()
            Db, Ib = index.search(np.ascontiguousarray(q[b : b + 1]), kb, params=params)
            D[b, :kb], I[b, :kb] = Db[0], Ib[0]
            del params, allowed, banned_sel  # selectors must outlive the search call

    def get(self, ids: npt.ArrayLike) -> Vectors:
        """Stored vectors for ids ``(N,)`` -> ``(N, D)`` float32; UnknownId if any is not stored."""
        ids_ = _as_ids(ids)
        with self._lock:
            unknown = [i for i in ids_.tolist() if i not in self._live]
            if unknown:
                raise UnknownId(unknown)
            if ids_.size == 0:
                return np.empty((0, self.dim), dtype=np.float32)
            self._set_threads()
            return self._active().reconstruct_batch(ids_)

    def ids(self) -> Ids:
        """Live ids ``(N,)`` int64, sorted."""
        with self._lock:
            out = np.fromiter(self._live, dtype=np.int64, count=len(self._live))
        out.sort()
        return out

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, id_: object) -> bool:
        return isinstance(id_, (int, np.integer)) and int(id_) in self._live

    def __repr__(self) -> str:
        state = "" if self.is_trained else ", untrained"
        return f"VectorIndex(dim={self.dim}, kind={self.kind!r}, n={len(self)}{state})"

    # ------------------------------------------------------------ persistence

    def copy(self) -> VectorIndex:
        """An independent copy as of now: a checkpoint writes it while this index keeps changing."""
        out = VectorIndex.__new__(VectorIndex)
        with self._lock:
            out.__dict__.update(self.__dict__)
            out._lock = threading.Lock()
            out._live = set(self._live)
            out._pos = None
            out._changed = None
            out._flat = cast("faiss.IndexIDMap2", faiss.clone_index(self._flat)) if self._flat is not None else None
            out._ivf = cast("faiss.IndexIVFFlat", faiss.clone_index(self._ivf)) if self._ivf is not None else None
        return out

    def centroids(self) -> Vectors:
        """The IVF coarse quantizer's centroids ``(nlist, dim)``; ``(0, dim)`` while the index is exact.

        Published with each model version, so that every serving replica buckets items alike.
        """
        with self._lock:
            ivf = self._ivf
            if ivf is None:
                return np.zeros((0, self.dim), dtype=np.float32)
            out: Vectors = np.asarray(ivf.quantizer.reconstruct_n(0, ivf.nlist), dtype=np.float32)
        return out

    def save(self, path: Path) -> None:
        """Write the index to `path` atomically (tmp file, fsync, os.replace).

        Format: a magic line, a length-prefixed JSON header (kind, dim, nlist, nprobe, whether
        IVF has trained) and then ``faiss.write_index`` output. The header exists because a
        Faiss file alone cannot say "IVF, not trained yet" (that state is a flat index) and does
        not store nprobe.
        """
        path = Path(path)
        header = json.dumps(
            {
                "format": 1,
                "kind": self.kind,
                "dim": self.dim,
                "nlist": self.nlist,
                "nprobe": self._nprobe,
                "trained": self._ivf is not None,
                "trained_n": self._trained_n,
            }
        ).encode()
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            with self._lock, open(tmp, "wb") as f:
                f.write(_MAGIC + _HEADER_LEN.pack(len(header)) + header)
                writer = _fx.PyCallbackIOWriter(f.write)
                self._set_threads()
                faiss.write_index(self._active(), writer)
                del writer  # flushes its buffer into f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)

    @classmethod
    def load(cls, path: Path, *, threads: int = 1) -> VectorIndex:
        """Read an index written by `save`; IndexStoreError if the file is not one."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                if f.read(len(_MAGIC)) != _MAGIC:
                    raise IndexStoreError(f"{path} is not a towerstream vector index file")
                (n,) = _HEADER_LEN.unpack(f.read(_HEADER_LEN.size))
                header: dict[str, Any] = json.loads(f.read(n))
                if header.get("format") != 1:
                    raise IndexStoreError(f"{path}: unsupported format {header.get('format')!r}")
                reader = _fx.PyCallbackIOReader(f.read)
                # read_index already returns the concrete subclass and owns it; do not
                # downcast_index() it, the downcast wrapper would not own the C++ object.
                index = faiss.read_index(reader)
                del reader
        except IndexStoreError:
            raise
        except (OSError, RuntimeError, ValueError, struct.error, KeyError) as e:
            raise IndexStoreError(f"cannot read vector index {path}: {e}") from e

        self = cls(
            int(header["dim"]),
            cast(IndexKind, header["kind"]),
            nlist=int(header["nlist"]),
            nprobe=int(header["nprobe"]),
            threads=threads,
        )
        if index.d != self.dim:
            raise IndexStoreError(f"{path}: header says dim {self.dim}, index has {index.d}")
        if header["trained"]:
            if not isinstance(index, faiss.IndexIVFFlat):
                raise IndexStoreError(f"{path}: expected IndexIVFFlat, got {type(index).__name__}")
            if index.direct_map.type != _fx.DirectMap.Hashtable:
                index.set_direct_map_type(_fx.DirectMap.Hashtable)
            index.nprobe = min(self._nprobe, index.nlist)
            self._ivf, self._flat = index, None
            live = _ivf_ids(index)
            # Files written before "trained_n" existed: infer it from the list count (4*sqrt(n)),
            # unless the count hit the cap (then assume it was trained on what it holds).
            est = (index.nlist / 4) ** 2 if index.nlist < self.nlist else live.shape[0]
            self._trained_n = int(header.get("trained_n") or est)
        else:
            if not isinstance(index, faiss.IndexIDMap2):
                raise IndexStoreError(f"{path}: expected IndexIDMap2, got {type(index).__name__}")
            self._flat = index
            live = faiss.vector_to_array(index.id_map).astype(np.int64)
        self._live = set(live.tolist())
        if len(self._live) != live.shape[0]:
            raise IndexStoreError(f"{path}: index holds duplicate ids")
        if self._ivf is not None and len(self._live) >= RETRAIN_GROWTH * self._trained_n:
            self._retrain_locked()  # grew a lot since the last training: re-fit now, before serving
        return self

    # -------------------------------------------------------------- internals

    def _active(self) -> faiss.Index:
        index: faiss.Index | None = self._ivf if self._ivf is not None else self._flat
        assert index is not None
        return index

    def _positions(self) -> dict[int, int]:
        """id -> position in the flat storage (caller holds the lock; O(N) once, then kept up to date)."""
        if self._pos is None:
            assert self._flat is not None
            ids_ = faiss.vector_to_array(self._flat.id_map).astype(np.int64)
            self._pos = dict(zip(ids_.tolist(), range(ids_.shape[0])))
        return self._pos

    def _set_threads(self) -> None:
        faiss.omp_set_num_threads(self.threads)

    def _as_vectors(self, x: npt.ArrayLike, name: str) -> Vectors:
        """Check `x` is ``(N, D)`` finite floats once, here, before anything reaches C++."""
        a = np.asarray(x)
        if a.ndim != 2:
            raise IndexStoreError(f"{name} must be 2-D (N, {self.dim}), got shape {a.shape}")
        if a.shape[1] != self.dim:
            raise DimensionMismatch(self.dim, a.shape[1])
        if a.size and a.dtype.kind != "f":
            raise IndexStoreError(f"{name} must be floating point, got {a.dtype}")
        with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf: caught next
            out = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(out).all():
            rows = np.flatnonzero(~np.isfinite(out).all(axis=1))
            raise IndexStoreError(f"{name} has NaN/inf (or overflows float32) in rows {rows[:10].tolist()}")
        return out

    def _maybe_train(self) -> None:
        """Train IVF once the buffer holds enough points for the list count (caller holds lock)."""
        flat = self._flat
        assert flat is not None
        n = int(flat.ntotal)
        if n < MIN_POINTS_PER_LIST * self._nlist_for(n):
            return
        self._set_threads()
        xb = faiss.downcast_index(flat.index).reconstruct_n(0, n)
        ids_ = faiss.vector_to_array(flat.id_map).astype(np.int64)
        self._ivf = self._build_ivf(ids_, xb)
        self._trained_n = int(ids_.shape[0])
        self._flat = None

    def _build_ivf(self, ids_: Ids, xb: Vectors) -> faiss.IndexIVFFlat:
        """Train a fresh IVF on xb ``(N, D)`` and add it under ids ``(N,)``; the caller records ``_trained_n``."""
        nlist = self._nlist_for(ids_.shape[0])
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.set_direct_map_type(_fx.DirectMap.Hashtable)
        self._set_threads()
        ivf.train(xb)  # k-means seed is fixed by Faiss (ClusteringParameters.seed), so reproducible
        ivf.nprobe = min(self._nprobe, nlist)
        ivf.add_with_ids(xb, ids_)
        log.info("trained IVF: %d lists on %d vectors of dim %d", nlist, ids_.shape[0], self.dim)
        return ivf


def _new_flat(dim: int) -> faiss.IndexIDMap2:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _flat_storage(index: faiss.IndexIDMap2) -> Vectors:
    """The vectors of an ``IndexIDMap2(IndexFlat)`` as a writable ``(ntotal, d)`` view (no copy).

    Valid until the next add (the storage may move); take it under the lock, use it at once.
    """
    flat = _fx.downcast_index(index.index)
    n, d = int(flat.ntotal), int(flat.d)
    if n == 0:
        return np.empty((0, d), dtype=np.float32)
    return cast(Vectors, _fx.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d))


def _as_ids(ids: npt.ArrayLike) -> Ids:
    """Check ids are a 1-D integer array ``(N,)`` and return them as contiguous int64."""
    a = np.asarray(ids)
    if a.ndim != 1:
        raise IndexStoreError(f"ids must be 1-D (N,), got shape {a.shape}")
    if a.size == 0:
        return np.empty(0, dtype=np.int64)
    if a.dtype.kind not in "iu":
        raise IndexStoreError(f"ids must be integers, got dtype {a.dtype}")
    if a.dtype.kind == "u" and int(a.max()) > np.iinfo(np.int64).max:
        raise IndexStoreError("ids must fit in int64")
    return np.ascontiguousarray(a, dtype=np.int64)


def _remove(index: faiss.Index, ids: Ids) -> int:
    """index.remove_ids for an id array ``(N,)``; returns how many Faiss removed."""
    return int(cast(Any, index).remove_ids(ids))


def _ivf_ids(index: faiss.IndexIVF) -> Ids:
    """Every id stored in an IVF index's inverted lists ``(N,)``."""
    invlists: Any = index.invlists
    parts: list[Ids] = []
    for list_no in range(index.nlist):
        size = invlists.list_size(list_no)
        if size:
            ptr = invlists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(ptr, size).astype(np.int64))  # copies
            invlists.release_ids(list_no, ptr)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

