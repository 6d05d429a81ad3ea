"""Topics read in record batches straight from aiokafka, without Faust per event.

Why: Faust wraps every record in a Message and an Event, queues it through its stream and
acks it one by one: ~200-400 us of GIL-holding Python per event on Faust's event loop. For
interactions that capped the worker far below 5,000 events/s on 2 cores; for items (1,000
upserts/s) it took the GIL from the queries served beside it. Here ``getmany`` hands over a
batch of aiokafka records, which are validated and handed to the engine exactly as the Faust
agents do it (``streams.agents``), and their offsets are committed per partition, not per event.

Each reader is in a consumer group of its own (``<app_id>-interactions``, ``<app_id>-items``),
not Faust's: Faust's assignor and its per-event acks keep to the topics its agents read.
Eager assignment (aiokafka's default round robin): cooperative-sticky never assigned a second
member on the test broker.

Offsets: a batch's offsets count as done once the engine call has returned (interactions: its
events are in RocksDB; items: upserted and durable) or its records were dead-lettered; done
offsets are committed every second after the producer is flushed (so a dead letter is
delivered before its record's offset is committed), and on revocation and shutdown after the
batch in flight. Serving never waits for a commit: the engine has the events before the
offsets are even considered. A restart re-reads at most the last second; event ids (and item
versions) make that harmless, and a partition is sought to what RocksDB already holds
(``Engine.offsets``) when that is ahead of the committed offset.

That offset is first checked against the log (``streams.log_bounds``): past its end (the log
was replaced: broker restarted empty, topic re-created, another cluster) or before its start
(retention passed it), the partition is read from the log start, and the reset is logged,
counted and shown on /healthz. The same happens when the log is replaced while the worker
reads it: a fetch high watermark below the reader's position (Tansu), or aiokafka moving the
position back to the start after an out-of-range fetch (Kafka). Each reader also reports its
position and the high watermark per partition to the worker's lag monitor (``streams.lag``).

Readiness: a reader with ``gates_readiness`` (items) tells the runtime once it has applied its
partitions up to the end offsets they had when it joined its group; until then ``/healthz``
says "catching up". A worker that restarts with nothing of the catalog in RocksDB (its
predecessor stopped before reading it, or lost it with its checkpoints) then reports ready only
once the catalog on the topic is indexed, the way a GlobalKTable bootstraps before serving.

A record batch that cannot be decoded (bad CRC, a codec no library here reads) would stop its
partition for good while the reader looked busy: aiokafka raises without naming the partition
and fetches the same bytes at every poll. The reader finds the batch (``streams.unreadable``),
applies the records before it, and then, by ``Settings.unreadable_batches``:

- ``stall`` (the default): pauses that partition at the batch's offset, other partitions read
  on. /healthz turns 503 naming topic, partition, offset range and reason, the batch is counted
  (``towerstream_unreadable_batches_total{topic,action}``) and logged every few seconds. An
  unreadable batch means a client or broker an operator must look at, and the records in it
  may matter: the reader does not decide alone that they are lost.
- ``skip``: the operator's escape. The batch's raw bytes go to the dead-letter topic (kind
  ``unreadable_batch``, its base offset, the range in the reason), a notice on /healthz and the
  counter record it, and the partition reads on after it; its offsets count as done once the
  dead letter is sent (it is flushed before they are committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from mode import Service

from streams import metrics
from streams.decoding import Record
from streams.kafka_auth import aiokafka_kwargs
from streams.log_bounds import LogReset, check_offsets
from streams.membership import watch_member
from streams.unreadable import UnreadableBatch, find_unreadable, is_decoding_error
from towerstream.settings import Settings

if TYPE_CHECKING:  # the engine side, imported where used: reading and decoding need no torch
    from streams.runtime import WorkerRuntime
    from streams.training_queue import TrainingQueue

log = structlog.get_logger(__name__)

#: Seconds between offset commits (Faust's ``broker_commit_interval`` in this app).
COMMIT_INTERVAL_S = 1.0
#: How long one ``getmany`` waits when nothing is buffered (bounds how fast a stop is noticed).
POLL_TIMEOUT_MS = 200
#: A partition stalled at an unreadable batch is logged again this often (seconds).
UNREADABLE_LOG_EVERY_S = 5.0
#: How long the reader tries to read the records in front of an unreadable batch at once.
READ_BEFORE_S = 10.0


def group_id(settings: Settings, topic: str = "interactions") -> str:
    """The consumer group of the batch reader of ``topic`` ("interactions" or "items")."""
    return f"{settings.app_id}-{topic}"


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: BatchConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.owner._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.owner._on_assigned(assigned)


class BatchConsumer(Service):  # type: ignore[misc]
    """Reads one topic into the engine in batches; a child service of the Faust app.

    It starts with the app, so its group join overlaps Faust's and the engine's loading; it
    reads once the engine is ready. ``close`` must run before ``WorkerRuntime.close``.
    Subclasses say what a batch does (``_process``) and may prepare once the engine is open.
    """

    #: The topic's short name (``Settings.topic``); also names the group and the log events.
    name = ""
    #: Whether the worker is ready only once this reader has caught up (``WorkerRuntime.catching_up``).
    gates_readiness = False

    def __init__(self, app: Any, runtime: WorkerRuntime, topic: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.runtime = runtime
        self.settings = runtime.settings
        #: The Faust topic: declared (created if missing) before subscribing.
        self.topic = topic
        self.group = group_id(self.settings, self.name)
        self.consumer: AIOKafkaConsumer | None = None
        self._in_flight = asyncio.Lock()  # held while a batch is validated, committed and queued
        self._done: dict[TopicPartition, int] = {}  # next offset whose predecessors are durable
        self._committed: dict[TopicPartition, int] = {}
        self._to_seek: set[TopicPartition] = set()
        #: Next offset to make done per partition, once sought: a fetch that returns records
        #: before it, or a high watermark below it, means the log changed under the reader.
        self._next: dict[TopicPartition, int] = {}
        self._closing = False
        self._closed = False
        self._task: asyncio.Future[None] | None = None
        self._committer: asyncio.Future[None] | None = None
        #: Set by the first assignment (possibly empty): the group join is over.
        self._joined = False
        #: End offsets of the first assignment, taken once: what "caught up" is measured against.
        self._catch_up_to: dict[TopicPartition, int] | None = None
        self._caught_up = False
        self._take_error: Exception | None = None  # raised by a later getmany of a take: raised next take
        self._unreadable: dict[TopicPartition, UnreadableBatch] = {}  # found; records before it in flight
        self._stalled: dict[TopicPartition, UnreadableBatch] = {}  # paused at the batch (policy "stall")
        self._unreadable_logged = 0.0  # when stalled partitions or an unlocated decoding error were last logged
        self._returned: dict[TopicPartition, int] = {}  # offset after the last record getmany handed us

    async def on_start(self) -> None:
        self._task = self.add_future(self._run())

    async def on_stop(self) -> None:
        await self.close()

    # ----- consuming --------------------------------------------------------------------------
    def _fetch_min_bytes(self) -> int:
        """aiokafka's ``fetch_min_bytes``: here 1, a fetch returns as soon as anything is there."""
        return 1

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap, group_id=self.group, client_id=self.group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_wait_ms=s.consumer_max_fetch_wait_ms, max_poll_records=s.batch_max,
            fetch_min_bytes=self._fetch_min_bytes(),
            session_timeout_ms=int(s.broker_session_timeout * 1000),
            heartbeat_interval_ms=int(s.broker_heartbeat_interval * 1000),
            # As Faust's consumer: a rebalance may wait for a batch in flight; the loop never
            # stops polling for long, but the engine may take minutes to load before it starts.
            rebalance_timeout_ms=60_000, max_poll_interval_ms=1_000_000, request_timeout_ms=90_000,
            **aiokafka_kwargs(s),
        )

    def _new_probe(self) -> AIOKafkaConsumer:
        """A consumer in no group, for one look at where logs end (``streams.log_bounds``)."""
        s = self.settings
        return AIOKafkaConsumer(bootstrap_servers=s.bootstrap, group_id=None, enable_auto_commit=False,
                                client_id=f"{self.group}-probe", fetch_max_wait_ms=s.consumer_max_fetch_wait_ms,
                                **aiokafka_kwargs(s))

    async def _run(self) -> None:
        s = self.settings
        with contextlib.suppress(Exception):  # topics are normally created up front; a failure shows below
            await self.topic.maybe_declare()
        consumer = self.consumer = await self._started_consumer()
        watch_member(lambda: _member_id(consumer), s, self.group)
        consumer.subscribe([s.topic(self.name)], listener=_Listener(self))
        log.info(f"{self.name}_consumer_started", group=self.group, topic=s.topic(self.name))
        engine = await self.runtime.wait_ready()
        self._prepare(engine)
        self._committer = asyncio.ensure_future(self._commit_periodically())
        while not self._closing:
            if self._to_seek and not await self._seek_to_durable(engine):
                await asyncio.sleep(1.0)  # the log's bounds are unknown: read nothing unchecked
                continue
            if self.gates_readiness and not self._caught_up:
                await self._check_caught_up(consumer)
            if self._unreadable:
                await self._settle_unreadable(consumer)
            self._remind_stalled()
            try:
                got = await self._take(consumer)
            except Exception as exc:
                if is_decoding_error(exc):  # a batch that cannot be read: find it, read up to it
                    got = await self._locate_unreadable(consumer, engine, exc)
                elif isinstance(exc, KafkaError):  # e.g. a coordinator error aiokafka hands back: log it, go on
                    log.warning(f"{self.name}_fetch_failed", error=repr(exc)[:300])
                    await asyncio.sleep(1.0)
                    continue
                else:
                    raise
            assigned = consumer.assignment()  # a rebalance while taking: drop what is no longer ours
            got = {tp: batch for tp, batch in got.items() if tp in assigned}
            if not got:
                continue
            for tp, batch in got.items():
                expected = self._next.get(tp)
                if expected is not None and batch[0].offset < expected:
                    # aiokafka went back to the log start after an out-of-range fetch (Kafka): the
                    # log was replaced while we read it. These records are read; say so.
                    await self._apply_reset(engine, LogReset(tp.topic, tp.partition, expected, batch[0].offset,
                                                             int(consumer.highwater(tp) or 0), "past_end"), seek=False)
            async with self._in_flight:  # acquired without yielding: no revocation in between
                records = [r for batch in got.values() for r in batch]
                try:
                    await self._process(engine, records)
                except Exception:  # noqa: BLE001 - a bug, not bad input (that is dead-lettered): retry
                    log.exception(f"{self.name}_batch_failed", records=len(records))
                    self._unreadable.clear()  # settled only after the records before them are applied
                    for tp, batch in got.items():  # read it again: its offsets are not done
                        log.warning(f"{self.name}_batch_retried", topic=tp.topic, partition=tp.partition,
                                    offset=batch[0].offset, records=len(batch))
                        if tp in consumer.assignment():
                            consumer.seek(tp, batch[0].offset)
                    await asyncio.sleep(1.0)
                    continue
                for tp, batch in got.items():
                    self._done[tp] = max(self._done.get(tp, 0), batch[-1].offset + 1)
                    self._next[tp] = max(self._next.get(tp, 0), batch[-1].offset + 1)

    async def _take(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Up to ``batch_max`` records, waiting at most ``batch_within_s`` after the first for more.

        As Faust's ``take_events``: each batch is a journal entry and a train step, so light
        traffic read as it trickles in (a record or two per fetch) would cost a step per event.
        """
        s = self.settings
        if self._take_error is not None:
            exc, self._take_error = self._take_error, None
            raise exc
        got = self._note_returned(await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=s.batch_max))
        n = sum(len(batch) for batch in got.values())
        deadline = time.monotonic() + s.batch_within_s
        while 0 < n < s.batch_max and not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                more = self._note_returned(
                    await consumer.getmany(timeout_ms=max(int(left * 1000), 1), max_records=s.batch_max - n))
            except Exception as exc:  # noqa: BLE001 - the records taken so far are consumed: hand them on
                self._take_error = exc
                break
            for tp, batch in more.items():
                got.setdefault(tp, []).extend(batch)
                n += len(batch)
        return got

    async def _started_consumer(self) -> AIOKafkaConsumer:
        """A started consumer; retried while the broker cannot be reached (as Faust's own retries)."""
        delay = 0.5
        while True:
            consumer = self._new_consumer()
            try:
                await consumer.start()
                return consumer
            except KafkaError as exc:
                log.warning(f"{self.name}_consumer_start_failed", error=repr(exc)[:300], retry_in_s=delay)
                with contextlib.suppress(Exception):
                    await consumer.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _prepare(self, engine: Any) -> None:
        """Once, when the engine is open and before the first batch."""

    async def _process(self, engine: Any, records: list[ConsumerRecord]) -> None:
        """What the topic's Faust agent does with a batch."""
        raise NotImplementedError

    async def _seek_to_durable(self, engine: Any) -> bool:
        """Skip what RocksDB already holds (a kill lost the last second of offset commits), and
        read from the log start where that offset, or the committed one, is outside the log.

        False when the log's bounds could not be learned: those partitions are checked again.
        """
        consumer = self.consumer
        assert consumer is not None
        tps, self._to_seek = self._to_seek & consumer.assignment(), set()
        wanted: dict[TopicPartition, int] = {}
        durable: dict[TopicPartition, int] = {}
        for tp in tps:
            durable[tp] = engine.offsets.get(f"{tp.topic}:{tp.partition}", 0)
            try:
                position = await consumer.position(tp)
            except KafkaError as exc:
                log.warning(f"{self.name}_position_unknown", topic=tp.topic, partition=tp.partition, error=repr(exc))
                self._to_seek.add(tp)
                continue
            wanted[tp] = max(durable[tp], position)
            if durable[tp] > position:
                log.info(f"{self.name}_seek_to_durable", topic=tp.topic, partition=tp.partition,
                         offset=durable[tp], committed=position)
        t0 = time.perf_counter()
        try:
            resets = await check_offsets(consumer, wanted, self._new_probe)
        except Exception as exc:  # noqa: BLE001 - e.g. the broker away: check again before reading
            log.warning(f"{self.name}_log_bounds_unknown", error=repr(exc)[:300],
                        partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in wanted))
            self._to_seek |= set(wanted)
            return False
        log.info(f"{self.name}_offsets_checked", partitions=len(wanted), resets=len(resets),
                 seconds=round(time.perf_counter() - t0, 3))
        for tp, offset in wanted.items():
            if tp not in consumer.assignment():
                continue
            if tp in resets:
                await self._apply_reset(engine, resets[tp], seek=True)
            else:
                if durable[tp] >= offset:
                    consumer.seek(tp, offset)
                self._next[tp] = offset
        return not self._to_seek

    async def _apply_reset(self, engine: Any, reset: LogReset, seek: bool) -> None:
        """Read ``reset``'s partition from the log start; its old offsets no longer mean anything."""
        tp = TopicPartition(reset.topic, reset.partition)
        if seek and self.consumer is not None:
            self.consumer.seek(tp, reset.log_start)
        self._next[tp] = reset.log_start
        self._done.pop(tp, None)
        self._committed.pop(tp, None)
        await self._reset(engine, reset)

    async def _reset(self, engine: Any, reset: LogReset) -> None:
        """Record and show the reset (the worker's durable offset, metric, notice)."""
        await self.runtime.log_reset(self.name, reset)

    # ----- lag --------------------------------------------------------------------------------
    def _positions(self) -> dict[str, tuple[int, int | None]]:
        """Per assigned partition: the next offset to make done, and the last fetch's high watermark.

        A high watermark below the next offset means the log shrank under the reader (replaced
        on Tansu, whose fetches past the end just come back empty): check it again.
        """
        consumer = self.consumer
        if consumer is None:
            return {}
        out: dict[str, tuple[int, int | None]] = {}
        for tp in consumer.assignment():
            nxt = self._next.get(tp)
            if nxt is None:
                continue
            hw = consumer.highwater(tp)
            if hw is not None and hw < nxt and tp not in self._to_seek:
                log.info(f"{self.name}_log_shorter_than_position", topic=tp.topic, partition=tp.partition,
                         offset=nxt, highwater=hw)
                self._to_seek.add(tp)
            out[f"{tp.topic}:{tp.partition}"] = (nxt, hw)
        return out

    def _report(self, positions: dict[str, tuple[int, int | None]]) -> None:
        self.runtime.lag.report(self.name, positions)

    def _forget(self, keys: list[str]) -> None:
        self.runtime.lag.forget(keys)

    async def _check_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        """Tell the runtime, once, when every assigned partition's position has reached the end
        offset it had at the join. Runs between batches, so a position is applied, not just fetched."""
        if not self._joined:
            return
        assigned = consumer.assignment()
        try:
            if self._catch_up_to is None:
                self._catch_up_to = dict(await consumer.end_offsets(list(assigned))) if assigned else {}
            for tp, end in self._catch_up_to.items():
                # A partition stalled at an unreadable batch reads no further: it is as caught up
                # as it gets, and /healthz names it as degraded instead of "catching up".
                if tp in assigned and tp not in self._stalled and await consumer.position(tp) < end:
                    return
        except KafkaError as exc:  # e.g. the broker away: try again after the next poll
            log.warning(f"{self.name}_catch_up_unknown", error=repr(exc)[:300])
            return
        self._caught_up = True
        log.info(f"{self.name}_caught_up", group=self.group,
                 end_offsets={f"{tp.topic}:{tp.partition}": off for tp, off in self._catch_up_to.items()})
        self.runtime.caught_up(self.name)
    # ----- unreadable batches -------------------------------------------------------------------
    def _note_returned(self, got: dict[TopicPartition, list[ConsumerRecord]]
                       ) -> dict[TopicPartition, list[ConsumerRecord]]:
        for tp, batch in got.items():
            if batch:
                self._returned[tp] = batch[-1].offset + 1
        return got

    async def _rewind_dropped(self, consumer: AIOKafkaConsumer, engine: Any) -> None:
        """Read again what aiokafka consumed but never handed over.

        When one partition's batch raises inside ``getmany``, the records already taken from
        other partitions in that call are dropped while their positions have moved on: without
        this they would be skipped silently. Event ids make reading them again harmless.
        """
        for tp in consumer.assignment() - consumer.paused():
            try:
                position = await consumer.position(tp)
                returned = self._returned.get(tp)
                if returned is None:  # nothing handed over since assignment: reading began here
                    committed = await consumer.committed(tp)
                    returned = max(committed or 0, engine.offsets.get(f"{tp.topic}:{tp.partition}", 0))
            except KafkaError:
                continue
            if position > returned:
                consumer.seek(tp, returned)
                log.warning(f"{self.name}_dropped_records_read_again", topic=tp.topic, partition=tp.partition,
                            offset=returned, position=position)

    async def _locate_unreadable(self, consumer: AIOKafkaConsumer, engine: Any,
                                 exc: Exception) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Find the batch behind a decoding error; the records in front of it, to be applied first."""
        await self._rewind_dropped(consumer, engine)
        found: list[UnreadableBatch] = []
        for tp in sorted(consumer.assignment() - consumer.paused(), key=lambda t: (t.topic, t.partition)):
            try:
                bad = await find_unreadable(consumer, tp, await consumer.position(tp))
            except KafkaError as err:  # the broker could not be asked now: the next error asks again
                log.warning(f"{self.name}_unreadable_lookup_failed", topic=tp.topic, partition=tp.partition,
                            error=repr(err)[:300])
                continue
            if bad is not None:
                found.append(bad)
        if not found:
            now = time.monotonic()
            if now - self._unreadable_logged >= UNREADABLE_LOG_EVERY_S:
                self._unreadable_logged = now
                log.warning(f"{self.name}_fetch_failed", error=repr(exc)[:300],
                            detail="a decoding error no partition's next batch reproduces")
            await asyncio.sleep(1.0)
            return {}
        got: dict[TopicPartition, list[ConsumerRecord]] = {}
        for bad in found:
            if bad.tp not in self._unreadable:
                log.error(f"{self.name}_unreadable_batch", topic=bad.topic, partition=bad.partition,
                          offset=bad.offset, last_offset=bad.last_offset, reason=bad.reason,
                          policy=self.settings.unreadable_batches)
            self._unreadable[bad.tp] = bad
            before = await self._read_before(consumer, bad.tp, bad.offset)
            if before:
                got[bad.tp] = before
        return got

    async def _read_before(self, consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> list[ConsumerRecord]:
        """The readable records of ``tp`` below offset ``end`` (at most ``batch_max``).

        aiokafka decodes a fetch lazily and stops at ``max_records``: asking for no more records
        than there are offsets before the batch never touches it. If that fails (gaps in the
        offsets), one record at a time; the first failure then is the batch itself.
        """
        out: list[ConsumerRecord] = []
        one_by_one = False
        deadline = time.monotonic() + READ_BEFORE_S
        while len(out) < self.settings.batch_max and time.monotonic() < deadline and not self._closing:
            position = await consumer.position(tp)
            if position >= end:
                break
            want = 1 if one_by_one else min(end - position, self.settings.batch_max - len(out))
            try:
                more = await consumer.getmany(tp, timeout_ms=POLL_TIMEOUT_MS, max_records=want)
            except Exception as exc:  # noqa: BLE001 - the batch itself, or the broker
                if one_by_one or not is_decoding_error(exc):
                    break
                one_by_one = True
                continue
            out.extend(r for r in self._note_returned(more).get(tp, []) if r.offset < end)
        return out

    async def _settle_unreadable(self, consumer: AIOKafkaConsumer) -> None:
        """Stall or skip each batch found, once the records in front of it are applied."""
        found, self._unreadable = self._unreadable, {}
        for tp, bad in found.items():
            if tp not in consumer.assignment():
                continue
            try:
                position = await consumer.position(tp)
            except KafkaError:
                continue  # found again at the next decoding error
            if position > bad.offset:
                continue
            if self.settings.unreadable_batches == "skip":
                await self._skip_unreadable(consumer, bad)
            else:
                consumer.pause(tp)
                self._stalled[tp] = bad
                self._unreadable_found(bad.topic, "stalled")
                self.runtime.health.degrade(
                    bad.key, f"unreadable record batch at offset {bad.offset}: {bad.reason}",
                    topic=bad.topic, partition=bad.partition, offset=bad.offset, last_offset=bad.last_offset,
                    action="partition stalled; TOWERSTREAM_UNREADABLE_BATCHES=skip dead-letters the batch and reads on")
                self._unreadable_logged = 0.0  # log it now

    async def _skip_unreadable(self, consumer: AIOKafkaConsumer, bad: UnreadableBatch) -> None:
        reason = f"unreadable record batch, offsets {bad.offset}-{bad.last_offset}: {bad.reason}"
        await self.runtime.dead_letter(Record(bad.topic, bad.partition, bad.offset, None, bad.raw),
                                       reason, "unreadable_batch")
        consumer.seek(bad.tp, bad.next_offset)
        self._returned[bad.tp] = bad.next_offset  # not something to read again
        self._done[bad.tp] = max(self._done.get(bad.tp, 0), bad.next_offset)
        self._unreadable_found(bad.topic, "skipped")
        self.runtime.health.notice("unreadable_batch_skipped", topic=bad.topic, partition=bad.partition,
                                   offset=bad.offset, last_offset=bad.last_offset, reason=bad.reason)
        log.error(f"{self.name}_unreadable_batch_skipped", topic=bad.topic, partition=bad.partition,
                  offset=bad.offset, last_offset=bad.last_offset, reason=bad.reason)

    def _unreadable_found(self, topic: str, action: str) -> None:
        """Count an unreadable batch."""
        metrics.UNREADABLE_BATCHES.labels(topic, action).inc()

    def _remind_stalled(self) -> None:
        now = time.monotonic()
        if not self._stalled or now - self._unreadable_logged < UNREADABLE_LOG_EVERY_S:
            return
        self._unreadable_logged = now
        for bad in self._stalled.values():
            log.error(f"{self.name}_partition_stalled", topic=bad.topic, partition=bad.partition,
                      offset=bad.offset, last_offset=bad.last_offset, reason=bad.reason,
                      action="set TOWERSTREAM_UNREADABLE_BATCHES=skip to dead-letter the batch and read on")

    def _forget_unreadable(self, tps: set[TopicPartition]) -> None:
        """Revoked partitions: their new owner finds (and reports) the batch again."""
        for tp in tps:
            self._unreadable.pop(tp, None)
            self._returned.pop(tp, None)
            bad = self._stalled.pop(tp, None)
            if bad is not None:
                self.runtime.health.clear(bad.key)

    # ----- offsets ----------------------------------------------------------------------------
    async def _commit_periodically(self) -> None:
        while not self._closing:
            await asyncio.sleep(COMMIT_INTERVAL_S)
            await self._commit()
            positions = self._positions()
            if positions:
                self._report(positions)

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit done offsets (of ``only``, else all assigned), after dead letters are delivered."""
        consumer = self.consumer
        if consumer is None:
            return
        assigned = consumer.assignment()
        offsets = {tp: off for tp, off in self._done.items()
                   if tp in assigned and (only is None or tp in only) and off > self._committed.get(tp, -1)}
        if not offsets:
            return
        try:
            await self.app.producer.flush()  # dead letters of these records are delivered first
            await consumer.commit(offsets)
        except Exception as exc:  # noqa: BLE001 - e.g. a rebalance or the broker away: next time
            log.warning(f"{self.name}_commit_failed", error=repr(exc)[:300],
                        offsets={f"{tp.topic}:{tp.partition}": off for tp, off in offsets.items()})
            return
        for tp, off in offsets.items():
            self._committed[tp] = max(self._committed.get(tp, -1), off)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._in_flight:  # the batch in flight is durable and queued first
            await self._commit(set(revoked))
        for tp in revoked:
            self._done.pop(tp, None)
            self._committed.pop(tp, None)
            self._next.pop(tp, None)
        self._forget([f"{tp.topic}:{tp.partition}" for tp in revoked])
        self._forget_unreadable(set(revoked))
        log.info(f"{self.name}_partitions_revoked", group=self.group,
                 partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in revoked))

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._to_seek |= set(assigned)
        self._joined = True
        log.info(f"{self.name}_partitions_assigned", group=self.group,
                 partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))

    # ----- shutdown ---------------------------------------------------------------------------
    async def close(self) -> None:
        """Finish the batch in flight, commit its offsets, leave the group (idempotent)."""
        if self._closed:
            return
        self._closed = self._closing = True
        t0 = time.perf_counter()
        async with self._in_flight:
            for fut in (self._task, self._committer):
                if fut is not None and not fut.done():
                    fut.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await fut
            await self._commit()
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()
        log.info(f"{self.name}_consumer_stopped", group=self.group, seconds=round(time.perf_counter() - t0, 3),
                 committed={f"{tp.topic}:{tp.partition}": off for tp, off in self._committed.items()})


class InteractionsConsumer(BatchConsumer):
    """Interactions: validate, dead-letter, commit durably, queue for training."""

    name = "interactions"
    queue: TrainingQueue

    def _prepare(self, engine: Any) -> None:
        from streams.training_queue import TrainingQueue

        s = self.settings
        self.queue = self.runtime.training_queue = TrainingQueue(
            self.runtime, engine, s.topic(self.name), max_events=s.train_batch_max,
            max_pending=s.train_queue_max, merge_after=s.train_merge_after)

    async def _process(self, engine: Any, records: list[ConsumerRecord]) -> None:
        from streams.agents import apply_interaction_records

        await apply_interaction_records(self.runtime, engine, self.queue, records)


class ItemsConsumer(BatchConsumer):
    """Items: validate and apply (upsert, delete) on the items thread."""

    name = "items"
    gates_readiness = True

    def _fetch_min_bytes(self) -> int:
        return self.settings.items_fetch_min_bytes

    async def _process(self, engine: Any, records: list[ConsumerRecord]) -> None:
        from streams.agents import apply_item_records

        await apply_item_records(self.runtime, engine, records)


def _member_id(consumer: AIOKafkaConsumer) -> str | None:
    """The member id the coordinator gave this consumer (attribute reads only: any thread)."""
    coordinator = getattr(consumer, "_coordinator", None)
    member_id = getattr(coordinator, "member_id", None)
    return str(member_id) if member_id else None
