"""Whether a reader's next offset still lies in the log it is about to read.

Why: a worker's durable offsets (``Engine.offsets``) outlive the log they were taken from. After
the embedded broker restarts (memory only), a topic is deleted and re-created, or the worker is
pointed at a new cluster, the new log is shorter: a reader seeking to the old offsets would wait,
silently, until the new log grew past them (Tansu), or be moved back to the start by aiokafka's
``auto_offset_reset`` with one INFO line (Apache Kafka). Retention or deletion can also pass an
offset by (it is then before the log start). Either way the reader must read from the log start,
which event ids make harmless (re-read events are dropped as duplicates), and say so.

Telling a replaced log from Tansu's low end offsets: Tansu's ``ListOffsets(latest)`` answers the
base offset of the last record batch + 1, so a healthy durable offset can lie a few records past
the listed end. Only then (offset > listed end) is the log probed: a fetch at the listed end - 1,
an offset both brokers hold (Kafka: the last record; Tansu: the last batch's base), returns the
partition's high watermark, which both brokers report exactly. An offset past that is past the
real end: the log was replaced. On Kafka the listed end is exact and the probe only confirms it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

log = structlog.get_logger(__name__)

#: How long a probe fetch may take before the log's end is taken as unknown (no reset then).
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LogReset:
    """A partition to read again from ``log_start``: ``offset`` was outside [log_start, log_end]."""

    topic: str
    partition: int
    #: The next offset the reader would have read (durable or committed, whichever is higher).
    offset: int
    log_start: int
    log_end: int
    reason: str  # "past_end" (the log was replaced) or "before_start" (retention or deletion passed it)

    @property
    def key(self) -> str:
        return f"{self.topic}:{self.partition}"

    def detail(self) -> dict[str, Any]:
        return asdict(self)


def outside(offset: int, log_start: int, listed_end: int, highwater: int | None) -> str | None:
    """Why ``offset`` lies outside the log ("past_end", "before_start"), or None when it is inside.

    ``highwater``: what a fetch at ``listed_end - 1`` reported, or None when the listed end was
    not passed (no probe needed) or the probe got no answer (then the offset is kept: better a
    wait shown as lag than a false reset). The offset ``end`` itself is inside: it is the next
    record to be written.
    """
    if offset < log_start:
        return "before_start"
    if offset <= listed_end:
        return None
    if highwater is None:
        return None
    return "past_end" if offset > max(listed_end, highwater) else None


async def probe_highwaters(consumer: AIOKafkaConsumer, at: Mapping[TopicPartition, int],
                           timeout_s: float = PROBE_TIMEOUT_S) -> dict[TopicPartition, int]:
    """The high watermark a fetch at ``at[tp]`` returns, per partition (absent: no answer in time).

    ``consumer`` is started, in no group, and used for this only; its records are dropped.
    """
    consumer.assign(list(at))
    for tp, off in at.items():
        consumer.seek(tp, off)
    got: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(got) < len(at) and time.monotonic() < deadline:
        await consumer.getmany(timeout_ms=200)
        for tp in at:
            hw = consumer.highwater(tp)
            if hw is not None:
                got[tp] = int(hw)
    return got


async def check_offsets(consumer: AIOKafkaConsumer, wanted: Mapping[TopicPartition, int],
                        new_probe: Callable[[], AIOKafkaConsumer]) -> dict[TopicPartition, LogReset]:
    """The partitions of ``wanted`` (next offset to read) whose offset lies outside their log.

    ``consumer`` answers the listed start and end offsets; ``new_probe`` makes an unstarted
    consumer in no group, used only when an offset is past a listed end (see the module's doc).
    """
    if not wanted:
        return {}
    tps = list(wanted)
    starts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    beyond = {tp: max(ends[tp] - 1, starts[tp]) for tp in tps if wanted[tp] > ends[tp]}
    highwaters: dict[TopicPartition, int] = {}
    if beyond:
        probe = new_probe()
        try:
            await probe.start()
            highwaters = await probe_highwaters(probe, beyond)
        finally:
            await probe.stop()
    resets: dict[TopicPartition, LogReset] = {}
    for tp in tps:
        offset, start, hw = wanted[tp], starts[tp], highwaters.get(tp)
        if tp in beyond and hw is None:
            log.warning("log_end_unknown", topic=tp.topic, partition=tp.partition, offset=offset,
                        listed_end=ends[tp], reason="the probe fetch got no answer; offset kept")
        reason = outside(offset, start, ends[tp], hw)
        if reason is not None:
            resets[tp] = LogReset(tp.topic, tp.partition, offset, start, max(ends[tp], hw or 0), reason)
    return resets

