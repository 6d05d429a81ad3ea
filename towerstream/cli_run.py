"""``towerstream worker`` and ``towerstream demo``."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

from towerstream.broker import EmbeddedBroker, port_open
from towerstream.processes import WorkerProcess
from towerstream.settings import Settings


@contextlib.contextmanager
def kafka_for(settings: Settings) -> Iterator[Settings]:
    """Yield settings pointing at Kafka: the configured one, or an embedded Tansu we start and stop."""
    if not settings.uses_embedded_broker:
        yield settings
        return
    port = settings.embedded_broker_port
    # Tansu holds a group join for half the session timeout: keep it short on the embedded broker.
    fast_join = {"broker_session_timeout": min(settings.broker_session_timeout, 6.0),
                 "broker_heartbeat_interval": min(settings.broker_heartbeat_interval, 2.0)}
    if port_open("127.0.0.1", port):
        print(f"using the broker already listening on 127.0.0.1:{port}", file=sys.stderr)
        yield settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{port}", **fast_join})
        return
    with EmbeddedBroker(port=port) as broker:
        print(f"embedded Kafka-compatible broker (Tansu, memory only) on {broker.bootstrap}", file=sys.stderr)
        yield settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, **fast_join})


def _ensure_topics(settings: Settings) -> None:
    from producers.topics import ensure_topics

    ensure_topics(settings)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = Settings()
    with kafka_for(settings) as s:
        _ensure_topics(s)
        worker = WorkerProcess(s)
        env_log = os.environ.get("TOWERSTREAM_WORKER_LOG")
        if env_log:
            from pathlib import Path

            worker.log_path = Path(env_log)
        # In the foreground the worker's logs go to our terminal.
        worker.start() if env_log else _start_inherit(worker)
        try:
            assert worker.proc is not None
            return worker.proc.wait()
        except KeyboardInterrupt:
            return worker.stop() or 0


def _start_inherit(worker: WorkerProcess) -> None:
    import subprocess
    from pathlib import Path

    from towerstream.processes import settings_env

    env = {**os.environ, **settings_env(worker.settings), "PYTHONUNBUFFERED": "1"}
    faust_bin = Path(sys.executable).parent / "faust"
    cmd = [str(faust_bin)] if faust_bin.exists() else [sys.executable, "-m", "faust"]
    worker.proc = subprocess.Popen([*cmd, "-A", "streams.app", "worker", "-l", "info"], env=env)


def cmd_demo(args: argparse.Namespace) -> int:
    from producers.producer import EventProducer
    from towerstream.synthetic import StreamSpec, generate

    settings = Settings()
    data_dir = settings.data_dir
    stop = {"now": False}

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    with kafka_for(settings) as s:
        _ensure_topics(s)
        log_path = data_dir / "worker.log"
        worker = WorkerProcess(s, log_path=log_path).start()
        try:
            print(f"starting worker (logs: {log_path}) ...", file=sys.stderr)
            worker.wait_ready(timeout=120)
            url = f"{worker.base_url}/recommend/u1?k=10"
            spec = StreamSpec(users=args.users, items=args.items, interactions=int(args.rate * args.duration),
                              seed=args.seed)
            records = list(generate(spec))
            from tqdm import tqdm

            with EventProducer(s) as prod:
                start = time.monotonic()
                sent_interactions = 0
                printed = False
                for rec in tqdm(records, desc="events", unit="ev", file=sys.stderr):
                    if rec.logical_topic() == "interactions":
                        if not printed:
                            prod.flush()
                            print(f"\nlive recommendations: curl '{url}'\n", file=sys.stderr)
                            printed = True
                        sent_interactions += 1
                        delay = start + sent_interactions / args.rate - time.monotonic()
                        if args.rate > 0 and delay > 0:
                            time.sleep(delay)
                    prod.send_raw(s.topic(rec.logical_topic()), rec.key.encode() if rec.key else None,
                                  rec.value_bytes(), timestamp_ms=rec.timestamp)
                summary = prod.flush()
            print(f"stream done: {summary.line()}", file=sys.stderr)
            print(f"live recommendations: curl '{url}'  (Ctrl-C to stop)", file=sys.stderr)
            while not stop["now"] and worker.alive():
                time.sleep(0.5)
            return 0 if worker.alive() else 1
        except KeyboardInterrupt:
            print("\nstopping ...", file=sys.stderr)
            return 0
        finally:
            worker.stop()


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="run the Faust worker (embedded broker when no Kafka is configured)")
    p.set_defaults(func=cmd_worker)
    d = sub.add_parser("demo", help="embedded broker + worker + a generated stream, with live recommendations")
    d.add_argument("--users", type=int, default=500)
    d.add_argument("--items", type=int, default=1000)
    d.add_argument("--rate", type=float, default=200.0, help="interactions per second")
    d.add_argument("--duration", type=float, default=120.0, help="seconds of interactions to stream")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)
