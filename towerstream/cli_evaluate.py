"""``towerstream evaluate`` and ``towerstream datasets``: flags in, plain functions out."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported inside the commands, so that ``--help`` loads none of them
    from towerstream.evaluation import EvalReport
    from towerstream.settings import Settings


def engine_config_for(settings: Settings, seed: int | None = None) -> Any:
    """The worker's Engine settings (same towers, index and cadence), with an optional seed."""
    from towers import TowerConfig
    from towerstream.engine import EngineConfig

    tower = TowerConfig(
        dim=settings.embedding_dim,
        device=settings.device,
        seed=settings.seed if seed is None else seed,
        history_len=settings.history_len,
    )
    return EngineConfig(tower=tower, index_kind=settings.index_kind)


@contextlib.contextmanager
def evaluation_engine(settings: Settings, *, seed: int | None = None, data_dir: Path | None = None,
                      config: Any = None) -> Iterator[Any]:
    """The worker's Engine (same towers, index and cadence) in ``data_dir`` or a temporary directory."""
    from towerstream.engine import Engine

    config = config or engine_config_for(settings, seed)
    with tempfile.TemporaryDirectory(prefix="towerstream-eval-") as tmp:
        engine = Engine.open(Path(data_dir) if data_dir else Path(tmp), config)
        try:
            yield engine
        finally:
            engine.close()


def evaluate_engine(
    recording: Path,
    *,
    warmup: float = 0.5,
    k: int = 10,
    seed: int | None = None,
    data_dir: Path | None = None,
    batch_size: int | None = None,
    config: Any = None,
    settings: Settings | None = None,
) -> EvalReport:
    """Run the worker's Engine test-then-train over a recording (no Kafka)."""
    from towerstream.evaluation import evaluate
    from towerstream.recording import iter_recording
    from towerstream.settings import Settings

    settings = settings or Settings()
    with evaluation_engine(settings, seed=seed, data_dir=data_dir, config=config) as engine:
        return evaluate(
            iter_recording(recording), engine, warmup=warmup, k=k,
            batch_size=batch_size or settings.batch_max,
        )  # fmt: skip


def _cmd_evaluate(args: argparse.Namespace) -> int:
    report = evaluate_engine(
        Path(args.recording), warmup=args.warmup, k=args.k, seed=args.seed,
        data_dir=Path(args.data_dir) if args.data_dir else None, batch_size=args.batch_size,
    )  # fmt: skip
    if args.json == "-":
        print(report.model_dump_json(indent=2))
        return 0
    print(report.table())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(report.model_dump_json(indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _cmd_movielens(args: argparse.Namespace) -> int:
    from towerstream.datasets import convert_movielens

    counts = convert_movielens(Path(args.src), Path(args.output))
    print(json.dumps(counts))
    return 0


def register(sub: Any) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="test-then-train quality of the worker's model over a recording",
        description="For every interaction after the warm-up: recommend (seen items excluded), score, then "
        "learn, in the worker's micro-batches. Prints HR@K, NDCG@K, HR@50, the same on cold events, "
        "coverage and events/s.",
    )
    ev.add_argument("recording", help="JSON Lines recording (towerstream record / datasets)")
    ev.add_argument("--warmup", type=float, default=0.5, help="fraction of interactions only learned")
    ev.add_argument("--k", type=int, default=10, help="list length scored")
    ev.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                    help="write the report as JSON to PATH (no PATH: print JSON instead of the table; default: the table only)")
    ev.add_argument("--seed", type=int, default=None, help="model seed (default: settings.seed)")
    ev.add_argument("--data-dir", default=None, help="engine state directory (default: a temporary one)")
    ev.add_argument("--batch-size", type=int, default=None,
                    help="micro-batch size (default: the worker's, TOWERSTREAM_BATCH_MAX)")
    ev.set_defaults(func=_cmd_evaluate)

    ds = sub.add_parser("datasets", help="convert public datasets into recordings")
    ds_sub = ds.add_subparsers(dest="dataset", required=True)
    ml = ds_sub.add_parser("movielens", help="MovieLens-100k (u.data/u.item/u.user or RecBole .inter/.item/.user)")
    ml.add_argument("src", help="directory with the dataset files")
    ml.add_argument("-o", "--output", required=True, help="recording to write (.jsonl)")
    ml.set_defaults(func=_cmd_movielens)
