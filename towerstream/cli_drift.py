"""``towerstream drift tail`` and ``towerstream drift plot``: drift reports for operators.

``tail`` follows ``<prefix>.drift-metrics`` with a group-less kafka-python consumer (it never
moves a worker's offsets) and prints a header, then one line per report (changes highlighted on
a terminal). ``plot`` draws reports over time: those in a recording made with ``towerstream
record --topics drift-metrics``, or, for a recording of events, the reports a DriftMonitor
builds at the worker's event cadence while ``towerstream evaluate``'s test-then-train runs
over it. The monitor takes every score from that evaluation, so the plot's "since start" hit
rate ends at the HR@K ``towerstream evaluate`` prints for the same recording and flags.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported inside the commands, so that ``--help`` loads none of them (river, numpy)
    from towerstream.drift import DriftSettings
    from towerstream.events.drift import DriftReport
    from towerstream.recording import RecordedRecord
    from towerstream.settings import Settings

DRIFT_TOPIC = "drift-metrics"
#: ``source`` of reports made by ``plot`` from events (no worker).
OFFLINE_SOURCE = "offline"
#: Colours of the change markers, per detector.
CHANGE_COLORS = {"hit_rate": "tab:red", "item_shift": "tab:purple"}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``drift tail`` and ``drift plot``."""
    drift = subparsers.add_parser("drift", help="embedding drift reports: follow or plot them")
    dsub = drift.add_subparsers(dest="drift_cmd", required=True)

    t = dsub.add_parser("tail", help="print drift reports as they arrive")
    t.add_argument("--from-beginning", action="store_true", help="start with the oldest report kept")
    t.add_argument("--max", type=int, default=None, metavar="N", help="stop after N reports (default: no limit)")
    t.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: until Ctrl-C)")
    t.add_argument("--json", action="store_true", help="print each report as JSON instead (no header)")
    t.set_defaults(func=_cmd_tail)

    p = dsub.add_parser("plot", help="draw drift reports over time (PNG)")
    p.add_argument("recording", help="a recording of drift-metrics, or of events to monitor offline")
    p.add_argument("-o", "--out", required=True, help="image file (e.g. drift.png)")
    p.add_argument("--every-events", type=int, default=None,
                   help="offline report cadence in interactions (default: the worker's, TOWERSTREAM_DRIFT_EVERY_EVENTS)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="offline micro-batch (default: the worker's, TOWERSTREAM_BATCH_MAX)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help="offline: fraction of interactions only learned, not scored (as towerstream evaluate)")
    p.add_argument("--k", type=int, default=None, help="offline: list length scored (default: TOWERSTREAM_DRIFT_K, 10)")
    p.set_defaults(func=_cmd_plot)


# ----- tail ----------------------------------------------------------------------------------------
def tail(settings: Settings, out: IO[str], *, from_beginning: bool = False, max_reports: int | None = None,
         duration_s: float | None = None, as_json: bool = False, color: bool = False) -> int:
    """Print drift reports until ``max_reports``/``duration_s`` (or Ctrl-C); returns how many."""
    from kafka import KafkaConsumer, TopicPartition

    from producers.kafka_config import client_config
    from producers.topics import ensure_topics
    from towerstream.drift import REPORT_HEADER, report_line
    from towerstream.events.drift import DriftReport

    topic = settings.topic(DRIFT_TOPIC)
    ensure_topics(settings, [DRIFT_TOPIC])
    consumer = KafkaConsumer(
        **client_config(settings, client_id="towerstream-drift-tail"), group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        fetch_max_wait_ms=max(10, settings.consumer_max_fetch_wait_ms),
    )
    deadline = time.monotonic() + duration_s if duration_s is not None else None
    count = 0
    try:
        parts = None
        while not parts:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                if deadline is not None and time.monotonic() >= deadline:
                    return 0
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if not as_json:
            print(REPORT_HEADER, file=out, flush=True)
        (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)(*tps)
        while max_reports is None or count < max_reports:
            timeout_ms = 200
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                timeout_ms = max(1, min(timeout_ms, int(left * 1000)))
            batches = consumer.poll(timeout_ms=timeout_ms)
            for tp in sorted(batches, key=lambda t: t.partition):
                for msg in batches[tp]:
                    if max_reports is not None and count >= max_reports:
                        break
                    try:
                        rep = DriftReport.model_validate_json(msg.value)
                    except ValueError as exc:
                        print(f"skipping partition {msg.partition} offset {msg.offset}: "
                              f"{str(exc).splitlines()[0]}", file=sys.stderr)
                        continue
                    line = rep.model_dump_json() if as_json else report_line(rep)
                    if color and rep.change:
                        line = f"\x1b[1;31m{line}\x1b[0m"
                    print(line, file=out, flush=True)
                    count += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close(autocommit=False)
    return count


def _cmd_tail(args: argparse.Namespace) -> int:
    from towerstream.logs import stream_is_terminal
    from towerstream.settings import Settings

    try:
        tail(Settings(), sys.stdout, from_beginning=args.from_beginning, max_reports=args.max,
             duration_s=args.duration, as_json=args.json, color=stream_is_terminal(sys.stdout))
    except Exception as exc:  # noqa: BLE001 - the CLI reports, it does not trace back
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# ----- plot ----------------------------------------------------------------------------------------
def _is_drift(rec: RecordedRecord, prefix: str) -> bool:
    return rec.logical_topic(prefix) == DRIFT_TOPIC or rec.topic.endswith("." + DRIFT_TOPIC)


def recorded_reports(path: str | Path, prefix: str = "towerstream") -> list[DriftReport]:
    """The drift reports in a recording (empty when it holds none)."""
    from towerstream.events.drift import DriftReport
    from towerstream.recording import iter_recording

    return [DriftReport.model_validate(r.value) if isinstance(r.value, dict) else DriftReport.model_validate_json(r.value)
            for r in iter_recording(path) if _is_drift(r, prefix)]


def offline_reports(path: str | Path, settings: Settings, drift: DriftSettings, *,
                    batch_size: int | None = None, warmup: float = 0.5, **overrides: Any) -> list[DriftReport]:
    """The reports a monitor builds while ``towerstream evaluate``'s test-then-train runs over a recording.

    The Engine is the one ``evaluate`` builds from the same settings, and every event the
    evaluation scores is the monitor's probe: the last report's ``hit_rate_total`` is the
    evaluation's HR@K (``tests/unit/test_drift_agrees.py``).
    """
    from towerstream.cli_evaluate import evaluation_engine
    from towerstream.drift import DriftMonitor
    from towerstream.evaluation import evaluate
    from towerstream.recording import iter_recording

    monitor = DriftMonitor(drift.config(probes_as_served=True, **overrides), source=OFFLINE_SOURCE)
    with evaluation_engine(settings) as engine:
        evaluate(iter_recording(path), engine, warmup=warmup, k=monitor.config.k,
                 batch_size=batch_size or settings.batch_max, observer=monitor)
        if monitor.window_events > 0:
            monitor.report(engine)
    return monitor.drain()


def plot_reports(reports: Sequence[DriftReport], out: str | Path, title: str | None = None) -> Path:
    """Eight panels over event time (window end), change points as vertical lines; writes ``out``."""
    from matplotlib.figure import Figure

    if not reports:
        raise ValueError("no drift reports to plot")
    by_event_time = all(r.window_end_ms is not None for r in reports)

    def when(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)

    sources = list(dict.fromkeys(r.source for r in reports))
    fig = Figure(figsize=(14, 13), layout="constrained")
    axes = fig.subplots(4, 2, sharex=True).ravel()
    k = reports[-1].k
    live = any(s != OFFLINE_SOURCE for s in sources)
    # No norm panel: the towers L2-normalise, so the norms sit at 1.0 (they stay in the report as
    # a broken-tower check). Offline, "lag" would be wall clock minus a recording's event time.
    panels: list[tuple[str, list[tuple[str, Any, str]]]] = [
        (f"HR@{k}, test-then-train (share of scored events whose item was in the top {k})", [
            ("window", lambda r: r.hit_rate, "-"), ("since start", lambda r: r.hit_rate_total, "--")]),
        ("item embedding shift (mean cosine distance, 0..2)", [
            ("since previous report", lambda r: r.item_shift_prev, "-"),
            ("since reference", lambda r: r.item_shift_ref, "--")]),
        ("served score PSI vs previous window (0.1 moderate, 0.25 large)", [("PSI", lambda r: r.score_psi, "-")]),
        ("catalog coverage and popularity bias (share of live items; Gini 0..1)", [
            ("coverage", lambda r: r.coverage, "-"), ("Gini", lambda r: r.gini, "--")]),
        ("collapse: share of item variance in the top principal directions", [
            ("top 1", lambda r: r.variance_top1, "-"), ("top 5", lambda r: r.variance_top5, "--")]),
        *([("freshness lag, event time -> index upsert (s)", [
            ("p50", lambda r: r.freshness_lag_ms and r.freshness_lag_ms.p50 / 1000, "-"),
            ("p95", lambda r: r.freshness_lag_ms and r.freshness_lag_ms.p95 / 1000, "--")])] if live else []),
        ("training (model version = train steps)", [("model version", lambda r: r.model_version, "-")]),
        ("index (items)", [("items in index", lambda r: r.index_size, "-"), ("live items", lambda r: r.live_items, "--")]),
    ]
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (name, series) in zip(axes, panels):
        for source in sources:
            mine = [r for r in reports if r.source == source]
            xs = [when(r.window_end_ms if by_event_time else r.emitted_at_ms) for r in mine]  # type: ignore[arg-type]
            for label, get, style in series:
                ys = [get(r) for r in mine]
                ys = [float("nan") if y is None else float(y) for y in ys]
                ax.plot(xs, ys, style, marker=".", label=label if len(sources) == 1 else f"{source} {label}")
        ax.set_title(name, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[2].axhline(0.1, color="grey", lw=0.8, ls=":")
    axes[2].axhline(0.25, color="grey", lw=0.8, ls=":")
    # Change points: where the detector fired (event time), or the report that carried it.
    seen: set[str] = set()
    for r in reports:
        for c in r.changes:
            ms = c.at_ms if (by_event_time and c.at_ms is not None) else (
                r.window_end_ms if by_event_time else r.emitted_at_ms)
            for n, ax in enumerate(axes):
                mark = f"change: {c.detector}" if n == 0 and c.detector not in seen else None
                ax.axvline(when(ms), color=CHANGE_COLORS.get(c.detector, "black"), lw=1.2, alpha=0.7,  # type: ignore[arg-type]
                           label=mark)
            seen.add(c.detector)
    if seen:
        axes[0].legend(fontsize=8, loc="best")
    for ax in axes[len(panels) - 2:len(panels)]:
        ax.set_xlabel("event time (window end, UTC)" if by_event_time else "report time (UTC)")
        for lbl in ax.get_xticklabels():
            lbl.set_rotation(20)
    n_changes = sum(len(r.changes) for r in reports)
    fig.suptitle(title or f"towerstream drift: {len(reports)} reports from {', '.join(sources)}, "
                          f"{n_changes} change(s) detected")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def _cmd_plot(args: argparse.Namespace) -> int:
    from towerstream.drift import DriftSettings
    from towerstream.recording import RecordingError
    from towerstream.settings import Settings

    settings = Settings()
    try:
        reports = recorded_reports(args.recording, settings.topic_prefix)
        source = "recorded"
        if not reports:
            overrides = {k: v for k, v in (("every_events", args.every_events), ("k", args.k)) if v is not None}
            reports = offline_reports(args.recording, settings, DriftSettings(), batch_size=args.batch_size,
                                      warmup=args.warmup, **overrides)
            source = "offline"
        if not reports:
            print("error: the recording holds no drift reports and no interactions", file=sys.stderr)
            return 1
        out = plot_reports(reports, args.out)
    except (RecordingError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    changes = sum(len(r.changes) for r in reports)
    last = reports[-1]
    hr = "-" if last.hit_rate_total is None else f"{last.hit_rate_total:.4f}"
    print(f"plotted={len(reports)} source={source} changes={changes} HR@{last.k}={hr} out={out}")
    return 0
