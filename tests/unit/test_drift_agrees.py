"""``drift plot`` and ``evaluate`` agree on a recording: one test-then-train, one HR@K.

The stream packs each user's events into shared micro-batches (20 users, batches of 100: ~5
events of a user per batch), as a recorded rating session replayed at full speed does. There a
monitor that scores the whole batch against the pre-batch history reads far lower than
``evaluate`` (ml-100k: 0.04 against 0.20); the plot now takes its scores from the evaluation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from towerstream.cli import main as cli_main
from towerstream.recording import write_recording
from towerstream.synthetic import StreamSpec, generate


@pytest.fixture()
def small_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOWERSTREAM_EMBEDDING_DIM", "16")
    monkeypatch.setenv("TOWERSTREAM_DEVICE", "cpu")


def test_the_plot_ends_at_the_hit_rate_evaluate_prints(tmp_path: Path, small_model: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rec = tmp_path / "sessions.jsonl"
    write_recording(generate(StreamSpec(users=20, items=400, interactions=3000, seed=4)), rec)
    flags = ["--warmup", "0.5", "--batch-size", "100"]

    assert cli_main(["evaluate", str(rec), "--json", "-", *flags]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["n_scored"] > 300 and 0 < evaluated["hr_at_k"] < 1

    assert cli_main(["drift", "plot", str(rec), "-o", str(tmp_path / "d.png"), "--every-events", "500", *flags]) == 0
    out = capsys.readouterr().out
    m = re.search(r"plotted=(\d+) source=offline changes=\d+ HR@10=([\d.]+)", out)
    assert m, out
    assert int(m[1]) == 6  # 3000 interactions, a report every 500
    assert float(m[2]) == pytest.approx(evaluated["hr_at_k"], abs=5e-5)  # printed to 4 decimals


def test_the_plot_reports_scored_events_only_after_the_warm_up(tmp_path: Path, small_model: None) -> None:
    from towerstream.cli_drift import offline_reports
    from towerstream.cli_evaluate import evaluate_engine
    from towerstream.drift import DriftSettings
    from towerstream.settings import Settings

    rec = tmp_path / "sessions.jsonl"
    write_recording(generate(StreamSpec(users=20, items=60, interactions=2000, seed=7)), rec)
    settings = Settings()
    reports = offline_reports(rec, settings, DriftSettings(), batch_size=100, warmup=0.5, every_events=500)
    evaluated = evaluate_engine(rec, warmup=0.5, batch_size=100, settings=settings)
    assert reports[0].probes == 0 and reports[-1].probes > 0  # the first 1,000 interactions are only learned
    assert sum(r.probes for r in reports) == evaluated.n_scored
    assert sum(r.hits for r in reports) / evaluated.n_scored == pytest.approx(evaluated.hr_at_k, abs=1e-12)
    assert reports[-1].hit_rate_total == pytest.approx(evaluated.hr_at_k, abs=1e-12)
