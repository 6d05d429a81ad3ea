"""The test-then-train protocol on toy models whose scores can be checked by hand."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from towerstream.evaluation import PrequentialScorer, evaluate, ranked_ids
from towerstream.events import Interaction, ItemDelete, ItemUpsert, UserProfile
from towerstream.recording import RecordedRecord, record_of
from towerstream.synthetic import StreamSpec, generate

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def item(i: int) -> RecordedRecord:
    return record_of("items", ItemUpsert(item_id=f"i{i}", title=f"t{i}", ts=T0), key=f"i{i}")


def inter(n: int, user: str, item_id: str) -> RecordedRecord:
    ev = Interaction(event_id=f"e{n}", user_id=user, item_id=item_id, ts=T0 + timedelta(seconds=n))
    return record_of("towerstream.interactions", ev, key=user)


class FixedRanker:
    """Always ranks i0, i1, i2... (seen items left out): the metrics follow by hand."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.seen: dict[str, set[str]] = defaultdict(set)
        self.learned: list[str] = []

    def apply_items(self, events: Sequence[ItemUpsert | ItemDelete]) -> None:
        for ev in events:
            if isinstance(ev, ItemDelete):
                self.items.remove(ev.item_id)
            else:
                self.items.append(ev.item_id)

    def apply_users(self, events: Sequence[UserProfile]) -> None:
        pass

    def recommend_many(self, user_ids: Sequence[str], k: int, *, exclude_seen: bool = True) -> list[Any]:
        return [[(i, 1.0) for i in self.items if i not in self.seen[u]][:k] for u in user_ids]

    def learn(self, events: Sequence[Interaction]) -> None:
        for ev in events:
            self.seen[ev.user_id].add(ev.item_id)
            self.learned.append(ev.event_id)


def toy_stream() -> list[RecordedRecord]:
    recs = [item(i) for i in range(60)]
    # Warm-up (6 of 12 events): i0 gets 5 interactions, so it is not cold afterwards.
    recs += [inter(n, f"w{n}", "i0") for n in range(5)] + [inter(5, "u1", "i5")]
    recs += [
        inter(6, "u1", "i0"),  # rank 0: hit@10, ndcg 1; not cold
        inter(7, "u1", "i7"),  # i0, i5 seen -> i1 i2 i3 i4 i6 i7: rank 5
        inter(8, "u2", "i55"),  # rank 55 of 60: miss@50 (cold)
        inter(9, "u3", "i30"),  # rank 30: hit@50 only (cold)
        inter(10, "u1", "i7"),  # repeat: not scored
        inter(11, "u3", "i1"),  # i30 seen: rank 1 (cold)
    ]
    return recs


@pytest.mark.parametrize("batch_size", [1, 2, 512])
def test_metrics_by_hand(batch_size: int) -> None:
    model = FixedRanker()
    rep = evaluate(toy_stream(), model, warmup=0.5, k=10, batch_size=batch_size)
    assert rep.n_events == 12 and rep.n_scored == 5 and rep.n_repeats == 1
    # FixedRanker learns seen items only per batch; the scorer drops same-batch earlier items itself,
    # so the figures do not depend on the batch size.
    ndcg = [1.0, 1 / math.log2(7), 0.0, 0.0, 1 / math.log2(3)]
    assert rep.hr_at_k == pytest.approx(3 / 5)
    assert rep.ndcg_at_k == pytest.approx(sum(ndcg) / 5)
    assert rep.hr_at_50 == pytest.approx(4 / 5)
    assert rep.n_cold == 4
    assert rep.cold_hr_at_k == pytest.approx(2 / 4)
    assert rep.cold_hr_at_50 == pytest.approx(3 / 4)
    assert rep.cold_ndcg_at_k == pytest.approx(sum(ndcg[1:]) / 4)
    # Top-10 lists: i0..i9 (u1 first), i1..i4,i6..i11 (u1), i1..i10 (u2), i0..i9 (u3), i0,i2..i10 (u3).
    assert rep.coverage_at_k == pytest.approx(12 / 60)
    assert model.learned == [f"e{n}" for n in range(12)]  # everything learned exactly once, in order


def test_item_records_are_applied_in_order() -> None:
    recs = [item(0), inter(0, "u", "i0"), inter(1, "v", "i0"), item(1)]
    recs += [record_of("items", ItemDelete(op="delete", item_id="i0", ts=T0), key="i0"), inter(2, "w", "i1")]
    model = FixedRanker()
    rep = evaluate(recs, model, warmup=0.5, k=1, batch_size=512)
    assert model.items == ["i1"]
    assert rep.hr_at_k == 1.0 and rep.n_items == 1


class Observer(FixedRanker):
    """Records calls, to check the cadence: history per event, one learn per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def recommend_many(self, user_ids: Sequence[str], k: int, *, exclude_seen: bool = True) -> list[Any]:
        self.calls.append(("recommend", tuple(user_ids)))
        return super().recommend_many(user_ids, k, exclude_seen=exclude_seen)

    def observe(self, events: Sequence[Interaction]) -> None:
        self.calls.append(("observe", tuple(ev.event_id for ev in events)))
        for ev in events:
            self.seen[ev.user_id].add(ev.item_id)

    def learn(self, events: Sequence[Interaction]) -> None:
        self.calls.append(("learn", tuple(ev.event_id for ev in events)))


def test_observe_keeps_history_current_within_a_batch() -> None:
    recs = [item(i) for i in range(5)]
    recs += [inter(0, "a", "i0"), inter(1, "a", "i1"), inter(2, "b", "i0"), inter(3, "a", "i2")]
    model = Observer()
    evaluate(recs, model, warmup=0.0, k=1, batch_size=512)
    assert model.calls == [
        ("recommend", ("a", "b")),
        ("observe", ("e0", "e2")),
        ("recommend", ("a",)),
        ("observe", ("e1",)),
        ("recommend", ("a",)),
        ("observe", ("e3",)),
        ("learn", ("e0", "e1", "e2", "e3")),
    ]


def test_scorer_drops_seen_and_counts_cold() -> None:
    sc = PrequentialScorer(k=2, long_k=3)
    ev = Interaction(event_id="x", user_id="u", item_id="b", ts=T0)
    sc.observe(Interaction(event_id="y", user_id="u", item_id="a", ts=T0))
    sc.score(ev, ["a", "c", "d", "b"])
    assert sc.summary()["hr_at_k"] == 0.0 and sc.summary()["hr_at_50"] == 1.0
    assert sc.n_cold == 1


def test_ranked_ids_accepts_every_shape() -> None:
    class Recs:
        items = [("a", 1.0), ("b", 0.5)]

    assert ranked_ids(["a", "b"]) == ranked_ids([("a", 1.0), ("b", 0.5)]) == ranked_ids(Recs()) == ["a", "b"]


class CountingPopularity(FixedRanker):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def recommend_many(self, user_ids: Sequence[str], k: int, *, exclude_seen: bool = True) -> list[Any]:
        order = sorted(self.items, key=lambda i: (-self.counts[i], i))
        return [[i for i in order if i not in self.seen[u]][:k] for u in user_ids]

    def learn(self, events: Sequence[Interaction]) -> None:
        super().learn(events)
        self.counts.update(ev.item_id for ev in events)


def test_evaluation_is_deterministic() -> None:
    spec = StreamSpec(users=40, items=60, interactions=1500, seed=3)
    a = evaluate(generate(spec), CountingPopularity(), batch_size=64).metrics()
    b = evaluate(generate(spec), CountingPopularity(), batch_size=64).metrics()
    assert a == b and a["n_scored"] > 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        evaluate([], FixedRanker(), warmup=1.0)
    with pytest.raises(ValueError):
        evaluate([], FixedRanker(), k=0)
