"""Filter attributes of indexed items: categories and creator per row, and rows per category.

Business filters run after retrieval. For ``include_categories`` that is the wrong way round
when the category is small: the nearest neighbours hold none of its items, the search widens
over the catalog (60-200 ms at 5k-20k items, all of it holding the GIL) and still finds none
when the category is empty. With rows per category, a filtered query scores that category's
rows directly: exact, and O(category) instead of O(catalog). The per-row attributes also let
every other filter check a candidate without a RocksDB read and a JSON parse.

Memory: items share few distinct (categories, creator) combinations, so each combination is
stored once and a row holds its number (int32). A dict of per-row tuples took ~400 MB at 1M
items; this takes the int32 array plus the rows-per-category sets.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

#: Categories (sorted, distinct) and creator of one item.
Attributes = tuple[tuple[str, ...], "str | None"]
#: (include_categories, exclude_categories, exclude_creators)
_FilterKey = tuple[frozenset[str], frozenset[str], frozenset[str]]
#: Distinct filters whose masks are kept; past this the cache starts again.
MAX_CACHED_FILTERS = 64
#: Rows remembered as written since the masks were made; past this they are rebuilt whole.
JOURNAL_MAX = 65_536


def _attrs_pass(attrs: Attributes, include: Collection[str], exclude: Collection[str],
                creators: Collection[str]) -> bool:
    """The filters' meaning, for one item: any of ``include`` (when given), none of ``exclude``,
    a creator not in ``creators``."""
    cats, creator = attrs
    return ((not include or any(c in include for c in cats)) and not any(c in exclude for c in cats)
            and not (creator is not None and creator in creators))


class ItemAttributes:
    """Row -> (categories, creator) and category -> rows, updated with every upsert and delete.

    Pure and not thread-safe by itself: the engine mutates it under its own lock. Readers
    tolerate a row that changes while they look: a row's combination number is replaced whole,
    and the arrays grow by replacement.
    """

    def __init__(self) -> None:
        self._ids: npt.NDArray[np.int32] = np.full(1024, -1, dtype=np.int32)
        self._kinds: list[Attributes] = []
        self._kind_of: dict[Attributes, int] = {}
        self._rows: dict[str, set[int]] = {}
        self._n = 0
        #: filters -> pass/fail per combination number (``_judged``), and the row mask with the
        #: journal position it is current to (``allowed``).
        self._passing: dict[_FilterKey, npt.NDArray[np.bool_]] = {}
        self._masks: dict[_FilterKey, tuple[npt.NDArray[np.bool_], int]] = {}
        #: (position of the first entry, rows written since): replaced whole when it is trimmed,
        #: so a reader always gets a matching pair.
        self._journal: tuple[int, list[int]] = (0, [])

    def __len__(self) -> int:
        return self._n

    def get(self, row: int) -> Attributes | None:
        ids = self._ids
        k = int(ids[row]) if 0 <= row < len(ids) else -1
        return self._kinds[k] if k >= 0 else None

    def set(self, row: int, categories: Iterable[str], creator: str | None) -> None:
        """Replace the row's attributes (an upsert)."""
        attrs: Attributes = (tuple(sorted({sys.intern(c) for c in categories})),
                             sys.intern(creator) if creator else None)
        k = self._kind_of.get(attrs)
        if k is None:
            k = self._kind_of[attrs] = len(self._kinds)
            self._kinds.append(attrs)
        old = self.get(row)
        if old is None:
            self._n += 1
        else:
            for c in old[0]:
                if c not in attrs[0]:
                    self._discard(c, row)
        if row >= len(self._ids):
            grown = np.full(max(row + 1, 2 * len(self._ids)), -1, dtype=np.int32)
            grown[: len(self._ids)] = self._ids
            self._ids = grown
        self._ids[row] = k
        self._written(row)
        for c in attrs[0]:
            self._rows.setdefault(c, set()).add(row)

    def remove(self, row: int) -> None:
        """Forget the row (a delete)."""
        old = self.get(row)
        if old is not None:
            self._ids[row] = -1
            self._written(row)
            self._n -= 1
            for c in old[0]:
                self._discard(c, row)

    def _discard(self, category: str, row: int) -> None:
        rows = self._rows.get(category)
        if rows is not None:
            rows.discard(row)
            if not rows:
                del self._rows[category]

    def count(self, categories: Iterable[str]) -> int:
        """Rows in any of the categories, counted with repeats (an upper bound, O(#categories))."""
        return sum(len(self._rows.get(c, ())) for c in categories)

    def rows_in(self, categories: Iterable[str]) -> npt.NDArray[np.int64]:
        """Rows having at least one of the categories, sorted."""
        found: set[int] = set()
        for c in categories:
            rows = self._rows.get(c)
            if rows:
                found |= rows
        out = np.fromiter(found, dtype=np.int64, count=len(found))
        out.sort()
        return out

    def passes(self, row: int, include: Collection[str] = (), exclude: Collection[str] = (),
               exclude_creators: Collection[str] = ()) -> bool:
        """Does the row's item pass the filters (False where there is no item: deleted, or not applied yet)."""
        attrs = self.get(row)
        return attrs is not None and _attrs_pass(attrs, include, exclude, exclude_creators)

    def allowed(self, include: Iterable[str] = (), exclude: Iterable[str] = (),
                exclude_creators: Iterable[str] = ()) -> npt.NDArray[np.bool_]:
        """Per row: does its item pass the filters (False where there is no item).

        Why: a filtered search selects inside the index (``VectorIndex.search(allow=...)``)
        instead of over-fetching and widening. Items share few combinations, so each is judged
        once per filter; the row mask is kept per filter and only the rows written since the
        last call are looked at again (a full pass over 1M rows costs ~1 ms, a query's budget).
        The array is shared with later calls: read it at once, never write to it.
        """
        key = (frozenset(include), frozenset(exclude), frozenset(exclude_creators))
        base, log = self._journal  # before the rows: a write after this is in the next call's part
        end = base + len(log)
        table = self._judged(key)
        ids = self._ids
        hit = self._masks.get(key)
        if hit is None or hit[1] < base or len(hit[0]) != len(ids):
            mask = np.take(table, ids.astype(np.int64) + 1, mode="clip")
        else:
            mask, pos = hit
            if pos < end:
                rows = np.unique(np.asarray(log[pos - base : end - base], dtype=np.int64))
                rows = rows[rows < len(ids)]
                mask[rows] = np.take(table, ids[rows].astype(np.int64) + 1, mode="clip")
        if key not in self._masks and len(self._masks) >= MAX_CACHED_FILTERS:
            self._masks.clear()  # filters are few in practice; never let them pile up
        self._masks[key] = (mask, end)
        return mask

    def _judged(self, key: _FilterKey) -> npt.NDArray[np.bool_]:
        """Pass/fail per combination, shifted by one: [no item, kind 0..n-1, a kind not judged yet]."""
        kinds = self._kinds
        n_kinds = len(kinds)  # read once: a writer may append meanwhile
        table = self._passing.get(key)
        if table is not None and len(table) == n_kinds + 2:
            return table
        done = 0 if table is None else len(table) - 2
        fresh = np.zeros(n_kinds + 2, dtype=bool)
        if table is not None:
            fresh[1 : done + 1] = table[1 : done + 1]
        for j in range(done, n_kinds):
            fresh[j + 1] = _attrs_pass(kinds[j], *key)
        if key not in self._passing and len(self._passing) >= MAX_CACHED_FILTERS:
            self._passing.clear()
        self._passing[key] = fresh
        return fresh

    def _written(self, row: int) -> None:
        """Note a changed row for the cached masks (after ``_ids`` holds its new value)."""
        base, log = self._journal
        if len(log) >= JOURNAL_MAX:
            self._journal = (base + len(log), [row])  # masks older than this are rebuilt whole
        else:
            log.append(row)

    def state(self) -> dict[str, Any]:
        """A picklable copy (rows per category are rebuilt on load): a 4-byte-per-row array copy."""
        return {"ids": self._ids.copy(), "kinds": list(self._kinds)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ItemAttributes:
        out = cls()
        out._ids = np.asarray(state["ids"], dtype=np.int32).copy()
        out._kinds = [(tuple(c), cr) for c, cr in state["kinds"]]
        out._kind_of = {a: k for k, a in enumerate(out._kinds)}
        rows = np.flatnonzero(out._ids >= 0)
        out._n = len(rows)
        kinds = out._ids[rows]
        order = np.argsort(kinds, kind="stable")
        rows, kinds = rows[order], kinds[order]
        starts = np.flatnonzero(np.r_[True, kinds[1:] != kinds[:-1]]) if len(kinds) else np.zeros(0, dtype=np.int64)
        for s, e in zip(starts.tolist(), [*starts[1:].tolist(), len(kinds)]):
            members = rows[s:e].tolist()
            for c in out._kinds[int(kinds[s])][0]:
                out._rows.setdefault(c, set()).update(members)
        return out
