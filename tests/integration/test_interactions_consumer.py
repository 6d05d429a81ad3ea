"""The batch consumers of the interactions and items topics (``streams.batch_consumer``) on a real broker.

Each reads in its own consumer group (``<app_id>-interactions``, ``<app_id>-items``), so these
tests read those groups' committed offsets as well as Faust's: events are trained and served, bad records dead-lettered,
offsets committed only for durable events (checked at every SIGKILL of the kill harness), a
graceful restart re-reads nothing, two workers split the partitions, and a restarted worker
rejoins the group as the member its predecessor was.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from pydantic import BaseModel

import tests.chaos as chaos
from producers.kafka_config import client_config
from producers.producer import EventProducer
from producers.topics import ensure_topics
from streams.batch_consumer import group_id
from tests.chaos import durable_state, faults_recording, kill_run
from tests.conftest import worker_settings
from tests.integration.test_spine import metric, produce_stream, wait_for
from towerstream.broker import EmbeddedBroker
from towerstream.events import DeadLetter, Interaction
from towerstream.processes import WorkerProcess, http_json
from towerstream.settings import Settings
from towerstream.synthetic import StreamSpec, generate

pytestmark = [pytest.mark.broker]


@pytest.fixture(autouse=True)
def _batch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers inherit the environment, and only settings that differ from the defaults are
    passed on explicitly: pin the path here, whatever the default or the caller's environment."""
    monkeypatch.setenv("TOWERSTREAM_INTERACTIONS_CONSUMER", "batch")
    monkeypatch.setenv("TOWERSTREAM_ITEMS_CONSUMER", "batch")


def group_offsets(settings: Settings, group: str, topics: tuple[str, ...] = ("interactions",)) -> dict[str, int]:
    """Committed offsets of ``group`` as {"topic:partition": next offset} (absent: none committed)."""
    admin = KafkaAdminClient(**client_config(settings, client_id="test-admin"), request_timeout_ms=10_000)
    tps = [TopicPartition(settings.topic(t), n) for t in topics for n in range(settings.topic_partitions)]
    try:
        got = admin.list_group_offsets({group: tps})[group]
    finally:
        admin.close()
    return {f"{tp.topic}:{tp.partition}": om.offset for tp, om in got.items() if om.offset >= 0}


def dead_letters(settings: Settings) -> dict[bytes, DeadLetter]:
    """Every dead letter on the topic so far, by the original record's bytes."""
    consumer = KafkaConsumer(settings.topic("dead-letters"), bootstrap_servers=settings.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000, fetch_max_wait_ms=50, group_id=None)
    try:
        return {dl.original: dl for dl in (DeadLetter.model_validate_json(m.value) for m in consumer)}
    finally:
        consumer.close()


def interactions(prefix: str, n: int, start: int = 0) -> list[Interaction]:
    now = datetime.now(timezone.utc)
    return [Interaction(event_id=f"{prefix}-{k}", user_id=f"u{k % 40}", item_id=f"i{k % 80}", ts=now)
            for k in range(start, start + n)]


def send(settings: Settings, events: Sequence[BaseModel], raw: tuple[bytes, ...] = (), topic: str = "interactions") -> None:
    """Events (each to its own topic) and raw records to ``topic``, all acknowledged by the broker."""
    with EventProducer(settings) as prod:
        for ev in events:
            prod.send_event(ev)
        for value in raw:
            prod.send_raw(settings.topic(topic), b"u1", value)
        assert prod.flush(timeout=20).failed == 0


@pytest.mark.timeout(240)
def test_batch_path_trains_serves_dead_letters_and_commits_only_durable_offsets(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess]
) -> None:
    spec = StreamSpec(users=40, items=80, interactions=1500, late_items=0.0, seed=5)
    settings = worker_settings(broker, tmp_path / "data", topic_prefix, checkpoint_every_s=600,
                               interactions_consumer="batch")
    ensure_topics(settings)
    first = start_worker(settings)
    first.wait_ready(90)
    produce_stream(settings, spec)
    bad = (b"not json at all", b'{"event_id": "x"}')
    send(settings, [], bad)
    wait_for(first, lambda b: b.get("trained_total", 0) >= spec.interactions and b.get("untrained_events") == 0
             and b.get("items_indexed", 0) >= spec.items)
    status, rec = http_json(first.base_url + "/recommend/u3?k=10")
    assert status == 200 and rec["source"] == "model" and len(rec["items"]) == 10, rec
    # The interactions went through the batch consumer's group, not Faust's.
    log = Path(str(first.log_path)).read_text()
    assert "interactions_consumer_started" in log
    deadline = time.monotonic() + 15
    committed: dict[str, int] = {}
    while time.monotonic() < deadline:
        committed = group_offsets(settings, group_id(settings))
        if sum(committed.values()) == spec.interactions + len(bad):
            break
        time.sleep(0.5)
    assert sum(committed.values()) == spec.interactions + len(bad), committed
    assert group_offsets(settings, settings.app_id) == {}  # Faust's group does not read interactions
    # Items have a batch reader and a group of their own too (ITEMS_CONSUMER=batch, the default).
    assert "items_consumer_started" in log
    item_records = sum(1 for rec in generate(spec) if rec.logical_topic() == "items")
    items_group = group_id(settings, "items")
    deadline = time.monotonic() + 15
    while sum(group_offsets(settings, items_group, ("items",)).values()) < item_records and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sum(group_offsets(settings, items_group, ("items",)).values()) == item_records > 0
    assert group_offsets(settings, settings.app_id, ("items",)) == {}
    # Dead letters: delivered, with position and reason, before their offsets were committed.
    letters = dead_letters(settings)
    assert set(letters) == set(bad), letters
    assert letters[bad[0]].error_kind == "not_json" and "required" in letters[bad[1]].reason
    assert all(dl.source_topic == settings.topic("interactions") and dl.offset is not None for dl in letters.values())
    assert metric(first, "towerstream_dead_letters_total", f'topic="{settings.topic("interactions")}"') == 2
    body = wait_for(first, lambda b: True)
    assert first.stop() == 0
    # Graceful stop: offsets of every durable event committed, none beyond.
    durable, trained = durable_state(settings.data_dir)
    committed = group_offsets(settings, group_id(settings))
    assert trained == spec.interactions == body["trained_total"]
    for tp, off in durable.items():
        if tp.startswith(settings.topic("interactions")):
            assert committed.get(tp, 0) >= off, (tp, committed, durable)

    # A restart re-reads nothing: new events are trained once, no duplicates seen at all.
    second = start_worker(settings)
    restarted = second.wait_ready(90)
    assert restarted["trained_total"] == spec.interactions
    more = interactions("more", 60)
    send(settings, more)
    final = wait_for(second, lambda b: b["trained_total"] >= spec.interactions + len(more), timeout=60)
    time.sleep(2)
    assert wait_for(second, lambda b: True)["trained_total"] == spec.interactions + len(more), final
    assert metric(second, "towerstream_duplicates_total") == 0
    log = Path(str(second.log_path)).read_text()
    assert "rejoining_group_as_previous_member" in log and group_id(settings) in log


@pytest.mark.timeout(420)
def test_kill_9_with_the_batch_path_never_commits_ahead_of_durable_effects(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = worker_settings(broker, tmp_path / "data", topic_prefix, checkpoint_every_s=3,
                               interactions_consumer="batch")
    seen: list[dict[str, int]] = []
    fausts_group = chaos.committed_offsets

    def committed_both(s: Settings) -> dict[str, int]:
        """The harness checks Faust's group; the batch consumer's group is checked the same way."""
        batch = group_offsets(s, group_id(s))
        seen.append(batch)
        return {**fausts_group(s), **batch}

    monkeypatch.setattr(chaos, "committed_offsets", committed_both)
    recording = faults_recording(seed=311, interactions=2000)
    run = kill_run(settings, recording, kills=3, seed=8675309, logs=tmp_path, speed=60.0)
    report = run.summary()
    assert not run.problems, report
    assert run.offset_checks >= 4 and any(seen), (report, seen)  # the batch group did commit offsets
    assert len(run.restarts_to_first_event_s) == 3, report  # each restart processed an event (speed: bench/faults.py)
    final = run.final
    assert final["trained_into_model"] == final["trained_counter"] == final["interactions"], report
    # After the last 2 s without traffic, everything durable was committed, and nothing more.
    durable, _ = durable_state(settings.data_dir)
    last = seen[-1]
    for n in range(settings.topic_partitions):
        tp = f"{settings.topic('interactions')}:{n}"
        assert last.get(tp, 0) == durable.get(tp, 0), (tp, last, durable)


@pytest.mark.timeout(240)
def test_two_workers_split_the_partitions_and_a_graceful_leave_hands_them_over(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess]
) -> None:
    a_settings = worker_settings(broker, tmp_path / "a", topic_prefix, topic_partitions=4, interactions_consumer="batch")
    b_settings = worker_settings(broker, tmp_path / "b", topic_prefix, topic_partitions=4, interactions_consumer="batch")
    ensure_topics(a_settings)
    a, b = start_worker(a_settings), start_worker(b_settings)
    a.wait_ready(90)
    b.wait_ready(90)

    def assigned(w: WorkerProcess) -> set[str]:
        """The worker's last assignment in the interactions group (from its JSON log)."""
        last: set[str] = set()
        for line in Path(str(w.log_path)).read_text().splitlines():
            if line.startswith("{") and "interactions_partitions_assigned" in line:
                last = set(json.loads(line)["partitions"])
        return last

    deadline = time.monotonic() + 60  # both members in the group, the partitions split between them
    while time.monotonic() < deadline and not (assigned(a) and assigned(b) and not assigned(a) & assigned(b)
                                               and len(assigned(a) | assigned(b)) == 4):
        time.sleep(0.25)
    assert assigned(a) and assigned(b) and not assigned(a) & assigned(b), (assigned(a), assigned(b))
    first = interactions("first", 400)
    send(a_settings, first)
    n = len(first)
    deadline = time.monotonic() + 60
    totals: tuple[int, int] = (0, 0)
    while time.monotonic() < deadline:
        totals = (wait_for(a, lambda x: True).get("trained_total", 0), wait_for(b, lambda x: True).get("trained_total", 0))
        if sum(totals) >= n:
            break
        time.sleep(0.25)
    time.sleep(1.5)
    totals = (wait_for(a, lambda x: True)["trained_total"], wait_for(b, lambda x: True)["trained_total"])
    assert sum(totals) == n and min(totals) > 0, (totals, assigned(a), assigned(b))  # split, each event once
    assert b.stop() == 0  # graceful: its offsets committed, the group left
    second = interactions("second", 200)
    send(a_settings, second)
    body = wait_for(a, lambda x: x["trained_total"] >= totals[0] + len(second), timeout=60)
    time.sleep(2)
    # a now has every partition: all of the second wave, none of b's first-wave events again.
    assert wait_for(a, lambda x: True)["trained_total"] == totals[0] + len(second), (totals, body)
    assert metric(a, "towerstream_duplicates_total") == 0


def test_recorded_member_ids_are_reused_per_group(broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str) -> None:
    """Each group's coordinator starts as that group's recorded member, once; other groups are untouched."""
    from aiokafka import AIOKafkaConsumer

    from streams.membership import rejoin_as_previous_member, remember_member

    settings = worker_settings(broker, tmp_path / "data", topic_prefix)
    batch_group = group_id(settings)
    remember_member(settings, "faust-member-1")
    remember_member(settings, "batch-member-1", batch_group)
    assert rejoin_as_previous_member(settings) == "faust-member-1"
    assert rejoin_as_previous_member(settings, batch_group) == "batch-member-1"

    async def member_of(group: str) -> str:
        c = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=group)
        await c.start()
        try:
            return str(c._coordinator.member_id)
        finally:
            await c.stop()

    async def main() -> list[str]:
        return [await member_of(g) for g in (batch_group, "someone-else", settings.app_id, batch_group)]

    assert asyncio.run(main()) == ["batch-member-1", "", "faust-member-1", ""]


@pytest.mark.timeout(240)
def test_the_faust_agents_read_both_topics_when_the_settings_ask_for_them(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``INTERACTIONS_CONSUMER=faust`` / ``ITEMS_CONSUMER=faust``: Faust's group reads both, no batch reader runs."""
    monkeypatch.setenv("TOWERSTREAM_INTERACTIONS_CONSUMER", "faust")
    monkeypatch.setenv("TOWERSTREAM_ITEMS_CONSUMER", "faust")
    spec = StreamSpec(users=30, items=50, interactions=600, late_items=0.0, seed=9)
    settings = worker_settings(broker, tmp_path / "data", topic_prefix, interactions_consumer="faust",
                               items_consumer="faust")
    ensure_topics(settings)
    worker = start_worker(settings)
    worker.wait_ready(90)
    produce_stream(settings, spec)
    wait_for(worker, lambda b: b.get("trained_total", 0) >= spec.interactions and b.get("untrained_events") == 0
             and b.get("items_indexed", 0) >= spec.items)
    status, rec = http_json(worker.base_url + "/recommend/u3?k=5")
    assert status == 200 and rec["source"] == "model" and len(rec["items"]) == 5, rec
    log = Path(str(worker.log_path)).read_text()
    assert "items_consumer_started" not in log and "interactions_consumer_started" not in log
    item_records = sum(1 for rec in generate(spec) if rec.logical_topic() == "items")
    want = {"interactions": spec.interactions, "items": item_records}
    got: dict[str, int] = {}
    deadline = time.monotonic() + 15
    while got != want and time.monotonic() < deadline:
        offsets = group_offsets(settings, settings.app_id, ("interactions", "items"))
        got = {t: sum(off for tp, off in offsets.items() if tp.startswith(settings.topic(t) + ":")) for t in want}
        time.sleep(0.5)
    assert got == want
    assert group_offsets(settings, group_id(settings, "items"), ("items",)) == {}
    assert group_offsets(settings, group_id(settings)) == {}
