"""The worker's state outside Faust: the engine, its executors, dead-lettering, health."""

from __future__ import annotations

import asyncio
import functools
import gc
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from streams import metrics
from streams.dead_letters import send_dead_letter
from streams.health import Health
from streams.lag import LagMonitor
from streams.log_bounds import LogReset
from towers import TowerConfig
from towerstream.engine import Engine, EngineConfig
from towerstream.heap import trim_heap
from towerstream.settings import Settings

log = structlog.get_logger(__name__)
T = TypeVar("T")


def engine_config(settings: Settings) -> EngineConfig:
    tower = TowerConfig(
        dim=settings.embedding_dim, device=settings.device, seed=settings.seed, history_len=settings.history_len
    )
    return EngineConfig(tower=tower, index_kind=settings.index_kind)


class WorkerRuntime:
    """Owns the Engine. All engine mutations run on one thread (in order); queries on a small pool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: Engine | None = None
        self.train_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="train")
        #: Queries (``serve``): a lock held by a train step, an index save or a re-fit blocks a
        #: serving thread, never the event loop that reads the topics and answers /healthz.
        self.serve_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="serve")
        #: Durable halves of interaction batches (``Engine.commit_interactions``), apart from training.
        self.commit_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        #: Item upserts and deletes (``Engine.apply_items``): they take the engine's items lock, not
        #: the one a train step holds, so a new item is searchable while a step runs.
        self.items_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="items")
        #: Background work that must not hold the training thread: checkpoint writes
        #: (``Engine.write_snapshot``) and IVF re-fits (``Engine.refit_index``), one at a time.
        self.maintenance_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maintenance")
        #: The interactions agent's queue of committed batches (``streams.training_queue``).
        self.training_queue: Any = None
        self._ready: asyncio.Event | None = None
        self.kafka_up = False
        #: Degraded conditions and notices shown on /healthz (``streams.health``).
        self.health = Health()
        #: Readers that must catch up with their topic before the worker is ready (``app`` adds
        #: "items" when the batch reader reads it): ready means the catalog
        #: on the topic when the worker started is indexed, not only that the engine is open.
        self.catching_up: set[str] = set()
        #: Per-partition lag of every reader, and stalled partitions (``streams.lag``).
        self.lag = LagMonitor(self.health, settings.stall_after_s)
        self.started_at = time.time()
        self.dead_letter_topic: Any = None  # set by the app: a faust Topic
        self.last_checkpoint_at = 0.0
        self.last_reembed_at = time.time()
        #: Optional observer (drift monitoring): ``before_learn(engine, events)`` on the commit
        #: thread before each batch is committed (and shown to serving), ``after_learn(engine,
        #: events, result)`` on the training thread after it is learned, and
        #: ``observe_served(recommendations)`` for every answer served.
        self.monitor: Any = None
        #: Event-time ordering: when input was last staged (monotonic), 0 when nothing is pending.
        self.last_staged_at = 0.0
        self._opening: Future[Engine] | None = None
        self._after_replay: asyncio.Future[None] | None = None
        self._open_t0 = 0.0
        #: Publishes item vectors and model versions for serving replicas (``streams.publisher``;
        #: None with ``publish`` off).
        self.publisher: Any = None
        #: Where the state lives and what opening it found (``/healthz`` "state"; printed by the CLI).
        self.state: dict[str, Any] = {"data_dir": str(Path(settings.data_dir).resolve())}

    @property
    def ready_event(self) -> asyncio.Event:
        if self._ready is None:
            self._ready = asyncio.Event()
        return self._ready

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.ready_event.is_set()

    @property
    def serving_ready(self) -> bool:
        """Engine open and every gating reader caught up: what /healthz calls ready."""
        return self.ready and not self.catching_up

    def caught_up(self, reader: str) -> None:
        """``reader`` has applied its topic up to where it ended when the reader joined its group."""
        if reader in self.catching_up:  # replaced whole: /healthz may read it meanwhile
            self.catching_up = self.catching_up - {reader}
            log.info("reader_caught_up", reader=reader, still_catching_up=sorted(self.catching_up))
        metrics.READY.set(1 if self.serving_ready else 0)

    @property
    def opening(self) -> bool:
        """True once ``begin_open`` has been called."""
        return self._opening is not None

    def begin_open(self) -> Future[Engine]:
        """Start opening the engine on the training thread now; idempotent.

        The worker calls this before it joins the consumer group (Faust starts app tasks only
        after partitions are assigned), so loading the checkpoint overlaps the group join. The
        engine is visible to serving as soon as it is constructed: while it loads or rebuilds,
        ``/recommend`` answers from popularity with the reason.
        """
        if self._opening is None:
            self._open_t0 = time.perf_counter()
            self._opening = self.train_pool.submit(self._open_blocking)
        return self._opening

    def _open_blocking(self) -> Engine:
        self.state["found_state"] = self.settings.has_state()
        engine = Engine(self.settings.engine_dir, engine_config(self.settings))
        self.engine = engine
        engine.restore()
        return engine

    async def open(self) -> Engine:
        self.engine = await asyncio.wrap_future(self.begin_open())
        # The loaded state is millions of long-lived objects: a full collection walks them all
        # with the GIL held, ~240 ms at 100k items (gc.callbacks in the worker while it loaded
        # the bench/query_latency.py state), a stall of every thread, queries included, each
        # time long-lived objects grow by a quarter. Frozen, collections skip them; reference
        # counting still frees them.
        gc.collect()
        gc.freeze()
        t0 = self._open_t0
        self.last_checkpoint_at = time.time()
        if self.settings.publish:  # before the item readers start: they wait for ready
            from streams.publisher import Publisher

            self.publisher = Publisher(self.settings, self.engine, self.health)
            self.engine.on_items_applied = self.publisher.items_changed
            self.publisher.start()
        self.ready_event.set()
        metrics.READY.set(1 if self.serving_ready else 0)
        metrics.INDEX_SIZE.set(len(self.engine.index))
        stats = self.engine.stats()
        log.info("engine_ready", seconds=round(time.perf_counter() - t0, 3), **stats)
        self.state["reloaded"] = {
            "model_version": int(stats["model_version"]), "items": int(stats["items_known"]),
            "users": max(0, int(stats["users_known"]) - 1),  # less the anonymous user every engine has
            "trained_in_model": int(stats["trained_in_model"]),
        } if self.state.get("found_state") else None
        # Where the state lives and what came back from it: a restart that silently started
        # afresh (another data dir, a wiped volume) must be visible at once.
        log.info("state_opened", **self.state)
        if self.engine.replay_s > 0.5:
            # A long replay means the last incarnations died before checkpointing (a crash loop):
            # checkpoint soon, so the next restart does not replay the same journal again, but
            # after the first batch has had its turn on the training thread.
            self._after_replay = asyncio.ensure_future(self._checkpoint_after(0.3))
        return self.engine

    async def _checkpoint_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        try:
            await self.checkpoint()
        except Exception as exc:  # noqa: BLE001 - the periodic checkpoint will try again
            log.error("checkpoint_failed", error=repr(exc)[:300])

    async def wait_ready(self) -> Engine:
        await self.ready_event.wait()
        assert self.engine is not None
        return self.engine

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run an engine mutation off the event loop, serialised with every other mutation."""
        return await self._on(self.train_pool, fn, *args)

    async def run_items(self, fn: Callable[..., T], *args: Any) -> T:
        """Apply item events off the event loop and apart from training (ordered among item batches)."""
        return await self._on(self.items_pool, fn, *args)

    async def run_commit(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a durable commit off the event loop and apart from training (ordered among commits)."""
        return await self._on(self.commit_pool, fn, *args)

    @staticmethod
    async def _on(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def serve(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Answer a query (HTTP or Kafka request/reply) on a serving thread.

        Why not on the event loop: a query may wait for a lock (a train step growing the user
        tables, an index save or IVF re-fit), and Faust's loop, which also serves HTTP, must not
        stop for it. The hand-over costs a query two thread wake-ups; in this one process it also
        shares the GIL and the cores with ingestion and training. Serving replicas
        (``towerstream serve``) are the answer where query latency under ingestion matters.
        """
        return await asyncio.get_running_loop().run_in_executor(self.serve_pool, functools.partial(fn, *args, **kw))

    async def dead_letter(self, message: Any, reason: str, kind: str, event_id: str | None = None) -> None:
        """Send the original bytes with where they came from and why; never raises on bad input.

        Faust flushes its producer before it commits offsets, so a dead letter is delivered before
        the offset of its record is committed. A dead letter the broker refuses is logged with the
        record's position and counted (``towerstream_dead_letter_failures_total``); the agent goes on.
        """
        await send_dead_letter(lambda key, value: self.dead_letter_topic.send(key=key, value=value),
                               message, reason, kind, event_id,
                               sent=lambda topic, k: metrics.DEAD_LETTERS.labels(topic, k).inc(),
                               failed=metrics.DEAD_LETTER_FAILURES.inc)

    async def log_reset(self, reader: str, reset: LogReset) -> None:
        """A reader found its next offset outside the log and reads ``reset.key`` from the log start.

        The engine's durable offset is lowered first (a restart must not seek past the new log
        again), then the reset is made visible: one warning, a counter, a notice on /healthz.
        """
        if self.engine is not None:
            await self.run_commit(self.engine.reset_offsets, {reset.key: reset.log_start})
        log.warning("offset_reset", reader=reader, topic=reset.topic, partition=reset.partition, offset=reset.offset,
                    log_start=reset.log_start, log_end=reset.log_end, reason=reset.reason,
                    reading_from=reset.log_start)
        metrics.OFFSET_RESETS.labels(reset.topic, reset.reason).inc()
        self.health.notice("offset_reset", reader=reader, **reset.detail())

    async def checkpoint(self) -> None:
        """Copy the state on the training thread, then serialise and write it on the maintenance thread."""
        engine = self.engine
        if engine is None:
            return
        t0 = time.perf_counter()
        snap = await self.run(engine.snapshot)
        metrics.CHECKPOINT_PAUSE_SECONDS.set(time.perf_counter() - t0)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.maintenance_pool, engine.write_snapshot, snap)
        del snap  # the copy is garbage now: give its freed heap pages back (towerstream.heap)
        await loop.run_in_executor(self.maintenance_pool, trim_heap)
        self.last_checkpoint_at = time.time()
        metrics.CHECKPOINT_SECONDS.set(time.perf_counter() - t0)

    async def close(self) -> None:
        if self.publisher is not None:
            # A version in flight is given up (the next start publishes a new one at once, whose sweep
            # also covers item changes not flushed now): wait little for it, the checkpoint comes first.
            await asyncio.get_running_loop().run_in_executor(None, self.publisher.stop, 1.0)
        if self.engine is not None:
            loop = asyncio.get_running_loop()
            for pool in (self.commit_pool, self.items_pool):  # let batches in flight finish
                await loop.run_in_executor(pool, lambda: None)
            if self.training_queue is not None:
                await self.training_queue.join()  # train what was acknowledged: no replay at the next start
            await self.checkpoint()
            await self.run(self.engine.close)
            self.engine = None
            metrics.READY.set(0)
