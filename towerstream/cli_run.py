"""``towerstream worker`` and ``towerstream demo``."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
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


def say_state(settings: Settings) -> None:
    """Where the worker's state lives, and whether there is any to reload, before it starts."""
    print(f"state: {settings.data_dir.resolve()} (RocksDB, checkpoints, Faust data; TOWERSTREAM_DATA_DIR) - "
          + ("found: reloading it" if settings.has_state() else "none yet: starting fresh"), file=sys.stderr)


def say_reloaded(health: dict[str, Any]) -> None:
    """What the worker reloaded, from its /healthz once it is ready."""
    state = health.get("state") or {}
    got = state.get("reloaded")
    if got:
        print(f"reloaded from {state.get('data_dir')}: model version {got['model_version']}, {got['items']} items, "
              f"{got['users']} users, {got['trained_in_model']} interactions trained", file=sys.stderr)
    else:
        print(f"fresh state in {state.get('data_dir')}: nothing reloaded", file=sys.stderr)


def stop_worker(worker: WorkerProcess) -> int:
    print("stopping the worker (final checkpoint) ...", file=sys.stderr)
    t0 = time.monotonic()
    code = worker.stop()
    print(f"worker stopped in {time.monotonic() - t0:.1f} s (exit status {code})", file=sys.stderr)
    return 0 if code == 0 else 1


def cmd_worker(args: argparse.Namespace) -> int:
    settings = Settings()
    say_state(settings)
    with kafka_for(settings) as s:
        _ensure_topics(s)
        env_log = os.environ.get("TOWERSTREAM_WORKER_LOG")
        # In the foreground the worker's logs go to our terminal.
        worker = WorkerProcess(s, log_path=Path(env_log) if env_log else None, inherit_output=not env_log)
        try:
            worker.start()
            said = False
            while worker.alive():
                if not said:
                    status, body = worker.health()
                    if status == 200:
                        say_reloaded(body)
                        said = True
                time.sleep(0.5)
            assert worker.proc is not None
            return worker.proc.returncode
        except KeyboardInterrupt:  # SIGTERM or SIGINT (towerstream.lifecycle.StopSignals)
            return stop_worker(worker)
        finally:
            worker.stop()  # no-op once it has exited; the embedded broker stops after it


def cmd_train(args: argparse.Namespace) -> int:
    """``towerstream worker`` in role ``train``: it trains and publishes; replicas answer (``towerstream serve``)."""
    os.environ["TOWERSTREAM_ROLE"] = "train"
    return cmd_worker(args)


def _start_fresh(data_dir: Path) -> None:
    """``demo --fresh``: move the previous state aside (one copy is kept), saying so."""
    data_dir = data_dir.resolve()
    if not data_dir.exists() or not any(data_dir.iterdir()):
        print(f"--fresh: no previous state in {data_dir}", file=sys.stderr)
        return
    aside = data_dir.with_name(data_dir.name + ".previous")
    replaced = aside.exists()
    if replaced:
        shutil.rmtree(aside)
    data_dir.rename(aside)
    print(f"--fresh: moved the previous state {data_dir} to {aside}"
          + (" (removing the older copy that was there)" if replaced else ""), file=sys.stderr)


def cmd_demo(args: argparse.Namespace) -> int:
    from producers.producer import EventProducer
    from towerstream.synthetic import StreamSpec, generate

    settings = Settings()
    data_dir = settings.data_dir
    if args.fresh:
        _start_fresh(data_dir)
    say_state(settings)
    # SIGTERM and SIGINT (even when started in the background) raise KeyboardInterrupt here:
    # towerstream.cli installs towerstream.lifecycle.StopSignals for every command.
    with kafka_for(settings) as s:
        _ensure_topics(s)
        log_path = data_dir / "worker.log"
        worker = WorkerProcess(s, log_path=log_path)
        try:
            worker.start()
            print(f"starting worker (logs: {log_path}) ...", file=sys.stderr)
            say_reloaded(worker.wait_ready(timeout=120))
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
            while worker.alive():
                time.sleep(0.5)
            return 1
        except KeyboardInterrupt:
            print("\nstopping ...", file=sys.stderr)
            return stop_worker(worker)
        finally:
            worker.stop()


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="run the Faust worker (embedded broker when no Kafka is configured)")
    p.set_defaults(func=cmd_worker)
    t = sub.add_parser("train", help="run the worker as the trainer: it learns and publishes item vectors and model "
                                     "versions for serving replicas, and answers no /recommend")
    t.set_defaults(func=cmd_train)
    d = sub.add_parser("demo", help="embedded broker + worker + a generated stream, with live recommendations")
    d.add_argument("--users", type=int, default=500)
    d.add_argument("--items", type=int, default=1000)
    d.add_argument("--rate", type=float, default=200.0, help="interactions per second")
    d.add_argument("--duration", type=float, default=120.0, help="seconds of interactions to stream")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--fresh", action="store_true",
                   help="start from nothing: move the data dir's state aside first (to <data dir>.previous)")
    d.set_defaults(func=cmd_demo)
