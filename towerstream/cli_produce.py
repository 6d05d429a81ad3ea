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
from typing import IO, Any

import structlog
from tqdm import tqdm

from producers.errors import DeliveryError
from producers.producer import DeliverySummary, EventProducer, produce_lines
from producers.record import record
from producers.replay import logical_name, replay
from producers.topics import ensure_topics
from towerstream.recording import RecordedRecord, RecordingError, iter_recording
from towerstream.settings import TOPIC_NAMES, Settings
from towerstream.synthetic import START, StreamSpec, generate

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
    g.add_argument("--users", type=int, default=200)
    g.add_argument("--items", type=int, default=300)
    g.add_argument("--rate", type=float, default=100.0, help="interactions/s; 0 = as fast as possible")
    g.add_argument("--duration", type=float, default=10.0, help="seconds to run (default 10)")
    g.add_argument(
        "--interactions",
        type=int,
        default=None,
        help=f"how many (default rate*duration, or {UNPACED_INTERACTIONS} with --rate 0)",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--keep-times",
        action="store_true",
        help="keep the generated 2024 event times (default: shift them to now)",
    )
    g.add_argument("--no-progress", action="store_true")
    _producer_flags(g)
    g.set_defaults(func=_cmd_generate)

    r = subparsers.add_parser("record", help="record topics to a JSON Lines file")
    r.add_argument("--topics", default="interactions,items,users", help="comma-separated logical names")
    r.add_argument("-o", "--out", required=True, help="output file, or - for stdout")
    r.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    r.add_argument("--max-events", type=int, default=None, help="stop after N records")
    r.add_argument("--latest", action="store_true", help="only records arriving from now on")
    r.set_defaults(func=_cmd_record)

    rp = subparsers.add_parser("replay", help="replay a recording into Kafka")
    rp.add_argument("file", help="recording (JSON Lines), or - for stdin")
    pace = rp.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=None, help="times real time, by record timestamps")
    pace.add_argument("--max-speed", action="store_true", help="as fast as possible (the default)")
    rp.add_argument("--from", dest="start", type=parse_time_ms, default=None, metavar="ISO_OR_MS")
    rp.add_argument("--until", dest="until", type=parse_time_ms, default=None, metavar="ISO_OR_MS")
    rp.add_argument("--no-progress", action="store_true")
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
    if not structlog.is_configured():
        factory = structlog.PrintLoggerFactory(file=_Stderr())  # type: ignore[arg-type]
        structlog.configure(logger_factory=factory)
    return Settings()


def _producer_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--delivery-timeout",
        type=float,
        default=20.0,
        help="seconds before an unacknowledged record counts as failed (default 20)",
    )
    p.add_argument("--no-create-topics", action="store_true", help="do not create missing topics")


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


def _finish(summary: DeliverySummary) -> int:
    print(summary.line())
    for err in summary.errors[:3]:
        print(f"  {err}", file=sys.stderr)
    return 0 if summary.ok else 1


def _fail(exc: BaseException) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def _ensure(settings: Settings, args: argparse.Namespace, names: Any = TOPIC_NAMES) -> None:
    if not args.no_create_topics:
        ensure_topics(settings, names, timeout_ms=_producer_kwargs(args)["max_block_ms"])


def _open_in(path: str) -> IO[str]:
    return sys.stdin if path == "-" else open(path, encoding="utf-8")


def _cmd_produce_lines(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        fh = _open_in(args.file)
    except OSError as exc:
        return _fail(exc)
    try:
        _ensure(settings, args, [args.kind])
        with EventProducer(settings, **_producer_kwargs(args)) as prod:
            produce_lines(fh, args.kind, prod)
        return _finish(prod.summary())
    except DeliveryError as exc:
        return _fail(exc)
    finally:
        if fh is not sys.stdin:
            fh.close()


def _shifted(rec: RecordedRecord, offset_ms: int) -> RecordedRecord:
    """Move a generated record's event time by ``offset_ms`` (value ``ts`` and record timestamp)."""
    value = dict(rec.value) if isinstance(rec.value, dict) else rec.value
    if isinstance(value, dict) and isinstance(value.get("ts"), int):
        value["ts"] += offset_ms
    ts = rec.timestamp + offset_ms if rec.timestamp is not None else None
    return rec.model_copy(update={"value": value, "timestamp": ts})


def _cmd_generate(args: argparse.Namespace) -> int:
    """Items and profiles first, then interactions paced at ``--rate`` until ``--duration``."""
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
    offset_ms = 0 if args.keep_times else int(time.time() * 1000) - int(START.timestamp() * 1000)
    try:
        _ensure(settings, args)
        with EventProducer(settings, **_producer_kwargs(args)) as prod:
            _generate_into(prod, settings, spec, offset_ms, args)
        return _finish(prod.summary())
    except DeliveryError as exc:
        return _fail(exc)


def _generate_into(
    prod: EventProducer, settings: Settings, spec: StreamSpec, offset_ms: int, args: argparse.Namespace
) -> None:
    disable = args.no_progress or not sys.stderr.isatty()
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
            rec = _shifted(rec, offset_ms)
            prod.send_raw(
                settings.topic(name),
                rec.key.encode() if rec.key is not None else None,
                rec.value_bytes(),
                timestamp_ms=rec.timestamp,
            )


def _cmd_record(args: argparse.Namespace) -> int:
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
    return sum(1 for _ in iter_recording(path))


def _cmd_replay(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        records: Any
        if args.file == "-":
            records = iter_recording(sys.stdin)
        else:
            total = _checked(args.file)
            records = _Sized(iter_recording(args.file), total)
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
    return _finish(summary)


class _Sized:
    """An iterator with a known length, so the progress bar can show a total."""

    def __init__(self, it: Iterator[RecordedRecord], n: int) -> None:
        self._it = it
        self._n = n

    def __iter__(self) -> Iterator[RecordedRecord]:
        return self._it

    def __len__(self) -> int:
        return self._n
