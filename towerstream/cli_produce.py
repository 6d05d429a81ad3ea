"""CLI subcommands for the Kafka edge: ``produce``, ``record``, ``replay``.

A thin layer: parse flags, build Settings from the environment, call the plain
functions in ``producers``, print a one-line summary, return an exit code
(0 all delivered, 1 anything failed or the broker was unreachable).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported inside the commands: ``--help`` must not load Kafka clients or numpy
    from producers.producer import DeliverySummary, EventProducer
    from towerstream.recording import RecordedRecord
    from towerstream.settings import Settings
    from towerstream.synthetic import StreamSpec

#: Default interactions for ``produce generate --rate 0`` without ``--interactions``.
UNPACED_INTERACTIONS = 100_000


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``produce {interactions,items,users,generate}``, ``record`` and ``replay``."""
    produce = subparsers.add_parser("produce", help="send events to Kafka")
    psub = produce.add_subparsers(dest="produce_cmd", required=True)
    for kind in ("interactions", "items", "users"):
        p = psub.add_parser(kind, help=f"send {kind} events, one JSON object per line")
        p.add_argument("file", help="JSON Lines file, or - for stdin")
        _producer_flags(p)
        p.set_defaults(func=_cmd_produce_lines, kind=kind)

    g = psub.add_parser("generate", help="send a synthetic stream with planted structure")
    g.add_argument("--users", type=int, default=200, help="distinct users (u0, u1, ...)")
    g.add_argument("--items", type=int, default=300, help="catalog size (i0, i1, ...); a fifth arrive mid-stream")
    g.add_argument("--rate", type=float, default=100.0, help="interactions/s; 0 = as fast as possible")
    g.add_argument("--duration", type=float, default=10.0, help="seconds to run")
    g.add_argument(
        "--interactions",
        type=int,
        default=None,
        help=f"how many (default rate*duration, or {UNPACED_INTERACTIONS} with --rate 0)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the generated stream (same seed, same events)")
    g.add_argument(
        "--keep-times",
        action="store_true",
        help="keep the generated 2024 event times (default: shift them to now)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar (never drawn when stderr is not a terminal)")
    _producer_flags(g)
    g.set_defaults(func=_cmd_generate)

    r = subparsers.add_parser("record", help="record topics to a JSON Lines file")
    r.add_argument("--topics", default="interactions,items,users", help="comma-separated logical names")
    r.add_argument("-o", "--out", required=True, help="output file, or - for stdout")
    r.add_argument("--duration", type=float, default=None, help="stop after S seconds (default: no limit)")
    r.add_argument("--max-events", type=int, default=None, help="stop after N records (default: no limit)")
    r.add_argument("--latest", action="store_true", help="only records arriving from now on")
    r.set_defaults(func=_cmd_record)

    rp = subparsers.add_parser("replay", help="replay a recording into Kafka")
    rp.add_argument("file", help="recording (JSON Lines), or - for stdin")
    pace = rp.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=None,
                      help="times real time, by record timestamps (default: as fast as possible)")
    pace.add_argument("--max-speed", action="store_true", help="as fast as possible (the default)")
    rp.add_argument("--from", dest="start", type=parse_time_ms, default=None, metavar="ISO_OR_MS",
                    help="first record time replayed, inclusive (default: the first record)")
    rp.add_argument("--until", dest="until", type=parse_time_ms, default=None, metavar="ISO_OR_MS",
                    help="record time to stop at, exclusive (default: the last record)")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar (never drawn when stderr is not a terminal)")
    _producer_flags(rp)
    rp.set_defaults(func=_cmd_replay)


class _Stderr:
    """Writes to whatever ``sys.stderr`` is at the time (redirected, or captured in tests)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _settings() -> Settings:
    """Settings from the environment, and logs kept off stdout.

    stdout is for results (the summary line, or the recording with ``record -o -``).
    When no entry point has configured structlog yet, its default would print to
    stdout, so point it at stderr; a configuration made by the caller is left alone.
    """
    import structlog

    from towerstream.settings import Settings

    if not structlog.is_configured():
        factory = structlog.PrintLoggerFactory(file=_Stderr())  # type: ignore[arg-type]
        structlog.configure(logger_factory=factory)
    return Settings()


def _producer_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--delivery-timeout",
        type=float,
        default=20.0,
        help="seconds before an unacknowledged record counts as failed",
    )
    p.add_argument("--no-create-topics", action="store_true", help="do not create missing topics")
    p.add_argument("--worker-url", default=None,
                   help="the worker whose /metrics says how many records were new or duplicates "
                        "(default: http://TOWERSTREAM_WEB_HOST:TOWERSTREAM_WEB_PORT)")
    p.add_argument("--wait-worker", type=float, default=10.0, metavar="S",
                   help="wait up to S seconds for the worker to count what was sent (0: do not ask it)")


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds, or an ISO 8601 time (UTC when no offset is given)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not epoch ms or ISO 8601: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(round(dt.timestamp() * 1000))


def _producer_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    ms = int(args.delivery_timeout * 1000)
    # Bound every wait by the delivery timeout: an unreachable broker fails, never hangs.
    return {
        "delivery_timeout_ms": ms,
        "max_block_ms": max(1000, min(ms, 10_000)),
        "request_timeout_ms": max(500, min(ms // 2, 5_000)),
    }


def _finish(summary: DeliverySummary, watch: _WorkerWatch | None = None) -> int:
    print(summary.line())
    for err in summary.errors[:3]:
        print(f"  {err}", file=sys.stderr)
    if watch is not None:
        print(watch.report(summary.sent))
    return 0 if summary.ok else 1


class _WorkerWatch:
    """The worker's outcome counters for the topics sent to, read before the send and after it."""

    def __init__(self, settings: Settings, args: argparse.Namespace, names: Any) -> None:
        from producers.worker_counters import read_outcomes

        base = args.worker_url or f"http://{settings.web_host}:{settings.web_port}"
        self.url = base.rstrip("/") + "/metrics"
        self.topics = [settings.topic(n) for n in names]
        self.wait_s = args.wait_worker
        self.before = read_outcomes(self.url, self.topics) if self.wait_s > 0 else None

    def report(self, sent: int) -> str:
        from producers.worker_counters import (
            NO_WORKER_NOTE,
            Outcomes,
            describe,
            read_outcomes,
            wait_for_outcomes,
        )

        if self.wait_s <= 0:
            return f"worker: not asked (--wait-worker 0); {NO_WORKER_NOTE}"
        if self.before is None or sent == 0:
            return describe(None, False, self.url)
        before: Outcomes = self.before
        delta, complete = wait_for_outcomes(lambda: read_outcomes(self.url, self.topics), before, sent,
                                            self.wait_s)
        return describe(delta, complete, self.url)


def _fail(exc: BaseException) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def _ensure(settings: Settings, args: argparse.Namespace, names: Any = None) -> None:
    from producers.topics import ensure_topics
    from towerstream.settings import TOPIC_NAMES

    if not args.no_create_topics:
        ensure_topics(settings, TOPIC_NAMES if names is None else names,
                      timeout_ms=_producer_kwargs(args)["max_block_ms"])


def _open_in(path: str) -> IO[str]:
    return sys.stdin if path == "-" else open(path, encoding="utf-8")


def _cmd_produce_lines(args: argparse.Namespace) -> int:
    from producers.errors import DeliveryError
    from producers.producer import EventProducer, produce_lines

    settings = _settings()
    try:
        fh = _open_in(args.file)
    except OSError as exc:
        return _fail(exc)
    try:
        _ensure(settings, args, [args.kind])
        watch = _WorkerWatch(settings, args, [args.kind])
        with EventProducer(settings, **_producer_kwargs(args)) as prod:
            produce_lines(fh, args.kind, prod)
        return _finish(prod.summary(), watch)
    except DeliveryError as exc:
        return _fail(exc)
    finally:
        if fh is not sys.stdin:
            fh.close()


def _cmd_generate(args: argparse.Namespace) -> int:
    """Items and profiles first, then interactions paced at ``--rate`` until ``--duration``."""
    from producers.errors import DeliveryError
    from producers.producer import EventProducer
    from towerstream.settings import TOPIC_NAMES
    from towerstream.synthetic import StreamSpec, offset_to_now

    settings = _settings()
    if args.rate < 0 or args.duration <= 0:
        return _fail(ValueError("--rate must be >= 0 and --duration > 0"))
    n = args.interactions
    if n is None:
        n = int(round(args.rate * args.duration)) if args.rate > 0 else UNPACED_INTERACTIONS
    spec = StreamSpec(
        users=args.users,
        items=args.items,
        interactions=n,
        seed=args.seed,
        spacing_s=1.0 / args.rate if args.rate > 0 else 1.0,
    )
    offset_ms = 0 if args.keep_times else offset_to_now()
    try:
        _ensure(settings, args)
        watch = _WorkerWatch(settings, args, TOPIC_NAMES)
        with EventProducer(settings, **_producer_kwargs(args)) as prod:
            _generate_into(prod, settings, spec, offset_ms, args)
        return _finish(prod.summary(), watch)
    except DeliveryError as exc:
        return _fail(exc)


def _generate_into(
    prod: EventProducer, settings: Settings, spec: StreamSpec, offset_ms: int, args: argparse.Namespace
) -> None:
    from tqdm import tqdm

    from producers.replay import logical_name
    from towerstream.logs import stream_is_terminal
    from towerstream.synthetic import generate, shifted

    disable = args.no_progress or not stream_is_terminal()
    start = time.monotonic()
    deadline = start + args.duration
    k = 0  # interactions sent so far
    with tqdm(total=spec.interactions, unit="ev", desc="generate", disable=disable) as bar:
        for rec in generate(spec):
            name = logical_name(rec, settings)
            if name == "interactions":
                if args.rate > 0:
                    delay = start + k / args.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                if time.monotonic() >= deadline:
                    break
                k += 1
                bar.update(1)
            rec = shifted(rec, offset_ms)
            prod.send_raw(
                settings.topic(name),
                rec.key.encode() if rec.key is not None else None,
                rec.value_bytes(),
                timestamp_ms=rec.timestamp,
            )


def _cmd_record(args: argparse.Namespace) -> int:
    from producers.errors import DeliveryError
    from producers.record import record
    from towerstream.settings import TOPIC_NAMES

    settings = _settings()
    topics = [t.strip() for t in args.topics.split(",") if t.strip()]
    unknown = [t for t in topics if t not in TOPIC_NAMES]
    if unknown:
        print(f"warning: not a towerstream topic: {', '.join(unknown)}", file=sys.stderr)
    out: Any = sys.stdout if args.out == "-" else args.out
    try:
        n = record(
            settings,
            topics,
            out,
            duration_s=args.duration,
            max_events=args.max_events,
            from_beginning=not args.latest,
        )
    except DeliveryError as exc:
        return _fail(exc)
    print(f"recorded={n}", file=sys.stderr if args.out == "-" else sys.stdout)
    return 0


def _checked(path: str) -> int:
    """Read the whole file once before sending, so a bad line stops the replay before it starts."""
    from towerstream.recording import iter_recording

    return sum(1 for _ in iter_recording(path))


def _cmd_replay(args: argparse.Namespace) -> int:
    from producers.errors import DeliveryError
    from producers.replay import replay
    from towerstream.recording import RecordingError, iter_recording
    from towerstream.settings import TOPIC_NAMES

    settings = _settings()
    try:
        records: Any
        if args.file == "-":
            records = iter_recording(sys.stdin)
        else:
            total = _checked(args.file)
            records = _Sized(iter_recording(args.file), total)
        watch = _WorkerWatch(settings, args, TOPIC_NAMES)
        summary = replay(
            records,
            settings,
            speed=None if args.max_speed else args.speed,
            start_ms=args.start,
            until_ms=args.until,
            progress=not args.no_progress,
            create_topics=not args.no_create_topics,
            **_producer_kwargs(args),
        )
    except (RecordingError, OSError, ValueError, DeliveryError) as exc:
        return _fail(exc)
    return _finish(summary, watch)


class _Sized:
    """An iterator with a known length, so the progress bar can show a total."""

    def __init__(self, it: Iterator[RecordedRecord], n: int) -> None:
        self._it = it
        self._n = n

    def __iter__(self) -> Iterator[RecordedRecord]:
        return self._it

    def __len__(self) -> int:
        return self._n
