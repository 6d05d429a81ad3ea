"""Durable offsets checked against the log they are read from (``streams.log_bounds``), on a real broker.

A worker's RocksDB remembers the next offset of every partition; after the broker comes back
empty or a topic is re-created, those offsets lie past the new log's end. Each new event must
still be applied, the reset shown (notice on /healthz, ``towerstream_offset_resets_total``), and
a healthy restart on the same log, even one whose last record batch holds several records
(Tansu then lists an end offset below the durable one), must not reset anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaAdminClient

from producers.kafka_config import client_config
from producers.topics import ensure_topics
from tests.chaos import durable_state
from tests.conftest import worker_settings
from tests.integration.test_interactions_consumer import interactions, send
from tests.integration.test_spine import metric, wait_for
from towerstream.broker import EmbeddedBroker, free_port
from towerstream.events import ItemUpsert
from towerstream.processes import WorkerProcess
from towerstream.settings import Settings

pytestmark = [pytest.mark.broker]


@pytest.fixture()
def own_broker() -> Iterator[list[EmbeddedBroker]]:
    """A broker of this test's own on a fixed port, so that it can be restarted (empty) in place."""
    brokers = [EmbeddedBroker(port=free_port()).start()]
    yield brokers
    for b in brokers:
        b.stop()


def items(prefix: str, n: int, start: int = 0) -> list[ItemUpsert]:
    now = datetime.now(timezone.utc)
    return [ItemUpsert(item_id=f"{prefix}{k}", title=f"title {prefix} {k}", categories=[f"c{k % 3}"], ts=now)
            for k in range(start, start + n)]


def clicks(prefix: str, n: int, item_prefix: str, n_items: int) -> list[Any]:
    return [ev.model_copy(update={"item_id": f"{item_prefix}{k % n_items}"})
            for k, ev in enumerate(interactions(prefix, n))]


def resets(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in body.get("notices", []) if n.get("kind") == "offset_reset"]


def fill(worker: WorkerProcess, settings: Settings, n_items: int, n_clicks: int) -> dict[str, Any]:
    """Old state: items indexed and interactions durable and trained, then a graceful stop."""
    send(settings, items("old", n_items))
    send(settings, clicks("old", n_clicks, "old", n_items))
    body = wait_for(worker, lambda b: b.get("items_indexed", 0) >= n_items and b.get("trained_total", 0) >= n_clicks
                    and b.get("untrained_events") == 0, timeout=120)
    assert worker.stop() == 0
    return body


def apply_new_and_check(worker: WorkerProcess, settings: Settings, n_old_items: int, n_old_clicks: int) -> dict[str, Any]:
    """New items and interactions on the new log: every one of them applied."""
    new_items, new_clicks = items("new", 20), clicks("new", 60, "new", 20)
    send(settings, new_items)
    send(settings, new_clicks)
    return wait_for(worker, lambda b: b.get("items_indexed", 0) == n_old_items + len(new_items)
                    and b.get("trained_total", 0) == n_old_clicks + len(new_clicks), timeout=120)


@pytest.mark.timeout(420)
def test_a_broker_restarted_empty_under_a_worker_with_state_loses_no_new_event(
    own_broker: list[EmbeddedBroker], tmp_path: Path, topic_prefix: str,
    start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    """Both batch readers (interactions and items) read the new log from its start; the reset is
    logged, counted and listed on /healthz."""
    broker = own_broker[0]
    settings = worker_settings(broker, tmp_path / "data", topic_prefix)
    assert settings.items_consumer == "batch" and settings.interactions_consumer == "batch"
    ensure_topics(settings)
    fill(start_worker(settings), settings, 40, 300)
    durable_before, _ = durable_state(settings.data_dir)
    broker.stop()  # memory only: every topic and committed offset is gone
    own_broker.append(EmbeddedBroker(port=broker.port).start())
    ensure_topics(settings)
    second = start_worker(settings)
    second.wait_ready(120)
    body = apply_new_and_check(second, settings, 40, 300)
    got = resets(body)
    topics = {n["topic"] for n in got}
    assert topics == {settings.topic("interactions"), settings.topic("items")}, got
    assert all(n["reason"] == "past_end" and n["offset"] > n["log_end"] and n["log_start"] == 0 for n in got), got
    assert {n["reader"] for n in got} == {"interactions", "items"}
    for t in ("interactions", "items"):
        assert metric(second, "towerstream_offset_resets_total", f'topic="{settings.topic(t)}"') >= 1
    assert "offset_reset" in Path(str(second.log_path)).read_text()
    # The lowered offsets are durable: a third start on the new log resets nothing again.
    assert second.stop() == 0
    durable_after, _ = durable_state(settings.data_dir)
    for tp, off in durable_after.items():
        assert off < durable_before[tp], (tp, durable_before, durable_after)
    third = start_worker(settings)
    third.wait_ready(120)
    time.sleep(3)
    body = wait_for(third, lambda b: True)
    assert resets(body) == [] and metric(third, "towerstream_offset_resets_total") == 0, body["notices"]


@pytest.mark.timeout(420)
def test_topics_deleted_and_recreated_under_a_worker_with_state_lose_no_new_event(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    settings = worker_settings(broker, tmp_path / "data", topic_prefix)
    ensure_topics(settings)
    fill(start_worker(settings), settings, 40, 300)
    admin = KafkaAdminClient(**client_config(settings, client_id="test-admin"), request_timeout_ms=10_000)
    try:
        names = [settings.topic("interactions"), settings.topic("items")]
        admin.delete_topics(names)
        deadline = time.monotonic() + 30
        while set(names) & set(admin.list_topics()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not set(names) & set(admin.list_topics())
    finally:
        admin.close()
    ensure_topics(settings)
    second = start_worker(settings)
    second.wait_ready(120)
    body = apply_new_and_check(second, settings, 40, 300)
    assert {n["topic"] for n in resets(body)} == {settings.topic("interactions"), settings.topic("items")}, body


async def _poll_until(c: AIOKafkaConsumer, done: Callable[[], bool], timeout_s: float) -> None:
    """Fetch (and drop) records until ``done()`` or the timeout; the caller checks what it needs."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        await c.getmany(timeout_ms=200)


async def _listed_and_true_ends(settings: Settings, topic: str) -> dict[int, tuple[int, int]]:
    """(listed end, fetch high watermark) per partition of ``topic``."""
    c = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=None, fetch_max_wait_ms=50)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        listed = await c.end_offsets(tps)
        c.assign(tps)
        for tp in tps:
            c.seek(tp, max(listed[tp] - 1, 0))
        await _poll_until(c, lambda: all(c.highwater(tp) is not None for tp in tps), 10)
        return {tp.partition: (listed[tp], int(c.highwater(tp) or 0)) for tp in tps}
    finally:
        await c.stop()


@pytest.mark.timeout(300)
def test_a_healthy_restart_on_the_same_log_resets_nothing_even_where_the_listed_end_is_low(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    """Events sent in multi-record batches: Tansu lists the last batch's base + 1 as the end, below
    the durable offset. The probe fetch's high watermark tells this from a replaced log."""
    settings = worker_settings(broker, tmp_path / "data", topic_prefix)
    ensure_topics(settings)
    fill(start_worker(settings), settings, 40, 300)
    durable, _ = durable_state(settings.data_dir)
    ends = asyncio.run(_listed_and_true_ends(settings, settings.topic("interactions")))
    key = settings.topic("interactions") + ":{}"
    # The case under test is there: a durable offset past the listed end, not past the real one.
    assert any(listed < durable[key.format(p)] == true for p, (listed, true) in ends.items()), (ends, durable)
    second = start_worker(settings)
    second.wait_ready(120)
    more = clicks("more", 60, "old", 40)
    send(settings, more)
    body = wait_for(second, lambda b: b.get("trained_total", 0) >= 360, timeout=90)
    time.sleep(2)
    body = wait_for(second, lambda b: True)
    assert body["trained_total"] == 360 and resets(body) == [], body
    assert metric(second, "towerstream_offset_resets_total") == 0
    assert metric(second, "towerstream_duplicates_total") == 0  # nothing re-read either


async def _commit(settings: Settings, group: str, topic: str, offset: int) -> None:
    """Commit ``offset`` for every partition of ``topic`` as a member of ``group`` (empty until then)."""
    from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    class AsFaust(RoundRobinPartitionAssignor):  # type: ignore[misc]
        """The broker keeps the group's protocol name ("faust") after its members left."""

        name = "faust"

    c = AIOKafkaConsumer(topic, bootstrap_servers=settings.bootstrap, group_id=group, enable_auto_commit=False,
                         session_timeout_ms=6000, heartbeat_interval_ms=2000, partition_assignment_strategy=(AsFaust,))
    await c.start()
    try:
        tps = {TopicPartition(topic, p) for p in range(settings.topic_partitions)}
        await _poll_until(c, lambda: c.assignment() == tps, 60)
        assert c.assignment() == tps
        await c.commit({tp: offset for tp in tps})
    finally:
        await c.stop()


@pytest.mark.timeout(300)
def test_a_faust_agent_whose_committed_offset_is_past_the_log_end_reads_from_the_start(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    """The users agent (Faust's group): a committed offset past the end (as after an unclean
    leader election, or a topic re-created with the group's offsets kept) must not skip events."""
    from towerstream.events import UserProfile

    settings = worker_settings(broker, tmp_path / "data", topic_prefix)
    ensure_topics(settings)
    first = start_worker(settings)
    first.wait_ready(120)
    now = datetime.now(timezone.utc)
    send(settings, [UserProfile(user_id=f"p{k}", features={"country": "fr"}, ts=now) for k in range(10)])
    wait_for(first, lambda b: b.get("users_known", 0) >= 10, timeout=60)
    assert first.stop() == 0
    asyncio.run(_commit(settings, settings.app_id, settings.topic("users"), 500))
    second = start_worker(settings)
    second.wait_ready(120)
    send(settings, [UserProfile(user_id=f"q{k}", features={"country": "de"}, ts=now) for k in range(10)])
    body = wait_for(second, lambda b: b.get("users_known", 0) >= 20, timeout=90)
    got = resets(body)
    assert got and {(n["reader"], n["topic"], n["reason"]) for n in got} == {("faust", settings.topic("users"), "past_end")}
    assert all(n["offset"] == 500 for n in got), got
    assert metric(second, "towerstream_offset_resets_total", f'topic="{settings.topic("users")}"') == len(got)


@pytest.mark.timeout(420)
def test_topics_recreated_under_a_running_worker_lose_no_new_event(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    """The log replaced while the readers read it: their fetch high watermarks fall below their
    positions (Tansu answers fetches past the end with nothing), which sends them back to the check."""
    settings = worker_settings(broker, tmp_path / "data", topic_prefix)
    ensure_topics(settings)
    worker = start_worker(settings)
    worker.wait_ready(120)
    send(settings, items("old", 40))
    send(settings, clicks("old", 300, "old", 40))
    wait_for(worker, lambda b: b.get("items_indexed", 0) >= 40 and b.get("trained_total", 0) >= 300, timeout=120)
    admin = KafkaAdminClient(**client_config(settings, client_id="test-admin"), request_timeout_ms=10_000)
    try:
        names = [settings.topic("interactions"), settings.topic("items")]
        admin.delete_topics(names)
        deadline = time.monotonic() + 30
        while set(names) & set(admin.list_topics()) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        admin.close()
    ensure_topics(settings)
    body = apply_new_and_check(worker, settings, 40, 300)
    assert {n["topic"] for n in resets(body)} == {settings.topic("interactions"), settings.topic("items")}, body
