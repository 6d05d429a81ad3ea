"""The trainer publishes for serving replicas (issue 17): a real trainer process on the real broker.

What a replica relies on is checked on the topics themselves: every live item has a vector of a
complete version before that version's ``item_offsets``; the model parts join into the payload;
a delete is a tombstone; version numbers never repeat, across a kill -9 as well.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from producers.kafka_config import client_config
from producers.producer import EventProducer
from producers.topics import ensure_topics
from tests.conftest import worker_settings
from towerstream.broker import EmbeddedBroker
from towerstream.events import Interaction, ItemDelete, ItemUpsert, RecommendRequest
from towerstream.processes import WorkerProcess, http_json
from towerstream.published import (
    VERSION_KEY, VersionComplete, decode_item_vector, decode_model_part, join_parts, unpack_model,
)
from towerstream.settings import Settings
from towerstream.synthetic import StreamSpec, generate

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]

SPEC = StreamSpec(users=20, items=40, interactions=600, late_items=0.0, seed=5)


def produce(settings: Settings, spec: StreamSpec) -> tuple[set[str], int]:
    """The stream -> Kafka; returns the item ids and the number of interactions."""
    items: set[str] = set()
    n = 0
    with EventProducer(settings) as prod:
        for rec in generate(spec):
            if rec.logical_topic() == "items":
                items.add(rec.key)
            elif rec.logical_topic() == "interactions":
                n += 1
            prod.send_raw(settings.topic(rec.logical_topic()), rec.key.encode() if rec.key else None,
                          rec.value_bytes(), timestamp_ms=rec.timestamp)
        summary = prod.flush(timeout=30)
    assert summary.failed == 0, summary.errors
    return items, n


def read_topic(settings: Settings, name: str) -> list[Any]:
    """Every record of a topic, all partitions, from the beginning (read past the reported end)."""
    topic = settings.topic(name)
    consumer = KafkaConsumer(**client_config(settings, client_id="test-reader"), group_id=None,
                             enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        empty = 0
        while empty < 3:
            got = consumer.poll(timeout_ms=300)
            empty = 0 if got else empty + 1
            for records in got.values():
                out.extend(records)
        return out
    finally:
        consumer.close()


def completes(settings: Settings) -> list[VersionComplete]:
    """The ``VersionComplete`` records on the model topic, in the order they were written."""
    recs = sorted((r for r in read_topic(settings, "model") if r.key == VERSION_KEY),
                  key=lambda r: (r.partition, r.offset))
    return [VersionComplete.decode(r.value) for r in recs]


def wait_until(what: str, cond: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout}s")


def health(worker: WorkerProcess) -> dict[str, Any]:
    _, body = worker.health()
    return body if isinstance(body, dict) else {}


def check_version(settings: Settings, done: VersionComplete, live: set[str]) -> None:
    """What a replica switching to ``done`` would hold: every live item at that version, the payload."""
    vectors = read_topic(settings, "item-vectors")
    assert set(done.item_offsets) == {r.partition for r in vectors} | set(done.item_offsets)
    tagged: dict[str, np.ndarray] = {}
    for rec in vectors:
        if rec.offset >= done.item_offsets.get(rec.partition, 0):
            continue  # written after the version was complete: not part of what it promises
        if rec.value is None:
            tagged.pop(rec.key.decode(), None)
            continue
        iv = decode_item_vector(rec.key, rec.value)
        assert iv.version <= done.version
        if iv.version == done.version:
            tagged[iv.item_id] = iv.vector
    assert set(tagged) == live and done.items == len(live)
    vecs = np.stack(list(tagged.values()))
    assert vecs.shape == (len(live), settings.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-4)
    parts = [decode_model_part(r.value) for r in read_topic(settings, "model") if r.key.startswith(b"part-")]
    mine = [p for p in parts if p.version == done.version]
    assert len(mine) == done.parts
    arrays, meta = unpack_model(join_parts(mine))
    assert meta["version"] == done.version and meta["dim"] == settings.embedding_dim
    assert meta["history_len"] == settings.history_len and meta["trained"] == done.trained
    users = json.loads(arrays["user_ids"].tobytes())
    assert {f"u{k}" for k in range(3)} <= set(users)  # the generator's user ids
    assert arrays["user_id"].shape == (len(users), settings.embedding_dim - 1)
    assert arrays["user_feats"].shape[0] == len(users)
    for name in ("feats", "pos_logit", "recent_logit", "user_w1", "user_b1", "user_w2", "user_b2", "centroids"):
        assert name in arrays


def test_the_trainer_publishes_versions_vectors_and_tombstones_and_never_reuses_a_version(
        broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path,
        start_worker: Callable[[Settings], WorkerProcess]) -> None:
    settings = worker_settings(broker, tmp_path / "trainer", topic_prefix, role="train", version_every_s=1.0)
    ensure_topics(settings)
    trainer = start_worker(settings)
    trainer.wait_ready(90)

    # Role train: no answers here.
    status, body = http_json(f"{trainer.base_url}/recommend/u1?k=5")
    assert status == 404 and body["error"] == "this process trains; ask a serving replica (towerstream serve)"
    status, body = http_json(f"{trainer.base_url}/recommend", data=json.dumps({"user_id": "u1"}).encode(),
                             headers={"Content-Type": "application/json"}, method="POST")
    assert status == 404 and "serving replica" in body["error"]

    items, n = produce(settings, SPEC)
    wait_until("trained", lambda: health(trainer).get("trained_in_model", 0) >= n
               and health(trainer).get("items_indexed", 0) >= len(items), 180)
    done = wait_until("a version with everything trained", lambda: next(
        (d for d in reversed(completes(settings)) if d.trained >= n and d.items == len(items)), None))
    assert health(trainer)["published"]["version"] >= done.version
    check_version(settings, done, items)

    # A delete is a tombstone; an upsert is published by a complete version's tower.
    gone = sorted(items)[0]
    with EventProducer(settings) as prod:
        prod.send_item(ItemDelete(op="delete", item_id=gone, ts=int(time.time() * 1000)))
        prod.send_item(ItemUpsert(item_id="fresh-1", title="new one", categories=["c1"], ts=int(time.time() * 1000)))
        assert prod.flush(timeout=30).failed == 0
    wait_until("a tombstone", lambda: any(r.key == gone.encode() and r.value is None
                                          for r in read_topic(settings, "item-vectors")))
    fresh = wait_until("the new item", lambda: [decode_item_vector(r.key, r.value)
                                                for r in read_topic(settings, "item-vectors")
                                                if r.key == b"fresh-1" and r.value is not None])
    # By the complete version's tower, and by the one in flight if a sweep was running: that one
    # completes too (read again until it has: on a loaded machine its sweep can still be running).
    assert {iv.version for iv in fresh} & {d.version for d in completes(settings)}
    wait_until("every version that published the new item complete",
               lambda: {iv.version for iv in fresh} <= {d.version for d in completes(settings)})
    # More training: the next version's sweep has the new item and not the deleted one.
    live = (items - {gone}) | {"fresh-1"}
    interact(settings, "b", 100)
    newest = wait_until("a version after the delete", lambda: next(
        (d for d in reversed(completes(settings)) if d.trained >= n + 100 and d.items == len(live)), None))
    check_version(settings, newest, live)

    # kill -9 (while a version is being published, if we catch one), restart: numbers go on
    # above every version started before, complete or not. What the killed trainer completed is
    # read after the kill: a version it finishes between the interactions and the kill (the poll
    # below misses short sweeps on a loaded machine) is not one of the restarted trainer's.
    interact(settings, "c", 300)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and health(trainer).get("published", {}).get("publishing") is None:
        time.sleep(0.02)
    trainer.kill()
    before = completes(settings)
    started_before = {decode_model_part(r.value).version for r in read_topic(settings, "model")
                      if r.key.startswith(b"part-")}
    trainer = start_worker(settings)
    trainer.wait_ready(90)
    after = wait_until("a version after the restart", lambda: completes(settings)[len(before):] or None)
    numbers = [d.version for d in completes(settings)]
    assert numbers == sorted(set(numbers))  # strictly increasing in the order they were completed
    assert min(d.version for d in after if d.version not in {b.version for b in before}) > max(started_before)
    parts = [decode_model_part(r.value) for r in read_topic(settings, "model") if r.key.startswith(b"part-")]
    seen = [(p.version, p.index) for p in parts]
    assert len(seen) == len(set(seen))  # one set of parts per version number: none reused
    wait_until("the restarted trainer's version on /healthz",
               lambda: (health(trainer).get("published") or {}).get("version") is not None)
    assert health(trainer)["published"]["version"] > max(started_before)


def interact(settings: Settings, tag: str, n: int) -> None:
    """``n`` fresh interactions (new event ids) on the generator's users and items."""
    now = int(time.time() * 1000)
    with EventProducer(settings) as prod:
        for k in range(n):
            prod.send_interaction(Interaction(event_id=f"{tag}{k}", user_id=f"u{k % 20}", item_id=f"i{(k * 7) % 40}",
                                              kind="click", ts=now + k))
        assert prod.flush(timeout=30).failed == 0


@pytest.mark.parametrize("role", ["train", "worker"])
def test_publish_off_publishes_nothing_and_a_trainer_leaves_recommend_requests_to_replicas(
        broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path, role: str,
        start_worker: Callable[[Settings], WorkerProcess]) -> None:
    """``publish=False``: no item vector, no version. Role train: the request stream is not read
    (the all-in-one worker, run the same way, answers it: the check can fail)."""
    settings = worker_settings(broker, tmp_path / "w", topic_prefix, role=role, publish=False, version_every_s=0.5)
    ensure_topics(settings)
    worker = start_worker(settings)
    worker.wait_ready(90)
    items, n = produce(settings, StreamSpec(users=10, items=20, interactions=200, late_items=0.0, seed=7))
    with EventProducer(settings) as prod:
        prod.send_raw(settings.topic("recommend-requests"), b"r1",
                      RecommendRequest(request_id="r1", user_id="u1", k=3).model_dump_json().encode())
        assert prod.flush(timeout=30).failed == 0
    wait_until("trained", lambda: health(worker).get("trained_in_model", 0) >= n
               and health(worker).get("items_indexed", 0) >= len(items), 180)
    if role == "worker":
        wait_until("an answer", lambda: read_topic(settings, "recommend-responses"), 60)
    else:
        time.sleep(8)  # the interactions and items readers have joined and read: so would an agent
        assert read_topic(settings, "recommend-responses") == []
    assert "published" not in health(worker)
    assert read_topic(settings, "item-vectors") == [] and read_topic(settings, "model") == []
    # The trainer yields the CPU to serving, every thread of it; the all-in-one worker serves, so it does not.
    pid = worker.proc.pid
    nices = {int(Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[16])
             for t in os.listdir(f"/proc/{pid}/task")}
    assert nices == ({settings.train_nice} if role == "train" else {0})
    if Path(f"/proc/{pid}/autogroup").exists():  # kernels with autogroups weigh the session as a whole
        assert Path(f"/proc/{pid}/autogroup").read_text().split()[-1] == str(settings.train_nice if role == "train" else 0)
