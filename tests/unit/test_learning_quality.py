"""The learner on planted structure: beats popularity clearly, finds cold items from content, repeatable.

Users belong to taste clusters; items carry their cluster in title words, categories and creator;
a fifth of the catalog is announced mid-stream. Popularity cannot personalise and cannot rank an
item before it has interactions; the two towers must do both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.baselines import Popularity
from towerstream.cli_evaluate import evaluate_engine
from towerstream.evaluation import EvalReport, evaluate
from towerstream.recording import write_recording
from towerstream.settings import Settings
from towerstream.synthetic import StreamSpec, generate

SPEC = StreamSpec(users=120, items=200, interactions=3000, clusters=6, late_items=0.25, seed=7)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("quality") / "planted.jsonl"
    write_recording(generate(SPEC), path)
    return path


@pytest.fixture(scope="module")
def towers_report(recording: Path) -> EvalReport:
    torch.set_num_threads(1)
    return evaluate_engine(recording, seed=0, settings=Settings(device="cpu", index_kind="flat"))


def test_beats_popularity_clearly(recording: Path, towers_report: EvalReport) -> None:
    from towerstream.recording import iter_recording

    pop = evaluate(iter_recording(recording), Popularity())
    assert towers_report.n_scored == pop.n_scored > 500
    assert towers_report.hr_at_k >= 2.0 * pop.hr_at_k, (towers_report.hr_at_k, pop.hr_at_k)
    assert towers_report.ndcg_at_k >= 2.0 * pop.ndcg_at_k


def test_finds_cold_items_from_content(towers_report: EvalReport) -> None:
    assert towers_report.n_cold > 50
    # Popularity scores 0 here by construction (an item with no interactions has no count).
    assert towers_report.cold_hr_at_k >= 0.15, towers_report.cold_hr_at_k


def test_same_json_twice(recording: Path, towers_report: EvalReport) -> None:
    torch.set_num_threads(1)
    again = evaluate_engine(recording, seed=0, settings=Settings(device="cpu", index_kind="flat"))
    assert again.metrics() == towers_report.metrics()
