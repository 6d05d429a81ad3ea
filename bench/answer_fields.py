"""What titles and categories cost a replica's answer: ``fields`` (default: both) against ``fields=[]``.

    .venv/bin/python bench/answer_fields.py --items 1000000 --nlist 1024

In process, on the serving replica's core (``towerstream.replica.Replica``) as ``towerstream
serve`` runs it: the model payload is built from a real ``TwoTowerTrainer`` (as the tests'
``replica_log`` does; its items are the IVF centroids), the catalog is that trainer's items plus random unit vectors up to
``--items`` (each with a title and categories, as published item vectors carry them), fed as
encoded item-vector records; every query user has a ``--hist-len`` history. Timed: ``recommend``
plus the JSON the HTTP answer sends (``model_dump_json``), k=10, in blocks that alternate the two
request kinds, so that both see the same machine. The reference is ``fields=[]`` in the same
run (ids and scores only: what an answer was before titles); the figure is the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import RESULTS, add_run_args, begin, percentile  # noqa: E402
from tests.unit.replica_log import ITEM_PARTITIONS, item_partition, payload, trainer  # noqa: E402
from towerstream.events import Interaction  # noqa: E402
from towerstream.events.recommend import RecommendRequest  # noqa: E402
from towerstream.published import (  # noqa: E402
    VERSION_KEY, ItemVector, VersionComplete, encode_item_vector, encode_model_part, part_key, split_model,
)
from towerstream.replica import Replica  # noqa: E402


def build(args: argparse.Namespace, rng: np.random.Generator) -> tuple[Replica, list[str]]:
    n_real = max(200, args.nlist)  # the centroids are the trainer's items: one per list
    tr = trainer(n_items=n_real, n_users=args.users)
    blob, _ = payload(tr, 1, args.users, nlist=args.nlist, nprobe=args.nprobe)
    rep = Replica(max_k=500)
    parts = split_model(1, blob, 900_000)
    rep.apply_model_records([(0, n, part_key(p.index), encode_model_part(p)) for n, p in enumerate(parts)])
    real = tr.embed_items(np.arange(n_real))
    dim = real.shape[1]
    offsets = [0] * ITEM_PARTITIONS
    t0 = time.perf_counter()
    for start in range(0, args.items, 50_000):
        n = min(50_000, args.items - start)
        x = rng.standard_normal((n, dim - 1)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        b = (0.2 / np.sqrt(1.0 + rng.integers(0, 100, n))).astype(np.float32)[:, None]
        vecs = np.concatenate([x * np.sqrt(1.0 - b * b), b], axis=1)
        if start == 0:
            vecs[:n_real] = real
        recs = []
        for j in range(n):
            i = start + j
            key = f"i{i}".encode()
            p = item_partition(key)
            iv = ItemVector(f"i{i}", 1, vecs[j], (f"genre{i % 16}", f"shelf{i % 3}"), f"studio{i % 40}",
                            f"an item title number {i}")
            recs.append((p, offsets[p], key, encode_item_vector(iv)))
            offsets[p] += 1
        rep.apply_item_records(recs)
    vc = VersionComplete(1, len(parts), dict(enumerate(offsets)), args.items, 1, 2)
    rep.apply_model_records([(0, len(parts), VERSION_KEY, vc.encode())])
    assert rep.version == 1, rep.status()
    print(f"catalog: {args.items} items in {time.perf_counter() - t0:.1f} s", flush=True)
    users = [f"u{u}" for u in range(args.users)]
    events = []
    n = 0
    for u in users:
        for i in rng.integers(0, args.items, args.hist_len).tolist():
            n += 1
            events.append(Interaction(event_id=f"e{n}", user_id=u, item_id=f"i{i}", ts=1_700_000_000_000 + n))
    rep.apply_interactions(events)
    return rep, users


def block(rep: Replica, reqs: list[RecommendRequest]) -> list[float]:
    out = []
    for req in reqs:
        t0 = time.perf_counter()
        rep.recommend(req).model_dump_json()
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--nlist", type=int, default=1024, help="IVF lists (0: exact flat index)")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--hist-len", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--queries", type=int, default=2000, help="per request kind per run")
    add_run_args(ap)
    args = ap.parse_args()
    env = begin(args.seed)
    rng = np.random.default_rng(args.seed)
    rep, users = build(args, rng)
    kinds = {"fields=title,categories": None, "fields=[] (reference)": []}
    runs: list[dict[str, dict[str, float]]] = []
    for run in range(args.runs):
        picks = rng.choice(len(users), args.queries).tolist()
        got: dict[str, list[float]] = {k: [] for k in kinds}
        for start in range(0, args.queries, 100):  # alternate blocks of 100: the same machine for both
            for name, fields in kinds.items():
                extra = {} if fields is None else {"fields": fields}
                got[name] += block(rep, [RecommendRequest(user_id=users[u], k=10, **extra)
                                         for u in picks[start:start + 100]])
        fig = {name: {"p50_ms": percentile(ts, 50) * 1e3, "p99_ms": percentile(ts, 99) * 1e3} for name, ts in got.items()}
        runs.append(fig)
        print(f"run {run + 1}: " + "; ".join(f"{n}: p50 {f['p50_ms']:.3f} ms, p99 {f['p99_ms']:.3f} ms"
                                             for n, f in fig.items()), flush=True)
    a, ref = list(kinds)
    summary = {}
    for q in ("p50_ms", "p99_ms"):
        vals = [r[a][q] / r[ref][q] for r in runs]
        summary[q.replace("_ms", "_ratio")] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        for name in kinds:
            xs = [r[name][q] for r in runs]
            summary[f"{name} {q}"] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}
    for key, s in summary.items():
        print(f"{key}: median {s['median']:.3f} (min {s['min']:.3f}, max {s['max']:.3f})")
    out = args.out or RESULTS / "answer_fields.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                               "summary": summary}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
