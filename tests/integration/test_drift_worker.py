"""A real worker on the real broker emits DriftReports to drift-metrics and exposes the gauges on /metrics."""

from __future__ import annotations

import io
import time
import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from producers.kafka_config import client_config
from producers.producer import EventProducer
from producers.topics import ensure_topics
from tests.conftest import worker_settings
from towerstream.broker import EmbeddedBroker
from towerstream.cli_drift import tail
from towerstream.drift import REPORT_HEADER, report_line
from towerstream.events.drift import DriftReport
from towerstream.processes import WorkerProcess, http_json
from towerstream.synthetic import StreamSpec, generate

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

SPEC = StreamSpec(users=30, items=60, interactions=800, late_items=0.0, seed=5)
DRIFT_ENV = {
    "TOWERSTREAM_DRIFT_EVERY_EVENTS": "300",
    "TOWERSTREAM_DRIFT_EVERY_S": "2",
    "TOWERSTREAM_DRIFT_SAMPLE_RATE": "0.5",
    "TOWERSTREAM_DRIFT_WARMUP_EVENTS": "0",
}


def metrics_text(worker: WorkerProcess) -> str:
    return urllib.request.urlopen(worker.base_url + "/metrics", timeout=5).read().decode()


def sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_worker_emits_drift_reports_and_gauges(broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path) -> None:
    s = worker_settings(broker, tmp_path / "worker", topic_prefix)
    ensure_topics(s)
    worker = WorkerProcess(s, log_path=tmp_path / "worker.log", extra_env=DRIFT_ENV).start()
    consumer = KafkaConsumer(**client_config(s, client_id="drift-test"), group_id=None,
                             enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=20)
    try:
        worker.wait_ready(60)
        with EventProducer(s) as prod:
            for rec in generate(SPEC):
                prod.send_raw(s.topic(rec.logical_topic()), rec.key.encode() if rec.key else None,
                              rec.value_bytes(), timestamp_ms=rec.timestamp)
            assert prod.flush(timeout=20).failed == 0

        topic = s.topic("drift-metrics")
        consumer.assign([TopicPartition(topic, p) for p in range(s.topic_partitions)])
        reports: list[DriftReport] = []
        deadline = time.monotonic() + 30
        served = 0
        while time.monotonic() < deadline and not (reports and reports[-1].events_total >= SPEC.interactions
                                                   and any(r.served_lists for r in reports)):
            for u in range(3):  # served answers feed coverage, Gini and PSI
                status, _ = http_json(worker.base_url + f"/recommend/u{u}?k=10")
                served += status == 200
            for msgs in consumer.poll(timeout_ms=300).values():
                for m in msgs:
                    assert m.key == s.app_id.encode()
                    reports.append(DriftReport.model_validate_json(m.value))
        assert reports, f"no drift report in time; see {tmp_path / 'worker.log'}"
        assert [r.seq for r in reports] == list(range(1, len(reports) + 1))
        last = reports[-1]
        assert last.events_total == SPEC.interactions == sum(r.events for r in reports)
        assert sum(r.probes for r in reports) > 0 and last.hit_rate_total is not None
        assert last.index_size == SPEC.items and last.model_version > 0
        assert served > 0 and any(r.served_lists and r.coverage is not None for r in reports)
        assert any(r.item_norm is not None and r.variance_top1 is not None for r in reports)

        # ``towerstream drift tail --from-beginning --max N`` prints the header, then one line per report.
        out = io.StringIO()
        n = tail(s, out, from_beginning=True, max_reports=len(reports), duration_s=15)
        header = REPORT_HEADER.splitlines()
        lines = out.getvalue().splitlines()
        assert lines[: len(header)] == header and "lag_p50_s" in header[0]
        lines = lines[len(header):]
        assert n == len(lines) == len(reports)
        assert sorted(lines) == sorted(report_line(r) for r in reports)

        text = metrics_text(worker)
        assert (sample(text, "towerstream_drift_reports_total") or 0) >= len(reports)
        assert (sample(text, "towerstream_live_probes_total") or 0) == sum(r.probes for r in reports)
        for name in ("towerstream_live_hit_rate", "towerstream_drift_item_shift", "towerstream_drift_score_psi",
                     "towerstream_drift_coverage", "towerstream_drift_gini", "towerstream_drift_embedding_norm",
                     "towerstream_drift_variance_top", "towerstream_drift_freshness_lag_seconds",
                     "towerstream_drift_change"):
            assert sample(text, name) is not None, name
    finally:
        consumer.close()
        worker.kill()  # nothing is asserted on its stop: no graceful shutdown to wait for
