"""The drift report a worker sends to ``towerstream.drift-metrics`` (keyed by app id).

One report per cadence tick (N interactions or S seconds, whichever comes first). Figures
that cannot be computed for a window (no probes, nothing served, too few items) are
``None`` rather than a made-up zero, so a plot shows a gap and a gauge shows NaN.
``towerstream.drift.DriftMonitor`` builds these; ``towerstream drift tail/plot`` and the
Prometheus gauges read them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from towerstream.events.base import EventModel, ExternalId

DetectorName = Literal["hit_rate", "item_shift"]


class Quantiles(BaseModel):
    """Five quantiles of a distribution (norms, lags)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    p05: float
    p25: float
    p50: float
    p75: float
    p95: float


class ChangePoint(BaseModel):
    """One detection: which detector, where (interaction count and event time), and the level moved."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    detector: DetectorName
    at_event: int = Field(ge=0, description="interactions learned by this worker when it fired")
    at_ms: int | None = Field(default=None, description="event time (ms) of the batch that made it fire")
    before: float = Field(description="detector's level before the change")
    after: float = Field(description="detector's level after the change")


class DriftReport(EventModel):
    """What the embedding space and the served lists looked like over one window."""

    source: ExternalId = Field(description="the worker's app id")
    seq: int = Field(ge=1, description="report number from this monitor, 1, 2, ...")
    emitted_at_ms: int = Field(description="processing time the report was built (ms)")
    model_version: int = Field(ge=0)
    # --- window ---------------------------------------------------------------------------
    window_start_ms: int | None = Field(default=None, description="earliest interaction event time in the window")
    window_end_ms: int | None = Field(default=None, description="latest interaction event time in the window")
    events: int = Field(ge=0, description="interactions learned in the window")
    events_total: int = Field(ge=0, description="interactions learned since the monitor started")
    # --- live test-then-train ---------------------------------------------------------------
    k: int = Field(ge=1)
    probes: int = Field(ge=0, description="sampled interactions scored before they were learned")
    hits: int = Field(ge=0)
    hit_rate: float | None = Field(default=None, ge=0, le=1, description="HR@K of the window's probes")
    hit_rate_total: float | None = Field(default=None, ge=0, le=1, description="HR@K since start")
    # --- embedding space ---------------------------------------------------------------------
    user_norm: Quantiles | None = None
    item_norm: Quantiles | None = None
    item_shift_prev: float | None = Field(default=None, description="mean cosine distance of the same items since the previous report")
    item_shift_ref: float | None = Field(default=None, description="mean cosine distance of the same items since the reference snapshot")
    variance_top1: float | None = Field(default=None, ge=0, le=1, description="item variance in the top principal direction")
    variance_top5: float | None = Field(default=None, ge=0, le=1, description="item variance in the top 5 principal directions")
    # --- served lists --------------------------------------------------------------------------
    served_lists: int = Field(ge=0, description="top-K lists observed in the window")
    score_psi: float | None = Field(default=None, ge=0, description="PSI of served scores vs the previous window")
    coverage: float | None = Field(default=None, ge=0, le=1, description="live items in any served list / live items")
    gini: float | None = Field(default=None, ge=0, le=1, description="Gini of recommendation counts over live items")
    # --- index ---------------------------------------------------------------------------------
    index_size: int = Field(ge=0)
    live_items: int = Field(ge=0)
    freshness_lag_ms: Quantiles | None = Field(default=None, description="event time -> index upsert, touched items")
    # --- change detection ------------------------------------------------------------------------
    hit_rate_change: bool = Field(default=False, description="the hit-rate detector fired in this window")
    item_shift_change: bool = Field(default=False, description="the embedding-shift detector fired in this window")
    change: bool = Field(default=False, description="any detector fired in this window")
    changes: list[ChangePoint] = Field(default_factory=list, max_length=1000)
