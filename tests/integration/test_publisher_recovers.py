"""A trainer whose broker is away: publishing is visibly degraded, then a new version once it is back.

The engine runs in this process (the publisher needs nothing else of the worker); the broker is a
real Tansu started only after the publisher has failed against its address.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streams.health import Health
from streams.publisher import Publisher
from tests.integration.test_publish import completes
from towers import TowerConfig
from towerstream.broker import EmbeddedBroker, free_port
from towerstream.engine import Engine, EngineConfig
from towerstream.events import ItemUpsert
from towerstream.settings import Settings

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


def test_a_publisher_that_cannot_reach_kafka_is_degraded_then_publishes_a_new_version(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{port}", data_dir=tmp_path, topic_prefix="recover",
                        app_id="recover", topic_partitions=2, version_every_s=0.5)
    engine = Engine.open(tmp_path / "engine", EngineConfig(tower=TowerConfig(dim=16, hidden=32, device="cpu")))
    engine.apply_items([ItemUpsert(item_id=f"i{k}", title=f"t{k}", categories=["c"], ts=1_767_225_600_000)
                        for k in range(30)])
    health = Health()
    pub = Publisher(settings, engine, health)
    engine.on_items_applied = pub.items_changed
    pub.start()
    try:
        deadline = time.monotonic() + 60
        while "publish" not in health.conditions() and time.monotonic() < deadline:
            time.sleep(0.2)
        cond = health.conditions().get("publish")
        assert cond is not None and cond["reason"] == "publishing to Kafka failed"
        assert pub.summary()["version"] is None
        with EmbeddedBroker(port=port) as broker:
            assert broker.bootstrap == settings.bootstrap
            deadline = time.monotonic() + 90
            while (pub.summary()["version"] is None or "publish" in health.conditions()) \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "publish" not in health.conditions()
            summary = pub.summary()
            assert summary["version"] is not None and summary["items"] == 30
            done = completes(settings)
            assert [d.version for d in done] == [summary["version"]] and done[0].items == 30
            pub.stop(10)
    finally:
        pub.stop(10)
        engine.close()
