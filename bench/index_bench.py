"""VectorIndex benchmark: flat vs IVF on the same seeded, clustered catalog.

Measures upsert throughput, re-upsert (replace) throughput, search latency with and without a
seen-items exclusion, and IVF recall@k against the flat index measured in the same run (the
reference). Prints machine and library versions and writes JSON.

    .venv/bin/python bench/index_bench.py --items 200000 --dim 64 --out bench/results/index.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index_store import VectorIndex  # noqa: E402


def _clustered(
    rng: np.random.Generator, n: int, d: int, n_clusters: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    centers = rng.standard_normal((n_clusters, d)).astype(np.float32)
    xb = centers[rng.integers(0, n_clusters, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    return xb.astype(np.float32), centers


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def run(items: int, dim: int, queries: int, k: int, seen: int, threads: int, nprobe: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    xb, centers = _clustered(rng, items, dim, max(10, items // 1000))
    ids = np.arange(items, dtype=np.int64)
    xq = centers[rng.integers(0, len(centers), queries)] + 0.5 * rng.standard_normal((queries, dim))
    xq = (xq / np.linalg.norm(xq, axis=1, keepdims=True)).astype(np.float32)
    exclude = [set(rng.choice(items, seen, replace=False).tolist()) for _ in range(queries)]
    replace = rng.choice(items, min(items, 10_000), replace=False)

    results: dict[str, Any] = {}
    reference: dict[str, npt.NDArray[np.int64]] = {}
    for kind in ("flat", "ivf"):
        index = VectorIndex(dim, kind, nprobe=nprobe, threads=threads)
        t_add = sum(_timed(index.upsert, ids[i : i + 10_000], xb[i : i + 10_000])[0] for i in range(0, items, 10_000))
        t_rep, _ = _timed(index.upsert, replace, xb[replace])
        lat = [_timed(index.search, xq[i : i + 1], k)[0] for i in range(queries)]
        lat_ex = [_timed(index.search, xq[i : i + 1], k, exclude=[exclude[i]])[0] for i in range(queries)]
        t_batch, (_, I) = _timed(index.search, xq, k)
        _, (_, I_ex) = _timed(index.search, xq, k, exclude=exclude)
        row: dict[str, Any] = {
            "trained": index.is_trained,
            "upsert_per_s": items / t_add,
            "replace_per_s": len(replace) / t_rep,
            "search_p50_ms": 1e3 * float(np.percentile(lat, 50)),
            "search_p99_ms": 1e3 * float(np.percentile(lat, 99)),
            "search_excl_p50_ms": 1e3 * float(np.percentile(lat_ex, 50)),
            "batch_qps": queries / t_batch,
        }
        if kind == "flat":
            reference = {"plain": I, "excl": I_ex}
        else:
            for name, got in (("plain", I), ("excl", I_ex)):
                ref = reference[name]
                row[f"recall_at_{k}_{name}"] = float(
                    np.mean([len(set(a) & set(b)) / k for a, b in zip(got.tolist(), ref.tolist())])
                )
        results[kind] = row
        print(kind, json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in row.items()}))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seen", type=int, default=50, help="excluded (seen) ids per query")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/index_bench.json"))
    args = ap.parse_args()
    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
    }
    print("env", json.dumps(env))
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results = run(args.items, args.dim, args.queries, args.k, args.seen, args.threads, args.nprobe, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"env": env, "params": params, "results": results}, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
