"""A serving replica reports the drift of what it served (``streams.replica_drift``).

Fed records written from a real trainer (``tests.unit.replica_log``), the replica answers real
queries; its report counts exactly those answers, over the active version's live items, and says
nothing of learning (that is the trainer's part of the drift stream).
"""

from __future__ import annotations

import pytest

from streams.replica_drift import ReplicaDrift, replica_source
from tests.unit.replica_log import Log, interactions, trainer, user_id
from towerstream.drift import DriftConfig, gini
from towerstream.events.recommend import RecommendRequest
from towerstream.replica import Replica
from towerstream.settings import Settings

N_USERS = 30


def test_a_replica_reports_what_it_served_over_its_live_items() -> None:
    tr = trainer()
    log = Log()
    log.publish(tr, 1, N_USERS)
    rep = Replica()
    rep.apply_model_records(log.model)
    for recs in log.items:
        rep.apply_item_records(recs)
    rep.apply_interactions(interactions(tr, range(N_USERS)))
    assert rep.version == 1
    settings = Settings(app_id="drifty", web_port=7123)
    drift = ReplicaDrift(settings, rep, DriftConfig(k=5))

    empty = drift.report(now_ms=1)
    assert (empty.served_lists, empty.coverage, empty.score_psi) == (0, None, None)
    assert empty.source == replica_source(settings) and empty.source.startswith("drifty.replica.")
    assert empty.source.endswith(":7123")

    served: dict[str, int] = {}
    for u in range(N_USERS):
        resp = rep.recommend(RecommendRequest(user_id=user_id(u), k=5))
        assert resp.source == "model"
        drift.observe(resp)
        for x in resp.items:
            served[x.item_id] = served.get(x.item_id, 0) + 1
    unknown = rep.recommend(RecommendRequest(user_id="nobody", k=5))
    assert unknown.source == "popularity"
    drift.observe(unknown)  # a list, counted for coverage; its scores are not model scores
    for x in unknown.items:
        served[x.item_id] = served.get(x.item_id, 0) + 1

    r = drift.report(now_ms=2)
    live = len(rep.active.items) if rep.active is not None else 0
    assert live == len(log.vectors[1]) > 0
    assert r.seq == 2 and r.model_version == 1 and r.served_lists == N_USERS + 1
    assert r.live_items == r.index_size == live
    assert r.coverage == pytest.approx(len(served) / live)
    assert r.gini == pytest.approx(gini(list(served.values()), zeros=live - len(served)))
    assert r.events == 0 and r.probes == 0 and r.hit_rate is None  # learning figures: the trainer's
    assert r.score_psi is None  # a first window of model scores has nothing to compare with

    # Same users again: the same scores, so no shift; the window starts afresh.
    for u in range(N_USERS):
        drift.observe(rep.recommend(RecommendRequest(user_id=user_id(u), k=5)))
    again = drift.report(now_ms=3)
    assert again.served_lists == N_USERS
    assert again.score_psi == pytest.approx(0.0, abs=1e-9)
    # An item deleted since it was served no longer counts as a live item served.
    gone = next(iter(served))
    log.put_item(None, gone)
    for recs in log.items:
        rep.apply_item_records(recs[-1:])
    assert rep.item(gone) is None
    pop = rep.recommend(RecommendRequest(user_id="nobody", k=5))
    drift.observe(pop)
    drift.served.observe([(gone, 0.5)], model=False)  # an answer given just before the delete
    after = drift.report(now_ms=4)
    assert after.live_items == live - 1 and after.served_lists == 2
    assert gone not in {x.item_id for x in pop.items}
    assert after.coverage == pytest.approx(len({x.item_id for x in pop.items}) / (live - 1))
