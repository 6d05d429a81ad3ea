"""External string ids <-> dense int64 rows, persisted in RocksDB, cached in memory.

Key layout (one key-prefix namespace per id kind, both directions persisted)::

    _idmap/<namespace>/e/<external id utf-8>   -> row, 8 bytes big-endian
    _idmap/<namespace>/r/<row 8 bytes big-endian> -> external id utf-8

Rows are big-endian so a prefix scan of ``r/`` yields rows in order: construction rebuilds the
cache with one sequential scan.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import rocksdict

from index_store.errors import IndexStoreError, UnknownId

__all__ = ["IdMap"]

ID_MAP_PREFIX = "_idmap/"


class IdMap:
    """External string ids <-> dense non-negative int64 rows, persisted in a rocksdict column family / key prefix. Rows are assigned 0,1,2,... in first-seen order and never reused (so embedding tables can grow without hash collisions).

    The whole map is cached in memory at construction, so a lookup is a dict access (~0.1 us),
    not a RocksDB read. Ints are accepted as external ids and mean the same as their decimal
    string. `db` must be opened with ``rocksdict.Options(raw_mode=True)`` (MetaStore does this).
    Thread-safe: assignment runs under a lock.
    """

    def __init__(self, db: rocksdict.Rdict, namespace: str) -> None:
        if not namespace or "/" in namespace:
            raise IndexStoreError(f"namespace must be non-empty and without '/', got {namespace!r}")
        self.namespace = namespace
        self._db = db
        base = f"{ID_MAP_PREFIX}{namespace}/".encode()
        self._fwd_prefix = base + b"e/"
        self._rev_prefix = base + b"r/"
        self._lock = threading.Lock()
        self._rows: dict[str, int] = {}
        # row -> external id; None marks a row that was assigned but never made durable
        # (a caller dropped the WriteBatch); such rows are skipped, never reused.
        self._external: list[str | None] = []
        self._load()

    def _load(self) -> None:
        it = self._db.iter()
        it.seek(self._rev_prefix)
        plen = len(self._rev_prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(self._rev_prefix):
                break
            row = int.from_bytes(key[plen:], "big")
            ext = bytes(it.value()).decode()
            if row >= len(self._external):
                self._external.extend([None] * (row + 1 - len(self._external)))
            self._external[row] = ext
            self._rows[ext] = row
            it.next()

    def get_or_create(
        self,
        ext_ids: Sequence[str | int],
        batch: rocksdict.WriteBatch | None = None,
    ) -> npt.NDArray[np.int64]:
        """Rows ``(N,)`` for ext_ids, assigning new rows to ids never seen.

        With `batch`, new mappings go into that WriteBatch and the caller must write it (so the
        mapping becomes durable atomically with the state that uses it). Until then only this
        process' cache knows them; if the process dies first, a fresh IdMap assigns those ids
        again, which is fine because nothing durable referred to the lost rows.
        Without `batch`, new mappings are written before this returns.
        """
        keys = [_norm(e) for e in ext_ids]
        out = np.empty(len(keys), dtype=np.int64)
        with self._lock:
            rows, external = self._rows, self._external
            new: list[tuple[str, int]] = []
            for i, ext in enumerate(keys):
                row = rows.get(ext)
                if row is None:
                    row = len(external)
                    rows[ext] = row
                    external.append(ext)
                    new.append((ext, row))
                out[i] = row
            if new:
                wb = batch if batch is not None else rocksdict.WriteBatch(raw_mode=True)
                try:
                    for ext, row in new:
                        enc, rb = ext.encode(), row.to_bytes(8, "big")
                        wb.put(self._fwd_prefix + enc, rb)
                        wb.put(self._rev_prefix + rb, enc)
                    if batch is None:
                        self._db.write(wb)
                except BaseException:
                    # Undo the cache so it never claims rows that were not persisted.
                    for ext, _ in new:
                        del rows[ext]
                    del external[len(external) - len(new) :]
                    raise
        return out

    def get(self, ext_id: str | int) -> int | None:
        """Row for ext_id, or None if it was never assigned."""
        return self._rows.get(_norm(ext_id))

    def rows(self, ext_ids: Sequence[str | int]) -> npt.NDArray[np.int64]:
        """Rows ``(N,)`` for ext_ids, -1 for unknown ids (never assigns)."""
        get = self._rows.get
        return np.fromiter((get(_norm(e), -1) for e in ext_ids), dtype=np.int64, count=len(ext_ids))

    def external(self, rows: Sequence[int] | npt.NDArray[np.integer]) -> list[str]:
        """External ids for rows ``(N,)``; UnknownId (an IndexStoreError) for unassigned rows."""
        external = self._external
        n = len(external)
        out: list[str] = []
        unknown: list[int] = []
        for r in np.asarray(rows, dtype=np.int64).reshape(-1).tolist():
            ext = external[r] if 0 <= r < n else None
            if ext is None:
                unknown.append(r)
            else:
                out.append(ext)
        if unknown:
            raise UnknownId(unknown, what=f"{self.namespace} row")
        return out

    def __len__(self) -> int:
        """Number of ids assigned (including ones still waiting in a caller's WriteBatch)."""
        return len(self._rows)

    def __contains__(self, ext_id: object) -> bool:
        return isinstance(ext_id, (str, int)) and _norm(ext_id) in self._rows

    def __repr__(self) -> str:
        return f"IdMap(namespace={self.namespace!r}, n={len(self)})"


def _norm(ext_id: str | int) -> str:
    """Ints are accepted as external ids and mean their decimal string."""
    if isinstance(ext_id, str):
        return ext_id
    if isinstance(ext_id, (int, np.integer)) and not isinstance(ext_id, bool):
        return str(int(ext_id))
    raise IndexStoreError(f"external ids must be str or int, got {type(ext_id).__name__}")
