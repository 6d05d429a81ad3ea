"""Query latency: ``GET /recommend`` over HTTP while 1,000 item upserts/s are applied; recall@10.

    .venv/bin/python bench/query_latency.py --items 100000     # flat index (exact)
    .venv/bin/python bench/query_latency.py --items 1000000    # IVF, hashtable direct map

The catalog (``--items``) and ``--users`` users (``--query-users`` of them with a full
50-item history) are built once with the worker's own ``Engine`` (see ``build_state`` in
``bench/_common.py``; cached in ``bench/.cache/``) and checkpointed. Each run copies that data
dir, starts a real worker process on it (it loads the checkpoint) and a fresh set of topics
on one Tansu broker, then:

1. **recall@10**: asks ``/recommend/<user>?k=10`` once for every query user before any upsert
   and compares with the exact top-10 (inner product over every stored item vector, the user's
   seen items excluded) computed when the state was built;
2. **latency under upserts**: produces item upserts (new content for existing items, so each is
   a remove + add in the index) at ``--upsert-rate``/s, and after a 3 s ramp sends
   ``--queries`` sequential requests over one keep-alive connection, random query users, k=10:
   first plain (user tower with 50-item history + search + seen exclusion), then with a
   business filter (``exclude_category`` of one genre in 16). Latency is measured by the
   client, request sent -> JSON received.

Each run also reports the machine's CPU steal during its upsert phase (``/proc/stat``: time the
hypervisor gave to other guests); on a shared VM it, not the code, is what makes a run slow.

Reference in the same run: the index alone, in process, on the same stored vectors (single-query
search with 1 and with 2 Faiss/OpenMP threads, and a 64-query batch), so the HTTP + tower +
filter overhead is visible, and the choice of one Faiss thread per call is measured, not assumed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    add_run_args,
    begin,
    KeepAlive,
    PacedProcess,
    build_state,
    copy_state,
    cpu_seconds,
    cpu_times,
    fmt,
    item_json,
    percentile,
    rss_mib,
    scrape_metrics,
    shared_note,
    start_broker,
    start_worker,
    steal_share,
    summarize,
    worker_settings,
    write_json,
)


def index_reference(state_dir: Path, queries: int, seed: int) -> dict[str, Any]:
    """Faiss alone on the stored index: 1 vs 2 threads, single queries and a batch of 64."""
    import faiss
    import numpy as np

    from index_store import load_latest_checkpoint

    loaded = load_latest_checkpoint(state_dir / "engine" / "checkpoints", threads=1)
    assert loaded is not None
    _, index, _ = loaded
    ids = index.ids()
    rng = np.random.default_rng(seed)
    xq = index.get(rng.choice(ids, size=queries, replace=False))  # item vectors as queries: realistic norms
    xq = xq + 0.05 * rng.standard_normal(xq.shape).astype(np.float32)
    out: dict[str, Any] = {"index": repr(index)}
    for threads in (1, 2):
        index.threads = threads
        lat = []
        for i in range(queries):
            t0 = time.perf_counter()
            index.search(xq[i : i + 1], 10)
            lat.append(1000 * (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for s in range(0, queries, 64):
            index.search(xq[s : s + 64], 10)
        out[f"threads_{threads}"] = {"single_p50_ms": percentile(lat, 50), "single_p99_ms": percentile(lat, 99),
                                     "batch64_ms_per_query": 1000 * (time.perf_counter() - t0) / queries}
    faiss.omp_set_num_threads(1)
    return out


def query_phase(http: KeepAlive, users: list[str], n: int, rng: random.Random, extra: str) -> tuple[list[float], int]:
    lat: list[float] = []
    errors = 0
    for _ in range(n):
        u = rng.choice(users)
        t0 = time.perf_counter()
        status, body = http.get_json(f"/recommend/{u}?k=10{extra}")
        dt = 1000 * (time.perf_counter() - t0)
        if status != 200 or body.get("source") != "model" or len(body.get("items", [])) != 10:
            errors += 1
        lat.append(dt)
    return lat, errors


def one_run(broker: Any, state: Path, meta: dict[str, Any], run: int, args: argparse.Namespace,
            work: Path) -> dict[str, Any]:
    prefix = f"ql{os.getpid()}r{run}"
    data = work / f"run{run}"
    t0 = time.monotonic()
    copy_state(state, data)
    settings = worker_settings(broker, data, prefix, topic_partitions=args.partitions, checkpoint_every_s=3600.0)
    from producers.topics import ensure_topics

    ensure_topics(settings)
    w = start_worker(settings, work / f"worker{run}.log", timeout=400)
    t_ready = time.monotonic() - t0
    rng = random.Random(args.seed + run)
    users = [f"q{u}" for u in range(meta["query_users"])]
    http = KeepAlive(settings.web_host, settings.web_port)
    assert w.proc is not None
    try:
        # 1. recall@10 against exact search, before any upsert (the model does not change meanwhile)
        hits = 0
        for u in users:
            status, body = http.get_json(f"/recommend/{u}?k=10")
            got = {x["item_id"] for x in body.get("items", [])} if status == 200 else set()
            hits += len(got & set(meta["truth"][u]))
        recall = hits / (10 * len(users))
        rss_loaded = rss_mib(w.proc.pid)
        # reference: the same queries with no upserts flowing
        lat_idle, _ = query_phase(http, users, args.queries // 2, rng, "")
        # 2. latency while upserts flow
        items, clusters = meta["items"], 16
        up_rng = random.Random(args.seed * 1000 + run)

        def upsert(n: int) -> tuple[bytes, bytes]:
            i = up_rng.randrange(items)
            return f"i{i}".encode(), item_json(f"i{i}", i % clusters, i + 1 + n, int(time.time() * 1000))

        m0 = scrape_metrics(w.base_url)
        paced = PacedProcess(settings, settings.topic("items"), upsert, rate=args.upsert_rate,
                             linger_ms=5, batch_size=64 * 1024)
        c0, t1, st0 = cpu_seconds(w.proc.pid), time.monotonic(), cpu_times()
        paced.start()
        time.sleep(3.0)
        lat_plain, err_plain = query_phase(http, users, args.queries, rng, "")
        m_plain = scrape_metrics(w.base_url)
        lat_filt, err_filt = query_phase(http, users, args.queries, rng, "&exclude_category=genre3")
        elapsed = time.monotonic() - t1
        steal = steal_share(st0, cpu_times())
        paced.stop()
        time.sleep(1.0)  # let the last upserts land, then count how many were applied
        m1 = scrape_metrics(w.base_url)
        cpu = cpu_seconds(w.proc.pid) - c0
        rss_end = rss_mib(w.proc.pid)
    finally:
        http.close()
        w.kill()  # the copy is thrown away: no final checkpoint needed
        shutil.rmtree(data, ignore_errors=True)
    key = f'towerstream_events_total{{topic="{prefix}.items"}}'
    applied = m1.get(key, 0.0) - m0.get(key, 0.0)
    # Server side (the worker's own histogram, plain queries under upserts): the share of answers
    # that took longer than 2 / 5 ms inside the worker.
    def model_count(le: str) -> float:
        name = f'towerstream_recommend_seconds_bucket{{le="{le}",source="model"}}'
        return m_plain.get(name, 0.0) - m0.get(name, 0.0)

    served = model_count("+Inf")
    res = {
        "recall_at_10": recall, "startup_s": t_ready,
        "idle_p50_ms": percentile(lat_idle, 50), "idle_p99_ms": percentile(lat_idle, 99),
        "plain_p50_ms": percentile(lat_plain, 50), "plain_p99_ms": percentile(lat_plain, 99),
        "plain_mean_ms": sum(lat_plain) / len(lat_plain), "plain_errors": err_plain,
        "filtered_p50_ms": percentile(lat_filt, 50), "filtered_p99_ms": percentile(lat_filt, 99),
        "filtered_errors": err_filt,
        "upserts_sent_per_s": paced.achieved_rate(elapsed), "upserts_applied_fraction": applied / max(paced.sent, 1),
        "worker_cores_used": cpu / elapsed, "rss_loaded_mib": rss_loaded.get("VmRSS"),
        "rss_end_mib": rss_end.get("VmRSS"), "hwm_mib": rss_end.get("VmHWM"),
        "server_over_5ms_fraction": (served - model_count("0.005")) / max(served, 1.0),
        "server_over_2ms_fraction": (served - model_count("0.002")) / max(served, 1.0),
        "cpu_steal_fraction": steal,
    }
    return res


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--query-users", type=int, default=1000)
    ap.add_argument("--hist-len", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--queries", type=int, default=2000, help="per phase (plain, filtered) per run")
    ap.add_argument("--upsert-rate", type=float, default=1000.0)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rebuild", action="store_true", help="ignore the cached state")
    add_run_args(ap)
    args = ap.parse_args()

    t_begin = time.monotonic()
    env = begin(args.seed)
    state, meta = build_state(args.items, args.users, args.query_users, args.hist_len, args.seed, rebuild=args.rebuild)
    ref = index_reference(state, 500, args.seed)
    print(f"index alone ({ref['index']}): 1 thread p50 {ref['threads_1']['single_p50_ms']:.2f} ms p99 "
          f"{ref['threads_1']['single_p99_ms']:.2f} ms; 2 threads p50 {ref['threads_2']['single_p50_ms']:.2f} ms p99 "
          f"{ref['threads_2']['single_p99_ms']:.2f} ms; batch of 64: {ref['threads_1']['batch64_ms_per_query']:.3f} vs "
          f"{ref['threads_2']['batch64_ms_per_query']:.3f} ms/query", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-query-"))
    broker = start_broker()
    runs: list[dict[str, Any]] = []
    try:
        for run in range(args.runs):
            r = one_run(broker, state, meta, run, args, work)
            runs.append(r)
            print(f"run {run}: recall@10 {r['recall_at_10']:.3f}; no upserts: p50 {r['idle_p50_ms']:.2f} ms p99 "
                  f"{r['idle_p99_ms']:.2f} ms; with upserts: plain p50 {r['plain_p50_ms']:.2f} ms p99 "
                  f"{r['plain_p99_ms']:.2f} ms; filtered p50 {r['filtered_p50_ms']:.2f} ms p99 {r['filtered_p99_ms']:.2f}"
                  f" ms; in the worker {100 * r['server_over_2ms_fraction']:.1f}% > 2 ms, {100 * r['server_over_5ms_fraction']:.1f}% > 5 ms, "
                  f"upserts sent {r['upserts_sent_per_s']:.0f}/s ({100 * r['upserts_applied_fraction']:.0f}% applied); worker "
                  f"{r['worker_cores_used']:.2f} cores, rss {r['rss_end_mib'] or 0:.0f} MiB; ready in {r['startup_s']:.0f}s; "
                  f"CPU steal {_pct(r['cpu_steal_fraction'])}",
                  flush=True)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    keys = ("recall_at_10", "idle_p50_ms", "idle_p99_ms", "plain_p50_ms", "plain_p99_ms", "filtered_p50_ms", "filtered_p99_ms",
            "upserts_sent_per_s", "upserts_applied_fraction", "worker_cores_used", "rss_end_mib", "startup_s",
            "cpu_steal_fraction")
    summary = {k: summarize([r[k] for r in runs]) for k in keys}
    target_p99 = 5.0 if args.items <= 100_000 else 15.0
    print(f"{args.items:,} items, {meta['kind']} index, no upserts (reference): p50 {fmt(summary['idle_p50_ms'], ' ms', 2)},"
          f" p99 {fmt(summary['idle_p99_ms'], ' ms', 2)}")
    print(f"{args.items:,} items, {meta['kind']} index, {args.upsert_rate:.0f} upserts/s: plain p50 {fmt(summary['plain_p50_ms'], ' ms', 2)}, p99 "
          f"{fmt(summary['plain_p99_ms'], ' ms', 2)}; filtered p99 {fmt(summary['filtered_p99_ms'], ' ms', 2)}; "
          f"recall@10 {fmt(summary['recall_at_10'], '', 3)}; median (min-max) over {len(runs)} runs")
    p99 = summary["plain_p99_ms"]["median"]
    rec = summary["recall_at_10"]["median"]
    print(f"target p99 <= {target_p99:.0f} ms: {'MET' if p99 is not None and p99 <= target_p99 else 'NOT MET'}; "
          f"recall@10 >= 0.95: {'MET' if rec is not None and rec >= 0.95 else 'NOT MET'}")
    payload = {"benchmark": "query_latency", "env": env, "params": vars(args) | {"out": str(args.out)},
               "state": {k: v for k, v in meta.items() if k != "truth"}, "index_reference": ref,
               "summary": summary, "runs": runs, "target_p99_ms": target_p99, "wall_s": time.monotonic() - t_begin}
    write_json(f"query_latency_{args.items}", payload, args.out)
    print(shared_note(payload["env"]), f"; wall {payload['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
