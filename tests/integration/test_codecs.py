"""Compressed and unreadable record batches, on the real broker.

Producers compress (librdkafka, the Java client: lz4 and zstd are common defaults), so every
consumer here must read every Kafka codec: the worker's batch readers (interactions and
items), the Faust agents (users) and ``towerstream record``. The
records are written by an independent client, confluent-kafka (librdkafka), as a production
producer would write them. Our own producer's codec setting must reach the wire.

A batch that still cannot be read (here: a CRC that does not match, which the test broker
accepts) must not stall its partition quietly: /healthz names it and /metrics counts it, the
records in front of it and on other partitions are applied, and the operator's escape
(``UNREADABLE_BATCHES=skip``) dead-letters its raw bytes and reads on.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer
from confluent_kafka import TopicPartition as KafkaPartition

from producers.producer import EventProducer
from producers.topics import ensure_topics
from streams.unreadable import CODECS, FETCH_BYTES, FETCH_WAIT_MS
from tests.conftest import worker_settings
from tests.integration.cli_helpers import cli
from tests.integration.test_interactions_consumer import dead_letters
from tests.integration.test_spine import metric, wait_for
from towerstream.broker import EmbeddedBroker
from towerstream.events import Interaction, ItemUpsert, UserProfile, encode
from towerstream.processes import WorkerProcess, http_json
from towerstream.settings import Settings

pytestmark = [pytest.mark.broker]

CODEC_NAMES = ("none", "gzip", "snappy", "lz4", "zstd")
PER_CODEC = 20


def now() -> datetime:
    return datetime.now(timezone.utc)


def produce_confluent(settings: Settings, records: list[tuple[str, bytes, bytes, int | None]], codec: str) -> None:
    """``(logical topic, key, value, partition or None)`` with librdkafka in ``codec``, all acknowledged."""
    errors: list[Any] = []
    prod = Producer({"bootstrap.servers": settings.bootstrap, "compression.type": codec, "linger.ms": 20,
                     "acks": "all"})
    for topic, key, value, partition in records:
        kwargs: dict[str, Any] = {} if partition is None else {"partition": partition}
        prod.produce(settings.topic(topic), key=key, value=value,
                     on_delivery=lambda err, _msg: errors.append(err) if err is not None else None, **kwargs)
    assert prod.flush(30) == 0
    assert errors == []


def consume_confluent(settings: Settings, topic: str, n: int, timeout: float = 30) -> list[bytes]:
    """The first ``n`` values of ``topic`` as librdkafka reads them."""
    c = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": f"{settings.app_id}-check",
                  "enable.auto.commit": False})
    c.assign([KafkaPartition(settings.topic(topic), p, OFFSET_BEGINNING) for p in range(settings.topic_partitions)])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append(msg.value())
    finally:
        c.close()
    return out


def batch_codecs(settings: Settings, topic: str, partitions: int) -> set[str]:
    """The codec of every record batch on ``topic``, read from the batch headers."""
    async def run() -> set[str]:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=None)
        await consumer.start()
        try:
            found: set[str] = set()
            for p in range(partitions):
                tp = TopicPartition(settings.topic(topic), p)
                await consumer._client.force_metadata_update()
                node = consumer._client.cluster.leader_for_partition(tp)
                req = FetchRequest(FETCH_WAIT_MS, 1, FETCH_BYTES, 0, [(tp.topic, [(p, 0, FETCH_BYTES)])])
                resp = await consumer._client.send(node, req)
                data = bytes(resp.topics[0][1][0][-1] or b"")
                pos = 0
                while pos + 12 <= len(data):
                    _, length = struct.unpack_from(">qi", data, pos)
                    if pos + 12 + length > len(data):
                        break
                    found.add(CODECS[data[pos + 22] & 0x07])
                    pos += 12 + length
            return found
        finally:
            await consumer.stop()

    return asyncio.run(run())


# ----- every codec, every consumer --------------------------------------------------------------
@pytest.mark.timeout(300)
def test_worker_applies_events_in_every_codec(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Items and interactions (batch readers), users (Faust agent): 20 per codec."""
    monkeypatch.setenv("TOWERSTREAM_ITEMS_CONSUMER", "batch")  # workers inherit the environment
    settings = worker_settings(broker, tmp_path / "data", topic_prefix, checkpoint_every_s=600,
                               items_consumer="batch")
    ensure_topics(settings)
    worker = start_worker(settings)
    users_before = worker.wait_ready(90)["users_known"]  # the anonymous user
    for codec in CODEC_NAMES:
        records: list[tuple[str, bytes, bytes, int | None]] = []
        for k in range(PER_CODEC):
            item = ItemUpsert(event_id=f"{codec}-item-{k}", item_id=f"{codec}{k}", title=f"{codec} item {k}",
                              categories=[f"cat-{codec}"], ts=now())
            records.append(("items", item.item_id.encode(), encode(item), None))
            ev = Interaction(event_id=f"{codec}-{k}", user_id=f"{codec}-user-{k}", item_id=f"{codec}{k}", kind="click",
                             ts=now())
            records.append(("interactions", ev.user_id.encode(), encode(ev), None))
            user = UserProfile(user_id=f"{codec}-user-{k}", features={"plan": codec}, ts=now())
            records.append(("users", user.user_id.encode(), encode(user), None))
        produce_confluent(settings, records, codec)
    n = PER_CODEC * len(CODEC_NAMES)
    body = wait_for(worker, lambda b: b.get("items_indexed", 0) >= n and b.get("trained_total", 0) >= n
                    and b.get("users_known", 0) >= users_before + n, timeout=120)
    # Profiles (Faust's agent) and interactions name the same users: each user is known once.
    assert (body["items_indexed"], body["trained_total"], body["users_known"]) == (n, n, users_before + n), body
    assert body["status"] == "ok", body
    # Each codec's items are answerable.
    for codec in CODEC_NAMES:
        status, rec = http_json(f"{worker.base_url}/recommend/{codec}-user-0?k=50&exclude_seen=false"
                                f"&include_category=cat-{codec}", timeout=10)
        assert status == 200, rec
        assert {it["item_id"] for it in rec["items"]} == {f"{codec}{k}" for k in range(PER_CODEC)}, rec
    assert metric(worker, "towerstream_dead_letters_total") == 0
    assert metric(worker, "towerstream_unreadable_batches_total") == 0


@pytest.mark.timeout(120)
def test_record_reads_every_codec(broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOWERSTREAM_KAFKA_BOOTSTRAP", broker.bootstrap)
    monkeypatch.setenv("TOWERSTREAM_TOPIC_PREFIX", topic_prefix)
    settings = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix=topic_prefix)
    ensure_topics(settings, ["interactions"])
    sent: set[str] = set()
    for codec in CODEC_NAMES:
        evs = [Interaction(event_id=f"{codec}-{k}", user_id="u1", item_id=f"i{k}", ts=now()) for k in range(PER_CODEC)]
        produce_confluent(settings, [("interactions", b"u1", encode(ev), None) for ev in evs], codec)
        sent |= {ev.event_id for ev in evs}
    assert batch_codecs(settings, "interactions", settings.topic_partitions) == set(CODEC_NAMES)
    out = tmp_path / "rec.jsonl"
    n = len(sent)
    assert cli(["record", "--topics", "interactions", "-o", str(out), "--max-events", str(n), "--duration", "60"]) == 0
    got = [json.loads(line)["value"]["event_id"] for line in out.read_text().splitlines()]
    assert sorted(got) == sorted(sent)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_our_producer_writes_the_configured_codec(broker: EmbeddedBroker, topic_prefix: str, codec: str) -> None:
    """``PRODUCER_COMPRESSION`` reaches the wire, and librdkafka reads what we wrote."""
    settings = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix=topic_prefix, app_id=topic_prefix,
                        topic_partitions=1, producer_compression=codec)  # type: ignore[arg-type]
    ensure_topics(settings, ["interactions"])
    evs = [Interaction(event_id=f"e{k}", user_id="u1", item_id=f"i{k}", ts=now()) for k in range(PER_CODEC)]
    with EventProducer(settings) as prod:
        for ev in evs:
            prod.send_interaction(ev)
        assert prod.flush(20).ok
    assert batch_codecs(settings, "interactions", 1) == {codec}
    got = consume_confluent(settings, "interactions", len(evs))
    assert sorted(got) == sorted(encode(ev) for ev in evs)


# ----- a batch that cannot be read ---------------------------------------------------------------
def corrupt_batch(values: list[bytes]) -> bytes:
    """A v2 record batch of ``values`` whose stored CRC does not match its contents."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    ts = int(time.time() * 1000)
    for i, value in enumerate(values):
        builder.append(i, timestamp=ts, key=b"k", value=value, headers=[])
    raw = bytearray(builder.build())
    raw[17:21] = bytes(b ^ 0xFF for b in raw[17:21])  # the CRC field; the records stay valid events
    return bytes(raw)


def produce_raw_batch(settings: Settings, topic: str, partition: int, batch: bytes) -> None:
    """One raw Produce request, as a broken client (or a bad disk) would leave the batch."""
    async def run() -> None:
        client = AIOKafkaClient(bootstrap_servers=settings.bootstrap)
        await client.bootstrap()
        try:
            cluster = await client.fetch_all_metadata()
            node = cluster.leader_for_partition(TopicPartition(settings.topic(topic), partition))
            request = ProduceRequest(None, -1, 10_000, [(settings.topic(topic), [(partition, batch)])])
            resp = await client.send(node, request)
            assert resp.topics[0][1][0][1] == 0, resp  # accepted
        finally:
            await client.close()

    asyncio.run(run())


def health_conditions(worker: WorkerProcess) -> dict[str, Any]:
    _, body = worker.health()
    return body.get("conditions", {}) if isinstance(body, dict) else {}


@pytest.mark.timeout(300)
def test_unreadable_batch_stalls_visibly_then_the_escape_skips_it(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess]
) -> None:
    # Four partitions: when aiokafka hits the batch, records of other partitions taken in the same
    # getmany are dropped (their positions moved on) unless the reader reads them again.
    settings = worker_settings(broker, tmp_path / "data", topic_prefix, checkpoint_every_s=600, topic_partitions=4)
    ensure_topics(settings)

    def interaction(name: str) -> bytes:
        return encode(Interaction(event_id=name, user_id="u1", item_id="i1", ts=now()))

    def item(name: str) -> bytes:
        return encode(ItemUpsert(event_id=name, item_id=name, title=name, categories=["c"], ts=now()))

    # Partition 0 of each topic: readable records, a corrupt batch of valid events, readable records.
    # Partitions 1-3: readable records only.
    plan = {"interactions": (interaction, 5, 3, 4, 6), "items": (item, 4, 2, 3, 5)}
    bad_batches: dict[str, bytes] = {}
    for topic, (make, before, bad, after, other) in plan.items():
        produce_confluent(settings, [(topic, b"k", make(f"{topic}-before-{k}"), 0) for k in range(before)], "lz4")
        bad_batches[topic] = corrupt_batch([make(f"{topic}-bad-{k}") for k in range(bad)])
        produce_raw_batch(settings, topic, 0, bad_batches[topic])
        produce_confluent(settings, [(topic, b"k", make(f"{topic}-after-{k}"), 0) for k in range(after)], "zstd")
        produce_confluent(settings, [(topic, b"k", make(f"{topic}-other-{k}"), 1 + k % 3) for k in range(other)],
                          "snappy")

    worker = start_worker(settings)
    keys = {f"unreadable_batch:{settings.topic(t)}:0" for t in plan}
    body = wait_for(worker, lambda b: keys <= set(b.get("conditions", {})), timeout=120)
    # Stalled at the batch: what is in front of it and on the other partition is applied, nothing after it.
    wait_for(worker, lambda b: b.get("trained_total") == 5 + 6 and b.get("items_indexed") == 4 + 5, timeout=60)
    status, body = worker.health()
    assert status == 503 and body["status"].startswith("degraded: "), body
    stalled_at: dict[str, int] = {}
    for topic in plan:
        cond = body["conditions"][f"unreadable_batch:{settings.topic(topic)}:0"]
        stalled_at[topic] = cond["offset"]
        assert (cond["topic"], cond["partition"]) == (settings.topic(topic), 0), cond
        assert "CRC" in cond["reason"] and str(cond["offset"]) in cond["reason"], cond
        assert cond["last_offset"] - cond["offset"] + 1 == plan[topic][2], cond
        assert metric(worker, "towerstream_unreadable_batches_total",
                      f'action="stalled",topic="{settings.topic(topic)}"') == 1
    time.sleep(3)  # a stall holds: still nothing from behind the batch
    stats = worker.health()[1]
    assert (stats["trained_total"], stats["items_indexed"]) == (11, 9), stats
    assert worker.stop() == 0

    # The operator's escape: restart with skip. The batches are dead-lettered whole, then read past.
    skipping = Settings(**{**settings.model_dump(), "unreadable_batches": "skip"})
    second = start_worker(skipping)
    body = wait_for(second, lambda b: b.get("trained_total") == 5 + 6 + 4 and b.get("items_indexed") == 4 + 5 + 3
                    and b.get("status") == "ok", timeout=120)
    skipped = [n for n in body["notices"] if n["kind"] == "unreadable_batch_skipped"]
    assert sorted(n["topic"] for n in skipped) == sorted(settings.topic(t) for t in plan), body["notices"]
    # The whole batch as it is on the log: the broker set its base offset (the first 8 bytes).
    letters = {original[8:]: dl for original, dl in dead_letters(settings).items()}
    for topic, raw in bad_batches.items():
        dl = letters[raw[8:]]
        assert dl.error_kind == "unreadable_batch" and dl.source_topic == settings.topic(topic) and dl.partition == 0
        assert dl.offset == stalled_at[topic] and "CRC" in dl.reason, dl
        assert metric(second, "towerstream_unreadable_batches_total",
                      f'action="skipped",topic="{settings.topic(topic)}"') == 1
    # The events inside the skipped batches were not applied (they are in the dead letters).
    assert (body["trained_total"], body["items_indexed"]) == (15, 12), body


@pytest.mark.timeout(240)
def test_unreadable_batch_on_a_faust_topic_is_named(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess]
) -> None:
    """Faust's consumer (users) cannot skip a batch it cannot decode; /healthz and /metrics say where it is."""
    settings = worker_settings(broker, tmp_path / "data", topic_prefix, checkpoint_every_s=600)
    ensure_topics(settings)
    profiles = [encode(UserProfile(user_id=f"p{k}", features={"k": k}, ts=now())) for k in range(3)]
    produce_confluent(settings, [("users", b"k", value, 0) for value in profiles], "zstd")
    produce_raw_batch(settings, "users", 0, corrupt_batch(profiles))
    worker = start_worker(settings)
    key = f"unreadable_batch:{settings.topic('users')}:0"
    body = wait_for(worker, lambda b: key in b.get("conditions", {}), timeout=120)
    cond = body["conditions"][key]
    assert (cond["topic"], cond["partition"]) == (settings.topic("users"), 0) and "CRC" in cond["reason"], cond
    assert cond["last_offset"] - cond["offset"] + 1 == len(profiles), cond
    assert worker.health()[0] == 503
    assert metric(worker, "towerstream_unreadable_batches_total",
                  f'action="stalled",topic="{settings.topic("users")}"') == 1


@pytest.mark.timeout(120)
def test_drift_tail_reads_every_codec(broker: EmbeddedBroker, topic_prefix: str) -> None:
    import io

    from towerstream.cli_drift import tail
    from towerstream.events.drift import DriftReport

    settings = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix=topic_prefix, topic_partitions=1)
    ensure_topics(settings, ["drift-metrics"])
    ms = int(time.time() * 1000)
    for seq, codec in enumerate(CODEC_NAMES, start=1):
        rep = DriftReport(source="w1", seq=seq, emitted_at_ms=ms, model_version=seq, events=1, events_total=seq, k=10,
                          probes=0, hits=0, served_lists=0, index_size=0, live_items=0)
        produce_confluent(settings, [("drift-metrics", b"w1", encode(rep), 0)], codec)
    out = io.StringIO()
    assert tail(settings, out, from_beginning=True, max_reports=len(CODEC_NAMES), duration_s=30, as_json=True) == 5
    assert [json.loads(line)["seq"] for line in out.getvalue().splitlines()] == [1, 2, 3, 4, 5]
