"""What an answer shows and why an item is in it: what the worker's engine and a serving replica share.

Pure numpy on what the caller already holds (the user vector, the item's indexed vector, the
vectors of the user's recent items), so that ``/explain`` says the same on a replica as on the
all-in-one worker. The vectors are the index's: an item is ``[sqrt(1 - b^2) * v, b]`` (``v`` the
item tower's unit output, ``b`` its exploration bonus) and a user ``[u, 1] / sqrt(2)``, so a
score is a sum of two parts that can be read off the last coordinate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt

from towerstream.events.recommend import (
    Filters,
    HistoryNeighbour,
    ItemField,
    ScoredItem,
    ScoreParts,
)
from towerstream.replica_model import item_tower_output

__all__ = ["NEAREST_SHOWN", "filter_reasons", "nearest_history", "place_in", "score_parts", "scored_items"]

F32 = npt.NDArray[np.float32]

#: History items an explanation lists at most.
NEAREST_SHOWN = 5


def scored_items(picked: Sequence[tuple[str, float]], shown: Sequence[tuple[str | None, Sequence[str]] | None] | None,
                 fields: Sequence[ItemField]) -> list[ScoredItem]:
    """An answer's items with the fields asked for; ``shown`` is ``(title, categories)`` per picked
    item (``None`` for one whose record is gone), and may be ``None`` when ``fields`` is empty."""
    if not fields or shown is None:
        return [ScoredItem(item_id=i, score=s) for i, s in picked]
    title, cats = "title" in fields, "categories" in fields
    return [ScoredItem(item_id=i, score=s, title=sh[0] if title and sh is not None else None,
                       categories=(list(sh[1]) if sh is not None else []) if cats else None)
            for (i, s), sh in zip(picked, shown)]


def score_parts(uvec: F32, x: F32) -> ScoreParts:
    """User vector ``(D,)`` and indexed item vector ``(D,)`` -> the score's parts (they sum to ``uvec @ x``)."""
    u = np.asarray(uvec, dtype=np.float64)
    v = np.asarray(x, dtype=np.float64)
    return ScoreParts(model=float(u[:-1] @ v[:-1]), exploration=float(u[-1] * v[-1]))


def nearest_history(x: F32, history: Sequence[str], vectors: Sequence[F32 | None],
                    title_of: Callable[[str], str | None], n: int = NEAREST_SHOWN) -> list[HistoryNeighbour]:
    """The ``n`` history items whose tower outputs are nearest the item's; ``vectors`` are the
    history items' indexed vectors (``None`` for one no longer indexed), in ``history``'s order."""
    have = [(i, v) for i, v in zip(history, vectors) if v is not None]
    if not have:
        return []
    seen: dict[str, F32] = {}
    for i, v in have:  # an item interacted with twice is listed once
        seen.setdefault(i, v)
    ids = list(seen)
    outs = item_tower_output(np.stack([x, *seen.values()]).astype(np.float32))
    sims = outs[1:] @ outs[0]
    order = sorted(range(len(ids)), key=lambda j: (-float(sims[j]), ids[j]))[:n]
    return [HistoryNeighbour(item_id=ids[j], title=title_of(ids[j]), similarity=float(sims[j])) for j in order]


def filter_reasons(item_id: str, categories: Sequence[str], creator: str | None, filters: Filters,
                   seen: bool) -> list[str]:
    """Why an answer leaves a live item out: the names of the filters it fails (see ``Explanation``)."""
    out: list[str] = []
    if seen:
        out.append("seen")
    if item_id in filters.exclude_items:
        out.append("exclude_items")
    if filters.include_categories and not any(c in filters.include_categories for c in categories):
        out.append("include_categories")
    if any(c in filters.exclude_categories for c in categories):
        out.append("exclude_categories")
    if creator is not None and creator in filters.exclude_creators:
        out.append("exclude_creators")
    return out


def place_in(answer: Iterable[tuple[str, float]], item_id: str) -> tuple[int | None, float | None]:
    """``(rank, score)`` of the item in the answer's ``(item_id, score)`` pairs (rank 1-based),
    ``(None, None)`` if it is not in it."""
    for n, (i, score) in enumerate(answer, 1):
        if i == item_id:
            return n, score
    return None, None
