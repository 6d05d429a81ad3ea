"""Throughput: interactions/s from Kafka through validation, tower update and index upsert.

    .venv/bin/python bench/throughput.py                    # 3 runs x 60 s, reference 3 x 20 s
    .venv/bin/python bench/throughput.py --runs 3 --duration 60 --ref-duration 20 --batch-max 512

One Tansu broker; a catalog (``--items``) and a backlog of interactions (``--events``, users
mostly inside a taste cluster) are produced once, as raw JSON bytes, into the worker's topics.
Each run then starts a fresh worker process (``faust -A streams.app worker``, fresh data dir
and consumer group, so it reads the backlog from the start) and samples the events trained
into the model (``trained_total - untrained_events`` on ``/healthz``) every second: the figure is the rate over a
``--duration`` window that starts
once the catalog is indexed and ``--warmup`` interactions are trained, plus the slowest
1-second rate inside it. Every interaction goes through the real path: raw bytes -> pydantic
validation -> RocksDB WriteBatch (dedup, journal) -> train step -> re-embed touched items ->
Faiss upsert, with drift monitoring on as in production.

Reference, same run, same broker, same records: a Faust agent that reads the same topic and
only increments one Table entry per event (``counts[key] += 1``, changelogged as Faust does),
in its own process (``faust -A bench.throughput:reference_app worker``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    add_run_args,
    begin,
    ROOT,
    bulk_producer,
    cpu_seconds,
    fmt,
    health,
    interaction_stream,
    item_json,
    produce,
    rss_mib,
    scrape_metrics,
    shared_note,
    start_broker,
    start_worker,
    summarize,
    validate_samples,
    worker_settings,
    write_json,
)
from towerstream.broker import free_port  # noqa: E402


# ----- the reference: a Faust agent that updates one Table entry per event ------------------------
def _make_reference_app() -> Any:
    import faust

    env = os.environ
    app = faust.App(
        env["BENCH_REF_APP_ID"], broker=f"kafka://{env['BENCH_REF_BOOTSTRAP']}", store="memory://",
        datadir=env["BENCH_REF_DATADIR"], web_port=int(env["BENCH_REF_PORT"]), web_host="127.0.0.1",
        topic_partitions=int(env["BENCH_REF_PARTITIONS"]), consumer_auto_offset_reset="earliest",
        broker_session_timeout=6, broker_heartbeat_interval=2, recovery_consistency_check=False,
        autodiscover=False,
    )
    topic = app.topic(env["BENCH_REF_TOPIC"], key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")
    counts = app.Table("counts", default=int, partitions=int(env["BENCH_REF_PARTITIONS"]))
    seen = {"n": 0}

    @app.agent(topic)
    async def count(stream: Any) -> None:
        async for event in stream.events():
            counts[event.key] += 1
            seen["n"] += 1

    @app.page("/count")
    async def get_count(web: Any, request: Any) -> Any:
        return web.json({"n": seen["n"]})

    return app


def __getattr__(name: str) -> Any:  # ``faust -A bench.throughput:reference_app`` builds it lazily
    if name == "reference_app":
        app = _make_reference_app()
        globals()["reference_app"] = app
        return app
    raise AttributeError(name)


def _ref_count(port: int) -> int | None:
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as r:
            return int(json.loads(r.read())["n"])
    except Exception:  # noqa: BLE001 - not up yet
        return None


# ----- sampling a rate ------------------------------------------------------------------------------
def sample_rate(read: Any, total: int, warmup: int, duration: float, ready: Any = None,
                timeout: float = 240.0, pid: int | None = None) -> dict[str, Any]:
    """Poll ``read()`` (events done so far) every second; rate over `duration` after `warmup` events.

    With `pid`, also the CPU the process used in the window: cores busy, and events per CPU
    second (a figure that does not depend on how busy the rest of the machine was).
    """
    deadline = time.monotonic() + timeout
    while True:
        n = read()
        if n is not None and n >= warmup and (ready is None or ready()):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no warm-up in {timeout}s (done={n})")
        time.sleep(0.2)
    t0, n0 = time.monotonic(), read()
    c0 = cpu_seconds(pid) if pid else None
    samples = [(0.0, n0)]
    drained = False
    while time.monotonic() - t0 < duration:
        time.sleep(1.0)
        n = read()
        if n is None:
            continue
        samples.append((time.monotonic() - t0, n))
        if n >= total:
            drained = True
            break
    cpu = cpu_seconds(pid) - c0 if pid and c0 is not None else None
    (ta, na), (tb, nb) = samples[0], samples[-1]
    per_s = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(samples, samples[1:]) if b[0] > a[0]]
    return {"rate": (nb - na) / (tb - ta) if tb > ta else 0.0, "seconds": tb - ta, "events": nb - na,
            "min_1s_rate": min(per_s) if per_s else None, "drained": drained,
            "cores_used": cpu / (tb - ta) if cpu is not None and tb > ta else None,
            "events_per_cpu_s": (nb - na) / cpu if cpu else None}


def run_worker(broker: Any, prefix: str, run: int, args: argparse.Namespace, total: int, work: Path) -> dict[str, Any]:
    data = work / f"worker{run}"
    settings = worker_settings(broker, data, prefix, app_id=f"{prefix}-w{run}", batch_max=args.batch_max,
                               topic_partitions=args.partitions, checkpoint_every_s=30.0)
    t_start = time.monotonic()
    w = start_worker(settings, work / f"worker{run}.log")
    try:
        def read() -> int | None:
            b = health(w.base_url)  # trained into the model: durable minus still queued for training
            return int(b["trained_total"] - b.get("untrained_events", 0)) if "trained_total" in b else None

        def ready() -> bool:
            return health(w.base_url).get("items_indexed", 0) >= args.items

        assert w.proc is not None
        res = sample_rate(read, total, args.warmup, args.duration, ready, pid=w.proc.pid)
        res["startup_s"] = time.monotonic() - t_start
        assert w.proc is not None
        res["rss_mib"] = rss_mib(w.proc.pid)
        m = scrape_metrics(w.base_url)
        key = f'towerstream_dead_letters_total{{kind="invalid",topic="{prefix}.interactions"}}'
        res["dead_letters"] = m.get(key, 0.0)
        bs = [(k, v) for k, v in m.items() if k.startswith("towerstream_batch_seconds_")
              and "interactions" in k]
        cnt = next((v for k, v in bs if k.startswith("towerstream_batch_seconds_count")), 0.0)
        tot = next((v for k, v in bs if k.startswith("towerstream_batch_seconds_sum")), 0.0)
        res["batches"] = cnt
        res["mean_batch_ms"] = 1000 * tot / cnt if cnt else None
        res["mean_batch_size"] = (m.get(f'towerstream_events_total{{topic="{prefix}.interactions"}}', 0.0) / cnt
                                  if cnt else None)  # per train step (queued batches are merged)
    finally:
        w.stop(timeout=60)
        shutil.rmtree(data, ignore_errors=True)
    return res


def run_reference(broker: Any, prefix: str, run: int, args: argparse.Namespace, total: int,
                  work: Path) -> dict[str, Any]:
    port = free_port()
    data = work / f"ref{run}"
    data.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
           "BENCH_REF_APP_ID": f"{prefix}-ref{run}", "BENCH_REF_BOOTSTRAP": broker.bootstrap,
           "BENCH_REF_DATADIR": str(data), "BENCH_REF_PORT": str(port),
           "BENCH_REF_PARTITIONS": str(args.partitions), "BENCH_REF_TOPIC": f"{prefix}.interactions"}
    faust_bin = Path(sys.executable).parent / "faust"
    log = open(work / f"ref{run}.log", "wb")
    proc = subprocess.Popen([str(faust_bin), "-A", "bench.throughput:reference_app", "worker", "-l", "warn",
                             "--web-port", str(port)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        res = sample_rate(lambda: _ref_count(port), total, args.warmup, args.ref_duration, pid=proc.pid)
        res["rss_mib"] = rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=60.0, help="measured window per worker run (s)")
    ap.add_argument("--ref-duration", type=float, default=20.0, help="measured window per reference run (s)")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--events", type=int, default=600_000, help="backlog of interactions produced once")
    ap.add_argument("--warmup", type=int, default=20_000, help="interactions trained before the window opens")
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--clusters", type=int, default=16)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch-max", type=int, default=512)
    add_run_args(ap)
    args = ap.parse_args()

    t_begin = time.monotonic()
    env = begin(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    prefix = f"tp{os.getpid()}"
    broker = start_broker()
    try:
        settings = worker_settings(broker, work / "unused", prefix, topic_partitions=args.partitions)
        from producers.topics import ensure_topics

        ensure_topics(settings)
        now_ms = int(time.time() * 1000)
        items = [(f"i{i}".encode(), item_json(f"i{i}", i % args.clusters, i, now_ms)) for i in range(args.items)]
        validate_samples(items, "items")
        validate_samples(interaction_stream(50, args.users, args.items, args.clusters, args.seed, now_ms),
                         "interactions")
        prod = bulk_producer(settings)
        t0 = time.monotonic()
        produce(prod, settings.topic("items"), items, now_ms)
        total = produce(prod, settings.topic("interactions"),
                        interaction_stream(args.events, args.users, args.items, args.clusters, args.seed, now_ms),
                        now_ms)
        prod.close()
        print(f"produced {args.items:,} items and {total:,} interactions in {time.monotonic() - t0:.1f}s")

        worker_runs: list[dict[str, Any]] = []
        ref_runs: list[dict[str, Any]] = []
        for run in range(args.runs):
            r = run_worker(broker, prefix, run, args, total, work)
            worker_runs.append(r)
            print(f"run {run}: worker {r['rate']:,.0f}/s over {r['seconds']:.0f}s (slowest 1 s: "
                  f"{r['min_1s_rate'] or 0:,.0f}/s; mean batch {r['mean_batch_size'] or 0:.0f} events in "
                  f"{r['mean_batch_ms'] or 0:.0f} ms; {r['cores_used'] or 0:.2f} cores busy, "
                  f"{r['events_per_cpu_s'] or 0:,.0f} events/CPU-s; rss {r['rss_mib'].get('VmRSS', 0):.0f} MiB"
                  f"{'; backlog drained' if r['drained'] else ''})", flush=True)
            if not args.skip_reference:
                rr = run_reference(broker, prefix, run, args, total, work)
                ref_runs.append(rr)
                print(f"run {run}: reference (Faust agent + Table) {rr['rate']:,.0f}/s over {rr['seconds']:.0f}s;"
                      f" {rr['cores_used'] or 0:.2f} cores busy, {rr['events_per_cpu_s'] or 0:,.0f} events/CPU-s",
                      flush=True)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    w = summarize([r["rate"] for r in worker_runs])
    w_min = summarize([r["min_1s_rate"] for r in worker_runs])
    ref = summarize([r["rate"] for r in ref_runs])
    w_eff = summarize([r["events_per_cpu_s"] for r in worker_runs])
    ref_eff = summarize([r["events_per_cpu_s"] for r in ref_runs])
    print(f"worker:    {fmt(w, '/s', 0)} median (min-max) over {len(worker_runs)} runs of {args.duration:.0f} s;"
          f" slowest 1 s {fmt(w_min, '/s', 0)}")
    print(f"worker efficiency: {fmt(w_eff, ' events per CPU-second', 0)}")
    if ref_runs:
        print(f"reference: {fmt(ref, '/s', 0)} (Faust agent updating one Table entry per event);"
              f" {fmt(ref_eff, ' events per CPU-second', 0)}")
        print(f"speed-up vs reference: {w['median'] / ref['median']:.1f}x")
    target = 5000.0
    print(f"target >= {target:,.0f}/s sustained 60 s: {'MET' if (w['median'] or 0) >= target else 'NOT MET'}")
    payload = {"benchmark": "throughput", "env": env, "params": vars(args) | {"out": str(args.out)},
               "worker": w, "worker_slowest_1s": w_min, "reference": ref,
               "worker_events_per_cpu_s": w_eff, "reference_events_per_cpu_s": ref_eff, "worker_runs": worker_runs,
               "reference_runs": ref_runs, "target_per_s": target, "wall_s": time.monotonic() - t_begin}
    write_json("throughput", payload, args.out)
    print(shared_note(payload["env"]), f"; wall {payload['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
