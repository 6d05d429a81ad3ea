"""Answers a person can read (issue 19): titles and categories, the score's scale, ``/explain``.

Both places queries are answered are checked: a serving replica's core (fed records a real
trainer published) and the worker's engine. What an explanation says is checked against
numbers computed here from the published vectors, not against the code's own arithmetic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.unit.replica_log import Log, interactions, item_id, trainer, user_id
from tests.unit.test_engine import SMALL, click, item
from tests.unit.test_replica import feed_all
from towerstream.engine import Engine
from towerstream.events import Filters, Interaction, RecommendResponse
from towerstream.events.recommend import RECOMMEND_SCHEMA_VERSION, RecommendRequest
from towerstream.replica import Replica

N_USERS = 30
N_ITEMS = 120
ROW = {item_id(r): r for r in range(N_ITEMS)}


@pytest.fixture(scope="module")
def served() -> tuple[Replica, Log, list[Interaction]]:
    tr = trainer()
    events = interactions(tr, range(N_USERS))
    log = Log()
    log.publish(tr, 1, N_USERS)
    rep = Replica()
    feed_all(rep, log, events)
    assert rep.version == 1
    return rep, log, events


def _json(resp: RecommendResponse) -> dict[str, object]:
    out: dict[str, object] = json.loads(resp.model_dump_json())
    return out


def test_a_replicas_items_carry_the_published_title_and_categories(served: tuple[Replica, Log, list[Interaction]]) -> None:
    rep, _, _ = served
    body = _json(rep.recommend(RecommendRequest(user_id=user_id(3), k=10)))
    assert body["schema_version"] == RECOMMEND_SCHEMA_VERSION and body["score_scale"] == "cosine"
    items = body["items"]
    assert isinstance(items, list) and len(items) == 10
    for it in items:  # replica_log.item_vector publishes row r as "title r", genre r % 4
        r = ROW[it["item_id"]]
        assert it["title"] == f"title {r}" and it["categories"] == [f"genre{r % 4}"], it


def test_fields_trims_what_an_item_carries(served: tuple[Replica, Log, list[Interaction]]) -> None:
    rep, _, _ = served
    full = rep.recommend(RecommendRequest(user_id=user_id(3), k=5))
    bare = _json(rep.recommend(RecommendRequest(user_id=user_id(3), k=5, fields=[])))
    titled = _json(rep.recommend(RecommendRequest(user_id=user_id(3), k=5, fields=["title"])))
    base = {"schema_version", "item_id", "score"}
    assert [set(it) for it in bare["items"]] == [base] * 5  # type: ignore[union-attr]
    assert [set(it) for it in titled["items"]] == [base | {"title"}] * 5  # type: ignore[union-attr]
    # Trimming changes what is shown, never which items or scores.
    assert [(i["item_id"], i["score"]) for i in bare["items"]] == [(i.item_id, i.score) for i in full.items]  # type: ignore[index, union-attr]


def test_a_popularity_answer_says_its_scores_are_counts(served: tuple[Replica, Log, list[Interaction]]) -> None:
    rep, _, events = served
    resp = rep.recommend(RecommendRequest(user_id="nobody", k=5))
    assert resp.source == "popularity" and resp.score_scale == "interactions"
    counts: dict[str, int] = {}
    for e in events:
        counts[e.item_id] = counts.get(e.item_id, 0) + 1
    assert [it.score for it in resp.items] == [float(counts[it.item_id]) for it in resp.items]
    assert all(it.title == f"title {ROW[it.item_id]}" for it in resp.items)


def test_a_replicas_explanation_adds_up_to_the_answer(served: tuple[Replica, Log, list[Interaction]]) -> None:
    rep, log, events = served
    user = user_id(5)
    req = RecommendRequest(user_id=user, k=10)
    answer = rep.recommend(req)
    history = [e.item_id for e in events if e.user_id == user]
    for rank, it in enumerate(answer.items[:3], 1):
        ex = rep.explain(req, it.item_id)
        assert (ex.rank, ex.model_version, ex.source, ex.title) == (rank, 1, "model", f"title {ROW[it.item_id]}")
        assert ex.answer_score == it.score and ex.parts is not None and ex.model_score is not None
        assert math.isclose(ex.model_score, it.score, abs_tol=1e-5)
        assert math.isclose(ex.parts.model + ex.parts.exploration, it.score, abs_tol=1e-5)
        # The bonus channel: users are [u, 1] / sqrt(2), items [sqrt(1 - b^2) v, b].
        x = log.vectors[1][it.item_id]
        assert math.isclose(ex.parts.exploration, float(x[-1]) / math.sqrt(2), abs_tol=1e-5)
        assert ex.filtered_by == []
        near = ex.nearest_history
        assert near and {h.item_id for h in near} <= set(history)

        def cos(a: str, vb: np.ndarray = x) -> float:
            va = log.vectors[1][a]
            ua, ub = va[:-1] / np.sqrt(1 - va[-1] ** 2), vb[:-1] / np.sqrt(1 - vb[-1] ** 2)
            return float(ua @ ub)

        want = sorted(set(history), key=lambda h: -cos(h))[: len(near)]
        assert [h.item_id for h in near] == want
        assert all(math.isclose(h.similarity, cos(h.item_id), abs_tol=1e-4) for h in near)


def test_a_replicas_explanation_names_the_filters_that_leave_an_item_out(
        served: tuple[Replica, Log, list[Interaction]]) -> None:
    rep, _, events = served
    user = user_id(5)
    top = rep.recommend(RecommendRequest(user_id=user, k=1)).items[0].item_id
    ex = rep.explain(RecommendRequest(user_id=user, k=10, filters=Filters(exclude_items=[top])), top)
    assert ex.rank is None and ex.answer_score is None and ex.filtered_by == ["exclude_items"]
    assert ex.model_score is not None  # the model's view of the pair is still given
    other = f"genre{(ROW[top] + 1) % 4}"
    ex = rep.explain(RecommendRequest(user_id=user, k=10, filters=Filters(include_categories=[other])), top)
    assert ex.rank is None and ex.filtered_by == ["include_categories"]
    seen_item = next(e.item_id for e in events if e.user_id == user)
    ex = rep.explain(RecommendRequest(user_id=user, k=10), seen_item)
    assert "seen" in ex.filtered_by and ex.rank is None
    ex = rep.explain(RecommendRequest(user_id=user, k=10), "no-such-item")
    assert ex.filtered_by == ["not live"] and ex.model_score is None


def test_the_workers_answers_and_explanations_read_alike(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, SMALL)
    try:
        eng.apply_items([item(i) for i in range(40)])
        eng.learn([click(n, n % 6, (n * 7) % 40) for n in range(300)])
        rec, resp = eng.respond(RecommendRequest(user_id="u1", k=5))
        assert resp.source == "model" and resp.score_scale == "cosine" and len(resp.items) == 5
        for it in resp.items:  # test_engine.item: title "w{i%4}x1 w{i%4}x2", genre i % 4
            i = int(it.item_id[1:])
            assert it.title == f"w{i % 4}x1 w{i % 4}x2" and it.categories == [f"genre{i % 4}"], it
        assert [(it.item_id, it.score) for it in resp.items] == rec.items
        _, bare = eng.respond(RecommendRequest(user_id="u1", k=5, fields=[]))
        assert all(it.title is None and it.categories is None for it in bare.items)
        _, pop = eng.respond(RecommendRequest(user_id="nobody", k=5))
        assert pop.source == "popularity" and pop.score_scale == "decayed_interactions"

        top = resp.items[0]
        ex = eng.explain("u1", top.item_id, 5)
        assert ex.rank == 1 and ex.model_version == eng.model_version and ex.parts is not None
        assert ex.model_score is not None and math.isclose(ex.model_score, top.score, abs_tol=1e-4)
        row = eng.items.get(top.item_id)
        assert row is not None
        b = float(eng.index.get(np.array([row]))[0][-1])
        assert math.isclose(ex.parts.exploration, b / math.sqrt(2), abs_tol=1e-5)
        clicked = {f"i{(n * 7) % 40}" for n in range(300) if n % 6 == 1}
        assert ex.nearest_history and {h.item_id for h in ex.nearest_history} <= clicked
        ex = eng.explain("u1", top.item_id, 5, filters=Filters(exclude_items=[top.item_id]))
        assert ex.rank is None and ex.filtered_by == ["exclude_items"]
        ex = eng.explain("u1", next(iter(clicked)), 5)
        assert "seen" in ex.filtered_by and ex.rank is None
        assert eng.explain("u1", "no-such-item", 5).filtered_by == ["not live"]
    finally:
        eng.close()


def test_a_version_1_answer_still_parses_and_a_version_1_reader_refuses_version_2() -> None:
    v1 = {"schema_version": 1, "user_id": "u1", "items": [{"item_id": "i1", "score": 0.5}], "source": "model",
          "model_version": 3, "served_at_ms": 1}
    got = RecommendResponse.model_validate(v1)
    assert got.score_scale is None and got.items[0].title is None
    with pytest.raises(ValueError):
        RecommendResponse.model_validate({**v1, "schema_version": RECOMMEND_SCHEMA_VERSION + 1})
