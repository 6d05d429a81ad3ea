"""Faults on a real broker: SIGKILL the worker at random moments, SIGSTOP the broker mid-stream.

The kill test (harness in ``tests/chaos.py``, also run by ``bench/faults.py`` with 20 kills)
replays a recording with item updates, deletes and re-announcements and kills the worker with
SIGKILL at seeded random moments, some of them while it is still starting. It checks, at every
kill, that committed offsets never run ahead of durable effects; after the run, that the index
holds exactly the live items with one vector each, that every interaction has its durable
marker and was trained into the surviving model exactly once (``trained_in_model``: checkpoint
plus journal replay), and that every restart came back and processed a new event. How fast a
restart does that is a performance figure, measured and reported by ``bench/faults.py``, not
asserted here: on a loaded machine it says nothing about correctness.

The pause test SIGSTOPs the broker for 10 s mid-stream; the last test damages every checkpoint
of a stopped worker and restarts it: it must rebuild the index from RocksDB, not crash.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from producers.producer import EventProducer
from producers.replay import replay
from producers.topics import ensure_topics
from tests.chaos import faults_recording, kill_run
from tests.conftest import worker_settings
from towerstream.broker import EmbeddedBroker
from towerstream.events import Interaction
from towerstream.processes import WorkerProcess, http_json
from towerstream.settings import Settings
from towerstream.synthetic import StreamSpec, generate

pytestmark = [pytest.mark.broker, pytest.mark.slow]

KILL_SEED = 20261125


@pytest.mark.timeout(420)
def test_kill_9_at_random_moments_loses_nothing_and_duplicates_nothing(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str
) -> None:
    settings = worker_settings(broker, tmp_path / "data", topic_prefix, checkpoint_every_s=3)
    recording = faults_recording(seed=KILL_SEED % 1000, interactions=2400)
    run = kill_run(settings, recording, kills=5, seed=KILL_SEED, logs=tmp_path, speed=60.0)
    report = run.summary()
    assert not run.problems, report
    assert run.kills >= 5, report
    restarts = run.restarts_to_first_event_s
    assert len(restarts) == 5, report  # every loop kill was followed by a restart that processed an event
    final = run.final
    assert final["items_in_index"] == final["vectors_stored"] == len(recording.live_items), report
    assert final["trained_into_model"] == final["trained_counter"] == final["interactions"], report


def _produce(settings: Settings, spec: StreamSpec, speed: float, out: dict[str, Any]) -> None:
    prod = EventProducer(settings, request_timeout_ms=5_000, delivery_timeout_ms=60_000)
    out["summary"] = replay(generate(spec), settings, speed=speed, progress=False, create_topics=False,
                            producer=prod)
    prod.close()


@pytest.mark.timeout(240)
def test_broker_paused_for_10s_mid_stream_the_worker_recovers_by_itself(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess]
) -> None:
    settings = worker_settings(broker, tmp_path / "data", topic_prefix)
    ensure_topics(settings)
    worker = start_worker(settings)
    worker.wait_ready(90)
    pid = worker.proc.pid if worker.proc else None
    spec = StreamSpec(users=50, items=100, interactions=1500, late_items=0.2, seed=9)
    produced: dict[str, Any] = {}
    producer = threading.Thread(target=_produce, args=(settings, spec, 100.0, produced), daemon=True)
    producer.start()
    # Mid-stream: wait until part of the stream has been trained.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (worker.health()[1] or {}).get("trained_total", 0) < 200:
        time.sleep(0.1)
    trained_before = worker.health()[1]["trained_total"]
    assert 200 <= trained_before < spec.interactions

    intake: dict[str, Any] = {}

    def post_during_pause() -> None:
        ev = Interaction(event_id="during-pause", user_id="u1", item_id="i1", ts=datetime.now(timezone.utc))
        t0 = time.monotonic()
        intake["status"], intake["body"] = http_json(
            worker.base_url + "/interactions", data=ev.model_dump_json().encode(), method="POST", timeout=30)
        intake["seconds"] = time.monotonic() - t0

    broker.pause()
    paused_at = time.monotonic()
    try:
        time.sleep(1.0)
        poster = threading.Thread(target=post_during_pause, daemon=True)
        poster.start()
        seen: list[tuple[float, int, Any]] = []
        while time.monotonic() - paused_at < 10.0:
            status, body = worker.health()
            seen.append((round(time.monotonic() - paused_at, 1), status, body))
            time.sleep(0.25)
    finally:
        broker.resume()
    resumed_at = time.monotonic()
    # /healthz said unhealthy while Kafka could not be reached, and why.
    unhealthy = [(t, b) for t, s, b in seen if s == 503 and isinstance(b, dict) and b.get("kafka") is False]
    assert unhealthy, seen
    assert unhealthy[0][1]["status"] == "kafka unreachable"  # noticed while the broker was still paused
    assert all(s in (200, 503) for _, s, _ in seen), seen  # it kept answering
    # It recovers by itself: healthy again, same process, the rest of the stream trained.
    while time.monotonic() - resumed_at < 60 and worker.health()[0] != 200:
        time.sleep(0.25)
    assert worker.health()[0] == 200, worker.health()
    recovered_s = time.monotonic() - resumed_at
    producer.join(timeout=120)
    summary = produced["summary"]
    assert summary.failed == 0 and summary.sent == 50 + 100 + spec.interactions, summary
    # The intake request made during the pause got an answer, not a hang: 503 after its 10 s
    # deadline, or 202 if the broker came back in time (then the event must be trained too).
    poster.join(timeout=30)
    assert intake.get("status") in (202, 503), intake  # answered within the client's 30 s: no hang
    assert isinstance(intake["body"], dict) and (intake["status"] == 202 or "Kafka" in intake["body"]["error"])
    want = spec.interactions + (1 if intake["status"] == 202 else 0)
    deadline = time.monotonic() + 90
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = worker.health()[1] or {}
        if body.get("trained_in_model") == want:
            break
        time.sleep(0.25)
    assert body.get("trained_total") == want and body.get("trained_in_model") == want, body
    assert body["items_indexed"] == spec.items
    assert worker.alive() and worker.proc is not None and worker.proc.pid == pid
    print(f"broker pause: unhealthy after {unhealthy[0][0]}s, healthy {recovered_s:.1f}s after resume, "
          f"intake during pause -> {intake['status']} in {intake['seconds']:.1f}s")


@pytest.mark.timeout(180)
def test_unreadable_checkpoints_are_rebuilt_by_a_restarted_worker_not_fatal(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess]
) -> None:
    settings = worker_settings(broker, tmp_path / "data", topic_prefix, checkpoint_every_s=600)
    ensure_topics(settings)
    first = start_worker(settings)
    first.wait_ready(90)
    spec = StreamSpec(users=30, items=60, interactions=600, late_items=0.0, seed=4)
    assert replay(generate(spec), settings, progress=False, create_topics=False).failed == 0
    # The catalog too, not only the interactions: the items reader joins a group of its own and
    # may still be reading when the interactions are all trained; stopped then, this worker would
    # hold no item records, and a rebuild from them would have nothing to rebuild.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (
            (body := first.health()[1] or {}).get("trained_in_model") == spec.interactions
            and body.get("items_indexed") == spec.items):
        time.sleep(0.25)
    assert first.stop() == 0  # graceful: a checkpoint at shutdown, the journal trimmed to it
    ckpts = sorted((settings.data_dir / "engine" / "checkpoints").glob("ckpt-" + "[0-9]" * 16))
    assert ckpts
    for ckpt in ckpts:  # e.g. a disk fault: every checkpoint fails its checksum
        (ckpt / "index.faiss").write_bytes(b"\0" * 64)
    second = start_worker(settings)
    health = second.wait_ready(90)
    assert health["items_indexed"] == spec.items and health["trained_total"] == spec.interactions, health
    status, rec = http_json(second.base_url + "/recommend/u1?k=5")
    assert status == 200 and rec["source"] == "model" and len(rec["items"]) == 5, rec
    log = Path(str(second.log_path)).read_text()
    assert "checkpoints_unreadable" in log and "index_rebuilt" in log
    rebuilt = [json.loads(line) for line in log.splitlines() if '"index_rebuilt"' in line]
    assert rebuilt and rebuilt[0]["items"] == spec.items, rebuilt  # from RocksDB, not re-read from Kafka
