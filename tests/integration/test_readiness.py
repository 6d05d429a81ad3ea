"""Ready means indexed (issue 16): a worker answers /healthz 200 only once the catalog it holds is searchable.

A worker that starts with items on the topic that its RocksDB does not hold (a fresh data
directory; or a predecessor stopped before its items reader had read them, and then its
checkpoints were lost) must not report ready with part of the catalog: it says "catching up"
until its items reader has applied the topic up to where it ended when the reader joined.
The items reader that gates readiness (``ITEMS_CONSUMER=batch``, the default) is pinned.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from producers.producer import EventProducer
from producers.topics import ensure_topics
from tests.conftest import worker_settings
from tests.integration.test_items_reader import items
from towerstream.broker import EmbeddedBroker
from towerstream.events import ItemDelete
from towerstream.processes import WorkerProcess
from towerstream.settings import Settings

pytestmark = [pytest.mark.broker]

N_ITEMS = 300


@pytest.mark.timeout(240)
def test_a_worker_is_ready_only_once_the_catalog_on_the_topic_is_indexed(
    broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, start_worker: Callable[[Settings], WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOWERSTREAM_ITEMS_CONSUMER", "batch")  # workers inherit the environment
    settings = worker_settings(broker, tmp_path / "data", topic_prefix, checkpoint_every_s=600)
    ensure_topics(settings)
    catalog = items("c", N_ITEMS)
    with EventProducer(settings) as prod:
        for ev in catalog:
            prod.send_item(ev)
        for ev in catalog[:10]:  # and a few deletes: the catalog is what the topic says at the end
            prod.send_item(ItemDelete(op="delete", item_id=ev.item_id, ts=ev.ts, event_id=f"del-{ev.item_id}"))
        assert prod.flush(30).failed == 0
    worker = start_worker(settings)
    health = worker.wait_ready(180)  # the first 200 it gives
    assert health["items_indexed"] == N_ITEMS - 10, health
    assert health["ready"] is True and health["catching_up"] == [] and health["status"] == "ok", health
    log = Path(str(worker.log_path)).read_text()
    assert "items_caught_up" in log and "reader_caught_up" in log
