"""Replay a recording into Kafka: same keys, bytes, event times and headers.

Pacing follows the records' own timestamps, so a replay at ``speed=10`` shows the
worker the stream's real burstiness ten times faster, not a uniform rate.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import structlog
from tqdm import tqdm

from producers.producer import DeliverySummary, EventProducer
from producers.topics import ensure_topics
from towerstream.logs import stream_is_terminal
from towerstream.recording import RecordedRecord
from towerstream.settings import TOPIC_NAMES, Settings

log = structlog.get_logger(__name__)

DEFAULT_PREFIX = "towerstream"


def logical_name(rec: RecordedRecord, settings: Settings) -> str:
    """Strip our prefix or the default one: recordings may hold full topic names."""
    name = rec.logical_topic(settings.topic_prefix)
    return rec.logical_topic(DEFAULT_PREFIX) if name == rec.topic else name


def _in_window(ts: int | None, start_ms: int | None, until_ms: int | None) -> bool:
    """Records without a timestamp are kept: there is nothing to filter them by."""
    if ts is None:
        return True
    if start_ms is not None and ts < start_ms:
        return False
    return until_ms is None or ts < until_ms


def replay(
    records: Iterable[RecordedRecord],
    settings: Settings,
    *,
    speed: float | None = None,
    start_ms: int | None = None,
    until_ms: int | None = None,
    progress: bool = True,
    create_topics: bool = True,
    producer: EventProducer | None = None,
    **producer_kwargs: Any,
) -> DeliverySummary:
    """Re-produce each record to ``settings.topic(logical name)``; returns the delivery summary.

    ``speed=None`` sends as fast as possible; ``speed=s`` sleeps so that record
    timestamps are reproduced ``s`` times faster than they were spaced (anchored
    at the first replayed record; records whose time has passed go at once).
    ``start_ms`` is inclusive, ``until_ms`` exclusive. A given ``producer`` is
    flushed but not closed; otherwise one is made from ``producer_kwargs`` and closed.
    """
    if speed is not None and speed <= 0:
        raise ValueError("speed must be > 0 (None replays as fast as possible)")
    if create_topics:
        ensure_topics(settings, TOPIC_NAMES)
    ensured = set(TOPIC_NAMES)
    own = producer is None
    prod = producer if producer is not None else EventProducer(settings, **producer_kwargs)
    total = len(records) if hasattr(records, "__len__") else None  # type: ignore[arg-type]
    disable = not progress or not stream_is_terminal()
    anchor: tuple[float, int] | None = None  # (wall clock, record ts) of the first record
    try:
        with tqdm(total=total, unit="rec", desc="replay", disable=disable) as bar:
            for rec in records:
                if not _in_window(rec.timestamp, start_ms, until_ms):
                    continue
                name = logical_name(rec, settings)
                if create_topics and name not in ensured:
                    ensure_topics(settings, [name])
                    ensured.add(name)
                if speed is not None and rec.timestamp is not None:
                    if anchor is None:
                        anchor = (time.monotonic(), rec.timestamp)
                    due = anchor[0] + (rec.timestamp - anchor[1]) / 1000.0 / speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                prod.send_raw(
                    settings.topic(name),
                    rec.key.encode() if rec.key is not None else None,
                    None if rec.value is None else rec.value_bytes(),
                    timestamp_ms=rec.timestamp,
                    headers=[(k, v.encode()) for k, v in rec.headers.items()],
                    event_id=_event_id(rec),
                )
                bar.update(1)
    finally:
        summary = prod.close() if own else prod.flush(30.0)
    log.info("replay_done", sent=summary.sent, failed=summary.failed, rate=round(summary.rate, 1))
    return summary


def _event_id(rec: RecordedRecord) -> str | None:
    if isinstance(rec.value, dict):
        for field in ("event_id", "item_id", "user_id"):
            if isinstance(rec.value.get(field), str):
                return str(rec.value[field])
    return None
