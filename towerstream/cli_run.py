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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported inside the commands, so that ``--help`` loads none of them
    from towerstream.processes import WorkerProcess
    from towerstream.settings import Settings


@contextlib.contextmanager
def kafka_for(settings: Settings) -> Iterator[Settings]:
    """Yield settings pointing at Kafka: the configured one, or an embedded Tansu we start and stop."""
    from towerstream.broker import EmbeddedBroker, port_open

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


class Roles:
    """The laptop mode's processes: one worker, or one trainer and ``replicas`` serving replicas.

    With no replica the worker is one process that trains, publishes and answers from its own
    index. With replicas the worker runs as the trainer (role ``train``, on ``web_port``: event
    intake, ``/healthz``, ``/metrics``) and replica ``i`` (from 1) answers on ``web_port + i``, as
    in ``docker-compose.yml``: the same processes a team runs, on one machine.
    """

    def __init__(self, settings: Settings, replicas: int, log_path: Path | None) -> None:
        """``log_path``: the worker's log (replica ``i`` logs beside it, to ``replica-<i>.log``);
        ``None``: every process logs to our own terminal."""
        from towerstream.processes import WorkerProcess
        from towerstream.replica_process import ReplicaProcess

        self.settings = settings
        role = {"role": "train"} if replicas else {}
        self.worker = WorkerProcess(settings.model_copy(update=role), log_path=log_path,
                                    inherit_output=log_path is None)
        self.replicas = [
            ReplicaProcess(settings.model_copy(update={"web_port": settings.web_port + i}),
                           log_path=None if log_path is None else log_path.with_name(f"replica-{i}.log"),
                           inherit_output=log_path is None)
            for i in range(1, replicas + 1)
        ]

    @property
    def serving_url(self) -> str:
        """Where ``/recommend`` is answered: the first replica, or the worker itself."""
        return (self.replicas[0] if self.replicas else self.worker).base_url

    def start(self) -> None:
        self.worker.start()
        for r in self.replicas:
            r.start()

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """The worker's (or trainer's) ``/healthz`` once ready; then every replica's readiness."""
        health = self.worker.wait_ready(timeout=timeout)
        for i, r in enumerate(self.replicas, 1):
            body = r.wait_ready(timeout=timeout)
            print(f"replica {i} ready on {r.base_url}: model version {body.get('version')}, "
                  f"{body.get('items')} items", file=sys.stderr)
        return health

    def alive(self) -> bool:
        return self.worker.alive() and all(r.alive() for r in self.replicas)

    def returncode(self) -> int:
        """The exit status of the first process found gone (0 if all are still running)."""
        for p in (self.worker, *self.replicas):
            if p.proc is not None and p.proc.poll() is not None:
                return p.proc.returncode or 1
        return 0

    def stop(self) -> int:
        """Replicas first (they keep no state), then the worker with its final checkpoint."""
        codes = [r.stop() for r in self.replicas]
        worker = stop_worker(self.worker)
        return worker if all(c in (0, None) for c in codes) else 1

    def close(self) -> None:
        """Stop whatever still runs, saying nothing (a no-op for processes that have exited)."""
        for p in (*self.replicas, self.worker):
            p.stop()


def cmd_worker(args: argparse.Namespace) -> int:
    from towerstream.settings import Settings

    settings = Settings()
    say_state(settings)
    with kafka_for(settings) as s:
        _ensure_topics(s)
        env_log = os.environ.get("TOWERSTREAM_WORKER_LOG")
        # In the foreground the processes' logs go to our terminal.
        roles = Roles(s, args.replicas, Path(env_log) if env_log else None)
        try:
            roles.start()
            said = False
            while roles.alive():
                if not said:
                    status, body = roles.worker.health()
                    if status == 200:
                        say_reloaded(body)
                        said = True
                time.sleep(0.5)
            return roles.returncode()
        except KeyboardInterrupt:  # SIGTERM or SIGINT (towerstream.lifecycle.StopSignals)
            return roles.stop()
        finally:
            roles.close()  # the embedded broker stops after them


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


def demo_stream(args: argparse.Namespace, now_ms: int | None = None) -> tuple[str, list[Any]]:
    """The demo's records, stamped for a run starting at ``now_ms`` (default: now).

    Event times follow the wall clock: the stream starts now and its interactions are spaced
    as the demo sends them (``--rate``), so freshness lag reads in milliseconds, not years. The
    run's start stamps its interaction ids, so a second demo into the same state is new events,
    not duplicates of the first; no example in the README uses ids of this shape.
    """
    from towerstream.synthetic import StreamSpec, generate, offset_to_now, shifted

    now = int(time.time() * 1000) if now_ms is None else now_ms
    offset_ms = offset_to_now(now)
    run = f"demo{now // 1000}-"
    spec = StreamSpec(users=args.users, items=args.items, interactions=int(args.rate * args.duration),
                      seed=args.seed, spacing_s=1.0 / args.rate if args.rate > 0 else 1.0, event_prefix=run)
    return run, [shifted(rec, offset_ms) for rec in generate(spec)]


def cmd_demo(args: argparse.Namespace) -> int:
    from producers.producer import EventProducer
    from towerstream.processes import WorkerError
    from towerstream.settings import Settings

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
        roles = Roles(s, args.replicas, log_path)
        try:
            roles.start()
            what = f"a trainer and {args.replicas} serving replicas" if args.replicas else "the worker"
            print(f"starting {what} (logs: {log_path.parent}) ...", file=sys.stderr)
            say_reloaded(roles.wait_ready(timeout=120))
            url = f"{roles.serving_url}/recommend/u1?k=10"
            run, records = demo_stream(args)
            print(f"streaming {len(records)} events (interaction ids {run}e0 ...)", file=sys.stderr)
            from tqdm import tqdm

            from towerstream.logs import stream_is_terminal

            with EventProducer(s) as prod:
                start = time.monotonic()
                sent_interactions = 0
                printed = False
                bar = tqdm(records, desc="events", unit="ev", file=sys.stderr, disable=not stream_is_terminal())
                for rec in bar:
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
            for i, r in enumerate(roles.replicas, 1):
                print(f"replica {i}: curl '{r.base_url}/recommend/u1?k=10'", file=sys.stderr)
            print(f"live recommendations: curl '{url}'  (Ctrl-C to stop)", file=sys.stderr)
            while roles.alive():
                time.sleep(0.5)
            return roles.returncode()
        except KeyboardInterrupt:
            print("\nstopping ...", file=sys.stderr)
            return roles.stop()
        except WorkerError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        finally:
            roles.close()


def _replicas_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--replicas", type=int, default=0, metavar="N",
                   help=f"0: {what} is one process that trains and answers. N > 0: it runs as the trainer "
                        "(role train) on TOWERSTREAM_WEB_PORT and N serving replicas (towerstream serve) answer on "
                        "the next N ports")


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="run the Faust worker (embedded broker when no Kafka is configured)")
    _replicas_flag(p, "the worker")
    p.set_defaults(func=cmd_worker)
    t = sub.add_parser("train", help="run the worker as the trainer: it learns and publishes item vectors and model "
                                     "versions for serving replicas, and answers no /recommend")
    t.set_defaults(func=cmd_train, replicas=0)
    d = sub.add_parser("demo", help="embedded broker + worker + a generated stream, with live recommendations")
    d.add_argument("--users", type=int, default=500, help="distinct users in the generated stream (u0, u1, ...)")
    d.add_argument("--items", type=int, default=1000,
                   help="catalog size (i0, i1, ...); a fifth of the items arrive mid-stream (cold start)")
    d.add_argument("--rate", type=float, default=200.0, help="interactions per second")
    d.add_argument("--duration", type=float, default=120.0, help="seconds of interactions to stream")
    d.add_argument("--seed", type=int, default=0, help="seed of the generated stream (same seed, same events)")
    _replicas_flag(d, "the worker")
    d.add_argument("--fresh", action="store_true",
                   help="start from nothing: move the data dir's state aside first (to <data dir>.previous)")
    d.set_defaults(func=cmd_demo)
