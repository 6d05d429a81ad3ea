"""EventProducer, produce_lines and the ``produce`` CLI against the real test broker."""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from producers import BrokerUnavailable, EventProducer, ensure_topics, produce_lines
from towerstream.broker import EmbeddedBroker, free_port
from tests.integration.cli_helpers import _structlog_restored, cli  # noqa: F401 - autouse fixture
from towerstream.events import (
    Interaction,
    ItemDelete,
    ItemUpsert,
    UserProfile,
    decode_interaction,
    decode_item,
    decode_user,
)
from towerstream.settings import Settings

pytestmark = pytest.mark.broker

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
FAST = {"max_block_ms": 1500, "request_timeout_ms": 1000, "delivery_timeout_ms": 2000}
#: ``EventProducer``'s own ``max_block_ms`` (and the CLI's without ``--delivery-timeout``): a wait that
#: reaches it did not honour the shorter bound the test gave.
DEFAULT_MAX_BLOCK_S = inspect.signature(EventProducer).parameters["max_block_ms"].default / 1000


def consume(settings: Settings, logical: str, n: int, timeout_s: float = 10.0) -> list[ConsumerRecord]:
    """All partitions of one topic from the beginning, until ``n`` records arrived."""
    topic = settings.topic(logical)
    c = KafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=None,
                      enable_auto_commit=False, fetch_max_wait_ms=10)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        got: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=100).values():
                got.extend(recs)
        # A short extra poll: more than n records would be a bug too.
        for recs in c.poll(timeout_ms=200).values():
            got.extend(recs)
        return got
    finally:
        c.close(autocommit=False)


@pytest.fixture()
def settings(broker: EmbeddedBroker, topic_prefix: str) -> Settings:
    return Settings(kafka_bootstrap=broker.bootstrap, topic_prefix=topic_prefix, topic_partitions=3)


@pytest.fixture()
def cli_env(broker: EmbeddedBroker, topic_prefix: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("TOWERSTREAM_KAFKA_BOOTSTRAP", broker.bootstrap)
    monkeypatch.setenv("TOWERSTREAM_TOPIC_PREFIX", topic_prefix)
    return Settings()


def _summary(out: str) -> dict[str, float]:
    m = re.search(r"^sent=(\d+) failed=(\d+) rate=([\d.]+)/s", out, re.M)
    assert m, out
    return {"sent": int(m[1]), "failed": int(m[2]), "rate": float(m[3])}


def test_ensure_topics_is_idempotent(settings: Settings) -> None:
    names = ensure_topics(settings, ["interactions", "dead-letters"])
    assert names == [settings.topic("interactions"), settings.topic("dead-letters")]
    assert ensure_topics(settings, ["interactions", "dead-letters"]) == names
    c = KafkaConsumer(bootstrap_servers=settings.bootstrap)
    try:
        assert c.partitions_for_topic(names[0]) == {0, 1, 2}
        assert c.partitions_for_topic(names[1]) == {0, 1, 2}
    finally:
        c.close()


def test_each_event_type_round_trips(settings: Settings) -> None:
    ensure_topics(settings)
    inter = [
        Interaction(event_id=f"e{n}", user_id=f"u{n % 2}", item_id="i1", kind="click", ts=T0 + n * 1000)
        for n in range(3)
    ]
    upsert = ItemUpsert(event_id="item-1", item_id="i1", title="A title", categories=["c"], ts=T0 + 5)
    delete = ItemDelete(op="delete", item_id="i2", ts=T0 + 6)
    user = UserProfile(user_id="u0", features={"age": 30}, ts=T0 + 7)
    with EventProducer(settings) as prod:
        prod.send_interaction(inter[0])
        for ev in (*inter[1:], upsert, delete, user):
            prod.send_event(ev)
        with pytest.raises(TypeError):
            prod.send_event(settings)  # type: ignore[arg-type]
        summary = prod.flush(10)
    assert (summary.sent, summary.failed, summary.pending) == (6, 0, 0)
    assert summary.ok and summary.rate > 0

    got = consume(settings, "interactions", 3)
    assert sorted((r.key, r.timestamp) for r in got) == [(b"u0", T0), (b"u0", T0 + 2000), (b"u1", T0 + 1000)]
    assert sorted((decode_interaction(r.value) for r in got), key=lambda e: e.event_id) == inter
    assert {r.topic for r in got} == {settings.topic("interactions")}

    items = consume(settings, "items", 2)
    assert {(r.key, r.timestamp) for r in items} == {(b"i1", T0 + 5), (b"i2", T0 + 6)}
    assert sorted((decode_item(r.value) for r in items), key=lambda e: e.item_id) == [upsert, delete]

    users = consume(settings, "users", 1)
    assert [(r.key, r.timestamp, decode_user(r.value)) for r in users] == [(b"u0", T0 + 7, user)]


def test_produce_lines_counts_invalid_lines(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    ensure_topics(settings, ["interactions"])

    def line(n: int) -> str:
        return json.dumps({"event_id": f"e{n}", "user_id": "u1", "item_id": "i9", "ts": T0 + n})

    lines: list[str | bytes] = [
        line(1),
        "this is not json",
        line(2).encode(),
        "",
        json.dumps({"event_id": "e3", "user_id": "u1", "ts": T0}),  # no item_id
        json.dumps({"event_id": "e4", "user_id": "u1", "item_id": "i1", "ts": T0, "extra": 1}),
        line(5) + "\n",
    ]
    with EventProducer(settings) as prod:
        summary = produce_lines(lines, "interactions", prod)
    assert (summary.sent, summary.failed) == (3, 3)
    assert [e.split(":")[0] for e in summary.errors] == ["line 2", "line 5", "line 6"]
    assert "item_id" in summary.errors[1] and "extra" in summary.errors[2]
    assert "line 2: not_json" in capsys.readouterr().err
    got = consume(settings, "interactions", 3)
    assert sorted(decode_interaction(r.value).event_id for r in got) == ["e1", "e2", "e5"]


def test_cli_produce_files(cli_env: Settings, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "items.jsonl"
    good.write_text(
        "\n".join(json.dumps({"item_id": f"i{n}", "title": f"t{n}", "ts": T0}) for n in range(4))
        + "\n" + json.dumps({"op": "delete", "item_id": "i0", "ts": T0 + 1}) + "\n"
    )
    assert cli(["produce", "items", str(good)]) == 0
    assert _summary(capsys.readouterr().out)["sent"] == 5
    assert len(consume(cli_env, "items", 5)) == 5

    bad = tmp_path / "inter.jsonl"
    bad.write_text(json.dumps({"event_id": "e1", "user_id": "u", "item_id": "i", "ts": T0}) + "\n{oops\n")
    assert cli(["produce", "interactions", str(bad)]) == 1
    out = capsys.readouterr()
    assert (_summary(out.out)["sent"], _summary(out.out)["failed"]) == (1, 1)
    assert "line 2" in out.err


def test_cli_generate(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["produce", "generate", "--users", "5", "--items", "10", "--rate", "0",
            "--interactions", "40", "--duration", "20", "--seed", "3", "--no-progress"]
    before = time.time() * 1000
    assert cli(argv) == 0
    s = _summary(capsys.readouterr().out)
    # 8 early items + 2 late ones, 5 profiles, 40 interactions
    assert (s["sent"], s["failed"]) == (10 + 5 + 40, 0)
    got = consume(cli_env, "interactions", 40)
    assert len(got) == 40
    # Event times are shifted to now, in the record timestamp and the event alike.
    assert all(r.timestamp >= before - 1000 for r in got)
    assert all(json.loads(r.value)["ts"] == r.timestamp for r in got)


def test_cli_generate_paced(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["produce", "generate", "--users", "3", "--items", "4", "--rate", "20",
            "--duration", "1", "--no-progress"]
    t = time.monotonic()
    assert cli(argv) == 0
    elapsed = time.monotonic() - t
    s = _summary(capsys.readouterr().out)
    assert elapsed > 0.8  # paced over its duration, not sent at once
    assert 3 + 4 + 18 <= s["sent"] <= 3 + 4 + 20  # 20/s for 1 s, and no more


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    t = time.monotonic()
    try:
        out: object = fn()
    except Exception as exc:  # noqa: BLE001 - returned for the assertion
        out = exc
    return out, time.monotonic() - t


def test_closed_port_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    err, elapsed = _timed(lambda: EventProducer(dead, **FAST))
    assert isinstance(err, BrokerUnavailable) and dead.bootstrap in str(err) and "1500 ms" in str(err)
    # It gave up at the bound it was given (1.5 s), not the default one it would otherwise wait (10 s).
    assert elapsed < DEFAULT_MAX_BLOCK_S

    monkeypatch.setenv("TOWERSTREAM_KAFKA_BOOTSTRAP", dead.bootstrap)
    f = tmp_path / "i.jsonl"
    f.write_text(json.dumps({"event_id": "e1", "user_id": "u", "item_id": "i", "ts": T0}) + "\n")
    rc, elapsed = _timed(lambda: cli(["produce", "interactions", str(f), "--delivery-timeout", "1.5"]))
    assert rc == 1 and elapsed < DEFAULT_MAX_BLOCK_S  # every wait bounded by --delivery-timeout, none by the default
    assert "cannot reach Kafka" in capsys.readouterr().err


def test_broker_lost_midstream_counts_every_failure() -> None:
    """Records the broker never acknowledges are counted as failed, in bounded time."""
    with EmbeddedBroker() as own:  # our own broker: pausing the shared one would stall other tests
        assert own.proc is not None
        try:
            s = Settings(kafka_bootstrap=own.bootstrap, topic_prefix="lost")
            ensure_topics(s, ["interactions"])
            prod = EventProducer(s, **FAST)
            prod.send_raw(s.topic("interactions"), b"k", b"before")
            assert prod.flush(5).sent == 1
            own.pause()  # connections stay open, nothing is answered: the hang case
            for n in range(5):
                prod.send_raw(s.topic("interactions"), b"k", b"after %d" % n, event_id=f"e{n}")
            summary, elapsed = _timed(lambda: prod.close(timeout=10))
        finally:
            own.proc.kill()  # SIGTERM with open connections takes Tansu 5 s
            own.proc.wait(timeout=5)
    # Failed by the 2 s delivery timeout, with nothing left pending: had close() given up at its own
    # 10 s timeout instead, the five would still be pending.
    assert (summary.sent, summary.failed, summary.pending) == (1, 5, 0), (summary, elapsed)  # type: ignore[union-attr]
    assert not summary.ok  # type: ignore[union-attr]
    assert any("e0" in e or "unacknowledged" in e for e in summary.errors)  # type: ignore[union-attr]
