"""In-process costs of the Engine's hot paths, without Kafka: where a train step and a checkpoint go.

    .venv/bin/python bench/engine_costs.py learn --batch 1024          # ms per learn() and its parts
    .venv/bin/python bench/engine_costs.py learn --batch 1024 --profile # + torch profiler table
    .venv/bin/python bench/engine_costs.py learn --batch 2048 --steps-per-batch 2   # vs 1
    .venv/bin/python bench/engine_costs.py checkpoint --state bench/.cache/state-1000000-...  # RSS/time
    .venv/bin/python bench/engine_costs.py refit --state bench/.cache/state-100000-...        # recall
    .venv/bin/python bench/engine_costs.py query --state bench/.cache/state-100000-...        # ms per query

``learn``: a 20k-item / 50k-user engine (synthetic clustered clicks), 40 warm-up batches, then 20
timed ones; reports events/s and the time in each part, and one checkpoint split into the
training-thread snapshot and the off-thread write. ``checkpoint`` and ``refit`` open a copy of a
state built by ``bench/_common.build_state`` (the query-latency and memory benchmarks' cache):
RSS around ``snapshot``/``write_snapshot``; recall@10 of 1,000 query users against the stored
exact top-10 before and after ``VectorIndex.refit``; ``query``: CPU ms per query for the 1,000
query users (50-item histories), the user tower in numpy (what serving runs) against the same
maths in PyTorch, then the whole ``Engine.recommend`` (k=10, seen items excluded), and with the query benchmark's
business filter (``exclude_category`` of one genre in 16). Diagnostics for docs/benchmarks.md, not
targets: the targets are measured end to end by the other scripts in bench/.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from streams.runtime import engine_config  # noqa: E402
from towerstream.engine import Engine  # noqa: E402
from towerstream.events import Interaction, ItemUpsert  # noqa: E402
from towerstream.heap import trim_heap  # noqa: E402
from towerstream.settings import Settings  # noqa: E402


def rss_mib() -> int:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return -1


def _timed(obj: Any, name: str, acc: dict[str, float]) -> None:
    fn = getattr(obj, name)

    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0

    setattr(obj, name, wrapper)


def cmd_learn(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    items, users, b = 20_000, 50_000, args.batch
    cfg = engine_config(Settings(device="cpu", seed=args.seed))
    if args.steps_per_batch:  # e.g. 2 vs 1 at --batch 2048: what single_step_above buys a backlog
        cfg = dataclasses.replace(cfg, tower=dataclasses.replace(
            cfg.tower, steps_per_batch=args.steps_per_batch, single_step_above=1 << 30))
    eng = Engine.open(Path(tempfile.mkdtemp()), cfg)
    for s in range(0, items, 4096):
        eng.apply_items([ItemUpsert(item_id=f"i{i}", title=f"w{i % 16} t{i % 97}", categories=[f"c{i % 16}"],
                                    ts=1_700_000_000_000) for i in range(s, min(s + 4096, items))])
    n = 0

    def batch() -> list[Interaction]:
        nonlocal n
        out = []
        for u in rng.integers(0, users, size=b).tolist():
            it = int(rng.integers(0, items // 16)) * 16 + u % 16
            out.append(Interaction(event_id=f"e{n}", user_id=f"u{u}", item_id=f"i{it}", kind="click",
                                   ts=1_700_000_000_000 + n))
            n += 1
        return out

    for _ in range(40):
        eng.learn(batch())
    acc: dict[str, float] = {}
    for name in ("_step", "_histories_for", "embed_items"):
        _timed(eng.trainer, name, acc)
    for name in ("commit_interactions", "_reembed_rolling", "_upsert_vectors"):
        _timed(eng, name, acc)
    reps, rounds = 10, args.rounds
    per_round = []
    for _ in range(rounds):  # single timings vary by ~25% on a shared 2-core machine: report the spread
        t0 = time.perf_counter()
        for _ in range(reps):
            eng.learn(batch())
        per_round.append((time.perf_counter() - t0) / reps)
    med = float(np.median(per_round))
    print(f"learn({b}): median {1000 * med:.0f} ms/batch ({1000 * min(per_round):.0f}-{1000 * max(per_round):.0f} "
          f"over {rounds} rounds of {reps}), {b / med:,.0f} events/s")
    reps *= rounds
    for name, sec in sorted(acc.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<22}{1000 * sec / reps:8.1f} ms/batch")
    for which in ("first", "second"):  # the first one in a process also pays for fresh pages
        t0 = time.perf_counter()
        snap = eng.snapshot()
        t1 = time.perf_counter()
        eng.write_snapshot(snap)
        del snap
        print(f"checkpoint ({which}): snapshot {1000 * (t1 - t0):.0f} ms (training thread), "
              f"write {1000 * (time.perf_counter() - t1):.0f} ms")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                eng.learn(batch())
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    eng.close()


def _open_copy(state: Path) -> tuple[Engine, dict[str, Any], Path]:
    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(state / "data" / "engine", tmp / "engine")
    meta = json.loads((state / "state.json").read_text())
    return Engine.open(tmp / "engine", engine_config(Settings())), meta, tmp


def cmd_checkpoint(args: argparse.Namespace) -> None:
    eng, _, tmp = _open_copy(args.state)
    gc.collect()
    print(f"open: rss {rss_mib():,} MiB")
    t0 = time.perf_counter()
    snap = eng.snapshot()
    print(f"snapshot: rss {rss_mib():,} MiB, {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    eng.write_snapshot(snap)
    print(f"written: rss {rss_mib():,} MiB, {time.perf_counter() - t0:.1f} s")
    del snap
    gc.collect()
    print(f"snapshot freed: rss {rss_mib():,} MiB")
    trim_heap()  # what the worker does after each checkpoint (streams.runtime)
    print(f"heap trimmed: rss {rss_mib():,} MiB")
    eng.close()
    shutil.rmtree(tmp, ignore_errors=True)


def cmd_refit(args: argparse.Namespace) -> None:
    eng, meta, tmp = _open_copy(args.state)
    users = [f"q{i}" for i in range(meta["query_users"])]
    truth = [set(meta["truth"][u]) for u in users]

    def recall() -> float:
        got = eng.recommend_many(users, 10)
        return float(np.mean([len({x for x, _ in g.items} & t) / 10 for g, t in zip(got, truth)]))

    print(f"before refit: recall@10 {recall():.3f}")
    t0 = time.perf_counter()
    eng.index.refit()
    print(f"refit {time.perf_counter() - t0:.1f} s; after: recall@10 {recall():.3f}")
    eng.close()
    shutil.rmtree(tmp, ignore_errors=True)


def cmd_query(args: argparse.Namespace) -> None:
    from towers import numpy_towers

    eng, meta, tmp = _open_copy(args.state)
    tr = eng.trainer
    users = [f"q{i}" for i in range(meta["query_users"])]
    rows = [np.array([eng.users.get(u)], dtype=np.int64) for u in users]

    def numpy_tower(r: np.ndarray) -> Any:
        uniq, inv, valid, feats = tr._user_inputs(r, tr._ordered_history(r), None)
        return numpy_towers.user_vectors(tr.model, tr.item_content(uniq), inv, valid, r, feats)

    def torch_tower(r: np.ndarray) -> Any:
        with torch.no_grad():
            return tr._user_vectors(r, tr._ordered_history(r), None)

    def per_query(fn: Any, arg: list[Any]) -> tuple[float, float]:
        lat = []
        for _ in range(args.rounds):
            for a in arg:
                t0 = time.process_time()
                fn(a)
                lat.append(1000 * (time.process_time() - t0))
        return float(np.percentile(lat, 50)), float(np.mean(lat))

    from towerstream.events import Filters

    genre3 = Filters(exclude_categories=["genre3"])  # bench/query_latency.py's filtered phase
    for name, fn, arg in (("user tower, numpy", numpy_tower, rows), ("user tower, pytorch", torch_tower, rows),
                          ("recommend (k=10, seen excluded)", lambda u: eng.recommend(u, 10), users),
                          ("recommend, exclude_category=genre3", lambda u: eng.recommend(u, 10, filters=genre3), users)):
        per_query(fn, arg[:50])  # warm-up
        p50, mean = per_query(fn, arg)
        print(f"{name}: CPU p50 {p50:.3f} ms, mean {mean:.3f} ms per query ({len(arg)} users x {args.rounds})")
    eng.close()
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("learn")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--steps-per-batch", type=int, default=0, help="force this many steps at every batch size")
    for name in ("checkpoint", "refit", "query"):
        q = sub.add_parser(name)
        q.add_argument("--state", type=Path, required=True, help="a bench/.cache/state-* dir")
        if name == "query":
            q.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    {"learn": cmd_learn, "checkpoint": cmd_checkpoint, "refit": cmd_refit, "query": cmd_query}[args.cmd](args)


if __name__ == "__main__":
    main()
