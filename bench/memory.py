"""Memory: resident set of the worker process at 1M items and 100k users.

    .venv/bin/python bench/memory.py                       # 1,000,000 items, 100,000 users, 3 runs
    .venv/bin/python bench/memory.py --items 100000 --users 10000

The state is built with the worker's own ``Engine`` (``build_state`` in ``bench/_common.py``,
shared with ``bench/query_latency.py`` and cached in ``bench/.cache/``). Each run copies it,
starts a real worker process on it (``faust -A streams.app worker``: it loads the checkpoint)
and reads ``VmRSS``/``VmHWM`` from ``/proc``: once ready, and again after ``--traffic-s`` seconds
of live traffic (interactions and item upserts at ``--rate``/s each, so training, optimizer
state and index upserts are all exercised). Reference in the same run: an empty worker
(fresh data dir, no items). A breakdown of what the engine holds (arrays, tensors, index,
id maps) is computed in this process from the same checkpoint.
"""

from __future__ import annotations

import argparse
import gc
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
    Paced,
    build_state,
    bulk_producer,
    copy_state,
    fmt,
    health,
    interaction_stream,
    item_json,
    children_rss_mib,
    rss_mib,
    shared_note,
    start_broker,
    start_worker,
    summarize,
    worker_settings,
    write_json,
)

MIB = 2**20


def breakdown(state: Path) -> dict[str, float]:
    """MiB held by the engine's parts, measured on an Engine opened from the checkpoint here."""
    import numpy as np
    import torch

    from streams.runtime import engine_config
    from towerstream.engine import Engine
    from towerstream.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    try:
        copy_state(state, tmp / "data")
        rss0 = rss_mib(os.getpid())["VmRSS"]
        eng = Engine.open(tmp / "data" / "engine", engine_config(Settings(data_dir=tmp / "data")))
        gc.collect()
        rss1 = rss_mib(os.getpid())["VmRSS"]
        tr = eng.trainer
        arrays = sum(v.nbytes for v in vars(tr).values() if isinstance(v, np.ndarray))
        params = sum(p.numel() * p.element_size() for p in tr.model.parameters())
        opt = 0
        for o in (tr.opt_sparse, tr.opt_dense):
            for st in o.state.values():
                opt += sum(t.numel() * t.element_size() for t in st.values() if torch.is_tensor(t))
        n_idx = len(eng.index)
        index = n_idx * (eng.index.dim * 4 + 8)
        engine_arrays = eng.live.nbytes + eng.popularity.nbytes

        def dict_bytes(d: dict[Any, Any]) -> int:
            return sys.getsizeof(d) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in d.items())

        id_maps = sum(dict_bytes(m._rows) + sys.getsizeof(m._external) for m in (eng.items, eng.users))
        item_ts = dict_bytes(eng.item_ts)
        seen = dict_bytes(eng.seen) + sum(v.buffer_info()[1] * v.itemsize for v in eng.seen.values())
        out = {
            "rss_engine_open_mib": rss1 - rss0,
            "trainer_feature_tables_mib": arrays / MIB,
            "model_parameters_mib": params / MIB,
            "optimizer_state_mib": opt / MIB,
            "faiss_index_vectors_and_ids_mib": index / MIB,
            "id_maps_python_mib": id_maps / MIB,
            "item_ts_dict_mib": item_ts / MIB,
            "seen_lists_mib": seen / MIB,
            "engine_arrays_mib": engine_arrays / MIB,
        }
        eng.close()
        del eng, tr
        gc.collect()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def one_run(broker: Any, state: Path | None, meta: dict[str, Any], run: int, args: argparse.Namespace,
            work: Path) -> dict[str, Any]:
    prefix = f"mem{os.getpid()}r{run}{'e' if state is None else ''}"
    data = work / f"run{run}"
    if state is not None:
        copy_state(state, data)
    settings = worker_settings(broker, data, prefix, topic_partitions=args.partitions, checkpoint_every_s=3600.0)
    from producers.topics import ensure_topics

    ensure_topics(settings)
    t0 = time.monotonic()
    w = start_worker(settings, work / f"worker{run}.log", timeout=400)
    assert w.proc is not None
    try:
        ready_s = time.monotonic() - t0
        time.sleep(3.0)
        rss_ready = rss_mib(w.proc.pid)
        reader_ready = children_rss_mib(w.proc.pid)
        items = meta.get("items", 0) or 1000
        users = meta.get("users", 0) or 1000
        prod = bulk_producer(settings, linger_ms=5, batch_size=64 * 1024)
        rng = random.Random(args.seed + run)
        if state is None:  # an empty worker gets a small catalog so interactions train on something
            for i in range(1000):
                prod.send(settings.topic("items"), key=f"i{i}".encode(),
                          value=item_json(f"i{i}", i % 16, i, int(time.time() * 1000)))

        def upsert(n: int) -> tuple[bytes, bytes]:
            i = rng.randrange(items)
            return f"i{i}".encode(), item_json(f"i{i}", i % 16, i + 1 + n, int(time.time() * 1000))

        def interaction(n: int) -> tuple[bytes, bytes]:
            return next(iter(interaction_stream(1, users, items, 16, args.seed, int(time.time() * 1000), start=n,
                                                prefix=f"m{run}-")))

        ups = Paced(prod, settings.topic("items"), upsert, rate=args.rate)
        ints = Paced(prod, settings.topic("interactions"), interaction, rate=args.rate)
        ups.start()
        ints.start()
        time.sleep(args.traffic_s)
        ups.stop()
        ints.stop()
        time.sleep(2.0)
        h = health(w.base_url)
        rss_traffic = rss_mib(w.proc.pid)
        reader_traffic = children_rss_mib(w.proc.pid)
    finally:
        w.kill()
        shutil.rmtree(data, ignore_errors=True)
    return {"ready_s": ready_s, "rss_ready_mib": rss_ready.get("VmRSS"), "rss_after_traffic_mib": rss_traffic.get("VmRSS"),
            "hwm_mib": rss_traffic.get("VmHWM"),
            # Child processes of the worker, if any, not in its RSS.
            "reader_rss_ready_mib": reader_ready, "reader_rss_after_traffic_mib": reader_traffic,
            "items_indexed": h.get("items_indexed"),
            "users_known": h.get("users_known"), "trained_total": h.get("trained_total")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--query-users", type=int, default=1000, help="users with a full history (shared state)")
    ap.add_argument("--hist-len", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--traffic-s", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="interactions/s and upserts/s during the traffic phase")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rebuild", action="store_true")
    add_run_args(ap)
    args = ap.parse_args()

    t_begin = time.monotonic()
    env = begin(args.seed)
    state, meta = build_state(args.items, args.users, args.query_users, args.hist_len, args.seed, rebuild=args.rebuild)
    parts = breakdown(state)
    print("engine breakdown (MiB): " + ", ".join(f"{k[:-4]} {v:,.0f}" for k, v in parts.items()), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    broker = start_broker()
    runs: list[dict[str, Any]] = []
    try:
        empty = one_run(broker, None, {}, 99, args, work)
        print(f"reference, empty worker: rss {empty['rss_ready_mib']:.0f} MiB ready, "
              f"{empty['rss_after_traffic_mib']:.0f} MiB after traffic", flush=True)
        for run in range(args.runs):
            r = one_run(broker, state, meta, run, args, work)
            runs.append(r)
            print(f"run {run}: rss {r['rss_ready_mib']:.0f} MiB when ready ({r['ready_s']:.0f}s), "
                  f"{r['rss_after_traffic_mib']:.0f} MiB after {args.traffic_s:.0f}s of traffic, peak {r['hwm_mib']:.0f} MiB; "
                  f"{r['items_indexed']:,.0f} items, {r['users_known']:,.0f} users; child processes "
                  f"{r['reader_rss_ready_mib']:.0f} / {r['reader_rss_after_traffic_mib']:.0f} MiB", flush=True)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    keys = ("rss_ready_mib", "rss_after_traffic_mib", "hwm_mib", "ready_s", "reader_rss_after_traffic_mib")
    summary = {k: summarize([r[k] for r in runs]) for k in keys}
    print(f"worker at {args.items:,} items / {args.users:,} users: RSS {fmt(summary['rss_ready_mib'], ' MiB', 0)} ready,"
          f" {fmt(summary['rss_after_traffic_mib'], ' MiB', 0)} after traffic, peak {fmt(summary['hwm_mib'], ' MiB', 0)};"
          f" child processes {fmt(summary['reader_rss_after_traffic_mib'], ' MiB', 0)} after traffic;"
          f" median (min-max) over {len(runs)} runs")
    payload = {"benchmark": "memory", "env": env, "params": vars(args) | {"out": str(args.out)},
               "state": {k: v for k, v in meta.items() if k != "truth"}, "breakdown_mib": parts,
               "reference_empty_worker": empty, "summary": summary, "runs": runs,
               "wall_s": time.monotonic() - t_begin}
    write_json(f"memory_{args.items}", payload, args.out)
    print(shared_note(payload["env"]), f"; wall {payload['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
