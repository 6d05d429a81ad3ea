"""The page for a person (``GET /``) and readable answers, on a real worker and a real broker.

The page is loaded in headless Chromium (Debian's ``chromium``, driven over its DevTools protocol
by ``tests.browser``): it must load without a console error, show a user's list with titles, and
show an item posted through the API without being reloaded. The worker is the all-in-one one
(``towerstream demo``'s default). ``TOWERSTREAM_PAGE_SCREENSHOT=path`` keeps a screenshot of it.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from producers.producer import EventProducer
from producers.topics import ensure_topics
from tests.browser import chromium_page
from tests.conftest import worker_settings
from tests.integration.test_spine import wait_for
from towerstream.broker import EmbeddedBroker
from towerstream.processes import WorkerProcess, http_json
from towerstream.settings import Settings
from towerstream.synthetic import StreamSpec, generate, make_item, shifted

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]

#: 3000 interactions 10 ms apart, stamped to end now (``produce_near_now``): freshness reads seconds.
SPEC = StreamSpec(users=40, items=120, interactions=3000, late_items=0.0, seed=5, spacing_s=0.01)
#: Drift reports often enough that the charts have points within the test.
DRIFT_ENV = {"TOWERSTREAM_DRIFT_EVERY_S": "1", "TOWERSTREAM_DRIFT_EVERY_EVENTS": "500",
             "TOWERSTREAM_DRIFT_WARMUP_EVENTS": "200"}


@pytest.fixture(scope="module")
def worker(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, WorkerProcess]]:
    data = tmp_path_factory.mktemp("page")
    prefix = f"page{int(time.time() * 1000) % 10**8}"
    settings = worker_settings(broker, data / "worker", prefix)
    ensure_topics(settings)
    w = WorkerProcess(settings, log_path=data / "worker.log", extra_env=DRIFT_ENV).start()
    w.wait_ready(90)
    produce_near_now(settings, SPEC)
    wait_for(w, lambda b: b.get("trained_total", 0) >= SPEC.interactions and b.get("items_indexed", 0) >= SPEC.items
             and b.get("untrained_events") == 0)
    yield settings, w
    w.kill()


def produce_near_now(settings: Settings, spec: StreamSpec) -> None:
    """The generated stream (its times start in 2024) moved to end now, as ``produce generate`` moves it."""
    records = list(generate(spec))
    offset_ms = int(time.time() * 1000) - max(r.timestamp or 0 for r in records)
    with EventProducer(settings) as prod:
        for rec in (shifted(r, offset_ms) for r in records):
            prod.send_raw(settings.topic(rec.logical_topic()), rec.key.encode() if rec.key else None,
                          rec.value_bytes(), timestamp_ms=rec.timestamp)
        summary = prod.flush(timeout=30)
    assert summary.failed == 0, summary.errors


def titles(spec: StreamSpec = SPEC) -> dict[str, tuple[str, list[str]]]:
    """item id -> (title, categories) as the stream last gave them."""
    out: dict[str, tuple[str, list[str]]] = {}
    for rec in generate(spec):
        if rec.logical_topic() == "items" and rec.value is not None:
            out[rec.value["item_id"]] = (rec.value["title"], list(rec.value["categories"]))
    return out


def test_the_workers_answers_carry_titles_and_explain_themselves(worker: tuple[Settings, WorkerProcess]) -> None:
    _, w = worker
    shown = titles()
    status, body = http_json(f"{w.base_url}/recommend/u1?k=10")
    assert status == 200 and body["source"] == "model" and body["score_scale"] == "cosine", body
    for it in body["items"]:
        assert (it["title"], it["categories"]) == shown[it["item_id"]], it
    status, bare = http_json(f"{w.base_url}/recommend/u1?k=10&fields=")
    assert status == 200 and all(set(it) == {"schema_version", "item_id", "score"} for it in bare["items"]), bare
    assert [i["item_id"] for i in bare["items"]] == [i["item_id"] for i in body["items"]]
    status, refused = http_json(f"{w.base_url}/recommend/u1?fields=title,price")
    assert status == 400 and "fields" in refused["error"], refused
    status, pop = http_json(f"{w.base_url}/recommend/nobody-at-all?k=3")
    assert status == 200 and pop["source"] == "popularity" and pop["score_scale"] == "decayed_interactions", pop

    top = body["items"][0]
    status, ex = http_json(f"{w.base_url}/explain/u1/{top['item_id']}?k=10")
    assert status == 200, ex
    assert ex["rank"] == 1 and ex["title"] == top["title"] and ex["model_version"] == body["model_version"]
    assert math.isclose(ex["parts"]["model"] + ex["parts"]["exploration"], top["score"], abs_tol=1e-4), ex
    assert ex["nearest_history"] and all(h["title"] == shown[h["item_id"]][0] for h in ex["nearest_history"])
    status, ex = http_json(f"{w.base_url}/explain/u1/{top['item_id']}?k=10&exclude_item={top['item_id']}")
    assert status == 200 and ex["rank"] is None and ex["filtered_by"] == ["exclude_items"], ex
    status, ex = http_json(f"{w.base_url}/explain/u1/%20?k=10")
    assert status == 400, ex


def test_overview_and_drift_say_what_the_worker_knows(worker: tuple[Settings, WorkerProcess]) -> None:
    settings, w = worker
    status, ov = http_json(f"{w.base_url}/overview")
    assert status == 200 and ov["role"] == "worker" and ov["answers"] is True, ov
    assert ov["interactions"] >= SPEC.interactions and ov["items"] >= SPEC.items and ov["model_version"] >= 1, ov
    deadline = time.monotonic() + 30
    reports: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not reports:
        status, got = http_json(f"{w.base_url}/drift")
        assert status == 200 and got["source"] == settings.app_id, got
        reports = got["reports"]
        time.sleep(0.5)
    assert reports, "no drift report in 30 s"
    assert [r["seq"] for r in reports] == sorted(r["seq"] for r in reports)
    assert sum(r["events"] for r in reports) <= reports[-1]["events_total"]
    status, got = http_json(f"{w.base_url}/drift?n=1")
    assert status == 200 and len(got["reports"]) == 1
    assert http_json(f"{w.base_url}/drift?n=0")[0] == 400


def test_the_page_shows_a_users_list_and_an_item_posted_meanwhile(worker: tuple[Settings, WorkerProcess]) -> None:
    _, w = worker
    _, body = http_json(f"{w.base_url}/recommend/u1?k=10")
    first_title = body["items"][0]["title"]
    fresh = make_item(3, SPEC, np.random.default_rng(1), datetime.now(timezone.utc)).model_copy(
        update={"item_id": "page-fresh-1", "event_id": "page-fresh-1-v1", "title": "A fresh item for the page",
                "categories": ["fresh-for-the-page"]})

    async def run() -> list[str]:
        async with chromium_page() as page:
            await page.goto(w.base_url + "/?user=u1")
            assert await page.wait_for("document.querySelectorAll('#recs li').length") == 10
            got = await page.evaluate("[...document.querySelectorAll('#recs li .title')].map(e => e.textContent)")
            assert first_title in got, got
            assert await page.wait_for("document.getElementById('version').textContent !== '-' && "
                                       "document.getElementById('version').textContent") == str(body["model_version"])
            # Only the fresh category: nothing yet; then the item is posted and the page shows it by itself.
            await page.evaluate("(() => { const c = document.getElementById('category');"
                                " c.value = 'fresh-for-the-page'; c.dispatchEvent(new Event('input')); })()")
            await page.wait_for("document.getElementById('source').textContent.includes('model') && "
                                "document.querySelectorAll('#recs li').length === 0")
            status, posted = http_json(w.base_url + "/items", data=fresh.model_dump_json().encode(), method="POST")
            assert status == 202, posted
            await page.wait_for("[...document.querySelectorAll('#recs li .title')]"
                                ".some(e => e.textContent === 'A fresh item for the page')", timeout=30)
            # The charts draw the drift stream once reports exist.
            await page.wait_for("document.querySelector('#c-coverage polyline') !== null", timeout=30)
            shot = os.environ.get("TOWERSTREAM_PAGE_SCREENSHOT")
            if shot:
                await page.evaluate("(() => { const c = document.getElementById('category');"
                                    " c.value = ''; c.dispatchEvent(new Event('input')); })()")
                await page.wait_for("document.querySelectorAll('#recs li').length === 10")
                await page.evaluate("document.querySelector('#recs li').click()")
                await page.wait_for("document.getElementById('explain').textContent.includes('model score')")
                await asyncio.sleep(1.5)
                await page.screenshot(Path(shot))
            return page.errors

    errors = asyncio.run(run())
    assert errors == [], errors
