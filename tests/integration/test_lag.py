"""Per-partition lag on /metrics and /healthz, and a stalled partition degrading /healthz (``streams.lag``).

The stall is real: a record batch no decoder reads (a CRC that does not match) stops the items
reader at partition 0 (``UNREADABLE_BATCHES=stall``) while item events arrive behind it, so that
partition falls behind and stops moving. The operator's escape (a restart with ``skip``) lets it
move again, and the lag and the conditions clear. That a condition clears within one process as
soon as its partition moves is held by ``tests/unit/test_lag.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from producers.topics import ensure_topics
from tests.conftest import worker_settings
from tests.integration.test_codecs import corrupt_batch, produce_confluent, produce_raw_batch
from tests.integration.test_log_reset import items
from tests.integration.test_spine import metric, wait_for
from towerstream.broker import EmbeddedBroker
from towerstream.events import encode
from towerstream.processes import WorkerProcess
from towerstream.settings import Settings

pytestmark = [pytest.mark.broker]


def health(worker: WorkerProcess) -> tuple[int, dict[str, Any]]:
    status, body = worker.health()
    return status, body if isinstance(body, dict) else {}


@pytest.mark.timeout(300)
def test_a_backlog_shows_as_lag_and_a_stalled_partition_degrades_healthz_until_it_moves(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOWERSTREAM_ITEMS_CONSUMER", "batch")  # workers inherit the environment
    monkeypatch.setenv("TOWERSTREAM_UNREADABLE_BATCHES", "stall")
    settings = worker_settings(broker, tmp_path / "data", topic_prefix, stall_after_s=4, checkpoint_every_s=600)
    ensure_topics(settings)
    worker = start_worker(settings)
    worker.wait_ready(120)
    topic = settings.topic("items")
    keys = [f"{topic}:{p}" for p in range(settings.topic_partitions)]
    body = wait_for(worker, lambda b: all(k in b.get("lag", {}).get("partitions", {}) for k in keys), timeout=60)
    assert body["lag"]["total"] == 0 and body["status"] == "ok", body

    bad = [encode(ev) for ev in items("bad", 3)]
    produce_raw_batch(settings, "items", 0, corrupt_batch(bad))
    backlog = items("lag", 6)
    for ev in backlog:  # one record per batch: Tansu's listed end is exact then
        produce_confluent(settings, [("items", ev.item_id.encode(), encode(ev), 0)], "none")
    behind = len(bad) + len(backlog)
    body = wait_for(worker, lambda b: b["lag"]["total"] == behind, timeout=60)
    parts = body["lag"]["partitions"]
    stuck = f"{topic}:0"
    assert parts[stuck]["lag"] == behind and sum(parts[k]["lag"] for k in keys) == behind, body["lag"]
    assert body["lag"]["worst"] == {"partition": stuck, "lag": behind}
    assert metric(worker, "towerstream_consumer_lag", f'topic="{topic}"') == behind
    # Behind and not moving for stall_after_s: /healthz turns 503 and names the partition.
    stalled_body = wait_for(worker, lambda b: f"stalled:{stuck}" in b["conditions"], timeout=60)
    cond = stalled_body["conditions"][f"stalled:{stuck}"]
    assert cond["lag"] == behind and cond["topic"] == topic, cond
    status, body = health(worker)
    assert status == 503 and body["status"].startswith("degraded: ") and "partition stalled" in body["status"], body
    assert {k for k in body["conditions"] if k.startswith("stalled:")} == {f"stalled:{stuck}"}, body["conditions"]
    assert body["items_indexed"] == 0, body
    assert worker.stop() == 0

    # It moves again (the batch dead-lettered, read past): every item behind it applied, no lag, 200.
    second = start_worker(Settings(**{**settings.model_dump(), "unreadable_batches": "skip"}))
    body = wait_for(second, lambda b: b.get("items_indexed", 0) == len(backlog) and b["lag"]["total"] == 0
                    and not b["conditions"] and all(k in b["lag"]["partitions"] for k in keys), timeout=120)
    status, body = health(second)
    assert status == 200 and body["status"] == "ok", body
    assert metric(second, "towerstream_consumer_lag", f'topic="{topic}"') == 0
