"""Faust's agents' committed offsets checked against the log, as the batch readers check theirs.

Why: the agents (users, recommend-requests; interactions and items where the settings give them
to Faust) start from the offsets Faust's group committed. One past the log's end is met by
aiokafka as its ``auto_offset_reset`` says ("earliest" in this app): on Apache Kafka the fetch
fails with OffsetOutOfRange and the position moves to the log start with one INFO line; on Tansu
the fetch just comes back empty until the new log grows past the old offset, and every event
until then is skipped without a word. So, after each assignment, the group's committed offsets
of the agents' partitions are read (an OffsetFetch needs no membership) and checked with
``streams.log_bounds``; a partition outside its log gets the log start committed and is sought
there, and the reset is logged, counted and listed on /healthz like the readers' ones.

Faust internals used (faust-streaming 0.15.x, pinned in constraints.txt): the consumer thread's
``commit``, which commits as the group member (Faust's own ``commit`` skips offsets below the
committed one), and ``_committed_offset``, below which Faust ignores acks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka_auth import aiokafka_kwargs
from streams.log_bounds import check_offsets
from streams.runtime import WorkerRuntime

log = structlog.get_logger(__name__)


def faust_topics(runtime: WorkerRuntime) -> set[str]:
    """The topics Faust's agents read with these settings."""
    s = runtime.settings
    names = ["users", "recommend-requests"]
    if s.interactions_consumer == "faust":
        names.append("interactions")
    if s.items_consumer == "faust":
        names.append("items")
    return {s.topic(n) for n in names}


async def check_faust_offsets(app: Any, runtime: WorkerRuntime, assigned: Iterable[Any]) -> None:
    """Reset the agents' partitions whose committed offset lies outside the log; never raises."""
    s = runtime.settings
    mine = faust_topics(runtime)
    tps = [TopicPartition(tp.topic, tp.partition) for tp in assigned if tp.topic in mine]
    if not tps:
        return

    def new_consumer(group: str | None) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(bootstrap_servers=s.bootstrap, group_id=group, enable_auto_commit=False,
                                client_id=f"{s.app_id}-offsets-check", fetch_max_wait_ms=s.consumer_max_fetch_wait_ms,
                                **aiokafka_kwargs(s))

    consumer = new_consumer(s.app_id)  # never subscribes: it only reads the group's committed offsets
    try:
        await consumer.start()
        committed: dict[TopicPartition, int] = {}
        for tp in tps:
            off = await consumer.committed(tp)
            if off is not None and off >= 0:
                committed[tp] = int(off)
        resets = await check_offsets(consumer, committed, lambda: new_consumer(None))
    except Exception as exc:  # noqa: BLE001 - the broker away: Faust reads as it would have
        log.warning("faust_offsets_unchecked", error=repr(exc)[:300],
                    partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in tps))
        return
    finally:
        await consumer.stop()
    for tp, reset in resets.items():
        faust_tp = next(t for t in assigned if t.topic == tp.topic and t.partition == tp.partition)
        try:
            # Committed first: a seek Faust makes to the committed offset later lands on the start too.
            await app.consumer._thread.commit({faust_tp: reset.log_start})
            app.consumer._committed_offset[faust_tp] = reset.log_start or None
            await app.consumer.seek(faust_tp, reset.log_start)
        except Exception as exc:  # noqa: BLE001 - e.g. revoked meanwhile: its next owner checks it
            log.warning("faust_offset_reset_failed", topic=tp.topic, partition=tp.partition, error=repr(exc)[:300])
            continue
        await runtime.log_reset("faust", reset)


def watch_faust_assignments(app: Any, runtime: WorkerRuntime) -> None:
    """Check the agents' offsets after every assignment, beside the rebalance, not inside it."""

    running: set[asyncio.Future[None]] = set()

    @app.on_partitions_assigned.connect
    async def _check(app: Any, assigned: Any, **kwargs: Any) -> None:
        fut = asyncio.ensure_future(check_faust_offsets(app, runtime, set(assigned)))
        running.add(fut)
        fut.add_done_callback(running.discard)
