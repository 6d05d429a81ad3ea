"""The health registry behind /healthz: conditions degrade it and name themselves; notices do not."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from streams.health import MAX_NOTICES, Health
from streams.runtime import WorkerRuntime
from streams.views import build_web_app
from towerstream.settings import Settings


def test_a_condition_keeps_its_first_since_and_clears() -> None:
    h = Health()
    assert not h.degraded
    h.degrade("lag:t:0", "partition stalled", topic="t", partition=0)
    first = h.conditions()["lag:t:0"]["since"]
    h.degrade("lag:t:0", "partition stalled", topic="t", partition=0, lag=7)
    got = h.conditions()["lag:t:0"]
    assert got["since"] == first and got["lag"] == 7 and got["reason"] == "partition stalled"
    h.degrade("codec:t:1", "unreadable batch")
    h.clear_prefix("lag:")
    assert list(h.conditions()) == ["codec:t:1"]
    h.clear("codec:t:1")
    assert not h.degraded and h.conditions() == {}


def test_notices_keep_the_newest_and_do_not_degrade() -> None:
    h = Health()
    for i in range(MAX_NOTICES + 5):
        h.notice("offset_reset", n=i)
    got = h.notices()
    assert len(got) == MAX_NOTICES and got[-1]["n"] == MAX_NOTICES + 4 and got[0]["n"] == 5
    assert not h.degraded


def test_reports_from_many_threads_are_all_kept() -> None:
    h = Health()

    def report(t: int) -> None:
        for i in range(200):
            h.degrade(f"k{t}:{i}", "x")

    threads = [threading.Thread(target=report, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(h.conditions()) == 800


async def _serve(tmp_path: Path) -> tuple[WorkerRuntime, TestClient]:
    """A runtime and its real web app, over a socket; delivering to Kafka fails (no broker here)."""
    runtime = WorkerRuntime(Settings(kafka_bootstrap="127.0.0.1:9", data_dir=tmp_path))

    async def deliver(topic: str, records: Any) -> None:
        raise ConnectionError("no broker in this test")

    client = TestClient(TestServer(build_web_app(runtime, deliver)))
    await client.start_server()
    return runtime, client


async def _health(client: TestClient) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/healthz")
    return resp.status, json.loads(await resp.text())


class _ReadyEngine:
    status = "ready"

    def stats(self) -> dict[str, Any]:
        return {"items": 3}


def test_healthz_is_503_and_names_each_condition(tmp_path: Path) -> None:
    """A worker that could answer (ready, Kafka up) still fails its probe while a condition holds."""

    async def go() -> None:
        runtime, client = await _serve(tmp_path)
        try:
            runtime.kafka_up = True
            # Not ready: "starting" wins, the condition is listed all the same.
            runtime.health.degrade("codec:towerstream.items:2", "unreadable record batch", offset=41)
            status, body = await _health(client)
            assert status == 503 and body["status"] == "starting"
            assert body["conditions"]["codec:towerstream.items:2"]["offset"] == 41
            # Ready. A stand-in engine: /healthz reads only ``stats()`` and ``status`` of it, and a
            # real one would need a model loaded for what this test asks.
            runtime.engine = _ReadyEngine()  # type: ignore[assignment]
            runtime.ready_event.set()
            status, body = await _health(client)
            assert status == 503
            assert body["status"] == "degraded: codec:towerstream.items:2: unreadable record batch"
            runtime.health.clear("codec:towerstream.items:2")
            runtime.health.notice("offset_reset", topic="towerstream.items", partition=2)
            status, body = await _health(client)
            assert status == 200 and body["status"] == "ok" and body["conditions"] == {}
            assert body["notices"][0]["kind"] == "offset_reset" and body["items"] == 3
        finally:
            await client.close()

    asyncio.run(go())


def test_healthz_is_503_catching_up_until_every_gating_reader_has_caught_up(tmp_path: Path) -> None:
    """An open engine is not enough: ready means the items reader has applied the catalog it found."""
    from streams import metrics

    async def go() -> None:
        runtime, client = await _serve(tmp_path)
        try:
            runtime.kafka_up = True
            runtime.catching_up.add("items")  # as the app does for the items readers
            runtime.engine = _ReadyEngine()  # type: ignore[assignment]
            runtime.ready_event.set()
            status, body = await _health(client)
            assert status == 503 and body["status"] == "catching up: items"
            assert body["ready"] is False and body["catching_up"] == ["items"]
            runtime.caught_up("items")
            assert metrics.READY._value.get() == 1
            status, body = await _health(client)
            assert status == 200 and body["status"] == "ok" and body["ready"] is True
            assert body["catching_up"] == []
        finally:
            await client.close()

    asyncio.run(go())
