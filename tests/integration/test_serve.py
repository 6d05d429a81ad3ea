"""A serving replica (``towerstream serve``) as a real process, on real topics.

The test stands in for the trainer: it publishes model parts, item vectors and ``VersionComplete``
records the way the contract says the trainer does (``towerstream.published``), computed by a real
``TwoTowerTrainer``, with kafka-python; interactions are real ``Interaction`` events. What the
replica does with them is only seen from outside: ``/healthz``, ``/recommend``, ``/items``,
``/metrics``, replies on Kafka, and its exit on SIGTERM.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer

from producers.topics import ensure_topics
from tests.conftest import worker_settings
from tests.unit.replica_log import items_digest
from tests.waiting import wait_for
from tests.unit import replica_log
from towers import TwoTowerTrainer
from towerstream.broker import EmbeddedBroker
from towerstream.events import Interaction, encode
from towerstream.events.recommend import RecommendRequest
from towerstream.processes import http_json
from towerstream.published import (
    ITEM_VECTORS, MODEL, VERSION_KEY, VersionComplete, encode_item_vector, encode_model_part, part_key, split_model,
)
from towerstream.replica_process import ReplicaProcess
from towerstream.settings import Settings

pytestmark = [pytest.mark.broker]

N_USERS = 30


class Publisher:
    """What the trainer publishes, written to the real topics (one kafka-python producer)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = KafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=5)
        #: item-vectors partition -> offset after the last record written.
        self.item_ends: dict[int, int] = {}

    def close(self) -> None:
        self.producer.close(5)

    def item(self, key: str, value: bytes | None) -> None:
        md = self.producer.send(self.settings.topic(ITEM_VECTORS), key=key.encode(), value=value).get(30)
        self.item_ends[md.partition] = max(self.item_ends.get(md.partition, 0), md.offset + 1)

    def parts(self, tr: TwoTowerTrainer, version: int) -> int:
        blob, _ = replica_log.payload(tr, version, N_USERS)
        parts = split_model(version, blob, 50_000)  # several parts, as a real model has
        for p in parts:
            self.producer.send(self.settings.topic(MODEL), key=part_key(p.index), value=encode_model_part(p))
        self.producer.flush(30)
        return len(parts)

    def sweep(self, tr: TwoTowerTrainer, version: int, rows: np.ndarray | None = None) -> int:
        live = np.flatnonzero(tr.item_live) if rows is None else rows
        for row, vec in zip(live.tolist(), tr.embed_items(live)):
            self.item(replica_log.item_id(row), encode_item_vector(replica_log.item_vector(row, version, vec)))
        return len(live)

    def complete(self, version: int, parts: int, items: int) -> None:
        # Partitions with no record at all yet: offset 0 (nothing to wait for).
        offsets = {p: self.item_ends.get(p, 0) for p in range(self.settings.topic_partitions)}
        vc = VersionComplete(version, parts, offsets, items, int(time.time() * 1000), int(time.time() * 1000))
        self.producer.send(self.settings.topic(MODEL), key=VERSION_KEY, value=vc.encode()).get(30)

    def version(self, tr: TwoTowerTrainer, version: int) -> int:
        parts = self.parts(tr, version)
        n = self.sweep(tr, version)
        self.complete(version, parts, n)
        return n

    def interaction(self, ev: Interaction | bytes, key: str = "u") -> None:
        value = ev if isinstance(ev, bytes) else encode(ev)
        self.producer.send(self.settings.topic("interactions"), key=key.encode(), value=value).get(30)


@pytest.fixture()
def start_replica(tmp_path: Path) -> Iterator[Callable[[Settings], ReplicaProcess]]:
    started: list[ReplicaProcess] = []

    def start(settings: Settings) -> ReplicaProcess:
        r = ReplicaProcess(settings, log_path=tmp_path / f"replica-{len(started)}.log").start()
        started.append(r)
        return r

    yield start
    for r in started:
        r.kill()


def get(r: ReplicaProcess, path: str) -> tuple[int, Any]:
    """``(status, body)``; ``(0, None)`` while nothing listens yet."""
    try:
        return http_json(r.base_url + path, timeout=10)
    except OSError:
        return 0, None


def settle(r: ReplicaProcess) -> dict[str, Any]:
    """Health once the replica has read everything written so far (lag 0 on every followed topic)."""
    def read_all() -> dict[str, Any] | None:
        _, h = get(r, "/healthz")
        return h if isinstance(h, dict) and h.get("lag") and not any(h["lag"].values()) else None
    return dict(wait_for("the records", read_all, timeout=90))


def ids(body: dict[str, Any]) -> list[str]:
    return [i["item_id"] for i in body["items"]]


@pytest.mark.timeout(300)
def test_a_replica_answers_from_the_published_versions_only_once_each_is_complete(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_replica: Callable[[Settings], ReplicaProcess],
) -> None:
    settings = worker_settings(broker, tmp_path / "data", topic_prefix)
    ensure_topics(settings)
    tr = replica_log.trainer(n_items=120, n_users=N_USERS)
    pub = Publisher(settings)
    try:
        replica = start_replica(settings)
        # Nothing published: the replica reads the (empty) topics and waits for a version.
        status, health = wait_for("the replica", lambda: (lambda s, h: (s, h) if isinstance(h, dict) and h.get("status")
                                           == "waiting for a model version" else None)(*get(replica, "/healthz")))
        assert status == 503 and health["version"] is None, health
        _, body = get(replica, "/recommend/u3")
        assert body["source"] == "popularity" and body["fallback_reason"] == "no model version yet", body

        # Version 1: parts, sweep, completion -> ready, answering at version 1.
        n1 = pub.version(tr, 1)
        health = replica.wait_ready(90)
        assert health["version"] == 1 and health["items"] == n1, health
        assert health["items_digest"] == items_digest([replica_log.item_id(r) for r in np.flatnonzero(tr.item_live)])
        assert set(health["lag"]) == {ITEM_VECTORS, MODEL, "interactions"}, health
        status, body = get(replica, "/recommend/u3?k=5")
        assert status == 200 and body["model_version"] == 1 and body["source"] == "model" and len(body["items"]) == 5

        # GET /items/<id>: what the active version holds; an unknown one is a 404.
        status, it = get(replica, "/items/i7")
        assert status == 200 and it["item_id"] == "i7" and it["version"] == 1 and it["categories"] == ["genre3"], it
        assert get(replica, "/items/nope")[0] == 404
        # The worker's request parsing and errors.
        assert get(replica, "/recommend/u3?k=0")[0] == 400
        status, body = http_json(replica.base_url + "/recommend", timeout=10, method="POST",
                                 data=json.dumps({"user_id": "u3", "k": 3}).encode(),
                                 headers={"Content-Type": "application/json"})
        assert status == 200 and len(body["items"]) == 3 and body["model_version"] == 1, body

        # A tombstone removes the item from the index and every answer.
        top = ids(get(replica, "/recommend/u3?k=5")[1])[0]
        pub.item(top, None)
        wait_for("the replica", lambda: get(replica, f"/items/{top}")[0] == 404)
        health = settle(replica)
        assert health["items"] == n1 - 1 and health["items_digest"] != items_digest([]), health
        assert top not in ids(get(replica, "/recommend/u3?k=50")[1])

        # An interaction: the item is seen (excluded from the next answer) and the user vector moves.
        before = get(replica, "/recommend/u3?k=20")[1]
        clicked = ids(before)[0]
        pub.interaction(Interaction(event_id=f"ev-{uuid.uuid4().hex}", user_id="u3", item_id=clicked, kind="click",
                                    ts=int(time.time() * 1000)), key="u3")
        after = wait_for("the replica", lambda: (lambda b: b if clicked not in ids(b) else None)(get(replica, "/recommend/u3?k=20")[1]))
        common = set(ids(before)) & set(ids(after))
        moved = {i["item_id"]: i["score"] for i in before["items"] if i["item_id"] in common}
        now = {i["item_id"]: i["score"] for i in after["items"] if i["item_id"] in common}
        assert common and any(abs(moved[i] - now[i]) > 1e-6 for i in common), (before, after)
        # A user the version does not know, with no history: popularity; one interaction later, the model.
        _, body = get(replica, "/recommend/stranger")
        assert body["source"] == "popularity" and body["fallback_reason"] == "unknown user", body
        pub.interaction(Interaction(event_id=f"ev-{uuid.uuid4().hex}", user_id="stranger", item_id="i1",
                                    ts=int(time.time() * 1000)), key="stranger")
        wait_for("the replica", lambda: get(replica, "/recommend/stranger")[1]["source"] == "model")
        # An invalid interaction is counted and skipped.
        pub.interaction(b'{"not": "an interaction"}')
        wait_for("the replica", lambda: 'towerstream_replica_skipped_total{reason="invalid",topic="interactions"} 1.0'
                 in metrics_text(replica))

        # Version 2 arrives in pieces: no switch until its completion and every vector are in.
        replica_log.train(tr, 4, N_USERS, 120, seed=9)
        parts = pub.parts(tr, 2)
        live = np.flatnonzero(tr.item_live)
        live = live[live != int(top[1:])]  # the trainer knows the item is deleted
        pub.sweep(tr, 2, live[: len(live) // 2])
        health = settle(replica)
        assert health["version"] == 1 and 2 in health["pending"], health
        assert get(replica, "/recommend/u3")[1]["model_version"] == 1
        pub.sweep(tr, 2, live[len(live) // 2:])
        health = settle(replica)
        assert health["version"] == 1 and get(replica, "/recommend/u3")[1]["model_version"] == 1, health
        pub.complete(2, parts, len(live))
        wait_for("the replica", lambda: get(replica, "/healthz")[1]["version"] == 2)
        health = settle(replica)
        assert health["status"] == "ok" and health["items"] == len(live) and health["pending"] == [], health
        body = get(replica, "/recommend/u3?k=5")[1]
        assert body["model_version"] == 2 and body["source"] == "model", body
        text = metrics_text(replica)
        assert "towerstream_replica_version 2.0" in text and "towerstream_replica_version_switches_total 2.0" in text
        assert f"towerstream_replica_items {float(len(live))}" in text and 'towerstream_replica_lag{topic="model"} 0.0' in text

        # SIGTERM: a clean stop, exit status 0.
        assert replica.stop(30) == 0
        assert "replica_stopped" in Path(str(replica.log_path)).read_text()
    finally:
        pub.close()


def metrics_text(r: ReplicaProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(r.base_url + "/metrics", timeout=10) as resp:
        return str(resp.read().decode())


@pytest.mark.timeout(300)
def test_a_replica_started_on_a_long_log_is_ready_only_with_all_of_it_and_answers_requests_once(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_replica: Callable[[Settings], ReplicaProcess],
) -> None:
    """Readiness covers the whole log as it was at start; two replicas share the request group."""
    settings = worker_settings(broker, tmp_path / "data", topic_prefix)
    ensure_topics(settings)
    tr = replica_log.trainer(n_items=3000, n_users=N_USERS, steps=2)
    pub = Publisher(settings)
    try:
        n = pub.version(tr, 1)
        # Then many interactions, written in multi-record batches (Tansu lists a low end for those).
        for i in range(2000):
            pub.producer.send(settings.topic("interactions"), key=b"u1", value=encode(Interaction(
                event_id=f"bulk-{i}", user_id=f"u{i % N_USERS}", item_id=f"i{i % 3000}", ts=1_700_000_000_000 + i)))
        pub.producer.flush(30)
        a = start_replica(settings)
        health = a.wait_ready(120)  # the first 200 it gives
        assert health["version"] == 1 and health["items"] == n, health
        assert not any(health["lag"].values()) and health["catching_up"] == {}, health
        assert health["users"] == N_USERS, health
        b = start_replica(settings.model_copy(update={"web_port": settings.web_port + 1}))
        b.wait_ready(120)

        # Requests on Kafka: each is answered once, by one of the two replicas, to its reply_to.
        reply_to = settings.topic(f"replies-{uuid.uuid4().hex[:6]}")
        replies = KafkaConsumer(reply_to, bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
                                consumer_timeout_ms=1000)
        want = {f"req-{i}" for i in range(6)}
        for rid in sorted(want):
            req = RecommendRequest(request_id=rid, user_id="u2", k=4, reply_to=reply_to)
            pub.producer.send(settings.topic("recommend-requests"), key=rid.encode(), value=encode(req))
        pub.producer.flush(30)
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(got) < len(want):
            got += [json.loads(m.value) for m in replies]
        time.sleep(3)  # and nothing more arrives: one answer per request
        got += [json.loads(m.value) for m in replies]
        replies.close()
        assert sorted(g["request_id"] for g in got) == sorted(want), got
        assert all(g["model_version"] == 1 and len(g["items"]) == 4 for g in got), got
        assert a.stop(30) == 0 and b.stop(30) == 0
    finally:
        pub.close()
