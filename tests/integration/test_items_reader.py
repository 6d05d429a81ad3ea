"""The items reader (``ITEMS_CONSUMER=batch``, the default) on a real broker.

It reads the items topic in its own group inside the worker. What a user relies on: items are
indexed and bad ones dead-lettered (and counted on the worker's /metrics), offsets are committed
in the items group only for applied items, and a restarted worker reads nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
from producers.topics import ensure_topics
from streams.batch_consumer import group_id
from tests.chaos import durable_state
from tests.conftest import worker_settings
from tests.integration.test_interactions_consumer import dead_letters, group_offsets, send
from tests.integration.test_spine import metric, wait_for
from towerstream.broker import EmbeddedBroker
from towerstream.events import ItemUpsert
from towerstream.processes import WorkerProcess
from towerstream.settings import Settings

pytestmark = [pytest.mark.broker]


@pytest.fixture(autouse=True)
def _batch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers inherit the environment: pin the path under test, whatever the caller's environment."""
    monkeypatch.setenv("TOWERSTREAM_ITEMS_CONSUMER", "batch")


def items(prefix: str, n: int, start: int = 0) -> list[ItemUpsert]:
    now = datetime.now(timezone.utc)
    return [ItemUpsert(event_id=f"{prefix}-{k}", item_id=f"{prefix}{k}", title=f"item {k} of {prefix}",
                       categories=[f"genre{k % 4}"], ts=now) for k in range(start, start + n)]


@pytest.fixture()
def ready(broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str,
          start_worker: Callable[[Settings], WorkerProcess]) -> tuple[Settings, WorkerProcess]:
    """A worker on fresh topics, ready (no periodic checkpoint in a test's time)."""
    settings = worker_settings(broker, tmp_path / "data", topic_prefix, checkpoint_every_s=600)
    ensure_topics(settings)
    worker = start_worker(settings)
    worker.wait_ready(90)
    return settings, worker


@pytest.mark.timeout(240)
def test_the_items_reader_indexes_dead_letters_and_commits_only_applied_offsets(
    ready: tuple[Settings, WorkerProcess], start_worker: Callable[[Settings], WorkerProcess]
) -> None:
    settings, worker = ready
    good = items("a", 60)
    bad = (b"not json at all", b'{"item_id": "x1"}')
    send(settings, good, bad, topic="items")
    wait_for(worker, lambda b: b.get("items_indexed", 0) >= len(good), timeout=60)
    # Dead letters carry position and reason; the worker counts them.
    letters = dead_letters(settings)
    assert set(letters) == set(bad), letters
    assert letters[bad[0]].error_kind == "not_json" and "title" in letters[bad[1]].reason
    assert all(dl.source_topic == settings.topic("items") and dl.offset is not None for dl in letters.values())
    assert metric(worker, "towerstream_dead_letters_total", f'topic="{settings.topic("items")}"') == 2
    # The reader commits in the items group, Faust's group never sees the topic.
    group = group_id(settings, "items")
    deadline = time.monotonic() + 15
    while sum(group_offsets(settings, group, ("items",)).values()) < len(good) + len(bad) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sum(group_offsets(settings, group, ("items",)).values()) == len(good) + len(bad)
    assert group_offsets(settings, settings.app_id, ("items",)) == {}
    assert worker.stop() == 0
    # Graceful stop: every applied item is durable in RocksDB and its offset committed.
    durable, _ = durable_state(settings.data_dir)
    committed = group_offsets(settings, group, ("items",))
    applied = {tp: off for tp, off in durable.items() if tp.startswith(settings.topic("items"))}
    assert applied and all(committed.get(tp, 0) >= off for tp, off in applied.items()), (committed, applied)

    # Restarted: nothing is read twice, new items are applied once.
    second = start_worker(settings)
    assert second.wait_ready(90)["items_indexed"] == len(good)
    send(settings, items("b", 20))
    wait_for(second, lambda b: b.get("items_indexed", 0) >= len(good) + 20, timeout=60)
    time.sleep(1.5)
    assert metric(second, "towerstream_duplicates_total", f'topic="{settings.topic("items")}"') == 0
    assert "rejoining_group_as_previous_member" in Path(str(second.log_path)).read_text()
