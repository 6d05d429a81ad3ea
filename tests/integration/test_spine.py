"""The spine, end to end on a real broker: producer -> Kafka -> worker -> index -> /recommend."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer

from producers.producer import EventProducer
from producers.topics import ensure_topics
from tests.conftest import worker_settings
from towerstream.broker import EmbeddedBroker
from towerstream.events import DeadLetter, Interaction
from towerstream.processes import WorkerProcess, http_json
from towerstream.settings import Settings
from towerstream.synthetic import StreamSpec, generate, make_item

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]

SPEC = StreamSpec(users=100, items=200, interactions=6000, late_items=0.0, seed=3)


def produce_stream(settings: Settings, spec: StreamSpec) -> int:
    with EventProducer(settings) as prod:
        for rec in generate(spec):
            prod.send_raw(settings.topic(rec.logical_topic()), rec.key.encode() if rec.key else None,
                          rec.value_bytes(), timestamp_ms=rec.timestamp)
        summary = prod.flush(timeout=30)
    assert summary.failed == 0, summary.errors
    return summary.sent


def wait_for(worker: WorkerProcess, cond: Callable[[dict[str, Any]], bool], timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, got = worker.health()
        if isinstance(got, dict):
            body = got
            if cond(body):
                return body
        time.sleep(0.25)
    raise AssertionError(f"condition not met in {timeout}s; last health {body}")


def metric(worker: WorkerProcess, name: str, labels: str = "") -> float:
    import urllib.request

    text = urllib.request.urlopen(worker.base_url + "/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not labels or labels in line) and not line.startswith("#"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def trained(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One worker trained on a clustered stream, shared by the tests of this module."""
    data = tmp_path_factory.mktemp("spine")
    prefix = f"spine{int(time.time() * 1000) % 10**8}"
    settings = worker_settings(broker, data / "worker", prefix)
    ensure_topics(settings)
    worker = WorkerProcess(settings, log_path=data / "worker.log").start()
    worker.wait_ready(90)
    produce_stream(settings, SPEC)
    wait_for(worker, lambda b: b.get("trained_total", 0) >= SPEC.interactions and b.get("items_indexed", 0) >= SPEC.items
             and b.get("untrained_events") == 0)
    yield settings, worker
    worker.kill()  # nothing is asserted on its stop (as ``start_worker``): no graceful shutdown to wait for


def test_recommendations_follow_the_planted_clusters(trained: Any) -> None:
    settings, worker = trained
    seen: dict[str, set[str]] = {}
    for rec in generate(SPEC):
        if rec.logical_topic() == "interactions":
            seen.setdefault(rec.value["user_id"], set()).add(rec.value["item_id"])
    in_cluster, in_cluster_unseen = [], []
    for u in range(16):
        def cluster_share(items: list[dict[str, Any]]) -> float:
            return float(np.mean([int(it["item_id"][1:]) % SPEC.clusters == u % SPEC.clusters for it in items]))

        status, body = http_json(f"{worker.base_url}/recommend/u{u}?k=10&exclude_seen=false")
        assert status == 200, body
        assert body["source"] == "model" and len(body["items"]) == 10
        scores = [it["score"] for it in body["items"]]
        assert scores == sorted(scores, reverse=True)
        in_cluster.append(cluster_share(body["items"]))
        _, body = http_json(f"{worker.base_url}/recommend/u{u}?k=10")
        assert len(body["items"]) == 10
        assert not {it["item_id"] for it in body["items"]} & seen[f"u{u}"], "seen items must be excluded"
        in_cluster_unseen.append(cluster_share(body["items"]))
    # Random lists would hold 1/8 of the user's cluster; the model must find the structure. With
    # seen items excluded, users have already taken most of their 25-item cluster, which caps the
    # share, so there the bar is three times chance.
    assert np.mean(in_cluster) > 0.8, in_cluster
    assert np.mean(in_cluster_unseen) > 3 / SPEC.clusters, in_cluster_unseen


def test_new_item_is_recommended_from_its_content_before_any_interaction(trained: Any) -> None:
    settings, worker = trained
    rng = np.random.default_rng(11)
    found = 0
    for c in range(4):
        item = make_item(c, SPEC, rng, datetime.now(timezone.utc)).model_copy(
            update={"item_id": f"brand-new-{c}", "event_id": f"brand-new-{c}-v1"})
        status, body = http_json(worker.base_url + "/items", data=item.model_dump_json().encode(), method="POST")
        assert status == 202, body
        deadline = time.monotonic() + 20
        ids: list[str] = []
        while time.monotonic() < deadline and item.item_id not in ids:
            _, rec = http_json(f"{worker.base_url}/recommend/u{c + SPEC.clusters}?k=10")
            ids = [it["item_id"] for it in rec["items"]]
            time.sleep(0.2)
        found += item.item_id in ids
    # Cluster-matched content must put the new item in the top 10 of 200+ items for most users.
    assert found >= 3, found


def test_malformed_events_go_to_the_dead_letter_topic_and_processing_continues(trained: Any) -> None:
    settings, worker = trained
    before = wait_for(worker, lambda b: True)["trained_total"]
    bad = [b"not json at all", b'{"event_id": "x"}', b'{"event_id":"b1","user_id":"u1","item_id":"i1","ts":-1}']
    good = Interaction(event_id="after-bad-1", user_id="u1", item_id="i2", kind="click", ts=datetime.now(timezone.utc))
    with EventProducer(settings) as prod:
        for raw in bad:
            prod.send_raw(settings.topic("interactions"), b"u1", raw)
        prod.send_interaction(good)
        assert prod.flush(timeout=20).failed == 0
    wait_for(worker, lambda b: b["trained_total"] >= before + 1, timeout=30)
    consumer = KafkaConsumer(
        settings.topic("dead-letters"), bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
        consumer_timeout_ms=3000, fetch_max_wait_ms=50, group_id=None,
    )
    letters = [DeadLetter.model_validate_json(m.value) for m in consumer]
    consumer.close()
    by_original = {dl.original: dl for dl in letters}
    for raw in bad:
        assert raw in by_original, f"{raw!r} not dead-lettered; got {list(by_original)}"
        dl = by_original[raw]
        assert dl.source_topic == settings.topic("interactions") and dl.offset is not None and dl.offset >= 0
        assert dl.reason
    assert by_original[bad[0]].error_kind == "not_json"
    assert "required" in by_original[bad[1]].reason
    assert "ts" in by_original[bad[2]].reason
    assert metric(worker, "towerstream_dead_letters_total") >= 3


def test_http_intake_and_queries_reject_bad_input_with_4xx(trained: Any) -> None:
    settings, worker = trained
    url = worker.base_url
    cases = [
        (url + "/recommend/u1?k=0", None, 400),
        (url + "/recommend/u1?k=abc", None, 400),
        (url + f"/recommend/u1?k={settings.max_k + 1}", None, 400),
        (url + "/interactions", b"not json", 400),
        (url + "/interactions", b"", 400),
        (url + "/interactions", json.dumps({"event_id": "e", "user_id": "u"}).encode(), 422),
        (url + "/items", json.dumps({"item_id": "x", "title": "", "ts": 1}).encode(), 422),
        (url + "/items", b"x" * (settings.max_request_bytes + 10), 413),
    ]
    for target, data, expected in cases:
        status, body = http_json(target, data=data, method="POST" if data is not None else "GET")
        assert status == expected, (target, data[:40] if data else None, status, body)
        assert isinstance(body, dict) and body.get("error"), body


def test_unknown_user_gets_popular_items_not_an_error(trained: Any) -> None:
    _, worker = trained
    status, body = http_json(worker.base_url + "/recommend/nobody-ever?k=5")
    assert status == 200 and body["source"] == "popularity" and len(body["items"]) == 5
    assert body["fallback_reason"] == "unknown user"
    status, body = http_json(worker.base_url + "/recommend/nobody-ever?k=5&ctx.device=web")
    assert status == 200 and body["source"] == "model" and len(body["items"]) == 5


def test_restart_keeps_the_index_and_resumes_from_committed_offsets(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess]
) -> None:
    spec = StreamSpec(users=40, items=80, interactions=1500, late_items=0.0, seed=5)
    settings = worker_settings(broker, tmp_path / "data", topic_prefix, checkpoint_every_s=600)
    ensure_topics(settings)
    first = start_worker(settings)
    first.wait_ready(90)
    produce_stream(settings, spec)
    body = wait_for(first, lambda b: b.get("trained_total", 0) >= spec.interactions and b.get("items_indexed", 0) >= spec.items
                and b.get("untrained_events") == 0)
    # Wait until the acked offsets are committed (every second), not for a fixed while.
    from tests.chaos import committed_offsets  # Faust's group and the batch readers'

    topic = settings.topic("interactions") + ":"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(
            off for tp, off in committed_offsets(settings).items() if tp.startswith(topic)) < spec.interactions:
        time.sleep(0.25)
    # trained_total counts durable events; untrained_events of them may still be queued for training.
    body = wait_for(first, lambda b: True)
    _, before = http_json(first.base_url + "/recommend/u3?k=10")
    assert first.stop() == 0
    second = start_worker(settings)
    restarted = second.wait_ready(90)
    # The index came back from the checkpoint written at shutdown, with the same answers.
    assert restarted["items_indexed"] == body["items_indexed"]
    assert restarted["model_version"] == body["model_version"]
    _, after = http_json(second.base_url + "/recommend/u3?k=10")
    assert [i["item_id"] for i in after["items"]] == [i["item_id"] for i in before["items"]]
    # New events are processed; old ones are not consumed again (no duplicates seen at all).
    more = [Interaction(event_id=f"more-{n}", user_id=f"u{n % 40}", item_id=f"i{n % 80}", ts=datetime.now(timezone.utc))
            for n in range(50)]
    with EventProducer(settings) as prod:
        for ev in more:
            prod.send_interaction(ev)
        assert prod.flush(timeout=20).failed == 0
    final = wait_for(second, lambda b: b["trained_total"] >= spec.interactions + len(more), timeout=60)
    time.sleep(2)
    assert final["trained_total"] == spec.interactions + len(more)
    assert metric(second, "towerstream_duplicates_total") == 0


def test_kafka_request_reply_answers_on_the_reply_topic(trained: Any) -> None:
    settings, worker = trained
    from producers.topics import ensure_topics as _ensure
    from towerstream.events import RecommendRequest, RecommendResponse

    reply_topic = settings.topic("replies-test")
    _ensure(settings, ["replies-test"])
    requests = [RecommendRequest(request_id=f"r{n}", user_id=f"u{n}", k=5, reply_to=reply_topic) for n in range(3)]
    requests.append(RecommendRequest(request_id="r-stranger", user_id="stranger", k=5, reply_to=reply_topic))
    with EventProducer(settings) as prod:
        for req in requests:
            prod.send_raw(settings.topic("recommend-requests"), req.request_id.encode(), req.model_dump_json().encode())
        prod.send_raw(settings.topic("recommend-requests"), b"bad", b'{"user_id": ""}')
        assert prod.flush(timeout=20).failed == 0
    consumer = KafkaConsumer(reply_topic, bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=1000, fetch_max_wait_ms=50, group_id=None)
    answers: dict[str, RecommendResponse] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(answers) < len(requests):
        for m in consumer:
            resp = RecommendResponse.model_validate_json(m.value)
            assert m.key == (resp.request_id or "").encode()
            answers[resp.request_id or ""] = resp
    consumer.close()
    assert set(answers) == {r.request_id for r in requests}
    for n in range(3):
        direct = http_json(f"{worker.base_url}/recommend/u{n}?k=5")[1]
        assert answers[f"r{n}"].source == "model"
        assert [i.item_id for i in answers[f"r{n}"].items] == [i["item_id"] for i in direct["items"]]
    assert answers["r-stranger"].source == "popularity"
