"""DriftMonitor offline: Engine + monitor over synthetic recordings, and the statistics it reports."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from towers import TowerConfig
from towerstream.cli import main as cli_main
from towerstream.cli_drift import plot_reports
from towerstream.drift import (
    DriftConfig,
    DriftMonitor,
    DriftSettings,
    ServedLists,
    aligned_shift,
    decode_record,
    gini,
    monitor_stream,
    psi,
    report_line,
    sampled,
    variance_top,
)
from towerstream.engine import Engine, EngineConfig, Recommendations
from towerstream.events.drift import DriftReport
from towerstream.recording import RecordedRecord, write_recording
from towerstream.synthetic import StreamSpec, generate

#: A small tower keeps one 4000-event run near a second on a shared 2-core machine.
# A small tower that must become useful within the 2,000 events before the jump: the defaults'
# low learning rates are tuned for long streams (ml-100k), so this one starts 5x hotter (burn-in).
SMALL_TOWER = dict(dim=16, hidden=32, text_buckets=4096, cat_buckets=512, feat_buckets=512,
                   uniform_negatives=32, history_len=20, device="cpu", lr_burn_in_factor=5.0)
N_EVENTS = 4000
SHIFT_AT = N_EVENTS // 2  # interactions before the taste jump (StreamSpec.shift_at=0.5)
#: Observed: the hit-rate flag rises 100-220 events after the jump (15 seeds); the bound leaves room.
DETECTION_BOUND = 1000
SEEDS = (0, 1)


def run_stream(tmp: Path, seed: int, shift: bool) -> list[DriftReport]:
    engine = Engine.open(tmp / f"engine-{seed}-{shift}",
                         EngineConfig(tower=TowerConfig(**SMALL_TOWER, seed=seed), index_kind="flat"))
    monitor = DriftMonitor(DriftConfig(every_events=500, sample_rate=0.5, probes_as_served=True, seed=seed))
    spec = StreamSpec(interactions=N_EVENTS, shift_at=0.5 if shift else None, seed=seed)
    try:
        events = (decode_record(r) for r in generate(spec))
        return list(monitor_stream((e for e in events if e is not None), engine, monitor, batch_size=64))
    finally:
        engine.close()


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, bool], list[DriftReport]]:
    tmp = tmp_path_factory.mktemp("drift")
    return {(seed, shift): run_stream(tmp, seed, shift) for seed in SEEDS for shift in (True, False)}


# ----- change detection ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_taste_jump_raises_the_change_flag_soon_after(streams: dict[tuple[int, bool], list[DriftReport]],
                                                      seed: int) -> None:
    reports = streams[(seed, True)]
    before = [r for r in reports if r.events_total <= SHIFT_AT]
    assert before and not any(r.change for r in before), [r.changes for r in before]
    flagged = [r for r in reports if r.hit_rate_change]
    assert flagged, [report_line(r) for r in reports]
    first = min(c.at_event for r in flagged for c in r.changes if c.detector == "hit_rate")
    assert SHIFT_AT <= first <= SHIFT_AT + DETECTION_BOUND
    # The report that carries the flag is the one whose window holds the detection.
    r = flagged[0]
    assert r.change and r.events_total - r.events <= first <= r.events_total
    drop = next(c for c in r.changes if c.detector == "hit_rate")
    assert drop.after < drop.before and drop.at_ms is not None


@pytest.mark.parametrize("seed", SEEDS)
def test_stationary_stream_raises_no_flag(streams: dict[tuple[int, bool], list[DriftReport]], seed: int) -> None:
    reports = streams[(seed, False)]
    assert len(reports) >= N_EVENTS // 600
    assert not any(r.change or r.hit_rate_change or r.item_shift_change or r.changes for r in reports)


# ----- report fields ------------------------------------------------------------------------------------
def test_report_fields_are_sane(streams: dict[tuple[int, bool], list[DriftReport]]) -> None:
    reports = streams[(0, False)]
    assert [r.seq for r in reports] == list(range(1, len(reports) + 1))
    assert reports[-1].events_total == N_EVENTS == sum(r.events for r in reports)
    assert all(r.model_version > 0 and r.index_size > 0 and r.live_items >= r.index_size for r in reports)
    for r in reports:
        assert r.window_start_ms is not None and r.window_end_ms is not None
        assert r.window_start_ms <= r.window_end_ms
        assert r.probes > 0 and r.hit_rate is not None and 0 <= r.hit_rate <= 1
        assert r.coverage is not None and 0 < r.coverage <= 1
        assert r.gini is not None and 0 <= r.gini <= 1
        assert r.variance_top1 is not None and r.variance_top5 is not None
        assert 0 < r.variance_top1 <= r.variance_top5 <= 1
        assert r.item_norm is not None and r.user_norm is not None
        assert r.item_norm.p05 == pytest.approx(1.0, abs=1e-3)  # the towers L2-normalise
        assert r.item_shift_ref is not None and r.item_shift_ref >= 0
        assert DriftReport.model_validate_json(r.model_dump_json()) == r
    # The first report is the reference snapshot; later ones have moved away from it.
    assert reports[0].item_shift_prev is None and reports[0].item_shift_ref == pytest.approx(0.0, abs=1e-9)
    assert all(r.item_shift_prev is not None for r in reports[1:])
    assert all(r.score_psi is not None and r.score_psi >= 0 for r in reports[1:])
    # The model learns: the later hit rate beats the first window's.
    assert max(r.hit_rate or 0 for r in reports[3:]) > reports[0].hit_rate  # type: ignore[operator]


def test_report_line_marks_changes(streams: dict[tuple[int, bool], list[DriftReport]]) -> None:
    flagged = next(r for r in streams[(0, True)] if r.change)
    line = report_line(flagged)
    assert "CHANGE[" in line and flagged.changes
    assert all(c.detector in line for c in flagged.changes)  # whichever detectors fired are named
    calm = streams[(0, False)][-1]
    assert "CHANGE" not in report_line(json.loads(calm.model_dump_json()))


# ----- statistics ------------------------------------------------------------------------------------
def test_psi_is_zero_for_identical_and_grows_with_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=5000)
    assert psi(a, a) == pytest.approx(0.0, abs=1e-12)
    assert psi(a, rng.normal(size=5000)) < 0.02
    assert 0.1 < psi(a, rng.normal(0.5, size=5000)) < psi(a, rng.normal(1.5, size=5000))
    assert psi(np.ones(100), np.ones(50)) == pytest.approx(0.0)  # a constant: one bin
    with pytest.raises(ValueError):
        psi([], [1.0])


def test_gini_bounds() -> None:
    assert gini(np.ones(100)) == pytest.approx(0.0)
    one = np.zeros(100)
    one[3] = 7
    assert gini(one) == pytest.approx(0.99)
    assert gini(np.zeros(10)) is None and gini([]) is None
    rng = np.random.default_rng(1)
    for _ in range(20):
        g = gini(rng.pareto(1.0, size=50))
        assert g is not None and 0 <= g <= 1


def test_collapse_fraction() -> None:
    rng = np.random.default_rng(2)
    iso = rng.normal(size=(2000, 16))
    top1 = variance_top(iso, 1)
    assert top1 is not None and top1 < 0.15
    assert variance_top(iso, 16) == pytest.approx(1.0)
    direction = rng.normal(size=16)
    collapsed = rng.normal(size=(2000, 1)) * direction + 0.01 * rng.normal(size=(2000, 16))
    top1 = variance_top(collapsed, 1)
    assert top1 is not None and 0.99 < top1 <= 1
    assert variance_top(np.ones((5, 4)), 1) is None and variance_top(iso[:1], 1) is None


def test_aligned_shift_uses_common_rows() -> None:
    v = np.eye(4, dtype=np.float32)
    rows = np.array([1, 2, 3, 4])
    assert aligned_shift(rows, v, rows, v) == pytest.approx(0.0)
    # Row 3 flipped, rows 1 and 9 not in both: distance 2 over the three common rows.
    w = v.copy()
    w[2] *= -1
    assert aligned_shift(rows, v, np.array([2, 3, 4, 9]), np.stack([w[1], w[2], w[3], w[0]])) == pytest.approx(2 / 3)
    assert aligned_shift(rows, v, np.array([7]), v[:1]) is None


def test_sample_is_deterministic_and_near_the_rate() -> None:
    ids = [f"e{i}" for i in range(20_000)]
    picked = [i for i in ids if sampled(i, 0.1)]
    assert picked == [i for i in ids if sampled(i, 0.1)]
    assert 0.09 < len(picked) / len(ids) < 0.11
    assert not any(sampled(i, 0.0) for i in ids[:100]) and all(sampled(i, 1.0) for i in ids[:100])


def test_observe_served_is_thread_safe() -> None:
    mon = DriftMonitor(DriftConfig())
    rec = Recommendations([(f"i{j}", 0.5) for j in range(10)], "model")
    pop = Recommendations([("i0", 3.0)], "popularity")

    def serve() -> None:
        for _ in range(500):
            mon.observe_served(rec)
            mon.observe_served(pop)

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mon.served._lists == 4000
    assert mon.served._counts["i0"] == 4000 and mon.served._counts["i9"] == 2000
    assert len(mon.served._scores) == 20_000  # popularity "scores" are not similarities: not in PSI


def test_served_lists_count_only_live_items_and_compare_score_windows() -> None:
    served = ServedLists(psi_bins=10)
    for j in range(100):  # i0 in every list, i1..i99 once each; "gone" is served but no longer live
        served.observe([("i0", 0.9), (f"i{j + 1}", 0.5), ("gone", 0.1)])
    live = {f"i{j}" for j in range(200)}

    def live_of(ids: list[str]) -> np.ndarray:
        return np.array([i in live for i in ids])

    first = served.take(live_of, len(live))
    assert first.lists == 100
    assert first.coverage == pytest.approx(101 / 200)  # "gone" does not count
    expected = np.zeros(200)
    expected[0], expected[1:101] = 100, 1
    assert first.gini == pytest.approx(gini(expected))
    assert gini(expected[expected > 0], zeros=99) == pytest.approx(gini(expected))
    assert first.score_psi is None  # no previous window yet
    for _ in range(100):
        served.observe([("i0", 0.9), ("i1", 0.5), ("gone", 0.1)])
    assert served.take(live_of, len(live)).score_psi == pytest.approx(0.0, abs=1e-9)  # the same scores
    for _ in range(100):
        served.observe([("i0", 0.2), ("i1", 0.2), ("i2", 0.2)])
    assert served.take(live_of, len(live)).score_psi > 0.25  # scores moved: a large shift
    empty = served.take(live_of, len(live))
    assert (empty.lists, empty.coverage, empty.gini, empty.score_psi) == (0, None, None, None)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOWERSTREAM_DRIFT_EVERY_EVENTS", "123")
    monkeypatch.setenv("TOWERSTREAM_DRIFT_SAMPLE_RATE", "0.25")
    cfg = DriftSettings().config(probes_as_served=True)
    assert (cfg.every_events, cfg.sample_rate, cfg.every_s, cfg.probes_as_served) == (123, 0.25, 30.0, True)
    with pytest.raises(ValueError):
        DriftConfig(sample_rate=1.5)


def test_monitor_core_imports_neither_faust_nor_kafka() -> None:
    code = "import sys, towerstream.drift; print(sorted(m for m in ('faust', 'kafka', 'aiokafka') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----- CLI: plot ---------------------------------------------------------------------------------------
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_reports_draws_a_png(streams: dict[tuple[int, bool], list[DriftReport]], tmp_path: Path) -> None:
    out = plot_reports(streams[(0, True)], tmp_path / "sub" / "drift.png")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    with pytest.raises(ValueError):
        plot_reports([], tmp_path / "empty.png")


def test_cli_plot_recorded_reports(streams: dict[tuple[int, bool], list[DriftReport]], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    reports = streams[(1, True)]
    rec = tmp_path / "drift.jsonl"
    write_recording([RecordedRecord(topic="drift-metrics", key=r.source, value=r.model_dump(mode="json"),
                                    timestamp=r.emitted_at_ms) for r in reports], rec)
    assert cli_main(["drift", "plot", str(rec), "-o", str(tmp_path / "d.png")]) == 0
    out = capsys.readouterr().out
    assert f"plotted={len(reports)} source=recorded" in out and "changes=0" not in out
    assert (tmp_path / "d.png").read_bytes().startswith(PNG_MAGIC)


def test_cli_plot_runs_the_monitor_offline_over_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TOWERSTREAM_EMBEDDING_DIM", "16")
    monkeypatch.setenv("TOWERSTREAM_DEVICE", "cpu")
    rec = tmp_path / "events.jsonl"
    write_recording(generate(StreamSpec(users=20, items=40, interactions=600, seed=3)), rec)
    argv = ["drift", "plot", str(rec), "-o", str(tmp_path / "d.png"), "--every-events", "200", "--batch-size", "64"]
    assert cli_main(argv) == 0
    assert "plotted=3 source=offline" in capsys.readouterr().out
    assert (tmp_path / "d.png").read_bytes().startswith(PNG_MAGIC)
    assert cli_main(["drift", "plot", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "x.png")]) == 1


def test_probes_per_batch_are_bounded(tmp_path: Path) -> None:
    """A large (merged) batch scores at most ``max_probes_per_batch`` events: probing runs on the training thread."""
    engine = Engine.open(tmp_path / "engine", EngineConfig(tower=TowerConfig(**SMALL_TOWER), index_kind="flat"))
    try:
        events = [e for e in (decode_record(r) for r in generate(StreamSpec(interactions=1500, seed=0))) if e is not None]
        items = [e for e in events if type(e).__name__ == "ItemUpsert"]
        inter = [e for e in events if type(e).__name__ == "Interaction"]
        engine.apply_items(items)
        engine.learn(inter[:500])
        capped = DriftMonitor(DriftConfig(sample_rate=1.0, max_probes_per_batch=40))
        assert capped.before_learn(engine, inter[500:1500]).scored == 40
        uncapped = DriftMonitor(DriftConfig(sample_rate=1.0, max_probes_per_batch=10_000))
        assert uncapped.before_learn(engine, inter[500:1500]).scored > 40
    finally:
        engine.close()
