"""How far behind each partition this worker reads is, and whether it is still moving.

Why in the worker, apart from the readers: a reader that is stuck (a wedged reader, a
partition stopped at an unreadable batch, a training queue that no longer drains) cannot be trusted to report that it
is stuck. The readers report where they are (the next offset whose predecessors are done:
durable, dead-lettered or dropped as duplicates) and the high watermark their fetches saw;
this monitor asks the broker for the end offsets itself every ``LAG_EVERY_S``, so a
partition whose reader went silent still shows its lag growing, and after
``Settings.stall_after_s`` without progress while behind it degrades ``/healthz``
(``stalled:<topic>:<partition>``) until it moves again.

Lag is the log end offset minus the next offset, as Kafka's own tools report it. The end is the
higher of the listed end offset and the last fetch's high watermark: Tansu lists the base offset
of the last record batch + 1, which is low when that batch holds several records; its fetch
high watermark is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from streams import metrics
from streams.health import Health

log = structlog.get_logger(__name__)

#: Seconds between two looks at the end offsets (one ListOffsets request for every partition).
LAG_EVERY_S = 2.0


def split_tp(key: str) -> tuple[str, int]:
    topic, _, partition = key.rpartition(":")
    return topic, int(partition)


@dataclass
class _Partition:
    reader: str
    next_offset: int
    moved_at: float
    highwater: int | None = None
    listed_end: int | None = None
    #: When this partition was first seen behind (lag > 0) since it was last caught up.
    behind_since: float | None = None

    @property
    def end(self) -> int | None:
        known = [e for e in (self.highwater, self.listed_end) if e is not None]
        return max(known) if known else None

    @property
    def lag(self) -> int:
        end = self.end
        return max(end - self.next_offset, 0) if end is not None else 0


class LagMonitor:
    """Per-partition positions reported by the readers, end offsets, lag gauges and stall conditions.

    Thread-safe (one lock around every read and write), whichever thread a reader or ``/healthz``
    runs on.
    """

    def __init__(self, health: Health, stall_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.health = health
        self.stall_after_s = stall_after_s
        self.clock = clock
        self._parts: dict[str, _Partition] = {}
        self._lock = threading.Lock()

    def report(self, reader: str, positions: Mapping[str, tuple[int, int | None]]) -> None:
        """``positions``: "topic:partition" -> (next offset, last fetch high watermark or None)."""
        now = self.clock()
        with self._lock:
            for key, (next_offset, highwater) in positions.items():
                part = self._parts.get(key)
                if part is None:
                    self._parts[key] = _Partition(reader, int(next_offset), now, highwater)
                    continue
                if int(next_offset) != part.next_offset:
                    part.next_offset, part.moved_at = int(next_offset), now
                part.reader = reader
                if highwater is not None:
                    part.highwater = int(highwater)

    def forget(self, keys: Iterable[str]) -> None:
        """Partitions no longer read here (revoked): no gauge, no condition."""
        for key in keys:
            with self._lock:
                gone = self._parts.pop(key, None)
            if gone is not None:
                topic, partition = split_tp(key)
                with contextlib.suppress(KeyError):
                    metrics.CONSUMER_LAG.remove(topic, str(partition))
                self.health.clear(f"stalled:{key}")

    def partitions(self) -> list[str]:
        with self._lock:
            return sorted(self._parts)

    def set_listed_ends(self, ends: Mapping[str, int]) -> None:
        with self._lock:
            for key, end in ends.items():
                part = self._parts.get(key)
                if part is not None:
                    part.listed_end = int(end)

    def evaluate(self) -> None:
        """Gauges from the figures at hand; degrade stalled partitions, clear the others."""
        now = self.clock()
        with self._lock:
            parts = list(self._parts.items())
        for key, part in parts:
            topic, partition = split_tp(key)
            lag = part.lag
            metrics.CONSUMER_LAG.labels(topic, str(partition)).set(lag)
            if lag == 0:
                part.behind_since = None
            elif part.behind_since is None:
                part.behind_since = now
            # A partition that was caught up and idle is not stalled the moment a record arrives.
            still_for = now - max(part.moved_at, part.behind_since or now)
            if lag > 0 and still_for >= self.stall_after_s:
                if f"stalled:{key}" not in self.health.conditions():
                    log.warning("partition_stalled", topic=topic, partition=partition, offset=part.next_offset,
                                lag=lag, reader=part.reader, seconds=round(still_for, 1))
                self.health.degrade(f"stalled:{key}", "partition stalled", topic=topic, partition=partition,
                                    offset=part.next_offset, lag=lag, reader=part.reader,
                                    stalled_s=round(still_for, 1))
            elif f"stalled:{key}" in self.health.conditions():
                log.info("partition_moving", topic=topic, partition=partition, offset=part.next_offset, lag=lag)
                self.health.clear(f"stalled:{key}")

    def summary(self) -> dict[str, Any]:
        """For /healthz: the total lag, the worst partition, and every partition's figures."""
        with self._lock:
            parts = {key: {"lag": p.lag, "next_offset": p.next_offset, "log_end": p.end, "reader": p.reader}
                     for key, p in sorted(self._parts.items())}
        worst = max(parts.items(), key=lambda kv: kv[1]["lag"], default=None)
        return {"total": sum(p["lag"] for p in parts.values()),
                "worst": {"partition": worst[0], "lag": worst[1]["lag"]} if worst else None,
                "partitions": parts}


async def watch_lag(monitor: LagMonitor, new_consumer: Callable[[], Any]) -> None:
    """Every ``LAG_EVERY_S``: end offsets of the reported partitions from the broker, then ``evaluate``.

    A broker that does not answer leaves the last figures in place (and the partitions do not
    move meanwhile, so a long outage shows as stalled partitions beside "kafka unreachable").
    """
    from aiokafka import TopicPartition

    consumer = None
    while True:
        await asyncio.sleep(LAG_EVERY_S)
        keys = monitor.partitions()
        if keys:
            try:
                if consumer is None:
                    consumer = new_consumer()
                    await consumer.start()
                tps = [TopicPartition(*split_tp(k)) for k in keys]
                ends = await asyncio.wait_for(consumer.end_offsets(tps), 10)
                monitor.set_listed_ends({f"{tp.topic}:{tp.partition}": off for tp, off in ends.items()})
            except Exception as exc:  # noqa: BLE001 - broker away or a partition unknown: next time
                log.debug("lag_end_offsets_failed", error=repr(exc)[:300])
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        await consumer.stop()
                    consumer = None
        monitor.evaluate()
