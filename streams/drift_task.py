"""Drift monitoring in the worker: the runtime's monitor hook, the report timer, Prometheus gauges.

``register_drift`` installs a ``DriftMonitor`` (``towerstream.drift``) as ``runtime.monitor``.
Reports are built on the training thread, serialised with every engine mutation: by the
event cadence inside ``after_learn``, and by the time cadence from a timer that hands
``report`` to ``runtime.run``. The same timer drains the monitor's outbox, sets the gauges
and sends each report to ``<prefix>.drift-metrics`` keyed by the app id. Cadence and
sampling come from ``TOWERSTREAM_DRIFT_*`` (``DriftSettings``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import faust
import structlog
from prometheus_client import Counter, Gauge

from streams.http_api import DRIFT_KEPT
from streams.runtime import WorkerRuntime
from towerstream.drift import DETECTORS, QUANTILES, DriftMonitor, DriftSettings, ProbeResult
from towerstream.engine import Engine
from towerstream.events import Interaction, encode
from towerstream.events.drift import DriftReport, Quantiles

log = structlog.get_logger(__name__)

LIVE_PROBES = Counter("towerstream_live_probes_total", "Interactions scored before they were learned (sample)")
LIVE_HITS = Counter("towerstream_live_hits_total", "Probes whose item was in the model's top-K")
LIVE_HIT_RATE = Gauge("towerstream_live_hit_rate", "HR@K of the probes in the last drift window")
ITEM_SHIFT = Gauge("towerstream_drift_item_shift", "Mean cosine distance of the same item vectors", ["since"])
SCORE_PSI = Gauge("towerstream_drift_score_psi", "PSI of served top-K scores vs the previous window")
COVERAGE = Gauge("towerstream_drift_coverage", "Share of live items in any served list (last window)")
GINI = Gauge("towerstream_drift_gini", "Gini of recommendation counts over live items (popularity bias)")
NORM = Gauge("towerstream_drift_embedding_norm", "Embedding norm quantiles", ["tower", "quantile"])
VARIANCE_TOP = Gauge("towerstream_drift_variance_top", "Item variance in the top principal directions",
                     ["components"])
FRESHNESS = Gauge("towerstream_drift_freshness_lag_seconds", "Event time to index upsert (last window)",
                  ["quantile"])
CHANGE = Gauge("towerstream_drift_change", "1 when the detector fired in the last window", ["detector"])
CHANGES = Counter("towerstream_drift_changes_total", "Changes detected", ["detector"])
REPORTS = Counter("towerstream_drift_reports_total", "Drift reports built")
LAST_REPORT = Gauge("towerstream_drift_last_report_timestamp_seconds", "When the last drift report was built")


def _v(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _set_quantiles(gauge: Gauge, q: Quantiles | None, scale: float = 1.0, **labels: str) -> None:
    for level in QUANTILES:
        value = getattr(q, f"p{round(level * 100):02d}") * scale if q is not None else math.nan
        gauge.labels(quantile=str(level), **labels).set(value)


def export(report: DriftReport) -> None:
    """The report's figures as gauges on the default registry (served at /metrics)."""
    LIVE_HIT_RATE.set(_v(report.hit_rate))
    ITEM_SHIFT.labels("previous").set(_v(report.item_shift_prev))
    ITEM_SHIFT.labels("reference").set(_v(report.item_shift_ref))
    SCORE_PSI.set(_v(report.score_psi))
    COVERAGE.set(_v(report.coverage))
    GINI.set(_v(report.gini))
    _set_quantiles(NORM, report.item_norm, tower="item")
    _set_quantiles(NORM, report.user_norm, tower="user")
    VARIANCE_TOP.labels("1").set(_v(report.variance_top1))
    VARIANCE_TOP.labels("5").set(_v(report.variance_top5))
    _set_quantiles(FRESHNESS, report.freshness_lag_ms, scale=1e-3)
    for name in DETECTORS:
        fired = [c for c in report.changes if c.detector == name]
        CHANGE.labels(name).set(1 if fired else 0)
        if fired:
            CHANGES.labels(name).inc(len(fired))
    REPORTS.inc()
    LAST_REPORT.set(report.emitted_at_ms / 1000)


class ExportingMonitor:
    """The runtime's hook: the pure monitor, plus live test-then-train counters per batch, and
    the newest reports (``recent``, for ``GET /drift``: the page charts what this process knows)."""

    def __init__(self, monitor: DriftMonitor, source: str = "") -> None:
        self.monitor = monitor
        self.source = source
        self.recent: deque[DriftReport] = deque(maxlen=DRIFT_KEPT)

    def before_learn(self, engine: Engine, events: Sequence[Interaction]) -> ProbeResult:
        res = self.monitor.before_learn(engine, events)
        if res.scored:
            LIVE_PROBES.inc(res.scored)
            LIVE_HITS.inc(res.hits)
        return res

    def after_learn(self, engine: Engine, events: Sequence[Interaction], result: Any) -> DriftReport | None:
        return self.monitor.after_learn(engine, events, result)

    def observe_served(self, recommendations: Any) -> None:
        self.monitor.observe_served(recommendations)


def _report_if_due(monitor: DriftMonitor, engine: Engine, every_s: float) -> None:
    """Training thread: re-check, since an event-cadence report may have just been built."""
    if monitor.seconds_since_report() >= every_s:
        monitor.report(engine)


def register_drift(app: faust.App, runtime: WorkerRuntime, topics: dict[str, Any]) -> DriftMonitor:
    cfg = DriftSettings().config()
    app_id = runtime.settings.app_id
    monitor = DriftMonitor(cfg, source=app_id)
    exporting = runtime.monitor = ExportingMonitor(monitor, app_id)
    topic = topics["drift-metrics"]
    key = app_id.encode()
    unsent: deque[DriftReport] = deque(maxlen=1000)

    @app.timer(interval=min(1.0, cfg.every_s))  # type: ignore[untyped-decorator]
    async def drift_reports() -> None:
        engine = runtime.engine
        if engine is not None and runtime.ready and monitor.seconds_since_report() >= cfg.every_s:
            await runtime.run(_report_if_due, monitor, engine, cfg.every_s)
        for report in monitor.drain():
            export(report)  # gauges at once, even while the broker is away
            exporting.recent.append(report)
            unsent.append(report)
            log.info("drift_report", seq=report.seq, events=report.events, hit_rate=report.hit_rate,
                     change=report.change, detectors=[c.detector for c in report.changes])
        while unsent:
            try:
                await topic.send(key=key, value=encode(unsent[0]))
            except Exception as exc:  # noqa: BLE001 - retried next tick; never kill the timer
                log.warning("drift_report_send_failed", seq=unsent[0].seq, error=str(exc)[:300])
                return
            unsent.popleft()

    log.info("drift_monitor", **monitor.describe())
    return monitor
