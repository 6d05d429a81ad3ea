"""Faust agents: raw bytes in, pydantic validation, micro-batches into the engine.

Each agent reads raw bytes (a record Faust cannot decode would otherwise crash the
actor and be skipped silently), validates with the event schemas, dead-letters what
fails with the reason, and hands the valid micro-batch to the engine on the training
thread. ``take_events`` acks a batch only after its body returns, so offsets are
committed only for events whose effects are already durable.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import faust
import structlog

from streams import metrics
from streams.batch_apply import FAILED, apply_batch, record_of
from streams.decoding import decode_all
from streams.runtime import WorkerRuntime
from streams.training_queue import TrainingQueue, _train_observed, commit_observed
from towerstream.engine import SourcePos
from towerstream.events import decode_interaction, decode_item, decode_user, encode
from towerstream.events.recommend import RecommendRequest

log = structlog.get_logger(__name__)


async def _validate(
    runtime: WorkerRuntime, events: list[Any], decode: Callable[[bytes], Any], off_loop: bool = False
) -> tuple[list[Any], list[SourcePos]]:
    """Decode a batch and dead-letter what fails. ``off_loop``: decode on the items thread, so a
    batch of 512 item events (several ms of pydantic) does not hold up Faust's event loop, which
    reads the topics and sends the dead letters."""
    messages = [record_of(event) for event in events]
    if off_loop:
        decoded = await runtime.run_items(decode_all, messages, decode)
    else:
        decoded = decode_all(messages, decode)
    valid: list[Any] = []
    sources: list[SourcePos] = []
    for msg, ev in zip(messages, decoded):
        if isinstance(ev, tuple):
            await runtime.dead_letter(msg, ev[0], ev[1])
        else:
            valid.append(ev)
            sources.append(SourcePos(msg.topic, msg.partition, msg.offset))
    return valid, sources


async def apply_interaction_records(runtime: WorkerRuntime, engine: Any, queue: TrainingQueue,
                                    records: list[Any]) -> None:
    """Interactions (either reader): decode, then stage them (event-time ordering), or make them
    durable and queue them; the queue trains them on the training thread while the next batch is read."""
    valid, sources = await _validate(runtime, records, decode_interaction)
    if not valid or await _staged(runtime, engine, "interactions", valid, sources):
        return
    committed = await apply_batch(runtime, records, sources, commit_observed, runtime, engine, valid, sources,
                                  on=runtime.run_commit)
    if committed is not FAILED:
        await queue.put(committed, records)


async def apply_item_records(runtime: WorkerRuntime, engine: Any, records: list[Any]) -> None:
    """Items: decode a batch, then apply it on the items thread (or stage it); a failing engine
    call dead-letters the valid records (``apply_batch``)."""
    s = runtime.settings
    valid, sources = await _validate(runtime, records, decode_item, off_loop=True)
    if not valid or await _staged(runtime, engine, "items", valid, sources):
        return
    t0 = time.perf_counter()
    res = await apply_batch(runtime, records, sources, engine.apply_items, valid, sources,
                            on=runtime.run_items)
    if res is FAILED:
        return
    topic = s.topic("items")
    metrics.EVENTS.labels(topic).inc(res.upserted + res.deleted)
    metrics.BATCH_SECONDS.labels(topic).observe(time.perf_counter() - t0)
    metrics.DUPLICATES.labels(topic).inc(len(res.duplicates))
    metrics.UNKNOWN_DELETES.inc(len(res.unknown_deletes))
    metrics.STALE_ITEMS.inc(len(res.stale))
    now_ms = time.time() * 1000
    for ev in valid:
        metrics.UPSERT_LAG.observe(max(now_ms - ev.ts.timestamp() * 1000, 0.0) / 1000)
    metrics.INDEX_SIZE.set(len(engine.index))


def _learn_observed(runtime: WorkerRuntime, engine: Any, valid: list[Any], sources: list[SourcePos]) -> Any:
    """``Engine.learn`` with the monitor's test-then-train probe, on the training thread."""
    return _train_observed(runtime, engine, [commit_observed(runtime, engine, valid, sources)])


async def _staged(runtime: WorkerRuntime, engine: Any, kind: str, valid: list[Any], sources: list[SourcePos]) -> bool:
    """In event-time ordering, stage the batch durably (applied later by the sequencer); else False."""
    if runtime.settings.ordering != "event_time":
        return False
    await runtime.run(engine.stage, kind, valid, sources)
    runtime.last_staged_at = time.monotonic()
    return True


async def drain_when_idle(runtime: WorkerRuntime) -> None:
    """Event-time ordering: once input has been idle for ``ordering_idle_s``, apply what is staged."""
    engine = await runtime.wait_ready()
    s = runtime.settings
    if await runtime.run(engine.staged_count):
        runtime.last_staged_at = time.monotonic()  # staged before a restart: drain it too
    while True:
        await asyncio.sleep(min(0.2, s.ordering_idle_s / 2))
        if runtime.last_staged_at and time.monotonic() - runtime.last_staged_at >= s.ordering_idle_s:
            runtime.last_staged_at = 0.0
            learn = functools.partial(_learn_observed, runtime, engine)
            n = await runtime.run(engine.drain_staged, s.batch_max, learn)
            log.info("staged_events_applied", events=n, model_version=engine.model_version)
            metrics.MODEL_VERSION.set(engine.model_version)
            metrics.INDEX_SIZE.set(len(engine.index))


def _next_offsets(events: Any) -> dict[str, tuple[int, int | None]]:
    """Per "topic:partition" of a Faust batch: the offset after its last event (the lag monitor's input)."""
    out: dict[str, tuple[int, int | None]] = {}
    for event in events:
        msg = event.message
        key = f"{msg.topic}:{msg.partition}"
        out[key] = (max(out.get(key, (0, None))[0], msg.offset + 1), None)
    return out


def register_agents(app: faust.App, runtime: WorkerRuntime, topics: dict[str, Any]) -> None:
    """The agents; the interactions and items ones only with ``interactions_consumer="faust"``
    / ``items_consumer="faust"`` (else ``streams.batch_consumer`` reads them)."""
    s = runtime.settings
    if s.interactions_consumer == "faust":
        _register_interactions_agent(app, runtime, topics)
    _register_other_agents(app, runtime, topics)


def _register_interactions_agent(app: faust.App, runtime: WorkerRuntime, topics: dict[str, Any]) -> None:
    s = runtime.settings

    @app.agent(topics["interactions"], name="interactions")
    async def interactions(stream: faust.StreamT[bytes]) -> None:
        engine = await runtime.wait_ready()
        queue = runtime.training_queue = TrainingQueue(
            runtime, engine, s.topic("interactions"), max_events=s.train_batch_max, max_pending=s.train_queue_max,
            merge_after=s.train_merge_after)
        async for events in stream.take_events(s.batch_max, within=s.batch_within_s):
            # Durable here; Faust acks the batch when this body returns.
            await apply_interaction_records(runtime, engine, queue, list(events))


def _register_other_agents(app: faust.App, runtime: WorkerRuntime, topics: dict[str, Any]) -> None:
    s = runtime.settings

    if s.items_consumer == "faust":

        @app.agent(topics["items"], name="items")
        async def items(stream: faust.StreamT[bytes]) -> None:
            engine = await runtime.wait_ready()
            async for events in stream.take_events(s.batch_max, within=s.batch_within_s):
                await apply_item_records(runtime, engine, list(events))

    @app.agent(topics["users"], name="users")
    async def users(stream: faust.StreamT[bytes]) -> None:
        engine = await runtime.wait_ready()
        async for events in stream.take_events(s.batch_max, within=s.batch_within_s):
            valid, sources = await _validate(runtime, list(events), decode_user)
            if valid and not await _staged(runtime, engine, "users", valid, sources):
                if await apply_batch(runtime, events, sources, engine.apply_users, valid, sources) is FAILED:
                    continue
                metrics.EVENTS.labels(s.topic("users")).inc(len(valid))
            runtime.lag.report("users", _next_offsets(events))

    if s.role == "train":
        return  # replicas answer the request stream (their group "<app_id>-replicas")

    @app.agent(topics["recommend-requests"], name="recommend-requests")
    async def recommend_requests(stream: faust.StreamT[bytes]) -> None:
        """Kafka request/reply: answers go to ``reply_to`` (or the responses topic), keyed by request id."""
        engine = await runtime.wait_ready()
        async for event in stream.events():
            msg = event.message
            try:
                req = RecommendRequest.model_validate_json(msg.value)
            except (ValueError, TypeError) as exc:  # TypeError: a tombstone (no value)
                await runtime.dead_letter(msg, str(exc).splitlines()[0][:500], "invalid")
                continue
            rec, resp = await runtime.serve(engine.respond, req, s.max_k)
            if runtime.monitor is not None:
                runtime.monitor.observe_served(rec)
            target = app.topic(req.reply_to) if req.reply_to else topics["recommend-responses"]
            key = (req.request_id or req.user_id).encode()
            await target.send(key=key, value=encode(resp))
