"""The serving replica's core (``towerstream.replica``), fed records written from a real trainer.

What it must hold: its user vector is the trainer's; its answers are the brute-force top-k of one
version; two replicas fed the same records in different partition interleavings answer alike; a
version switch is atomic under concurrent queries; a version is switched to only once complete.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from towerstream.events import Filters, Interaction
from towerstream.events.recommend import RecommendRequest
from towerstream.published import (
    VERSION_KEY, VersionComplete, encode_item_vector, encode_model_part, pack_model, part_key, split_model, unpack_model,
)
from towerstream.replica import Replica
from tests.unit.replica_log import (
    ITEM_PARTITIONS, Log, interactions, item_id, item_partition, item_vector, payload, train, trainer, user_id,
)

N_USERS = 30
N_ITEMS = 120


def feed_all(rep: Replica, log: Log, events: list[Interaction] = ()) -> None:  # type: ignore[assignment]
    rep.apply_model_records(log.model)
    for recs in log.items:
        rep.apply_item_records(recs)
    rep.apply_interactions(events)


def brute_force(log: Log, version: int, uvec: np.ndarray, k: int, exclude: set[str]) -> list[tuple[str, float]]:
    ids = sorted(i for i in log.vectors[version] if i not in exclude)
    xb = np.stack([log.vectors[version][i] for i in ids])
    scores = xb @ uvec
    order = np.argsort(-scores, kind="stable")[:k]
    return [(ids[j], float(scores[j])) for j in order]


def seen(events: list[Interaction], user: str) -> set[str]:
    return {e.item_id for e in events if e.user_id == user}


def assert_same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


def answer(rep: Replica, user: str, k: int = 10, **kw: object) -> list[tuple[str, float]]:
    resp = rep.recommend(RecommendRequest(user_id=user, k=k, **kw))  # type: ignore[arg-type]
    return [(s.item_id, s.score) for s in resp.items]


def test_the_replicas_user_vector_is_the_trainers() -> None:
    tr = trainer()
    log = Log()
    log.publish(tr, 1, N_USERS)
    rep = Replica()
    events = interactions(tr, range(N_USERS))
    feed_all(rep, log, events)
    assert rep.version == 1
    rows = np.arange(N_USERS)
    want = tr.embed_users(rows)
    for r in rows.tolist():
        got = rep.user_vector(user_id(r))
        assert got is not None and got[0] == 1
        np.testing.assert_allclose(got[1], want[r], atol=2e-5)
    ctx: dict[str, object] = {"device": "tv", "hour": 21}
    got_ctx = rep.user_vector(user_id(1), ctx)
    assert got_ctx is not None
    np.testing.assert_allclose(got_ctx[1], tr.embed_users(np.array([1]), [ctx])[0], atol=2e-5)
    assert not np.allclose(got_ctx[1], want[1], atol=1e-4)  # the context does move it


@pytest.mark.parametrize("nlist,nprobe", [(0, 1), (8, 8)], ids=["flat", "ivf-all-lists"])
def test_answers_are_the_brute_force_top_k_of_the_version(nlist: int, nprobe: int) -> None:
    tr = trainer()
    log = Log()
    log.publish(tr, 1, N_USERS, nlist=nlist, nprobe=nprobe)
    rep = Replica()
    events = interactions(tr, range(N_USERS))
    feed_all(rep, log, events)
    uvecs = tr.embed_users(np.arange(N_USERS))
    model_answers = 0
    for r in range(N_USERS):
        u = user_id(r)
        resp = rep.recommend(RecommendRequest(user_id=u, k=10))
        assert resp.model_version == 1
        if resp.source != "model":
            continue
        model_answers += 1
        assert_same([(s.item_id, s.score) for s in resp.items], brute_force(log, 1, uvecs[r], 10, seen(events, u)))
        # Not excluding seen items: the plain top-k.
        assert_same(answer(rep, u, exclude_seen=False), brute_force(log, 1, uvecs[r], 10, set()))
    assert model_answers >= N_USERS - 2


def test_filters_are_applied_inside_the_search_and_exactly_for_small_categories() -> None:
    tr = trainer()
    log = Log()
    log.publish(tr, 1, N_USERS, nlist=8, nprobe=1)
    rep = Replica()
    events = interactions(tr, range(N_USERS))
    feed_all(rep, log, events)
    uvec = tr.embed_users(np.array([3]))[0]
    u = user_id(3)
    # genre1 holds items 1, 5, 9, ...: scored exactly over them.
    got = answer(rep, u, k=5, filters=Filters(include_categories=["genre1"]))
    genre1 = {item_id(r) for r in range(N_ITEMS) if r % 4 != 1}
    assert_same(got, brute_force(log, 1, uvec, 5, seen(events, u) | genre1))
    # Excluding three creators leaves studio3's items only: a filter that empties most lists
    # still gets k results (the search widens).
    others = {item_id(r) for r in range(N_ITEMS) if r % 4 != 3}
    got = answer(rep, u, k=8, filters=Filters(exclude_creators=["studio0", "studio1", "studio2"]))
    assert len(got) == 8 and {i for i, _ in got}.isdisjoint(others)
    excl = [i for i, _ in answer(rep, u, k=3)]
    assert not set(excl) & {i for i, _ in answer(rep, u, k=10, filters=Filters(exclude_items=excl))}


def interleave(parts: list[list[object]], order: str) -> list[object]:
    """One list from several: each part's own order kept, the parts' mixed as ``order`` says."""
    out: list[object] = []
    queues = [list(p) for p in parts]
    if order == "sequential":
        for q in queues:
            out.extend(q)
    elif order == "reversed":
        for q in reversed(queues):
            out.extend(q)
    else:  # round robin, one at a time, from the last part first
        while any(queues):
            for q in reversed(queues):
                if q:
                    out.append(q.pop(0))
    return out


def test_replicas_fed_different_interleavings_answer_alike() -> None:
    tr = trainer(n_items=N_ITEMS)
    log = Log()
    log.publish(tr, 1, N_USERS, nlist=8, nprobe=2)
    # Between versions: upserts (tagged 1), a delete; then version 2 with more training.
    for row in (3, 7):
        log.put_item(item_vector(row, 1, tr.embed_items(np.array([row]))[0]), item_id(row))
    log.put_item(None, item_id(11))
    tr.remove_items(np.array([11]))
    train(tr, 3, N_USERS, N_ITEMS, seed=5)
    log.publish(tr, 2, N_USERS, nlist=8, nprobe=2)
    events = interactions(tr, range(N_USERS))
    # Interactions on two partitions, keyed by user; plus a redelivered event.
    by_part: list[list[Interaction]] = [[e for e in events if int(e.user_id[1:]) % 2 == p] for p in range(2)]
    by_part[1].append(by_part[1][0])

    def run(order: str, chunk: int) -> Replica:
        rep = Replica()
        item_recs = interleave([list(p) for p in log.items], order)
        model_recs = list(log.model)
        evs = interleave([list(p) for p in by_part], order)
        # Model records go in at different points of the item stream (partition positions per batch).
        step = max(1, len(item_recs) // 7)
        for s in range(0, len(item_recs), chunk):
            rep.apply_item_records(item_recs[s : s + chunk])  # type: ignore[arg-type]
            if s // chunk % 3 == (0 if order == "sequential" else 2):
                rep.apply_model_records(model_recs[: len(model_recs) * (s + step) // len(item_recs)])
                model_recs = model_recs[len(model_recs) * (s + step) // len(item_recs):]
            rep.apply_interactions(evs[s // 4 : (s + chunk) // 4])  # type: ignore[arg-type]
        rep.apply_model_records(model_recs)
        rep.apply_interactions(evs[len(item_recs) // 4 :])  # type: ignore[arg-type]
        return rep

    a, b, c = run("sequential", 25), run("reversed", 40), run("robin", 7)
    sa, sb, sc = a.status(), b.status(), c.status()
    assert sa["version"] == sb["version"] == sc["version"] == 2
    assert sa["items_digest"] == sb["items_digest"] == sc["items_digest"]
    assert sa["items"] == N_ITEMS - 1 and item_id(11) not in {i for i, _ in answer(a, user_id(2), k=N_ITEMS)}
    users = [user_id(r) for r in range(N_USERS + 5)]  # the last five are unknown: popularity
    requests: list[dict[str, object]] = [
        {}, {"exclude_seen": False}, {"filters": Filters(exclude_categories=["genre0"])},
        {"filters": Filters(include_categories=["genre2"])}, {"context": {"device": "tv"}},
    ]
    sources = set()
    for u in users:
        for kw in requests:
            ra = a.recommend(RecommendRequest(user_id=u, k=10, **kw))  # type: ignore[arg-type]
            for other in (b, c):
                ro = other.recommend(RecommendRequest(user_id=u, k=10, **kw))  # type: ignore[arg-type]
                assert (ra.source, ra.fallback_reason, ra.model_version) == (ro.source, ro.fallback_reason, ro.model_version)
                assert_same([(s.item_id, s.score) for s in ra.items], [(s.item_id, s.score) for s in ro.items])
            sources.add(ra.source)
    assert sources == {"model", "popularity"}


def test_equal_scores_are_ordered_by_item_id_whatever_rows_the_replica_gave_them() -> None:
    """Items with the same vector score the same; the index orders them by row, and rows are
    assigned in arrival order, which differs between replicas. Seen in the end-to-end test
    (``tests/integration/test_replicas.py``): two real replicas swapped two items of one answer.
    Here three items tie for the first place, arriving in opposite orders at two replicas, and
    k cuts through the tie."""
    from towerstream.published import ItemVector

    tr = trainer(n_items=N_ITEMS)
    log = Log()
    log.publish(tr, 1, N_USERS)
    ref = Replica()
    feed_all(ref, log)
    top_id = answer(ref, user_id(3), k=1, exclude_seen=False)[0][0]
    top = log.vectors[1][top_id]
    twins = [t for t in (f"twin-{n}" for n in range(40)) if item_partition(t.encode()) != item_partition(b"twin-0")]
    for key in ("twin-0", twins[0]):
        log.put_item(ItemVector(key, 1, top.copy(), ("genre0",), None, key), key)
    log.model = [r for r in log.model if r[2] != VERSION_KEY]  # completed below, with the twins in
    log.complete(1, len(log.model), N_ITEMS + 2)

    def run(parts: list[list[object]]) -> Replica:
        rep = Replica()
        rep.apply_model_records(log.model)
        for recs in parts:
            rep.apply_item_records(recs)  # type: ignore[arg-type]
        return rep

    a, b = run(list(log.items)), run(list(reversed(log.items)))
    assert a.version == b.version == 1
    tied = sorted([top_id, "twin-0", twins[0]])
    for k in (2, 3, 10):
        got_a, got_b = answer(a, user_id(3), k=k, exclude_seen=False), answer(b, user_id(3), k=k, exclude_seen=False)
        assert got_a == got_b
        assert [i for i, _ in got_a[:3]] == tied[:k]


def test_a_switch_is_atomic_under_concurrent_queries() -> None:
    tr = trainer()
    log = Log()
    log.publish(tr, 1, N_USERS, nlist=4, nprobe=4)
    rep = Replica()
    events = interactions(tr, range(N_USERS))
    feed_all(rep, log, events)
    uvecs = {1: tr.embed_users(np.arange(N_USERS))}
    ends, n_model = log.end_offsets(), len(log.model)
    hist = tr.user_hist.copy(), tr.user_hist_n.copy()
    train(tr, 4, N_USERS, N_ITEMS, seed=9)
    tr.user_hist, tr.user_hist_n = hist  # the histories the replica holds: no interactions reach it
    log.publish(tr, 2, N_USERS, nlist=4, nprobe=4)
    uvecs[2] = tr.embed_users(np.arange(N_USERS))
    assert not np.allclose(uvecs[1], uvecs[2], atol=1e-3)
    answers: list[tuple[int, int, list[tuple[str, float]]]] = []
    stop = threading.Event()

    def query() -> None:
        n = 0
        while not stop.is_set():
            r = n % N_USERS
            resp = rep.recommend(RecommendRequest(user_id=user_id(r), k=10))
            answers.append((r, resp.model_version, [(s.item_id, s.score) for s in resp.items]))
            n += 1

    t = threading.Thread(target=query)
    t.start()
    try:
        rep.apply_model_records(log.model[n_model:-1])
        for p, recs in enumerate(log.items):  # the sweep of version 2, in small batches
            for s in range(ends[p], len(recs), 5):
                rep.apply_item_records(recs[s : s + 5])
        assert rep.version == 1  # its VersionComplete is not in yet
        while len(answers) < 50 and t.is_alive():  # on a loaded machine the thread may start late
            stop.wait(0.01)
        before = len(answers)
        rep.apply_model_records(log.model[-1:])
        assert rep.version == 2
        target = len(answers) + 200
        while len(answers) < target and t.is_alive():
            stop.wait(0.01)
    finally:
        stop.set()
        t.join()
    assert before > 0
    assert {v for _, v, _ in answers} == {1, 2}
    for r, v, got in answers:
        assert_same(got, brute_force(log, v, uvecs[v][r], 10, seen(events, user_id(r))))


def test_a_version_is_switched_to_only_with_every_part_its_completion_and_its_item_offsets() -> None:
    tr = trainer()
    log = Log()
    log.publish(tr, 1, N_USERS, part_bytes=3000)
    parts, done = log.model[:-1], log.model[-1:]
    assert len(parts) > 2
    rep = Replica()
    for recs in log.items:
        rep.apply_item_records(recs)
    rep.apply_model_records(parts[:-1] + done)
    assert rep.version is None and rep.status()["waiting_for"]["parts"] == f"{len(parts) - 1}/{len(parts)}"
    resp = rep.recommend(RecommendRequest(user_id=user_id(1)))
    assert (resp.source, resp.fallback_reason, resp.model_version) == ("popularity", "no model version yet", 0)
    rep.apply_model_records(parts[-1:])
    assert rep.version == 1

    # Version 2: all parts and its completion, but one item partition not read to its offset.
    rep2 = Replica()
    log.publish(tr, 2, N_USERS)
    short = max(range(ITEM_PARTITIONS), key=lambda p: len(log.items[p]))
    rep2.apply_model_records(log.model)
    for p, recs in enumerate(log.items):
        rep2.apply_item_records(recs[:-1] if p == short else recs)
    assert rep2.version is None
    assert rep2.status()["waiting_for"]["item_records_behind"] == {str(short): 1}
    rep2.set_item_positions({short: len(log.items[short])})  # e.g. a compacted gap the consumer passed
    assert rep2.version == 2
    assert rep2.status()["items"] == N_ITEMS - 1  # the record it skipped is that item's last


def test_tombstones_delete_everywhere_and_older_versions_are_ignored() -> None:
    tr = trainer()
    log = Log()
    log.publish(tr, 1, N_USERS)
    rep = Replica()
    feed_all(rep, log)
    ends, n_model = log.end_offsets(), len(log.model)
    log.publish(tr, 2, N_USERS, complete=False)  # version 2 arriving
    for p, recs in enumerate(log.items):
        rep.apply_item_records(recs[ends[p]:])
    rep.apply_model_records(log.model[n_model:])
    assert rep.status()["pending"] == [2]
    gone = item_id(5)
    p = item_partition(gone.encode())
    log.put_item(None, gone)
    rep.apply_item_records(log.items[p][-1:])
    assert rep.item(gone) is None
    assert rep.item(item_id(6)) == {
        "item_id": item_id(6), "version": 1, "categories": ["genre2"], "creator": "studio2", "title": "title 6"}
    # An item record of version 0 (older than the active one) changes nothing.
    stale = item_vector(5, 0, np.ones(tr.cfg.dim, dtype=np.float32) / np.sqrt(tr.cfg.dim))
    rep.apply_item_records([(p, len(log.items[p]), gone.encode(), encode_item_vector(stale))])
    assert rep.item(gone) is None and rep.status()["skipped"]["item-vectors"]["superseded"] == 1
    log.complete(2, len(log.model) - n_model, N_ITEMS - 1)
    rep.apply_model_records(log.model[-1:])
    assert rep.version == 2 and rep.status()["pending"] == []
    assert rep.item(gone) is None and rep.status()["items"] == N_ITEMS - 1
    assert rep.item(item_id(6))["version"] == 2  # type: ignore[index]


@pytest.mark.parametrize("nlist,nprobe", [(0, 1), (8, 8)], ids=["flat", "ivf-all-lists"])
def test_an_interaction_is_reflected_at_once_and_a_redelivered_one_changes_nothing(nlist: int, nprobe: int) -> None:
    tr = trainer()
    log = Log()
    log.publish(tr, 1, N_USERS, nlist=nlist, nprobe=nprobe)
    rep = Replica()
    events = interactions(tr, range(N_USERS))
    feed_all(rep, log, events)
    for r in (0, 3, 7):
        u = user_id(r)
        before = rep.user_vector(u)
        top = answer(rep, u, k=3)
        took = Interaction(event_id=f"new-{r}", user_id=u, item_id=top[0][0], kind="click", ts=1_750_000_000_000)
        assert rep.apply_interactions([took]) == 1
        after = rep.user_vector(u)
        assert before is not None and after is not None and not np.allclose(before[1], after[1], atol=1e-4)
        got = answer(rep, u, k=10)
        assert top[0][0] not in {i for i, _ in got}
        assert_same(got, brute_force(log, 1, after[1], 10, seen(events, u) | {top[0][0]}))
        assert rep.apply_interactions([took]) == 0  # redelivered: applied once
        again = rep.user_vector(u)
        assert again is not None
        np.testing.assert_array_equal(again[1], after[1])
    assert rep.status()["skipped"]["interactions"]["duplicate"] == 3


def test_fallbacks_say_why_and_rank_by_interactions_then_item_id() -> None:
    tr = trainer()
    log = Log()
    log.publish(tr, 1, N_USERS)
    rep = Replica()
    rep.apply_interactions([
        Interaction(event_id=f"p{n}", user_id=f"x{n}", item_id=item_id(i), ts=1_700_000_000_000 + n)
        for n, i in enumerate([7, 7, 7, 2, 2, 9, 9, 4, 30])
    ])
    for recs in log.items:  # the items, not the model yet
        rep.apply_item_records(recs)
    resp = rep.recommend(RecommendRequest(user_id="nobody", k=4))
    assert (resp.source, resp.fallback_reason, resp.model_version) == ("popularity", "no model version yet", 0)
    assert [(s.item_id, s.score) for s in resp.items] == [("i7", 3.0), ("i2", 2.0), ("i9", 2.0), ("i30", 1.0)]
    rep.apply_model_records(log.model)
    resp = rep.recommend(RecommendRequest(user_id="nobody", k=6, filters=Filters(exclude_items=["i9"])))
    assert (resp.source, resp.fallback_reason, resp.model_version) == ("popularity", "unknown user", 1)
    # Then items nobody took, by item id.
    assert [s.item_id for s in resp.items] == ["i7", "i2", "i30", "i4", "i0", "i1"]
    # With a context, an unknown user gets a model answer (zero id row, no history).
    ctx = rep.recommend(RecommendRequest(user_id="nobody", k=3, context={"device": "tv"}))
    assert ctx.source == "model" and len(ctx.items) == 3


@pytest.mark.parametrize("damage", ["not a payload", "array missing", "weights transposed"])
def test_a_model_that_cannot_be_served_is_refused_and_visible(damage: str) -> None:
    tr = trainer()
    log = Log()
    log.publish(tr, 1, N_USERS)
    blob, _ = payload(tr, 1, N_USERS)
    arrays, meta = unpack_model(blob)
    if damage == "not a payload":
        blob = blob[: len(blob) // 2]
    elif damage == "array missing":
        del arrays["recent_logit"]
        blob = pack_model(arrays, meta)
    else:
        arrays["user_w2"] = arrays["user_w2"].T.copy()
        blob = pack_model(arrays, meta)
    parts = split_model(1, blob, 3000)
    rep = Replica()
    rep.apply_model_records([(0, n, part_key(pt.index), encode_model_part(pt)) for n, pt in enumerate(parts)]
                            + [(0, len(parts), VERSION_KEY, VersionComplete(1, len(parts), log.end_offsets(), N_ITEMS, 1, 2).encode())])
    for recs in log.items:
        rep.apply_item_records(recs)
    st = rep.status()
    assert rep.version is None and "1" in st["broken"] and st["skipped"]["model"]["bad model"] == 1
    resp = rep.recommend(RecommendRequest(user_id=user_id(1)))
    assert (resp.source, resp.fallback_reason) == ("popularity", "no model version yet")
    rep.apply_model_records([(0, 99, b"part-0", b"junk"), (0, 100, b"version", b"{")])
    assert rep.status()["skipped"]["model"]["undecodable"] == 2
