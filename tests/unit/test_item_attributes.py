"""Item attributes (categories, creator) and category filters that score a category's rows directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index_store import ItemAttributes
from towers import TowerConfig
from towerstream.engine import Engine, EngineConfig
from towerstream.events import Filters, Interaction, ItemDelete, ItemUpsert

T0 = 1_700_000_000_000
SMALL = EngineConfig(tower=TowerConfig(dim=16, hidden=32, uniform_negatives=16, seed=3), index_kind="flat")


def test_rows_follow_upserts_that_change_categories_and_deletes() -> None:
    attrs = ItemAttributes()
    attrs.set(1, ["b", "a", "b"], "s1")
    assert attrs.get(1) == (("a", "b"), "s1")
    attrs.set(2, ["b"], None)
    attrs.set(3, ["c"], "s2")
    assert attrs.rows_in(["b"]).tolist() == [1, 2]
    assert attrs.rows_in(["a", "c"]).tolist() == [1, 3]
    assert attrs.count(["a", "b"]) == 3  # with repeats: an upper bound
    attrs.set(1, ["c"], "s3")  # moved out of a and b
    assert attrs.rows_in(["a"]).tolist() == [] and attrs.rows_in(["b"]).tolist() == [2]
    assert attrs.rows_in(["c"]).tolist() == [1, 3]
    assert attrs.get(1) == (("c",), "s3")
    attrs.remove(3)
    attrs.remove(99)  # unknown: nothing happens
    attrs.set(5000, ["c"], None)  # past the initial capacity
    attrs.remove(5000)
    assert attrs.get(3) is None and attrs.rows_in(["c"]).tolist() == [1]
    back = ItemAttributes.from_state(attrs.state())
    assert back.rows_in(["b", "c"]).tolist() == [1, 2] and back.get(2) == (("b",), None)
    assert len(back) == 2


def test_allowed_rows_follow_every_write_after_the_mask_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    import index_store.item_attributes as ia

    attrs = ItemAttributes()
    for r in range(10):
        attrs.set(r, [f"g{r % 2}"], f"s{r % 3}")

    def expected(include: set[str], exclude: set[str], creators: set[str]) -> list[int]:
        out = []
        for r in range(len(attrs._ids)):
            got = attrs.get(r)
            if got is None:
                continue
            cats, creator = got
            if (not include or set(cats) & include) and not set(cats) & exclude and creator not in creators:
                out.append(r)
        return out

    checks = [(set(), {"g0"}, set()), ({"g1"}, set(), {"s0"}), (set(), set(), {"s2"}), ({"g0", "new"}, set(), set())]

    def check() -> None:
        for inc, exc, cr in checks:
            assert np.flatnonzero(attrs.allowed(inc, exc, cr)).tolist() == expected(inc, exc, cr)

    check()
    attrs.set(3, ["g0"], "s1")  # changes category: cached masks must see it
    attrs.remove(4)
    attrs.set(12, ["new"], "s9")  # a new combination, judged when first seen
    check()
    monkeypatch.setattr(ia, "JOURNAL_MAX", 2)  # a trimmed journal: the masks are rebuilt whole
    for r in (0, 1, 2, 5):
        attrs.set(r, ["g1"], "s0")
    attrs.set(3000, ["g0"], None)  # the rows grow: a longer mask
    check()
    assert len(attrs.allowed(set(), {"g0"}, set())) == len(attrs._ids)


def catalog(eng: Engine, n: int = 400) -> None:
    # One tiny category ("rare": 3 items) among n items of 4 big ones.
    eng.apply_items([ItemUpsert(item_id=f"i{i}", title=f"w{i % 7} x{i % 11}", ts=T0,
                                categories=["rare"] if i in (5, 150, 390) else [f"g{i % 4}"],
                                creator=f"s{i % 3}") for i in range(n)])
    eng.learn([Interaction(event_id=f"e{n_}", user_id=f"u{n_ % 9}", item_id=f"i{(7 * n_) % n}", ts=T0 + n_)
               for n_ in range(300)])


def exact_top(eng: Engine, user: str, rows: list[int], k: int) -> list[str]:
    uvec = eng.trainer.embed_users(np.array([eng.users.get(user)]))[0]
    vecs = eng.index.get(np.array(rows))
    order = np.argsort(-(vecs @ uvec), kind="stable")[:k]
    return eng.items.external([rows[j] for j in order])


def test_a_small_category_is_scored_exactly_whatever_its_rank_in_the_catalog(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    catalog(eng)
    rare_rows = [eng.items.get(f"i{i}") for i in (5, 150, 390)]
    rec = eng.recommend("u1", 2, filters=Filters(include_categories=["rare"]), exclude_seen=False)
    assert rec.source == "model"
    assert [i for i, _ in rec.items] == exact_top(eng, "u1", rare_rows, 2)
    # Combined with other filters and seen items.
    eng.learn([Interaction(event_id="seen", user_id="u1", item_id=rec.items[0][0], ts=T0 + 10_000)])
    rec2 = eng.recommend("u1", 5, filters=Filters(include_categories=["rare", "g1"], exclude_creators=["s0"]))
    got = [i for i, _ in rec2.items]
    assert rec.items[0][0] not in got and len(got) == 5
    for item_id in got:
        n = int(item_id[1:])
        assert (n in (5, 150, 390) or n % 4 == 1) and n % 3 != 0
    # An empty (or unknown) category answers nothing from the model, at once.
    assert eng.recommend("u1", 5, filters=Filters(include_categories=["nope"])).items == []


def test_category_changes_and_deletes_reach_the_filter(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    catalog(eng)
    rare = Filters(include_categories=["rare"])
    eng.apply_items([ItemUpsert(item_id="i5", title="w5", categories=["g1"], ts=T0 + 1)])
    eng.apply_items([ItemDelete(item_id="i150", op="delete", ts=T0 + 1)])
    assert {i for i, _ in eng.recommend("u1", 5, filters=rare, exclude_seen=False).items} == {"i390"}
    eng.apply_items([ItemUpsert(item_id="i7", title="new", categories=["rare"], ts=T0 + 2)])
    assert {i for i, _ in eng.recommend("u1", 5, filters=rare, exclude_seen=False).items} == {"i390", "i7"}


@pytest.mark.parametrize("old_checkpoint", [False, True])
def test_attributes_survive_a_restart(tmp_path: Path, old_checkpoint: bool) -> None:
    eng = Engine.open(tmp_path, SMALL)
    catalog(eng)
    eng.apply_items([ItemDelete(item_id="i150", op="delete", ts=T0 + 1)])
    snap = eng.snapshot()
    if old_checkpoint:  # written before attributes were kept: they come back from the item records
        del snap.engine["attributes"]
    eng.write_snapshot(snap)
    eng.close()
    back = Engine.open(tmp_path, SMALL)
    assert back.attributes.rows_in(["rare"]).tolist() == sorted(back.items.get(f"i{i}") for i in (5, 390))
    assert back.attributes.get(back.items.get("i3")) == (("g3",), "s0")
    assert len(back.attributes) == 399
