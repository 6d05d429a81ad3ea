"""``towerstream demo --replicas 2``: the laptop mode runs a trainer and two serving replicas.

A real run of the command on the real broker, stopped with SIGTERM: the trainer (on the web
port) refuses ``/recommend`` and says where to ask, each replica (on the next ports) becomes
ready, holds the trainer's whole catalog and, once both are at the same version, gives the same
answer as the other; SIGTERM then stops all three processes (their ports close) and the command
exits 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kafka import KafkaConsumer, TopicPartition

from towerstream.broker import EmbeddedBroker, free_port, port_open
from towerstream.events.drift import DriftReport
from towerstream.processes import http_json

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TOWERSTREAM = Path(sys.executable).parent / "towerstream"


def _free_run(n: int) -> int:
    """A port p with p .. p+n-1 all free (the trainer's and the replicas')."""
    for _ in range(50):
        p = free_port()
        if p + n < 65535 and not any(port_open("127.0.0.1", p + i) for i in range(n)):
            return p
    raise RuntimeError("no run of free ports")


def read_all(broker: EmbeddedBroker, topic: str) -> list[Any]:
    """The records of ``topic`` up to its end offsets when called (reports keep arriving meanwhile)."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[Any] = []
        end = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < end, (ends, [consumer.position(tp) for tp in tps])
            for records in consumer.poll(timeout_ms=300).values():
                out.extend(records)
        return out
    finally:
        consumer.close()


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        return http_json(f"http://127.0.0.1:{port}{path}", timeout=3.0)
    except OSError:
        return 0, None


@pytest.mark.timeout(420)
def test_demo_with_two_replicas_serves_from_both_and_stops_them_all(
        broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str) -> None:
    port = _free_run(3)
    out_path = tmp_path / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERSTREAM_")}
    env.update({
        "TOWERSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap, "TOWERSTREAM_DATA_DIR": str(tmp_path / "data"),
        "TOWERSTREAM_WEB_PORT": str(port), "TOWERSTREAM_TOPIC_PREFIX": topic_prefix,
        "TOWERSTREAM_APP_ID": topic_prefix, "TOWERSTREAM_BROKER_SESSION_TIMEOUT": "6",
        "TOWERSTREAM_BROKER_HEARTBEAT_INTERVAL": "2", "TOWERSTREAM_TOPIC_PARTITIONS": "2",
        "TOWERSTREAM_VERSION_EVERY_S": "3", "TOWERSTREAM_DRIFT_EVERY_S": "1",
    })
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [str(TOWERSTREAM), "demo", "--replicas", "2", "--users", "20", "--items", "40", "--rate", "200",
             "--duration", "2"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            end = time.monotonic() + 240
            while "stream done" not in (text := out_path.read_text(errors="replace")):
                assert proc.poll() is None, text[-4000:]
                assert time.monotonic() < end, text[-4000:]
                time.sleep(0.5)
            for i in (1, 2):
                assert f"replica {i}: curl 'http://127.0.0.1:{port + i}/recommend/u1?k=10'" in text, text

            status, body = _get(port, "/recommend/u1?k=5")
            assert status == 404 and "serving replica" in body["error"], (status, body)

            # Wait until the trainer has trained everything and published it, and both replicas
            # hold that version: then their answers must be the same, from the model.
            end = time.monotonic() + 180
            while True:
                _, trainer = _get(port, "/healthz")
                h = [_get(port + i, "/healthz")[1] or {} for i in (1, 2)]
                published = (trainer or {}).get("published") or {}
                settled = (trainer or {}).get("untrained_events", 1) == 0 and (trainer or {}).get("items_known") == 40
                if (settled and h[0].get("ready") and h[1].get("ready") and published.get("version")
                        and h[0].get("version") == h[1].get("version") == published["version"]
                        and published.get("publishing") is None):
                    break
                assert proc.poll() is None, out_path.read_text(errors="replace")[-4000:]
                assert time.monotonic() < end, (trainer, h)
                time.sleep(0.5)
            assert h[0]["items"] == h[1]["items"] == 40, h
            assert h[0]["items_digest"] == h[1]["items_digest"], h
            answers = [_get(port + i, "/recommend/u1?k=10")[1] for i in (1, 2)]
            assert answers[0]["source"] == "model" and answers[0]["model_version"] == published["version"], answers
            assert [x["item_id"] for x in answers[0]["items"]] == [x["item_id"] for x in answers[1]["items"]], answers
            for a, b in zip(answers[0]["items"], answers[1]["items"]):
                assert abs(a["score"] - b["score"]) <= 1e-5, answers

            # The drift stream: learning figures from the trainer, served lists from each replica.
            host = socket.gethostname()
            replicas = {f"{topic_prefix}.replica.{host}:{port + i}" for i in (1, 2)}
            end = time.monotonic() + 60
            while True:
                reports = [DriftReport.model_validate_json(r.value) for r in read_all(broker, f"{topic_prefix}.drift-metrics")]
                served_by = {r.source for r in reports if r.source in replicas and r.served_lists > 0}
                if served_by == replicas:
                    break
                assert time.monotonic() < end, sorted({(r.source, r.served_lists) for r in reports})
                time.sleep(1.0)
            trainer_reports = [r for r in reports if r.source == topic_prefix]
            assert trainer_reports and max(r.events_total for r in trainer_reports) > 0, reports
            assert all(r.served_lists == 0 for r in trainer_reports), trainer_reports  # it serves nothing
            assert all(r.events == 0 and r.probes == 0 for r in reports if r.source in replicas)
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                code = proc.wait(timeout=90)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    text = out_path.read_text(errors="replace")
    assert code == 0, text[-4000:]
    # Every process it started has gone: nothing listens on the three ports any more.
    end = time.monotonic() + 30
    while any(port_open("127.0.0.1", port + i) for i in range(3)):
        assert time.monotonic() < end, text[-4000:]
        time.sleep(0.5)
