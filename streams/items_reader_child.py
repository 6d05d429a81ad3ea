"""The items reader's child process: fetches and decodes the items topic apart from the worker.

Why: in the worker, reading 1,000 item upserts/s cost ~0.04 cores of Faust's event loop
(aiokafka's fetches and record unpacking) plus ~13 us of pydantic per item, all of it holding
the GIL that the queries served beside it need (p99 of ``/recommend`` at 100k items: 4.6 ms
idle, 12 ms under those upserts in round 6). Here a process of its own does the fetching, decoding and
dead-lettering, keeps the group membership and commits the offsets; the worker receives decoded
events over a pipe, applies them (RocksDB, towers, Faiss) and acknowledges. A batch's offsets
count as done only after that acknowledgement, as with the in-process reader
(``streams.batch_consumer``, whose consuming and offset logic this reuses unchanged).

Started by the worker (``streams.items_reader``) with ``main([.., FD])``, FD one end of a socket
pair. Messages (pickled tuples, ``multiprocessing.connection``):

- worker -> child: ``("settings", Settings)`` first; ``("ready", offsets, ItemEncoding)`` once
  the engine is open (what its RocksDB holds per ``"topic:partition"``, and how its towers
  encode content); ``("applied", offsets)`` or
  ``("retry", reason)`` for each batch; ``("stop",)``.
- child -> worker: ``("batch", events, sources, records, dead_letters, failures, encoded)`` and
  waits for the answer (the dead letters and refused ones since the last batch, for its
  /metrics; ``encoded`` the upserts' content as table rows, ``towers.features.EncodedItems``,
  so that ~25 us per item of pure Python runs here and not under the worker's GIL);
  ``("caught_up", name)`` once, when the batches handed over reach the end offsets the topic
  had when the child joined (the worker's readiness waits for it);
  ``("health", method, args, kwargs)`` for the worker's health registry (an unreadable batch:
  ``streams.health.Health.degrade/clear/notice``) and ``("unreadable", topic, action)`` for its
  counter, neither answered;
  ``("stopped",)`` before it exits. Without waiting for an answer: ``("reset", LogReset)``
  when a partition's offset lies outside its log and it is read from the start (the worker
  lowers its durable offset and shows the reset), ``("lag", positions)`` every second and
  ``("forget", keys)`` on revocation, for the worker's lag monitor (``streams.lag``).

The child never outlives the worker: it exits when the pipe closes, and the kernel kills it
when the worker dies (``PR_SET_PDEATHSIG``; started with the worker's pid, it also exits if
the worker died before that was set). It ignores SIGINT (a terminal's Ctrl-C reaches the
whole process group): the worker stops it over the pipe, and its broker steps then wait at
most ``stop_broker_wait_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.batch_consumer import BatchConsumer, group_id
from streams.dead_letters import send_dead_letter
from streams.decoding import Record, decode_all
from streams.kafka_auth import aiokafka_kwargs
from streams.log_bounds import LogReset
from streams.membership import rejoin_as_previous_member
from towers.features import ItemEncoding
from towerstream.events import ItemUpsert, decode_item
from towerstream.events.deadletter import MAX_RECORD_BYTES
from towerstream.lifecycle import die_with_parent
from towerstream.logs import configure_logging
from towerstream.settings import Settings

log = structlog.get_logger(__name__)


class ParentLink:
    """The child's end of the pipe. A thread reads it, so the event loop never blocks on it."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn, self.loop = conn, loop
        self.ready: asyncio.Future[tuple[dict[str, int], ItemEncoding]] = loop.create_future()
        self.stop = asyncio.Event()
        self._reply: asyncio.Future[tuple[Any, ...]] | None = None
        threading.Thread(target=self._read, name="worker-link", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                # The worker is gone: nothing read from now on could be applied. What it
                # acknowledged is committed every second; the rest is read again by its successor.
                os._exit(0)
            self.loop.call_soon_threadsafe(self._dispatch, msg)

    def _dispatch(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "ready" and not self.ready.done():
            self.ready.set_result((dict(msg[1]), msg[2]))
        elif kind in ("applied", "retry") and self._reply is not None and not self._reply.done():
            self._reply.set_result(msg)
        elif kind == "stop":
            self.stop.set()

    async def apply(self, payload: tuple[Any, ...]) -> tuple[Any, ...]:
        """Hand a batch to the worker and wait until it has applied it (one batch at a time)."""
        self._reply = self.loop.create_future()
        self.conn.send(payload)
        return await self._reply


class LinkHealth:
    """Stands in for the worker's ``Health`` here: each report goes over the pipe to the real one."""

    def __init__(self, link: ParentLink) -> None:
        self.link = link

    def degrade(self, key: str, reason: str, **detail: Any) -> None:
        self.link.conn.send(("health", "degrade", (key, reason), detail))

    def clear(self, key: str) -> None:
        self.link.conn.send(("health", "clear", (key,), {}))

    def notice(self, kind: str, **detail: Any) -> None:
        self.link.conn.send(("health", "notice", (kind,), detail))


class DurableOffsets:
    """Stands in for the engine in ``BatchConsumer``: what the worker's RocksDB holds."""

    def __init__(self, offsets: dict[str, int]) -> None:
        self.offsets = offsets


class ChildRuntime:
    """Stands in for ``WorkerRuntime`` in ``BatchConsumer``: readiness and dead letters."""

    def __init__(self, settings: Settings, link: ParentLink, producer: AIOKafkaProducer) -> None:
        self.settings, self.link, self.producer = settings, link, producer
        #: (source topic, error kind) of the dead letters sent since the last batch went to the
        #: worker, which counts them on its /metrics.
        self.dead: list[tuple[str, str]] = []
        #: Dead letters the broker refused since then (``towerstream_dead_letter_failures_total``).
        self.failures = 0
        #: The worker's content encoding (its towers' config), known once it is ready.
        self.encoding: ItemEncoding | None = None
        self.health = LinkHealth(link)

    async def wait_ready(self) -> DurableOffsets:
        offsets, self.encoding = await self.link.ready
        return DurableOffsets(offsets)

    async def dead_letter(self, message: Any, reason: str, kind: str, event_id: str | None = None) -> None:
        """As ``WorkerRuntime.dead_letter``, with this process's producer; never raises."""
        topic = self.settings.topic("dead-letters")
        await send_dead_letter(lambda key, value: self.producer.send(topic, value=value, key=key),
                               message, reason, kind, event_id,
                               sent=lambda source, k: self.dead.append((source, k)), failed=self._failed)

    def _failed(self) -> None:
        self.failures += 1

    def caught_up(self, name: str) -> None:
        """As ``WorkerRuntime.caught_up``: every batch before this message has been applied."""
        self.link.conn.send(("caught_up", name))

    def notify(self, msg: tuple[Any, ...]) -> None:
        """Tell the worker something it does not answer (a reset, positions); the pipe keeps the order."""
        self.link.conn.send(msg)


class _App:
    """``BatchConsumer`` flushes ``app.producer`` before committing offsets (dead letters first)."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer


class _DeclaredTopic:
    """The worker declares the items topic before it starts this process."""

    async def maybe_declare(self) -> None:
        return None


class ForwardingItemsConsumer(BatchConsumer):
    """``BatchConsumer`` whose batches are decoded here and applied by the worker."""

    name = "items"
    gates_readiness = True
    runtime: ChildRuntime  # type: ignore[assignment]

    def _fetch_min_bytes(self) -> int:
        return self.settings.items_fetch_min_bytes

    def _unreadable_found(self, topic: str, action: str) -> None:
        self.runtime.link.conn.send(("unreadable", topic, action))

    async def _process(self, engine: Any, records: list[Any]) -> None:
        events, sources, originals = [], [], []
        for msg, ev in zip(records, decode_all(records, decode_item)):
            if isinstance(ev, tuple):
                await self.runtime.dead_letter(msg, ev[0], ev[1])
            else:
                events.append(ev)
                sources.append((msg.topic, msg.partition, msg.offset))
                originals.append(Record(msg.topic, msg.partition, msg.offset, msg.key, msg.value))
        rt = self.runtime
        assert rt.encoding is not None  # batches come only after wait_ready
        encoded = rt.encoding.encode([ev if isinstance(ev, ItemUpsert) else None for ev in events])
        dead, failures, rt.dead, rt.failures = rt.dead, rt.failures, [], 0
        reply = await rt.link.apply(("batch", events, sources, originals, dead, failures, encoded))
        if reply[0] != "applied":  # BatchConsumer reads the batch again after a second
            raise RuntimeError(f"the worker did not apply the batch: {reply[1]}")
        engine.offsets.update(reply[1])

    async def _reset(self, engine: Any, reset: LogReset) -> None:
        engine.offsets[reset.key] = reset.log_start  # the worker lowers its own before the next batch
        self.runtime.notify(("reset", reset))

    def _report(self, positions: dict[str, tuple[int, int | None]]) -> None:
        self.runtime.notify(("lag", positions))

    def _forget(self, keys: list[str]) -> None:
        self.runtime.notify(("forget", keys))


def _die_with_parent(parent: int | None) -> None:
    """Linux: the kernel sends SIGKILL to this process when the worker dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        die_with_parent(signal.SIGKILL, parent)


async def _started_producer(settings: Settings) -> AIOKafkaProducer:
    delay = 0.5
    while True:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap, client_id=group_id(settings, "items"), acks="all",
            max_request_size=MAX_RECORD_BYTES, compression_type=settings.compression_type,
            **aiokafka_kwargs(settings))
        try:
            await producer.start()
            return producer
        except KafkaError as exc:
            log.warning("items_reader_producer_start_failed", error=repr(exc)[:300], retry_in_s=delay)
            with contextlib.suppress(Exception):
                await producer.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def serve(settings: Settings, conn: Connection) -> None:
    link = ParentLink(conn, asyncio.get_running_loop())
    producer = await _started_producer(settings)
    runtime = ChildRuntime(settings, link, producer)
    consumer = ForwardingItemsConsumer(_App(producer), runtime, _DeclaredTopic())
    reading = consumer.begin()
    stop = asyncio.ensure_future(link.stop.wait())
    await asyncio.wait({reading, stop}, return_when=asyncio.FIRST_COMPLETED)
    if reading.done():  # it never returns by itself: a bug. Exit, and the worker starts a new reader
        error = None if reading.cancelled() else reading.exception()
        log.error("items_reader_failed", error=repr(error)[:300])
        os._exit(1)
    wait = settings.stop_broker_wait_s  # the broker may be gone: give its parts up in time
    try:  # the batch in flight is applied, done offsets committed, group left
        await asyncio.wait_for(consumer.close(), wait)
    except (asyncio.TimeoutError, asyncio.CancelledError):  # aiokafka's own fetch tasks, broker gone
        log.warning("stop_step_gave_up", step="items_consumer_close", seconds=wait)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), 1.0)
    conn.send(("stopped",))


def main(argv: list[str]) -> None:
    _die_with_parent(int(argv[2]) if len(argv) > 2 else None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(argv[1]))
    kind, settings = conn.recv()
    assert kind == "settings", kind
    configure_logging(settings.log_level, settings.log_json, repeat_window_s=settings.log_repeat_window_s)
    if settings.items_reader_nice:
        os.nice(settings.items_reader_nice)
    rejoin_as_previous_member(settings, group_id(settings, "items"))  # as the worker does for its groups
    structlog.contextvars.bind_contextvars(process="items-reader")
    asyncio.run(serve(settings, conn))

