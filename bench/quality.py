"""Learning quality on MovieLens-100k: towerstream against the streaming baselines, same run, same protocol.

    .venv/bin/python bench/quality.py                 # towerstream (logQ on/off), co-occurrence, popularity, EASE, FunkMF
    .venv/bin/python bench/quality.py --ablations     # + one row per design choice switched off
    .venv/bin/python bench/quality.py --data REC.jsonl  # any recording instead of ml-100k
    .venv/bin/python bench/quality.py --dev           # tuning: first half of the stream only
    .venv/bin/python bench/quality.py --dev --cooc-grid  # select the co-occurrence peer's settings
    .venv/bin/python bench/quality.py --dev --bonus-grid  # select the exploration bonus (one Engine run)

Protocol (towerstream.evaluation): every rating is an interaction, stable timestamp order, first
50% warm-up, last 50% test-then-train, full ranking over the catalog, top-10 excluding the user's
earlier items. towerstream runs the worker's Engine (RocksDB, Faiss, micro-batches of
``Settings.batch_max``); the baselines update per event. ml-100k is taken from RecBole's wheel
(``pip download --no-deps recbole==1.2.1``) and cached under ``bench/.cache/``. Results go to
``bench/results/quality.json``.

``--dev`` is where settings are chosen: the stream is cut after its first half of interactions
and the same protocol runs on that (warm-up on the first 25%, the 25-50% part scored), so
nothing tuned there has seen the scored second half.

``--bonus-grid``: the exploration bonus is serving-only (training never reads it), so one Engine
run ranks the catalog under every setting of ``BONUS_GRID`` (exactly, from the index vectors
with their bonus coordinate recomputed), each with a scorer of its own. The rule that picked the
committed setting: the best dev HR@10 with dev cold HR@10 >= 0.05.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.baselines import EASE, CoOccurrence, Popularity, RiverMF  # noqa: E402
from towers.trainer import exploration_bonus  # noqa: E402
from towerstream.cli_evaluate import engine_config_for, evaluate_engine  # noqa: E402
from towerstream.datasets import convert_movielens  # noqa: E402
from towerstream.evaluation import LONG_K, EvalReport, PrequentialScorer, evaluate  # noqa: E402
from towerstream.recording import RecordedRecord, iter_recording, write_recording  # noqa: E402
from towerstream.settings import Settings  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
RECBOLE = "recbole==1.2.1"

#: Design choices switched off one at a time (``--ablations``): name -> TowerConfig overrides
#: (keys starting with ``engine.`` go to EngineConfig).
ABLATIONS: dict[str, dict[str, Any]] = {
    "no last-items path": {"recent_len": 0},
    "previous bonus (0.2 / sqrt(1 + n), no window)": {"explore_bonus": 0.2, "explore_power": 0.5, "explore_until": 0},
    "no exploration bonus": {"explore_bonus": 0.0},
    "no rolling re-embed": {"engine.reembed_per_learn": 0},
    "full logQ (strength 1)": {"logq_strength": 1.0},
    "no replay reservoir": {"replay_size": 0, "replay_per_step": 0},
    "1 step per batch": {"steps_per_batch": 1},
    "mean pooling (no recency)": {"recency_init": 0.0},
    "temperature 0.05": {"temperature": 0.05},
    "sparse lr 0.02": {"sparse_lr": 0.02},
    "negatives update their ids": {"negative_id_grad": True},
    "no same-user masking": {"mask_same_user": False},
    "ratings as weights": {"event_weight_power": 1.0},
}


#: The co-occurrence peer's settings, chosen with ``--dev --cooc-grid`` (best dev HR@10).
COOC: dict[str, Any] = {"window": 10, "last": 20, "decay": 0.8, "alpha": 0.5, "beta": 0.2}
#: The peer as the issue describes it, where ``--cooc-grid`` starts.
COOC_ISSUE: dict[str, Any] = {"window": 10, "last": 10, "decay": 0.8, "alpha": 0.5, "beta": 0.2}
#: What ``--cooc-grid`` tries, one setting changed at a time from ``COOC_ISSUE``.
COOC_GRID: dict[str, list[Any]] = {
    "window": [5, 10, 20], "last": [5, 10, 20], "decay": [0.6, 0.8, 0.9],
    "alpha": [0.3, 0.5, 0.7], "beta": [0.0, 0.2, 0.4],
}


#: ``--bonus-grid``: (explore_bonus, explore_power, explore_until) settings scored from one Engine run.
BONUS_GRID: list[tuple[float, float, int]] = [
    (0.2, 0.5, 0), (0.15, 0.5, 0), (0.1, 0.5, 0), (0.0, 0.0, 0), (0.2, 1.0, 0), (0.15, 1.0, 0), (0.2, 0.75, 0),
    (0.03, 0.0, 5), (0.05, 0.0, 5), (0.07, 0.0, 5), (0.085, 0.0, 5), (0.1, 0.0, 5), (0.15, 0.0, 5),
    (0.07, 0.0, 6), (0.1, 0.0, 6), (0.1, 0.0, 4), (0.07, 0.0, 8), (0.1, 0.0, 8), (0.1, 0.0, 10),
    (0.15, 0.5, 5), (0.2, 0.5, 5),
]


class BonusGrid:
    """The Engine for ``evaluate``, and beside it the catalog ranked under each ``BONUS_GRID`` setting.

    Every setting's list is scored by a ``PrequentialScorer`` of its own against the event that
    follows (the user's next event is in the round after the one that asked), so the figures are
    those separate runs would give, at the cost of one.
    """

    def __init__(self, engine: Any, grid: list[tuple[float, float, int]]) -> None:
        self.engine, self.grid = engine, grid
        self.scorers = [PrequentialScorer() for _ in grid]
        self.asked: dict[str, list[list[str]]] = {}

    def apply_items(self, events: Any) -> None:
        self.engine.apply_items(events)

    def apply_users(self, events: Any) -> None:
        self.engine.apply_users(events)

    def learn(self, events: Any) -> None:
        self.engine.learn(events)

    def observe(self, events: Any) -> None:
        for ev in events:
            lists = self.asked.pop(ev.user_id, None)
            for scorer, ranked in zip(self.scorers, lists or [None] * len(self.scorers)):
                if ranked is not None:
                    scorer.score(ev, ranked)
                scorer.observe(ev)
        self.engine.observe(events)

    def recommend_many(self, user_ids: Any, k: int, *, exclude_seen: bool = True) -> Any:
        eng = self.engine
        out = eng.recommend_many(user_ids, k, exclude_seen=exclude_seen)
        rows = np.asarray(eng.index.ids(), dtype=np.int64)
        known = [(u, eng.users.get(u)) for u in user_ids]
        known = [(u, r) for u, r in known if r is not None]
        if not len(rows) or not known:
            return out
        V = eng.index.get(rows)  # (N, D): [sqrt(1 - b^2) v, b]
        X = V[:, :-1] / np.sqrt(1.0 - V[:, -1:] ** 2)  # the item tower's unit vectors
        U = eng.trainer.embed_users(np.array([r for _, r in known], dtype=np.int64))  # [u, 1] / sqrt(2)
        cos = (U[:, :-1] @ X.T) * np.sqrt(2.0)  # (B, N)
        n = eng.trainer.item_count[rows]
        ext = np.array(eng.items.external(rows))
        col = {int(r): c for c, r in enumerate(rows.tolist())}
        per_setting = []
        for bonus, power, until in self.grid:
            b = np.clip(exploration_bonus(n, bonus, power, until), 0.0, 0.99).astype(np.float64)
            per_setting.append(np.sqrt(1.0 - b**2)[None, :] * cos + b[None, :])
        depth = min(LONG_K, len(rows))
        for j, (u, r) in enumerate(known):
            seen = [col[x] for x in eng.seen_rows(r) if x in col]
            lists = []
            for scores in per_setting:
                s = scores[j].copy()
                s[seen] = -np.inf
                top = np.argpartition(-s, depth - 1)[:depth]
                lists.append(ext[top[np.argsort(-s[top], kind="stable")]].tolist())
            self.asked[u] = lists
        return out


def run_bonus_grid(path: Path, seed: int, settings: Settings, warmup: float, **overrides: Any) -> dict[str, Any]:
    """One Engine run (``overrides`` as ``run_towerstream``'s), every ``BONUS_GRID`` setting scored."""
    from towerstream.engine import Engine

    config = engine_config(seed, settings, **overrides)
    with tempfile.TemporaryDirectory(prefix="towerstream-bonus-") as tmp:
        engine = Engine.open(Path(tmp), config)
        try:
            grid = BonusGrid(engine, BONUS_GRID)
            report = evaluate(iter_recording(path), grid, warmup=warmup)
        finally:
            engine.close()
    print(f"the Engine itself (its configured bonus): HR@10 {report.hr_at_k:.4f} NDCG@10 {report.ndcg_at_k:.4f} "
          f"cold HR@10 {report.cold_hr_at_k:.4f}")
    head = f"{'bonus':>7}{'power':>7}{'until':>7}{'HR@10':>8}{'NDCG@10':>9}{'HR@50':>8}{'cold HR@10':>11}"
    print(head)
    print("-" * len(head))
    out = {}
    for (bonus, power, until), scorer in zip(BONUS_GRID, grid.scorers):
        m = scorer.summary()
        out[f"{bonus}/{power}/{until}"] = m
        print(f"{bonus:7.3f}{power:7.2f}{until:7d}{m['hr_at_k']:8.4f}{m['ndcg_at_k']:9.4f}{m['hr_at_50']:8.4f}"
              f"{m['cold_hr_at_k']:11.4f}")
    return {"engine": report.model_dump(), "grid": out}


def first_half(records: list[RecordedRecord]) -> list[RecordedRecord]:
    """The records up to (not including) the first interaction of the stream's second half."""
    n = sum(r.topic == "interactions" for r in records)
    out, seen = [], 0
    for r in records:
        if r.topic == "interactions":
            if seen >= n // 2:
                break
            seen += 1
        out.append(r)
    return out


def fetch_movielens() -> Path:
    """ml-100k recording, built once from RecBole's wheel (atomic files) and cached."""
    out = CACHE / "ml-100k.jsonl"
    if out.exists():
        return out
    src = CACHE / "recbole" / "dataset_example" / "ml-100k"
    if not (src / "ml-100k.inter").exists():
        wheels = sorted(CACHE.glob("recbole-1.2.1-*.whl"))
        if not wheels:
            CACHE.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", RECBOLE, "-d", str(CACHE)], check=True
            )
            wheels = sorted(CACHE.glob("recbole-1.2.1-*.whl"))
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extractall(CACHE, [n for n in zf.namelist() if n.startswith("recbole/dataset_example/ml-100k/")])
    counts = convert_movielens(src, out)
    print(f"converted ml-100k: {counts}", file=sys.stderr)
    return out


def versions() -> dict[str, str]:
    import faiss
    import river

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "faiss": getattr(faiss, "__version__", "?"),
        "river": river.__version__,
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def engine_config(seed: int, settings: Settings, **overrides: Any) -> Any:
    """The worker's EngineConfig; ``overrides``: TowerConfig fields, or ``engine.<field>``."""
    config = engine_config_for(settings, seed)
    engine_over = {k[len("engine."):]: v for k, v in overrides.items() if k.startswith("engine.")}
    tower_over = {k: v for k, v in overrides.items() if not k.startswith("engine.")}
    return dataclasses.replace(config, tower=dataclasses.replace(config.tower, **tower_over), **engine_over)


def run_towerstream(path: Path, seed: int, settings: Settings, **overrides: Any) -> EvalReport:
    """The worker's Engine over ``path``; ``overrides`` as ``engine_config``'s."""
    return evaluate_engine(path, seed=seed, settings=settings, config=engine_config(seed, settings, **overrides))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="recording (default: ml-100k, fetched and cached)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--ablations", action="store_true", help="also run each design choice switched off")
    ap.add_argument("--ablation", action="append", default=[], choices=sorted(ABLATIONS),
                    help="run only this ablation (repeatable; implies --ablations)")
    ap.add_argument("--biased-mf", action="store_true", help="also run river BiasedMF")
    ap.add_argument("--skip-baselines", action="store_true", help="towerstream rows only (e.g. with --ablations)")
    ap.add_argument("--dev", action="store_true",
                    help="tuning split: the first half of the stream only (warm-up 25%%, 25-50%% scored)")
    ap.add_argument("--cooc-grid", action="store_true", help="the co-occurrence peer's settings, one at a time")
    ap.add_argument("--bonus-grid", action="store_true",
                    help="one Engine run, the catalog ranked under every exploration bonus of BONUS_GRID")
    ap.add_argument("--tower", action="append", default=[], metavar="FIELD=VALUE",
                    help="TowerConfig (or engine.FIELD) override for every towerstream row, e.g. for --dev tuning")
    ap.add_argument("--only", action="append", default=[], metavar="ROW", help="run only the rows so named (repeatable)")
    ap.add_argument("--json", type=Path, default=None, help="default: bench/results/quality[-dev].json")
    args = ap.parse_args(argv)
    if args.json is None:
        args.json = ROOT / "bench" / "results" / ("quality-dev.json" if args.dev else "quality.json")

    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    path = args.data or fetch_movielens()
    records: list[RecordedRecord] = list(iter_recording(path))
    if args.dev:
        records = first_half(records)
        dev_path = CACHE / f"dev-{path.name}"
        if not dev_path.exists():  # written once, atomically: parallel tuning runs read it
            tmp = dev_path.with_suffix(f".{os.getpid()}.tmp")
            write_recording(records, tmp)
            tmp.replace(dev_path)
        path = dev_path
    tower_over: dict[str, Any] = {}
    for kv in args.tower:
        key, value = kv.split("=", 1)
        tower_over[key] = json.loads(value)
    settings = Settings(device="cpu", seed=args.seed)
    print(f"machine: {json.dumps(machine())}")
    print(f"versions: {json.dumps(versions())}")
    print(f"data: {path} ({len(records)} records), seed {args.seed}, warm-up {args.warmup}, "
          f"towerstream micro-batch {settings.batch_max}")

    if args.bonus_grid:
        t0 = time.perf_counter()
        grid = run_bonus_grid(path, args.seed, settings, args.warmup, **tower_over)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "data": str(path), "dev": args.dev, "tower": tower_over, "seed": args.seed, "warmup": args.warmup,
            "machine": machine(), "versions": versions(), "seconds": time.perf_counter() - t0, **grid,
        }, indent=2) + "\n")  # fmt: skip
        print(f"total {time.perf_counter() - t0:.0f} s; wrote {args.json}", file=sys.stderr)
        return 0
    rows: list[tuple[str, Any]] = [
        ("towerstream", lambda: run_towerstream(path, args.seed, settings, **tower_over)),
        ("towerstream, no logQ", lambda: run_towerstream(path, args.seed, settings, **{**tower_over, "logq": False})),
    ]
    if args.ablations or args.ablation:
        for name, over in ABLATIONS.items():
            if args.ablation and name not in args.ablation:
                continue
            rows.append((f"towerstream, {name}",
                         lambda over=over: run_towerstream(path, args.seed, settings, **{**tower_over, **over})))

    def base(model: Any) -> Any:
        return lambda: evaluate(records, model, warmup=args.warmup)

    def cooc_name(cfg: dict[str, Any]) -> str:
        return "co-occurrence (" + ", ".join(f"{k} {v}" for k, v in cfg.items()) + ")"

    if args.cooc_grid:
        start = COOC_ISSUE
        configs = [dict(start)] + [{**start, key: v} for key, vals in COOC_GRID.items() for v in vals if v != start[key]]
        rows = [(cooc_name(c), base(CoOccurrence(**c))) for c in configs]
    rows += [] if args.cooc_grid else [  # the baselines update per event (their best form), see bench/baselines.py
        ("co-occurrence", base(CoOccurrence(**COOC))),
        ("popularity", base(Popularity())),
        ("EASE (refit every 5,000)", base(EASE(lam=400.0, refit_every=5000))),
        ("river FunkMF (64 f, 32 neg)", base(RiverMF("funk", n_factors=64, n_negatives=32, lr=0.1, seed=args.seed))),
    ]
    if args.biased_mf:
        rows.append(("river BiasedMF (64 f, 32 neg)",
                     base(RiverMF("biased", n_factors=64, n_negatives=32, lr=0.05, seed=args.seed))))
    if args.skip_baselines:
        rows = [r for r in rows if r[0].startswith("towerstream")]
    if args.ablation:  # just the named ablations
        rows = [r for r in rows if r[0].removeprefix("towerstream, ") in args.ablation]

    if args.only:
        rows = [r for r in rows if r[0] in args.only]
    results: dict[str, EvalReport] = {}
    t_all = time.perf_counter()
    for name, fn in rows:
        t0 = time.perf_counter()
        results[name] = fn()
        r = results[name]
        print(f"  {name}: HR@10 {r.hr_at_k:.4f} NDCG@10 {r.ndcg_at_k:.4f} cold HR@10 {r.cold_hr_at_k:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    total = time.perf_counter() - t_all

    ref = results.get("co-occurrence")
    head = f"{'model':<42}{'HR@10':>8}{'NDCG@10':>9}{'HR@50':>8}{'cold HR@10':>11}{'cov@10':>8}{'ev/s':>8}" \
           f"{'HR/cooc':>10}{'NDCG/cooc':>12}"  # fmt: skip
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        ratio = f"{r.hr_at_k / ref.hr_at_k:10.2f}{r.ndcg_at_k / ref.ndcg_at_k:12.2f}" if ref and ref.hr_at_k else ""
        print(f"{name:<42}{r.hr_at_k:8.4f}{r.ndcg_at_k:9.4f}{r.hr_at_50:8.4f}{r.cold_hr_at_k:11.4f}"
              f"{r.coverage_at_k:8.3f}{r.events_per_s:8.0f}{ratio}")
    print(f"scored events: {next(iter(results.values())).n_scored}, cold: {next(iter(results.values())).n_cold}; "
          f"total {total:.0f} s")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "data": str(path), "dev": args.dev, "tower": tower_over, "cooc": COOC, "seed": args.seed, "warmup": args.warmup, "machine": machine(),
        "versions": versions(), "seconds": total,
        "results": {n: r.model_dump() for n, r in results.items()},
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
