"""Per-partition lag on /metrics and /healthz, and a stalled partition degrading /healthz (``streams.lag``).

The stall is real: the items reader's child process is stopped with SIGSTOP while item events
arrive, so its partitions fall behind and stop moving; SIGCONT lets it catch up.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from producers.producer import EventProducer
from producers.topics import ensure_topics
from tests.conftest import worker_settings
from tests.integration.test_log_reset import items
from tests.integration.test_spine import metric, wait_for
from towerstream.broker import EmbeddedBroker
from towerstream.processes import WorkerProcess
from towerstream.settings import Settings

pytestmark = [pytest.mark.broker]


def reader_pid(worker: WorkerProcess) -> int:
    """The items reader process the worker started last (from its JSON log)."""
    pids = [json.loads(line)["pid"] for line in Path(str(worker.log_path)).read_text().splitlines()
            if line.startswith("{") and '"items_reader_started"' in line]
    assert pids, "no items reader started"
    return int(pids[-1])


def health(worker: WorkerProcess) -> tuple[int, dict[str, Any]]:
    status, body = worker.health()
    return status, body if isinstance(body, dict) else {}


@pytest.mark.timeout(300)
def test_a_backlog_shows_as_lag_and_a_stalled_partition_degrades_healthz_until_it_moves(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    settings = worker_settings(broker, tmp_path / "data", topic_prefix, stall_after_s=4)
    ensure_topics(settings)
    worker = start_worker(settings)
    worker.wait_ready(120)
    topic = settings.topic("items")
    keys = [f"{topic}:{p}" for p in range(settings.topic_partitions)]
    body = wait_for(worker, lambda b: all(k in b.get("lag", {}).get("partitions", {}) for k in keys), timeout=60)
    assert body["lag"]["total"] == 0 and body["status"] == "ok", body
    pid = reader_pid(worker)
    os.kill(pid, signal.SIGSTOP)
    try:
        backlog = items("lag", 30)
        with EventProducer(settings) as prod:  # one record per batch: Tansu's listed end is exact then
            for ev in backlog:
                prod.send_event(ev)
                prod.flush(timeout=20)
            assert prod.flush(timeout=20).failed == 0
        body = wait_for(worker, lambda b: b["lag"]["total"] == len(backlog), timeout=60)
        parts = body["lag"]["partitions"]
        assert sum(parts[k]["lag"] for k in keys) == len(backlog), body["lag"]
        worst = max(keys, key=lambda k: parts[k]["lag"])
        assert body["lag"]["worst"] == {"partition": worst, "lag": parts[worst]["lag"]}
        assert metric(worker, "towerstream_consumer_lag", f'topic="{topic}"') == len(backlog)
        # Behind and not moving for stall_after_s: /healthz turns 503 and names the partitions.
        stalled = {k for k in keys if parts[k]["lag"] > 0}
        stalled_body = wait_for(worker, lambda b: {f"stalled:{k}" for k in stalled} <= set(b["conditions"]),
                                 timeout=60)
        status, body = health(worker)
        assert status == 503 and body["status"].startswith("degraded: ") and "partition stalled" in body["status"]
        cond = stalled_body["conditions"][f"stalled:{worst}"]
        assert cond["lag"] == parts[worst]["lag"] and cond["topic"] == topic, cond
    finally:
        os.kill(pid, signal.SIGCONT)
    # It moves again: every item applied, no lag, the conditions cleared, 200.
    body = wait_for(worker, lambda b: b.get("items_indexed", 0) == len(backlog) and b["lag"]["total"] == 0
                    and not b["conditions"], timeout=120)
    status, body = health(worker)
    assert status == 200 and body["status"] == "ok", body
    assert metric(worker, "towerstream_consumer_lag", f'topic="{topic}"') == 0
