"""A real trainer (role ``train``) and a serving replica that follows it, as docker-compose runs them.

What is checked here: the replica's answers carry the titles and categories the items were
posted with (they travel in the published item vectors) and explain themselves; its page loads
in headless Chromium without a console error and shows the list; and every metric the Grafana
dashboard (``deploy/grafana/dashboards/towerstream.json``) queries is on the ``/metrics`` of the
process its panel selects (``job="trainer"``, ``job="replicas"``, or both where it names none).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from producers.topics import ensure_topics
from tests.browser import chromium_page
from tests.conftest import worker_settings
from tests.integration.test_page import titles
from tests.integration.test_spine import produce_stream
from tests.waiting import wait_for
from towerstream.broker import EmbeddedBroker, free_port
from towerstream.processes import WorkerProcess, http_json
from towerstream.replica_process import ReplicaProcess
from towerstream.synthetic import StreamSpec

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]

SPEC = StreamSpec(users=30, items=150, interactions=1500, late_items=0.0, seed=7)
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "towerstream.json"
#: Served-drift reports every second, so that the replica's drift gauges have values.
DRIFT_ENV = {"TOWERSTREAM_DRIFT_EVERY_S": "1"}


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, ReplicaProcess]]:
    root = tmp_path_factory.mktemp("stack")
    prefix = f"ts{uuid.uuid4().hex[:10]}"
    settings = worker_settings(broker, root / "trainer", prefix, role="train", version_every_s=2.0, embedding_dim=32)
    ensure_topics(settings)
    trainer = WorkerProcess(settings, log_path=root / "trainer.log", extra_env=DRIFT_ENV).start()
    replica = ReplicaProcess(settings.model_copy(update={"web_port": free_port(), "data_dir": root / "replica"}),
                             log_path=root / "replica.log", extra_env=DRIFT_ENV).start()
    try:
        trainer.wait_ready(90)
        produce_stream(settings, SPEC)

        def settled() -> dict[str, Any] | None:
            _, t = trainer.health()
            try:
                _, r = http_json(replica.base_url + "/healthz", timeout=10)
            except OSError:  # not listening yet
                return None
            published = (t.get("published") or {}).get("version") if isinstance(t, dict) else None
            if (isinstance(t, dict) and t.get("trained_total", 0) >= SPEC.interactions and isinstance(r, dict)
                    and r.get("ready") and r.get("items") == SPEC.items and published and r.get("version") == published):
                return r
            return None

        wait_for("the replica at the trainer's newest version", settled, timeout=150)
        yield trainer, replica
    finally:
        replica.kill()
        trainer.kill()


def test_the_replicas_answers_carry_the_posted_titles_and_explain_themselves(
        stack: tuple[WorkerProcess, ReplicaProcess]) -> None:
    _, replica = stack
    items = titles(SPEC)
    status, body = http_json(f"{replica.base_url}/recommend/u2?k=10", timeout=10)
    assert status == 200 and body["source"] == "model" and body["score_scale"] == "cosine", body
    for it in body["items"]:
        assert (it["title"], it["categories"]) == items[it["item_id"]], it
    status, bare = http_json(f"{replica.base_url}/recommend/u2?k=10&fields=categories", timeout=10)
    assert status == 200 and all("title" not in it and "categories" in it for it in bare["items"]), bare
    top = body["items"][1]
    status, ex = http_json(f"{replica.base_url}/explain/u2/{top['item_id']}?k=10", timeout=10)
    assert status == 200 and ex["rank"] == 2 and ex["model_version"] == body["model_version"], ex
    assert math.isclose(ex["parts"]["model"] + ex["parts"]["exploration"], top["score"], abs_tol=1e-5), ex
    status, ov = http_json(f"{replica.base_url}/overview", timeout=10)
    assert status == 200 and ov["role"] == "replica" and ov["items"] == SPEC.items, ov
    assert ov["interactions"] == SPEC.interactions and ov["model_version"] == body["model_version"], ov


def test_the_replicas_page_loads_and_shows_the_list(stack: tuple[WorkerProcess, ReplicaProcess]) -> None:
    trainer, replica = stack
    _, body = http_json(f"{replica.base_url}/recommend/u2?k=10", timeout=10)

    async def run() -> tuple[list[str], list[str], str]:
        async with chromium_page() as page:
            await page.goto(replica.base_url + "/?user=u2")
            await page.wait_for("document.querySelectorAll('#recs li').length === 10")
            got = await page.evaluate("[...document.querySelectorAll('#recs li .title')].map(e => e.textContent)")
            role = await page.wait_for("document.getElementById('role').textContent")
            return page.errors, got, role
        raise AssertionError("unreachable")

    errors, got, role = asyncio.run(run())
    assert got == [it["title"] for it in body["items"]] and role == "serving replica"
    assert errors == [], errors

    async def trainer_page() -> tuple[list[str], str]:
        async with chromium_page() as page:  # the trainer answers nothing: its page says where answers are
            await page.goto(trainer.base_url + "/?user=u2")
            text = await page.wait_for("document.getElementById('source').textContent")
            return page.errors, text
        raise AssertionError("unreachable")

    errors, text = asyncio.run(trainer_page())
    assert "serving replicas" in text and errors == [], (text, errors)


def exposed(url: str) -> set[str]:
    """Every series name ``/metrics`` can have: a family's samples, and for a family with no
    sample yet (a labelled metric nothing has touched), the names its type gives it."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    names: set[str] = set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"), "gauge": ("",)}
    for fam in text_string_to_metric_families(text):
        names.update(s.name for s in fam.samples)
        names.update(fam.name + suffix for suffix in suffixes.get(fam.type, ("",)))
    return names


def queried() -> list[tuple[str, str, set[str]]]:
    """``(panel title, job or "", metric names)`` per dashboard target."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            job = re.search(r'job="([^"]+)"', t["expr"])
            out.append((p["title"], job.group(1) if job else "", set(re.findall(r"\btowerstream_[a-z0-9_]+\b", t["expr"]))))
    return out


def test_every_metric_the_dashboard_queries_is_on_the_process_it_reads(stack: tuple[WorkerProcess, ReplicaProcess]) -> None:
    trainer, replica = stack
    time.sleep(1.5)  # one served-drift report (every second): the replica's drift gauges exist
    on = {"trainer": exposed(trainer.base_url + "/metrics"), "replicas": exposed(replica.base_url + "/metrics")}
    targets = queried()
    assert {job for _, job, _ in targets} == {"trainer", "replicas", ""}
    missing = []
    for title, job, names in targets:
        assert names, f"{title}: a target that queries no towerstream metric"
        for where in ([job] if job else ["trainer", "replicas"]):
            missing += [f"{title}: {n} not on the {where}'s /metrics" for n in sorted(names - on[where])]
    assert not missing, missing
