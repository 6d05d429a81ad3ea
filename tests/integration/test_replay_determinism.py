"""Replaying one recording into two fresh workers (same seed, CPU) gives the same index and figures."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index_store import load_latest_checkpoint
from producers.replay import replay
from producers.topics import ensure_topics
from tests.conftest import worker_settings
from tests.integration.test_spine import metric, wait_for
from towerstream.broker import EmbeddedBroker
from towerstream.processes import WorkerProcess, http_json
from towerstream.recording import RecordedRecord
from towerstream.synthetic import StreamSpec, generate

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]

SPEC = StreamSpec(users=60, items=120, interactions=2500, late_items=0.25, seed=21)


def run_once(broker: EmbeddedBroker, root: Path, prefix: str, records: list[RecordedRecord]) -> dict[str, Any]:
    settings = worker_settings(
        broker, root / prefix, prefix, ordering="event_time", ordering_idle_s=3.0, checkpoint_every_s=3600,
        seed=7, batch_max=256,
    )
    ensure_topics(settings)
    summary = replay(records, settings, progress=False)
    assert summary.failed == 0, summary.errors
    # Only the event-count cadence may trigger drift reports: time-driven ones would interleave
    # with training at moments that depend on the machine, not on the stream.
    worker = WorkerProcess(settings, log_path=root / f"{prefix}.log",
                           extra_env={"TOWERSTREAM_DRIFT_EVERY_S": "36000"}).start()
    try:
        worker.wait_ready(90)
        n_items = sum(r.topic == "items" for r in records)
        wait_for(worker, lambda b: b.get("trained_total", 0) >= SPEC.interactions
                 and b.get("items_indexed", 0) >= n_items and b.get("untrained_events") == 0, timeout=150)
        time.sleep(1.0)
        out: dict[str, Any] = {
            "health": wait_for(worker, lambda b: True),
            "probes": metric(worker, "towerstream_live_probes_total"),
            "hits": metric(worker, "towerstream_live_hits_total"),
            "recs": [http_json(f"{worker.base_url}/recommend/u{u}?k=10")[1]["items"] for u in range(10)],
        }
    finally:
        assert worker.stop() == 0
    loaded = load_latest_checkpoint(root / prefix / "engine" / "checkpoints")
    assert loaded is not None
    _, index, _ = loaded
    out["ids"] = index.ids()
    out["vectors"] = index.get(out["ids"])
    return out


def test_same_recording_same_seed_same_index_and_figures(broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str) -> None:
    records = list(generate(SPEC))
    # Side by side: their timings differ (joins, fetches, who gets the cores), which is what the
    # event-time ordering must make irrelevant; and the waits of one overlap the work of the other.
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [pool.submit(run_once, broker, tmp_path, topic_prefix + ab, records) for ab in "ab"]
        a, b = (r.result() for r in runs)
    assert a["health"]["trained_total"] == b["health"]["trained_total"] == SPEC.interactions
    assert a["health"]["model_version"] == b["health"]["model_version"]
    np.testing.assert_array_equal(a["ids"], b["ids"])
    assert len(a["ids"]) == SPEC.items
    np.testing.assert_allclose(a["vectors"], b["vectors"], atol=1e-5, rtol=0)
    assert a["probes"] == b["probes"] and a["probes"] > 0
    assert a["hits"] == b["hits"]
    for ra, rb in zip(a["recs"], b["recs"]):
        assert [x["item_id"] for x in ra] == [x["item_id"] for x in rb]
        np.testing.assert_allclose([x["score"] for x in ra], [x["score"] for x in rb], atol=1e-5)
