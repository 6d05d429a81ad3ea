"""A replica's items digest names the live set, whatever order the items came and went in."""

from __future__ import annotations

import random

import numpy as np

from tests.unit.replica_log import items_digest
from towerstream.published import ItemVector
from towerstream.replica_items import VersionItems


def expected(ids: set[str]) -> str:
    return items_digest(ids)


def test_the_digest_is_the_live_set_after_any_sequence_of_upserts_and_deletes() -> None:
    rng = random.Random(7)
    a = VersionItems(4, np.zeros((0, 4), dtype=np.float32), nprobe=1)
    live: set[str] = set()
    assert a.digest() == expected(set())
    for _ in range(300):
        item = f"i{rng.randrange(40)}"
        if rng.random() < 0.35:
            a.apply({item: None})
            live.discard(item)
        else:
            a.apply({item: ItemVector(item, 1, np.ones(4, dtype=np.float32), ("g",), None, "t")})
            live.add(item)
        assert a.digest() == expected(live)
    # The same live set built in another order (and without the history) gives the same digest.
    b = VersionItems(4, np.zeros((0, 4), dtype=np.float32), nprobe=1)
    for item in sorted(live, reverse=True):
        b.apply({item: ItemVector(item, 1, np.ones(4, dtype=np.float32), ("g",), None, "t")})
    assert b.digest() == a.digest() and len(b) == len(a) == len(live)
