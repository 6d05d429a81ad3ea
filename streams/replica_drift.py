"""Served-score drift of one serving replica: what it answered, reported to the drift stream.

Why each replica reports its own: the trainer answers nothing, so the served lists (coverage,
Gini, PSI of model scores) exist only where answers are given, and two replicas behind different
load balancers may serve differently. Each report is a ``DriftReport`` with the replica's own
``source`` (``<app_id>.replica.<host>:<port>``), keyed by it on ``<prefix>.drift-metrics``, with
the learning figures left empty (``events`` 0, no probes): those come from the trainer's reports.
The same figures are gauges on the replica's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections import deque
from typing import Any

import numpy as np
import structlog
from prometheus_client import Counter, Gauge

from streams.http_api import DRIFT_KEPT
from towerstream.drift import DriftConfig, ServedLists
from towerstream.events import RecommendResponse, encode
from towerstream.events.drift import DriftReport
from towerstream.replica import Replica
from towerstream.settings import Settings

log = structlog.get_logger(__name__)

SERVED_PSI = Gauge("towerstream_replica_score_psi", "PSI of this replica's served model scores vs its previous window")
SERVED_COVERAGE = Gauge("towerstream_replica_coverage", "Share of live items in any list this replica served (last window)")
SERVED_GINI = Gauge("towerstream_replica_gini", "Gini of this replica's recommendation counts over live items")
SERVED_REPORTS = Counter("towerstream_replica_drift_reports_total", "Served-drift reports this replica built")


def replica_source(settings: Settings) -> str:
    """This replica's name in the drift stream: unique per host and port."""
    return f"{settings.app_id}.replica.{socket.gethostname()}:{settings.web_port}"


def _v(x: float | None) -> float:
    return math.nan if x is None else float(x)


class ReplicaDrift:
    """Observes every answer (any thread); every ``config.every_s`` builds and sends a report."""

    def __init__(self, settings: Settings, replica: Replica, config: DriftConfig) -> None:
        self.settings = settings
        self.replica = replica
        self.config = config
        self.source = replica_source(settings)
        self.served = ServedLists(config.max_scores, config.psi_bins)
        self.seq = 0
        self.topic = settings.topic("drift-metrics")
        #: The newest reports, for ``GET /drift`` (the page's charts).
        self.recent: deque[DriftReport] = deque(maxlen=DRIFT_KEPT)

    def observe(self, resp: RecommendResponse) -> None:
        self.served.observe([(x.item_id, x.score) for x in resp.items], resp.source == "model")

    def report(self, now_ms: int | None = None) -> DriftReport:
        """The window since the last report, over the active version's live items."""
        active = self.replica.active
        items = active.items if active is not None else None

        def live_of(ids: list[str]) -> np.ndarray:
            return np.array([items is not None and items.live_row(i) is not None for i in ids], dtype=bool)

        n_live = len(items) if items is not None else 0
        fig = self.served.take(live_of, n_live)
        self.seq += 1
        rep = DriftReport(
            source=self.source, seq=self.seq, emitted_at_ms=now_ms if now_ms is not None else int(time.time() * 1000),
            model_version=active.version if active is not None else 0, events=0, events_total=0,
            k=self.config.k, probes=0, hits=0, served_lists=fig.lists, score_psi=fig.score_psi,
            coverage=fig.coverage, gini=fig.gini, index_size=n_live, live_items=n_live,
        )
        SERVED_PSI.set(_v(rep.score_psi))
        SERVED_COVERAGE.set(_v(rep.coverage))
        SERVED_GINI.set(_v(rep.gini))
        SERVED_REPORTS.inc()
        self.recent.append(rep)
        return rep

    async def run(self, producer: Any) -> None:
        """Report on the cadence until cancelled; a send that fails is logged and the next one tried."""
        while True:
            await asyncio.sleep(self.config.every_s)
            rep = self.report()
            try:
                await producer.send_and_wait(self.topic, key=self.source.encode(), value=encode(rep))
            except Exception as exc:  # noqa: BLE001 - the broker away: /healthz says so; the figures stay on /metrics
                log.warning("replica_drift_send_failed", topic=self.topic, seq=rep.seq, error=repr(exc)[:300])
