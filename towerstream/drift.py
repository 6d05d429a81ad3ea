"""Drift monitoring of a continuously learning model: the pure half (no Faust, no Kafka).

``DriftMonitor`` watches an Engine through the worker's hooks and builds a ``DriftReport``
every ``every_events`` interactions (or ``every_s`` seconds, driven by the worker):

- **live test-then-train**: a deterministic sample of interactions (``crc32(event_id)`` below
  ``sample_rate``, so a replay scores the same ones) is scored *before* it is learned: HR@K of
  the user's top-K (seen items excluded) against the item the user then took, by the rule of
  ``evaluation.PrequentialScorer``: repeats (item already in the user's history, or taken
  earlier in the same batch) are skipped, and the user's earlier items of the batch are dropped
  from the list. What stays different from ``towerstream evaluate`` is the history: live, the
  whole batch is scored against the pre-batch history, while ``evaluate`` adds each event to
  the user's history before that user's next event is scored (its module docstring says why).
  With one event per user per batch, live traffic, the two are the same; a recording replayed
  at full speed packs a user's session into one batch, and the live figure then reads lower
  (ml-100k: ``docs/benchmarks.md``, "Drift plot and evaluate"). Offline, ``towerstream drift
  plot`` takes every score from ``evaluation.evaluate`` itself (``probe``), so its hit rate
  is the evaluation's.
- **embedding space**: a persistent sample of live items (``track_items``) is re-embedded with
  the current item tower at each report: norm quantiles, mean cosine distance of the *same*
  items since the previous report and since the reference snapshot (this process's first
  report; a restarted worker takes a new one), and the collapse check, the share of variance
  in the top 1 / top 5 principal directions of the centred item vectors (mode collapse shows
  as one direction taking most of it). The towers L2-normalise their outputs, so norm
  quantiles sit at 1.0: they are a check for a broken tower (NaN, zero vectors), not a
  trend, and ``drift plot`` draws no panel of them.
- **served lists** (``observe_served``, any thread): PSI of model scores against the previous
  window (deciles of the previous window as bins), catalog coverage, and the Gini coefficient
  of recommendation counts over all live items (0 = every item equally often, near 1 = a few
  items take every slot: popularity bias). Popularity fallbacks count for coverage and Gini
  but not for PSI (their scores are counts, not similarities).
- index size, live items, and freshness lag (event time -> index upsert) quantiles.

Change detection (river), armed after ``warmup_events`` so the model's own convergence is
not reported as drift. Parameters were chosen on synthetic streams (4000 interactions, tastes
jumping half-way, batches of 64, ``sample_rate=0.5``), 15 seeds each with and without the jump:

- **hit rate: ADWIN** (``delta=hr_delta=0.0005``, ``clock=16``) on the per-probe hit (0/1).
  ADWIN suits a Bernoulli stream with an unknown, moving level and needs no threshold in
  hit-rate units. It is two-sided; only drops are flagged (the level after the cut is below
  the level before), since a model getting better is not an incident. It fired on all 15
  jumps, 100-220 events after them, and never on the stationary streams (nor did 0.002 on 8).
  Sensitivity follows the number of probes: at ``sample_rate=0.1`` the same small streams
  put only ~50 probes in the ~500-event dip and ADWIN stayed quiet; live traffic is larger.
- **embedding shift: Page-Hinkley** (``mode="up"``) on the per-batch movement of
  ``step_items`` item vectors, taken as ``log10(shift) - EWMA(log10(shift))``. The log makes
  it scale-free (per-step movement depends on learning rates and dimension), and the EWMA
  residual (``shift_smoothing=0.4``) turns the slow rise and decay of training into ~0 while
  a jump in movement gives a run of large positives; ``delta=0.1`` (per-step tolerance, in
  decades) and ``threshold=1.5`` (cumulative decades) never fired on the stationary streams
  and caught 9 of 15 jumps. ADWIN on the same series never fired (too few, too correlated
  points); Page-Hinkley on the raw level is dominated by the warm-up mean. This is the
  weaker signal: the report's ``change`` flag is either detector.

``before_learn`` runs where the worker commits a batch, ``after_learn`` and reports on the
training thread; they take turns on one lock. ``observe_served`` only takes a lock and appends.
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from river import drift as river_drift

from towerstream.events import Interaction, ItemDelete, ItemUpsert, UserProfile, decode_item
from towerstream.events.base import epoch_ms
from towerstream.events.drift import ChangePoint, DetectorName, DriftReport, Quantiles
from towerstream.recording import decode_record as _decode_record, RecordedRecord

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Fewer served scores than this in either window: PSI is not computed (too noisy).
MIN_PSI_SCORES = 50


@dataclass(frozen=True)
class DriftConfig:
    """Cadence, sampling and detector parameters (see the module docstring for the choices)."""

    every_events: int = 2000
    every_s: float = 30.0
    sample_rate: float = 0.1
    #: Sampled events scored per learned batch at most (the first ones): probing costs a recommendation
    #: each, on the training thread, so under a backlog (large merged batches) it is bounded per step.
    max_probes_per_batch: int = 64
    k: int = 10
    warmup_events: int = 1000
    #: Items snapshotted at each report (shift, norms, collapse).
    track_items: int = 1000
    #: Items re-embedded after every batch for the shift detector.
    step_items: int = 256
    track_users: int = 1000
    psi_bins: int = 10
    #: Served scores kept per window (beyond it, lists still count for coverage and Gini).
    max_scores: int = 100_000
    #: Offline there is no traffic: count the probe lists as served lists.
    probes_as_served: bool = False
    hr_delta: float = 0.0005
    hr_clock: int = 16
    shift_delta: float = 0.1
    shift_threshold: float = 1.5
    shift_smoothing: float = 0.4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.every_events < 1 or self.every_s <= 0 or self.k < 1:
            raise ValueError("every_events, every_s and k must be positive")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {self.sample_rate}")


class DriftSettings(BaseSettings):
    """``TOWERSTREAM_DRIFT_*`` environment variables; built at entry points only."""

    model_config = SettingsConfigDict(env_prefix="TOWERSTREAM_DRIFT_", env_file=None, frozen=True)

    every_events: int = Field(default=2000, description="a drift report every this many interactions learned")
    every_s: float = Field(default=30.0, description="...or every this many seconds, whichever comes first")
    sample_rate: float = Field(default=0.1, description="share of interactions scored before they are learned "
                               "(live HR@K; chosen by event id, so a replay scores the same ones)")
    max_probes_per_batch: int = Field(default=64, description="sampled interactions scored per learned batch at "
                                      "most (each costs a recommendation on the training thread)")
    k: int = Field(default=10, description="list length of the live HR@K")
    warmup_events: int = Field(default=1000, description="interactions learned before the change detectors arm "
                               "(a model's own convergence is not drift)")
    track_items: int = Field(default=1000, description="items re-embedded at each report (shift, norms, collapse)")
    step_items: int = Field(default=256, description="items re-embedded after every batch for the shift detector")
    hr_delta: float = Field(default=0.0005, description="ADWIN's delta for the hit-rate detector (smaller: fewer, "
                            "surer alarms)")
    shift_delta: float = Field(default=0.1, description="Page-Hinkley's per-step tolerance of the embedding-shift "
                               "detector, in decades of per-batch movement")
    shift_threshold: float = Field(default=1.5, description="Page-Hinkley's alarm threshold of the embedding-shift "
                                   "detector, in cumulative decades")
    seed: int = Field(default=0, description="seed of the tracked item sample")

    def config(self, **overrides: Any) -> DriftConfig:
        return DriftConfig(**{**self.model_dump(), **overrides})


class EngineLike(Protocol):
    """What the monitor reads from ``towerstream.engine.Engine``."""

    items: Any
    users: Any
    index: Any
    trainer: Any
    live: np.ndarray
    model_version: int

    def recommend_many(self, user_ids: Sequence[str], k: int = 10, *, exclude_seen: bool = True) -> Sequence[Any]: ...

    def seen_rows(self, user_row: int) -> set[int]: ...


# ----- pure statistics ----------------------------------------------------------------------
def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, bins: int = 10,
        eps: float = 1e-4) -> float:
    """Population stability index of ``actual`` against ``expected`` (quantile bins of expected).

    0 for identical distributions; ~0.1 is a moderate and >0.25 a large shift by the usual rule.
    """
    e, a = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if e.size == 0 or a.size == 0:
        raise ValueError("psi needs two non-empty samples")
    edges = np.unique(np.quantile(e, np.linspace(0, 1, bins + 1)[1:-1]))
    pe = np.bincount(np.searchsorted(edges, e, side="right"), minlength=len(edges) + 1) / e.size
    pa = np.bincount(np.searchsorted(edges, a, side="right"), minlength=len(edges) + 1) / a.size
    pe, pa = np.clip(pe, eps, None), np.clip(pa, eps, None)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def gini(counts: Sequence[float] | np.ndarray, zeros: int = 0) -> float | None:
    """Gini coefficient of non-negative counts (0 equal, -> 1 concentrated); None if all zero.

    ``zeros``: that many more counts of 0, not materialised (the live items nobody was served,
    which in a large catalog are most of them).
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = x.size + zeros, float(x.sum()) if x.size else 0.0
    if n == 0 or total <= 0:
        return None
    g = 2.0 * float(np.sum(np.arange(zeros + 1, n + 1) * x)) / (n * total) - (n + 1) / n
    return min(max(g, 0.0), 1.0)


def variance_top(vectors: np.ndarray, n: int = 1) -> float | None:
    """Share of the variance of ``vectors`` (N, D) in its top ``n`` principal directions."""
    if vectors.shape[0] < 2:
        return None
    x = vectors.astype(np.float64) - vectors.mean(axis=0, keepdims=True)
    s2 = np.linalg.svd(x, compute_uv=False) ** 2
    total = float(s2.sum())
    if not math.isfinite(total) or total <= 1e-12:
        return None
    return min(float(s2[:n].sum()) / total, 1.0)


def quantiles(values: Sequence[float] | np.ndarray) -> Quantiles | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    q = np.quantile(v, QUANTILES)
    return Quantiles(p05=float(q[0]), p25=float(q[1]), p50=float(q[2]), p75=float(q[3]), p95=float(q[4]))


def aligned_shift(rows_a: np.ndarray, vecs_a: np.ndarray, rows_b: np.ndarray, vecs_b: np.ndarray) -> float | None:
    """Mean cosine distance between the vectors of the rows present in both snapshots."""
    common, ia, ib = np.intersect1d(rows_a, rows_b, assume_unique=True, return_indices=True)
    if common.size == 0:
        return None
    a, b = vecs_a[ia].astype(np.float64), vecs_b[ib].astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-12)
    return float(np.mean(1.0 - np.clip(cos, -1.0, 1.0)))


def sampled(event_id: str, rate: float) -> bool:
    """Deterministic sample by event id: the same events are probed on every replay."""
    return zlib.crc32(event_id.encode()) < rate * 2**32


# ----- detectors -------------------------------------------------------------------------------
class HitRateDetector:
    """ADWIN on per-probe hits; reports drops only."""

    def __init__(self, delta: float, clock: int) -> None:
        self.adwin = river_drift.ADWIN(delta=delta, clock=clock)  # type: ignore[no-untyped-call]

    def update(self, hit: float) -> tuple[float, float] | None:
        before = self.adwin.estimation
        self.adwin.update(hit)  # type: ignore[no-untyped-call]
        if self.adwin.drift_detected:
            after = self.adwin.estimation
            if after < before:
                return before, after
        return None


class ShiftDetector:
    """Page-Hinkley (up) on log10 per-batch item movement minus its EWMA."""

    def __init__(self, delta: float, threshold: float, smoothing: float) -> None:
        self.ph = river_drift.PageHinkley(min_instances=5, delta=delta, threshold=threshold, mode="up")
        self.smoothing = smoothing
        self.level: float | None = None  # EWMA of log10(shift)

    def update(self, shift: float) -> tuple[float, float] | None:
        x = math.log10(max(shift, 1e-12))
        if self.level is None:
            self.level = x
            return None
        before = self.level
        self.ph.update(x - before)  # type: ignore[no-untyped-call]
        self.level = self.smoothing * x + (1 - self.smoothing) * before
        if self.ph.drift_detected:
            return 10**before, shift
        return None


@dataclass
class ProbeResult:
    scored: int = 0
    hits: int = 0


# ----- the monitor -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServedFigures:
    """The served-lists part of a drift report (``None`` where the window cannot say)."""

    lists: int
    coverage: float | None
    gini: float | None
    score_psi: float | None


class ServedLists:
    """What was served, window by window: coverage and Gini over live items, PSI of model scores.

    Why apart from ``DriftMonitor``: a serving replica serves but never learns, and reports these
    figures about its own answers; the trainer's monitor then reports the embedding space alone.
    ``observe`` runs on any thread (it only takes a lock and appends); ``take`` closes the window.
    """

    def __init__(self, max_scores: int = 100_000, psi_bins: int = 10) -> None:
        self.max_scores = max_scores
        self.psi_bins = psi_bins
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._scores: list[float] = []
        self._lists = 0
        self._prev_scores: np.ndarray | None = None

    def observe(self, items: Sequence[tuple[str, float]], model: bool = True) -> None:
        """One answer: ``(item id, score)`` pairs; only a model answer's scores count for PSI."""
        with self._lock:
            self._lists += 1
            self._counts.update(str(i) for i, _ in items)
            if model and len(self._scores) < self.max_scores:
                self._scores.extend(float(sc) for _, sc in items)

    def take(self, live_of: Callable[[list[str]], np.ndarray], n_live: int) -> ServedFigures:
        """Close the window. ``live_of(ids)``: a bool mask, which served ids are live items now;
        ``n_live``: how many live items there are (coverage's and Gini's denominator)."""
        with self._lock:
            counts, scores, lists = self._counts, self._scores, self._lists
            self._counts, self._scores, self._lists = Counter(), [], 0
        coverage = gini_ = score_psi = None
        if lists and n_live:
            ids = list(counts)
            live = live_of(ids) if ids else np.zeros(0, dtype=bool)
            served = np.array([counts[i] for i in ids], dtype=np.float64)[live]
            coverage = float(np.count_nonzero(served)) / n_live
            gini_ = gini(served, zeros=max(n_live - served.size, 0))  # the live items nobody was served
        cur = np.asarray(scores, dtype=np.float64)
        if cur.size >= MIN_PSI_SCORES:
            if self._prev_scores is not None and self._prev_scores.size >= MIN_PSI_SCORES:
                score_psi = psi(self._prev_scores, cur, self.psi_bins)
            self._prev_scores = cur
        return ServedFigures(lists=lists, coverage=coverage, gini=gini_, score_psi=score_psi)


class DriftMonitor:
    """Worker hook object: ``before_learn`` / ``after_learn`` / ``observe_served`` / ``report``."""

    def __init__(self, config: DriftConfig | None = None, source: str = "towerstream",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or DriftConfig()
        self.source = source
        self.clock = clock
        self.rng = np.random.default_rng(self.config.seed)
        self.hr_detector = HitRateDetector(self.config.hr_delta, self.config.hr_clock)
        self.shift_detector = ShiftDetector(self.config.shift_delta, self.config.shift_threshold,
                                            self.config.shift_smoothing)
        self.seq = 0
        self.events_total = 0
        self.probes_total = 0
        self.hits_total = 0
        self.outbox: deque[DriftReport] = deque(maxlen=1000)
        self.last_report_at = clock()
        # training-thread state
        self._step_rows = np.zeros(0, dtype=np.int64)
        self._step_vecs = np.zeros((0, 0), dtype=np.float32)
        self._tracked = np.zeros(0, dtype=np.int64)
        self._prev_snap: tuple[np.ndarray, np.ndarray] | None = None
        self._ref_snap: tuple[np.ndarray, np.ndarray] | None = None
        self._reset_window()
        #: Any-thread state: what was served.
        self.served = ServedLists(self.config.max_scores, self.config.psi_bins)
        #: ``before_learn`` runs where a batch is committed, ``after_learn`` and ``report`` where it
        #: is trained: two threads in a worker, so the hooks take turns.
        self._hooks = threading.RLock()

    def _reset_window(self) -> None:
        self._w_events = 0
        self._w_probes = 0
        self._w_hits = 0
        self._w_start: int | None = None
        self._w_end: int | None = None
        self._w_lags: list[float] = []
        self._w_changes: list[ChangePoint] = []

    # ----- hooks ---------------------------------------------------------------------------------
    def before_learn(self, engine: EngineLike, events: Sequence[Interaction]) -> ProbeResult:
        """Score the sampled events with the model as it is before this batch (test-then-train).

        Call it before the batch is committed: a worker shows committed events to serving (history,
        seen items) before it trains them, and a seen item is never recommended.
        """
        with self._hooks:
            return self._before_learn(engine, events)

    def _before_learn(self, engine: EngineLike, events: Sequence[Interaction]) -> ProbeResult:
        cfg = self.config
        res = ProbeResult()
        probes: list[tuple[Interaction, frozenset[str]]] = []  # with the user's earlier items of this batch
        earlier: dict[str, list[str]] = {}
        for ev in events:
            mine = earlier.setdefault(ev.user_id, [])
            before = frozenset(mine)
            mine.append(ev.item_id)
            if len(probes) >= cfg.max_probes_per_batch or not sampled(ev.event_id, cfg.sample_rate):
                continue
            urow, irow = engine.users.get(ev.user_id), engine.items.get(ev.item_id)
            if ev.item_id in before or (urow is not None and irow is not None and irow in engine.seen_rows(urow)):
                continue  # a repeat cannot be recommended (seen items are excluded)
            probes.append((ev, before))
        if not probes:
            return res
        # ``evaluation.PrequentialScorer``'s rule: every event of the batch is scored against the
        # pre-batch model, with the user's earlier items of the batch dropped from the list first,
        # so ask for enough to keep K after that.
        users = list(dict.fromkeys(ev.user_id for ev, _ in probes))
        depth = cfg.k + max(len(before) for _, before in probes)
        answers = engine.recommend_many(users, depth, exclude_seen=True)
        lists = {u: [str(i) for i, _ in rec.items] for u, rec in zip(users, answers)}
        at_ms = max(epoch_ms(ev.ts) for ev in events)
        for ev, before in probes:
            top = [i for i in lists[ev.user_id] if i not in before][: cfg.k]
            hit = ev.item_id in top
            res.scored += 1
            res.hits += int(hit)
            self._account_probe(hit, at_ms)
        if cfg.probes_as_served:
            for rec in answers:
                self.observe_served(rec)
        return res

    def probe(self, ev: Interaction, hit: bool) -> None:
        """One event scored by someone else's test-then-train (``evaluation.evaluate``'s scorer)."""
        with self._hooks:
            self._account_probe(hit, epoch_ms(ev.ts))

    def _account_probe(self, hit: bool, at_ms: int) -> None:
        """Count one scored event, and feed the hit-rate detector once it is armed."""
        self._w_probes += 1
        self._w_hits += int(hit)
        self.probes_total += 1
        self.hits_total += int(hit)
        if self.events_total >= self.config.warmup_events:
            change = self.hr_detector.update(float(hit))
            if change is not None:
                self._w_changes.append(ChangePoint(detector="hit_rate", at_event=self.events_total,
                                                   at_ms=at_ms, before=change[0], after=change[1]))

    def after_learn(self, engine: EngineLike, events: Sequence[Interaction], result: Any) -> DriftReport | None:
        """Account the batch, feed the shift detector, and build a report when the event cadence is due."""
        with self._hooks:
            return self._after_learn(engine, events, result)

    def _after_learn(self, engine: EngineLike, events: Sequence[Interaction], result: Any) -> DriftReport | None:
        trained = int(getattr(result, "trained", len(events)))
        if trained <= 0:
            return None
        self.events_total += trained
        self._w_events += trained
        times = [epoch_ms(ev.ts) for ev in events]
        lo, hi = min(times), max(times)
        self._w_start = lo if self._w_start is None else min(self._w_start, lo)
        self._w_end = hi if self._w_end is None else max(self._w_end, hi)
        lags = list(getattr(result, "upsert_lag_ms", ()) or ())
        if len(self._w_lags) < 100_000:
            self._w_lags.extend(lags[: 100_000 - len(self._w_lags)])
        shift = self._step_shift(engine)
        if shift is not None and self.events_total - trained >= self.config.warmup_events:
            change = self.shift_detector.update(shift)
            if change is not None:
                self._w_changes.append(ChangePoint(detector="item_shift", at_event=self.events_total,
                                                   at_ms=hi, before=change[0], after=change[1]))
        if self._w_events >= self.config.every_events:
            return self._report(engine)
        return None

    def observe_served(self, recommendations: Any) -> None:
        """One answer served (any thread): items count for coverage/Gini, model scores for PSI."""
        items = getattr(recommendations, "items", recommendations)
        self.served.observe(items, getattr(recommendations, "source", "model") == "model")

    # ----- cadence -------------------------------------------------------------------------------
    @property
    def window_events(self) -> int:
        """Interactions learned since the last report."""
        return self._w_events

    def seconds_since_report(self) -> float:
        return self.clock() - self.last_report_at

    def drain(self) -> list[DriftReport]:
        """Reports built since the last drain, oldest first."""
        out = []
        while self.outbox:
            out.append(self.outbox.popleft())
        return out

    # ----- the report ----------------------------------------------------------------------------
    def _live_rows(self, engine: EngineLike) -> np.ndarray:
        return np.flatnonzero(np.asarray(engine.live)[: max(len(engine.items), 0)]).astype(np.int64)

    def _step_shift(self, engine: EngineLike) -> float | None:
        """Mean cosine movement of ``step_items`` items over this batch (current item tower)."""
        n = self.config.step_items
        if n <= 0:
            return None
        # Per batch: O(step_items) checks; the O(catalog) scan only when the set must change.
        flags = np.asarray(engine.live)
        rows = self._step_rows
        stale = rows.size > 0 and not bool(flags[rows].all())
        if stale or (rows.size < n and int(np.count_nonzero(flags[: len(engine.items)])) > rows.size):
            rows = self._live_rows(engine)[:n]  # oldest live items: a stable set
        if rows.size == 0:
            return None
        vecs = engine.trainer.embed_items(rows)
        shift = aligned_shift(self._step_rows, self._step_vecs, rows, vecs) if self._step_rows.size else None
        self._step_rows, self._step_vecs = rows, vecs
        return shift

    def _track(self, live: np.ndarray) -> np.ndarray:
        """Persistent item sample: keep the still-live tracked rows, top up at random."""
        keep = self._tracked[np.isin(self._tracked, live, assume_unique=True)]
        want = self.config.track_items - keep.size
        if want > 0:
            pool = np.setdiff1d(live, keep, assume_unique=True)
            if pool.size:
                add = pool if pool.size <= want else self.rng.choice(pool, size=want, replace=False)
                keep = np.concatenate([keep, add])
        self._tracked = np.sort(keep)
        return self._tracked

    def report(self, engine: EngineLike, now_ms: int | None = None) -> DriftReport:
        """Build the report for the window since the last one (training thread) and queue it."""
        with self._hooks:
            return self._report(engine, now_ms)

    def _report(self, engine: EngineLike, now_ms: int | None = None) -> DriftReport:
        cfg = self.config
        live = self._live_rows(engine)
        rows = self._track(live)
        item_norm = item_shift_prev = item_shift_ref = top1 = top5 = None
        if rows.size:
            vecs = engine.trainer.embed_items(rows)
            item_norm = quantiles(np.linalg.norm(vecs, axis=1))
            if self._prev_snap is not None:
                item_shift_prev = aligned_shift(*self._prev_snap, rows, vecs)
            if self._ref_snap is None:
                self._ref_snap = (rows, vecs)
            item_shift_ref = aligned_shift(*self._ref_snap, rows, vecs)
            self._prev_snap = (rows, vecs)
            top1, top5 = variance_top(vecs, 1), variance_top(vecs, 5)
        user_norm = None
        n_users = len(engine.users)
        if n_users:
            urows = (np.arange(n_users, dtype=np.int64) if n_users <= cfg.track_users
                     else np.sort(self.rng.choice(n_users, size=cfg.track_users, replace=False)))
            user_norm = quantiles(np.linalg.norm(engine.trainer.embed_users(urows), axis=1))

        def live_of(ids: list[str]) -> np.ndarray:
            item_rows = np.asarray(engine.items.rows(ids), dtype=np.int64)
            pos = np.searchsorted(live, item_rows)
            ok = (item_rows >= 0) & (pos < live.size)
            ok[ok] &= live[pos[ok]] == item_rows[ok]
            return ok

        served = self.served.take(live_of, int(live.size))

        changes = list(self._w_changes)
        hr_change = any(c.detector == "hit_rate" for c in changes)
        shift_change = any(c.detector == "item_shift" for c in changes)
        self.seq += 1
        rep = DriftReport(
            source=self.source, seq=self.seq,
            emitted_at_ms=now_ms if now_ms is not None else int(time.time() * 1000),
            model_version=int(engine.model_version),
            window_start_ms=self._w_start, window_end_ms=self._w_end,
            events=self._w_events, events_total=self.events_total,
            k=cfg.k, probes=self._w_probes, hits=self._w_hits,
            hit_rate=self._w_hits / self._w_probes if self._w_probes else None,
            hit_rate_total=self.hits_total / self.probes_total if self.probes_total else None,
            user_norm=user_norm, item_norm=item_norm,
            item_shift_prev=item_shift_prev, item_shift_ref=item_shift_ref,
            variance_top1=top1, variance_top5=top5,
            served_lists=served.lists, score_psi=served.score_psi, coverage=served.coverage, gini=served.gini,
            index_size=len(engine.index), live_items=int(live.size),
            freshness_lag_ms=quantiles(np.maximum(np.asarray(self._w_lags, dtype=np.float64), 0.0)),
            hit_rate_change=hr_change, item_shift_change=shift_change, change=hr_change or shift_change,
            changes=changes[:1000],
        )
        self._reset_window()
        self.last_report_at = self.clock()
        self.outbox.append(rep)
        return rep

    def describe(self) -> dict[str, Any]:
        """The configuration, for logs."""
        return asdict(self.config)


# ----- offline driver ------------------------------------------------------------------------------
StreamEvent = ItemUpsert | ItemDelete | UserProfile | Interaction


def decode_record(rec: RecordedRecord) -> StreamEvent | None:
    """A recording line as a stream event; other topics (drift, requests...) give None."""
    event: StreamEvent | None = _decode_record(rec)
    return event


def monitor_stream(
    events: Iterable[StreamEvent],
    engine: Any,
    monitor: DriftMonitor,
    *,
    batch_size: int = 512,
    final_report: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Iterator[DriftReport]:
    """Drive ``engine`` over ``events`` as the worker does, yielding the monitor's reports.

    Interactions go in micro-batches of ``batch_size`` (hooks around each ``learn``); item and
    user records are applied in stream order, pending interactions first. Only the event
    cadence applies offline (``every_s`` is a processing-time cadence of the worker).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    pending: list[Interaction] = []
    run: list[Any] = []

    def flush() -> list[DriftReport]:
        if not pending:
            return []
        batch = list(pending)
        pending.clear()
        monitor.before_learn(engine, batch)
        result = engine.learn(batch)
        monitor.after_learn(engine, batch, result)
        if progress is not None:
            progress(monitor.events_total)
        return monitor.drain()

    def flush_run() -> None:
        if run:
            (engine.apply_users if isinstance(run[0], UserProfile) else engine.apply_items)(list(run))
            run.clear()

    for ev in events:
        if isinstance(ev, Interaction):
            flush_run()
            pending.append(ev)
            if len(pending) >= batch_size:
                yield from flush()
        else:
            yield from flush()
            if run and isinstance(run[0], UserProfile) != isinstance(ev, UserProfile):
                flush_run()
            run.append(ev)
    flush_run()
    yield from flush()
    if final_report and monitor.window_events > 0:
        monitor.report(engine)
        yield from monitor.drain()


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


#: ``drift tail``'s columns: title (with its unit), width, and the value of a report.
_COLUMNS: tuple[tuple[str, int, Callable[[DriftReport], str]], ...] = (
    ("source", 14, lambda r: r.source),
    ("report", 6, lambda r: str(r.seq)),
    ("model_v", 8, lambda r: str(r.model_version)),
    ("events", 8, lambda r: str(r.events_total)),
    ("+window", 7, lambda r: f"+{r.events}"),
    ("HR@K", 5, lambda r: _f(r.hit_rate)),
    ("hits/probes", 11, lambda r: f"{r.hits}/{r.probes}"),
    ("shift_prev", 10, lambda r: _f(r.item_shift_prev, ".4f")),
    ("shift_ref", 9, lambda r: _f(r.item_shift_ref, ".4f")),
    ("PSI", 5, lambda r: _f(r.score_psi)),
    ("coverage", 8, lambda r: _f(r.coverage)),
    ("Gini", 5, lambda r: _f(r.gini)),
    ("top1_var", 8, lambda r: _f(r.variance_top1)),
    ("index", 7, lambda r: str(r.index_size)),
    ("lag_p50_s", 9, lambda r: _f(r.freshness_lag_ms.p50 / 1000 if r.freshness_lag_ms else None)),
)

_LEGEND = (
    "events: interactions learned (total, +this window)",
    ("HR@K: share of scored interactions whose item was in the model's top K before it was learned "
     "(K: the report's k); hits/probes: its counts"),
    "shift_prev/shift_ref: mean cosine distance (0..2) of the same item vectors since the previous / first report",
    "PSI: served scores vs the previous window (0.1 moderate, 0.25 large)",
    "coverage: share of live items in any served list; Gini: 0 even .. 1 concentrated",
    "top1_var: share of item variance in the top principal direction; index: items in the index",
    "lag_p50_s: event time -> index upsert, median, in seconds",
    "'-': not computable for the window; CHANGE[...]: a detector fired",
)
#: Printed once by ``drift tail`` before the first report: column titles, then what they mean.
REPORT_HEADER = "\n".join([" ".join(title.rjust(width) for title, width, _ in _COLUMNS),
                            *(f"# {line}" for line in _LEGEND)])


def report_line(rep: DriftReport | Mapping[str, Any]) -> str:
    """One line per report, in ``REPORT_HEADER``'s columns (``towerstream drift tail``)."""
    r = rep if isinstance(rep, DriftReport) else DriftReport.model_validate(rep)
    flags = [c.detector for c in r.changes]
    return (" ".join(get(r).rjust(width) for _, width, get in _COLUMNS)
            + (f"  CHANGE[{','.join(dict.fromkeys(flags))}]" if r.change else ""))


DETECTORS: tuple[DetectorName, ...] = ("hit_rate", "item_shift")
