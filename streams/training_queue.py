"""Interactions: commit a batch, acknowledge it, and train it while the next batch is read.

Reading a batch through Faust costs about as much as training it, so doing the two in turn
wastes a core. The interactions agent makes each batch durable (``Engine.commit_interactions``:
dedup markers and journal in one RocksDB WriteBatch, on a thread of its own), lets Faust
acknowledge it, and queues it here; one coroutine trains what is queued on the training thread,
merging the batches that arrived during the previous step into one (up to ``max_events``,
once the model has learned ``merge_after`` events). Light traffic therefore trains every batch
at once, a backlog trains fewer, larger batches.

What this changes for safety: nothing. Effects are durable at commit, as before; a crash with
batches queued replays them from the journal, and a checkpoint covers the journal only up to
the oldest batch not trained yet (``Engine.applied_seq``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from streams import metrics
from streams.batch_apply import FAILED, apply_batch
from streams.runtime import WorkerRuntime
from towerstream.engine import Committed, LearnResult

log = structlog.get_logger(__name__)


@dataclass
class _Queued:
    committed: Committed
    #: The batch's Faust events or aiokafka records: dead-lettered if training it raises.
    events: Sequence[Any]


def commit_observed(runtime: WorkerRuntime, engine: Any, events: Sequence[Any], sources: Sequence[Any]) -> Committed:
    """On the commit thread: the monitor scores a sample first (test-then-train), because a
    committed event is shown to serving at once (``EngineConfig.visible_at_commit``)."""
    if runtime.monitor is not None and events:
        runtime.monitor.before_learn(engine, events)
    committed: Committed = engine.commit_interactions(events, sources)
    return committed


def _train_observed(runtime: WorkerRuntime, engine: Any, batches: list[Committed]) -> LearnResult:
    """On the training thread: learn, then the monitor accounts the batch."""
    events = [ev for c in batches for ev in c.events]
    monitor = runtime.monitor
    res: LearnResult = engine.train_committed(batches)
    if monitor is not None and events:
        monitor.after_learn(engine, events, res)
    return res


class TrainingQueue:
    """Committed interaction batches waiting for the training thread; at most ``max_pending`` events."""

    def __init__(self, runtime: WorkerRuntime, engine: Any, topic: str, max_events: int, max_pending: int,
                 merge_after: int = 0) -> None:
        self.runtime = runtime
        self.engine = engine
        self.topic = topic
        self.max_events = max(max_events, 1)
        #: Below this many events learned, no merging: each committed batch is its own step.
        self.merge_after = merge_after
        self.max_pending = max(max_pending, self.max_events)
        self._queue: list[_Queued] = []
        self._pending = 0
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()

    @property
    def pending_events(self) -> int:
        """Committed events not trained yet (queued or in the current step)."""
        return self._pending

    async def put(self, committed: Committed, events: Sequence[Any]) -> None:
        """Queue a committed batch; waits while more than ``max_pending`` events are untrained."""
        if not committed.events:
            self._count(LearnResult(duplicates=committed.duplicates))
            return
        self._queue.append(_Queued(committed, events))
        self._pending += len(committed.events)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())
        while self._pending > self.max_pending:
            self._progress.clear()
            await self._progress.wait()

    async def join(self) -> None:
        """Wait until everything queued has been trained (shutdown, tests)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        while self._queue:
            take: list[_Queued] = []
            n = 0
            limit = self.max_events if self.engine.trained_in_model >= self.merge_after else 0
            while self._queue and (not take or n + len(self._queue[0].committed.events) <= limit):
                q = self._queue.pop(0)
                take.append(q)
                n += len(q.committed.events)
            batches = [q.committed for q in take]
            events = [ev for q in take for ev in q.events]
            sources = [s for c in batches for s in c.sources if s is not None]
            t0 = time.perf_counter()
            try:
                res = await apply_batch(self.runtime, events, sources, _train_observed, self.runtime, self.engine, batches)
            finally:
                self._pending -= n
                self._progress.set()
            if res is FAILED:
                continue
            metrics.TRAIN_BATCH_EVENTS.observe(n)
            res.seconds = time.perf_counter() - t0 + sum(c.seconds for c in batches)
            self._count(res)

    def _count(self, res: LearnResult) -> None:
        metrics.EVENTS.labels(self.topic).inc(res.trained)
        if res.trained:
            metrics.BATCH_SECONDS.labels(self.topic).observe(res.seconds)
        if res.duplicates:
            metrics.DUPLICATES.labels(self.topic).inc(len(res.duplicates))
        if res.unknown_items:
            metrics.UNKNOWN_ITEMS.inc(len(res.unknown_items))
        for lag in res.upsert_lag_ms:
            metrics.UPSERT_LAG.observe(max(lag, 0.0) / 1000)
        if res.trained:
            metrics.LOSS.set(res.loss)
            metrics.MODEL_VERSION.set(self.engine.model_version)
            metrics.INDEX_SIZE.set(len(self.engine.index))
