"""record -> file -> replay -> record through the real broker reproduces the stream exactly."""

from __future__ import annotations

import importlib
import io
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from producers import ensure_topics, record, replay
from towerstream.broker import EmbeddedBroker
from tests.integration.cli_helpers import _structlog_restored, cli  # noqa: F401 - autouse fixture
from towerstream.recording import RecordedRecord, iter_recording, write_recording
from towerstream.settings import Settings
from towerstream.synthetic import StreamSpec, generate

pytestmark = pytest.mark.broker

TOPICS = ["items", "users", "interactions"]


def settings_for(broker: EmbeddedBroker, prefix: str) -> Settings:
    return Settings(kafka_bootstrap=broker.bootstrap, topic_prefix=prefix, topic_partitions=3)


def per_key(records: list[RecordedRecord]) -> dict[tuple[str, str | None], list[tuple[object, ...]]]:
    """Records grouped by (topic, key) in file order: a key's records share one partition."""
    out: dict[tuple[str, str | None], list[tuple[object, ...]]] = defaultdict(list)
    for r in records:
        out[(r.logical_topic(), r.key)].append((r.timestamp, r.value, r.headers))
    return dict(out)


def event_ids(records: list[RecordedRecord]) -> list[str]:
    return sorted(str(r.value.get("event_id") or r.value.get("user_id")) for r in records)


def test_record_then_replay_reproduces_the_stream(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    generated = list(generate(StreamSpec(users=12, items=20, interactions=300, seed=7)))
    # One record with headers and one that is not JSON: both must survive the trip.
    last_ts = generated[-1].timestamp
    generated.append(
        RecordedRecord(
            topic="interactions", key="u1", value="not json", timestamp=last_ts, headers={"trace": "abc"}
        )
    )
    n = len(generated)
    a, b = settings_for(broker, topic_prefix + "a"), settings_for(broker, topic_prefix + "b")

    s = replay(generated, a, progress=False)
    assert (s.sent, s.failed) == (n, 0)
    file_a, file_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert record(a, TOPICS, file_a, max_events=n, duration_s=20) == n

    s = replay(iter_recording(file_a), b, progress=False)
    assert (s.sent, s.failed) == (n, 0)
    assert record(b, TOPICS, file_b, max_events=n + 1, duration_s=1.5) == n  # nothing extra arrives

    rec_a, rec_b = list(iter_recording(file_a)), list(iter_recording(file_b))
    assert len(rec_a) == len(rec_b) == n
    # Same keys, event ids, timestamps, values and headers, in the same order per key.
    assert per_key(rec_a) == per_key(rec_b) == per_key(generated)
    json_a = [r for r in rec_a if isinstance(r.value, dict)]
    assert event_ids(json_a) == event_ids([r for r in generated if isinstance(r.value, dict)])
    assert sorted(r.model_dump_json() for r in rec_a) == sorted(r.model_dump_json() for r in rec_b)


def test_record_stops_on_event_and_writes_to_stream(broker: EmbeddedBroker, topic_prefix: str) -> None:
    s = settings_for(broker, topic_prefix)
    recs = list(generate(StreamSpec(users=3, items=4, interactions=10, seed=1, profiles=False)))
    replay(recs, s, progress=False)
    stop = threading.Event()
    buf = io.StringIO()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    t = time.monotonic()
    # No duration and no event limit: only the stop event can end it, so returning proves it honoured it.
    assert record(s, ["interactions", "items"], buf, stop=stop) == len(recs)
    assert stop.is_set() and time.monotonic() - t > 0.9  # it kept recording until it was told to stop
    assert len(list(iter_recording(io.StringIO(buf.getvalue())))) == len(recs)


def test_replay_speed_paces_by_timestamps(broker: EmbeddedBroker, topic_prefix: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    replay_module = importlib.import_module("producers.replay")  # the package's ``replay`` is the function

    slept: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # the real sleep, recorded: what pacing asked for
        slept.append(seconds)
        real_sleep(seconds)

    # Only the replay module's view of ``time``: the producer's own threads keep the real one.
    monkeypatch.setattr(replay_module, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    s = settings_for(broker, topic_prefix)
    ensure_topics(s)
    t0 = 1_704_067_200_000
    recs = [
        RecordedRecord(topic="towerstream.interactions", key=f"u{i}", value={"n": i}, timestamp=t0 + 250 * i)
        for i in range(9)  # 2 s of event time
    ]
    start = time.monotonic()
    summary = replay(recs, s, speed=4, progress=False)
    elapsed = time.monotonic() - start
    assert summary.sent == 9
    assert elapsed > 0.35, elapsed  # 2 s of event time at 4x: the last record is due 0.5 s after the first
    assert slept and sum(slept) <= 2.0 / 4 + 1e-3, slept  # and it waits for nothing more than the pacing

    slept.clear()
    assert replay(recs, s, speed=None, progress=False).sent == 9
    assert slept == []  # as fast as possible: no pacing at all


def test_replay_window_and_cli(broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = 1_704_067_200_000
    recs = [
        RecordedRecord(topic="interactions", key="u", value={"n": i}, timestamp=t0 + 1000 * i)
        for i in range(10)
    ]
    src = tmp_path / "in.jsonl"
    write_recording(recs, src)
    monkeypatch.setenv("TOWERSTREAM_KAFKA_BOOTSTRAP", broker.bootstrap)
    monkeypatch.setenv("TOWERSTREAM_TOPIC_PREFIX", topic_prefix)
    # --from is inclusive (ISO), --until exclusive (ms): records 2..6
    argv = ["replay", str(src), "--from", "2024-01-01T00:00:02Z", "--until", str(t0 + 7000), "--max-speed"]
    assert cli(argv) == 0
    assert "sent=5 failed=0 rate=" in capsys.readouterr().out
    out = tmp_path / "out.jsonl"
    argv = ["record", "--topics", "interactions", "-o", str(out), "--max-events", "5", "--duration", "10"]
    assert cli(argv) == 0
    assert [r.value["n"] for r in iter_recording(out)] == [2, 3, 4, 5, 6]
    assert "recorded=5" in capsys.readouterr().out

    bad = tmp_path / "bad.jsonl"
    bad.write_text(src.read_text() + "{broken\n")
    assert cli(["replay", str(bad)]) == 1
    assert "line 11" in capsys.readouterr().err
