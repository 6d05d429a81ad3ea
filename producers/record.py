"""Record topics to a JSON Lines file that ``replay`` (and evaluate, datasets) can read.

Partitions are assigned manually, with no consumer group: recording never joins a
group (no rebalance wait, no committed offsets that would change what the
worker's group sees), and every run reads what it was asked to read.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import structlog
from kafka import KafkaConsumer, TopicPartition

from producers.kafka_config import client_config
from producers.topics import ensure_topics
from towerstream.recording import RecordedRecord
from towerstream.settings import Settings

log = structlog.get_logger(__name__)

#: Poll at most this long, so duration and stop are checked a few times a second.
POLL_MS = 200


def to_recorded(
    logical: str,
    key: bytes | None,
    value: bytes | None,
    timestamp: int | None,
    headers: list[tuple[str, bytes]] | None,
) -> RecordedRecord:
    """A consumed record as a RecordedRecord.

    The value is parsed only when it is a JSON object: other JSON (strings,
    numbers) would not re-encode to the same bytes, so it stays a raw string.
    """
    parsed: Any = None
    if value is not None:
        text = value.decode("utf-8", errors="replace")
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        parsed = obj if isinstance(obj, dict) else text
    return RecordedRecord(
        topic=logical,
        key=key.decode("utf-8", errors="replace") if key is not None else None,
        value=parsed,
        timestamp=timestamp if timestamp is not None and timestamp >= 0 else None,
        headers={k: (v or b"").decode("utf-8", errors="replace") for k, v in (headers or [])},
    )


@contextmanager
def _open_out(out: str | Path | IO[str]) -> Iterator[IO[str]]:
    if isinstance(out, (str, Path)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as fh:
            yield fh
    else:
        yield out


def record(
    settings: Settings,
    topics: list[str],
    out: str | Path | IO[str],
    *,
    duration_s: float | None = None,
    max_events: int | None = None,
    from_beginning: bool = True,
    stop: threading.Event | None = None,
    create_topics: bool = True,
) -> int:
    """Consume the logical ``topics`` and write one JSON line per record; returns the count.

    Stops after ``duration_s`` seconds, ``max_events`` records, when ``stop`` is
    set, or on Ctrl-C (the file then holds everything recorded so far). Each line
    is flushed as written. Order within a partition is kept; partitions interleave.
    Missing topics are created first (``create_topics``) so that a recorder started
    before the producer sees every partition.
    """
    if not topics:
        raise ValueError("no topics to record")
    if create_topics:
        ensure_topics(settings, topics)
    logical_of = {settings.topic(t): t for t in topics}
    consumer = KafkaConsumer(
        **client_config(settings, client_id="towerstream-recorder"),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        # The test broker returns nothing with a fetch wait of 0 (see broker-notes).
        fetch_max_wait_ms=max(10, settings.consumer_max_fetch_wait_ms),
    )
    count = 0
    deadline = time.monotonic() + duration_s if duration_s is not None else None
    try:
        tps = _assign_all(consumer, list(logical_of), deadline)
        if not tps:
            log.warning("nothing_to_record", topics=topics)
            return 0
        if from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        log.info("recording", topics=topics, partitions=len(tps))
        with _open_out(out) as fh:
            while True:
                if stop is not None and stop.is_set():
                    break
                if max_events is not None and count >= max_events:
                    break
                timeout_ms = POLL_MS
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    timeout_ms = max(1, min(POLL_MS, int(left * 1000)))
                batches = consumer.poll(timeout_ms=timeout_ms)
                for tp in sorted(batches, key=lambda t: (t.topic, t.partition)):
                    for msg in batches[tp]:
                        if max_events is not None and count >= max_events:
                            break
                        rec = to_recorded(
                            logical_of[msg.topic], msg.key, msg.value, msg.timestamp, msg.headers
                        )
                        fh.write(rec.model_dump_json() + "\n")
                        fh.flush()
                        count += 1
    except KeyboardInterrupt:
        log.info("recording_interrupted", records=count)
    finally:
        consumer.close(autocommit=False)
    log.info("recorded", records=count)
    return count


def _assign_all(consumer: KafkaConsumer, topics: list[str], deadline: float | None) -> list[TopicPartition]:
    """Assign every partition of ``topics``, waiting (until ``deadline``) for their metadata."""
    tps: list[TopicPartition] = []
    wait_until = deadline if deadline is not None else time.monotonic() + 30.0
    for topic in topics:
        while True:
            parts = consumer.partitions_for_topic(topic)
            if parts:
                tps.extend(TopicPartition(topic, p) for p in sorted(parts))
                break
            if time.monotonic() >= wait_until:
                log.warning("topic_missing", topic=topic)
                break
            time.sleep(0.1)
    consumer.assign(tps)
    return tps
