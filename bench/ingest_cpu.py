"""Ingestion CPU: per-thread (and per-process) CPU of a worker while item upserts flow, no queries.

    .venv/bin/python bench/ingest_cpu.py --state bench/.cache/state-100000-100000-<hash>
    TOWERSTREAM_ITEMS_CONSUMER=faust .venv/bin/python bench/ingest_cpu.py --state ...   # Faust's agent

Starts a worker on a copy of a state built by ``bench/query_latency.py`` (its ``bench/.cache``
directory), reads ``/proc/<pid>/task/*/stat`` of the worker and of its child processes (if any)
over ``--seconds`` idle, then again while ``--rate`` upserts/s of existing items flow
(produced from a child process, as in ``bench/query_latency.py``). Reference in the same run: the
idle worker. Threads are named by id; the worker's main thread (id = pid) runs Faust's event loop.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    PacedProcess,
    begin,
    child_pids,
    copy_state,
    cpu_times,
    item_json,
    scrape_metrics,
    start_broker,
    start_worker,
    steal_share,
    worker_settings,
)


def thread_cpu(pid: int) -> dict[tuple[str, int, int], float]:
    """(process label, pid, thread id) -> CPU seconds so far, for the worker and its children."""
    out: dict[tuple[str, int, int], float] = {}
    for label, p in [("worker", pid)] + [("child", c) for c in child_pids(pid)]:
        for tid in os.listdir(f"/proc/{p}/task"):
            try:
                fields = Path(f"/proc/{p}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[(label, p, int(tid))] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def phase(pid: int, label: str, seconds: float) -> dict[str, float]:
    a, st = thread_cpu(pid), cpu_times()
    time.sleep(seconds)
    b, steal = thread_cpu(pid), steal_share(st, cpu_times())
    use = {k: (v - a.get(k, 0.0)) / seconds for k, v in b.items()}
    totals = {side: sum(v for k, v in use.items() if k[0] == side) for side in ("worker", "child")}
    top = sorted(use.items(), key=lambda kv: -kv[1])[:6]
    print(f"{label}: worker {totals['worker']:.3f} cores, child processes {totals['child']:.3f} cores; "
          f"CPU steal {100 * (steal or 0):.1f}%", flush=True)
    for (side, p, tid), cores in top:
        role = "event loop" if side == "worker" and tid == pid else ""
        print(f"   {side} {p} thread {tid} {role:10s} {cores:.3f} cores")
    return {"worker_cores": totals["worker"], "child_cores": totals["child"], "steal": steal or 0.0,
            "threads": {f"{k[0]}:{k[2]}{'(loop)' if k[2] == pid else ''}": v for k, v in top}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", type=Path, required=True, help="a bench/.cache/state-... directory")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    begin(args.seed)
    meta = json.loads((args.state / "state.json").read_text())
    broker = start_broker()
    work = Path(tempfile.mkdtemp())
    try:
        copy_state(args.state / "data", work / "data")
        settings = worker_settings(broker, work / "data", f"ic{os.getpid()}", topic_partitions=4,
                                   checkpoint_every_s=3600.0)
        from producers.topics import ensure_topics

        ensure_topics(settings)
        w = start_worker(settings, work / "worker.log", timeout=400)
        assert w.proc is not None
        try:
            print(f"items consumer: {settings.items_consumer}", flush=True)
            phase(w.proc.pid, "idle", args.seconds)
            rng = random.Random(args.seed)

            def upsert(n: int) -> tuple[bytes, bytes]:
                i = rng.randrange(meta["items"])
                return f"i{i}".encode(), item_json(f"i{i}", i % 16, i + 1 + n, int(time.time() * 1000))

            m0 = scrape_metrics(w.base_url)
            paced = PacedProcess(settings, settings.topic("items"), upsert, rate=args.rate, linger_ms=5,
                                 batch_size=64 * 1024)
            paced.start()
            time.sleep(3.0)
            phase(w.proc.pid, f"{args.rate:.0f} upserts/s", args.seconds)
            paced.stop()
            time.sleep(1.0)
            key = f'towerstream_events_total{{topic="{settings.topic("items")}"}}'
            print(f"applied {scrape_metrics(w.base_url).get(key, 0) - m0.get(key, 0):.0f} of {paced.sent} sent")
        finally:
            w.kill()
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
