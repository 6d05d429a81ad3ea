"""The trainer publishes what serving replicas need: item vectors and model versions (``towerstream.published``).

Why a thread of its own with a kafka-python producer: a sweep of every item is seconds of
numpy and hundreds of thousands of sends; on Faust's loop it would hold back ingestion, and
kafka-python's idempotent producer works on every broker we run on (aiokafka's does not on
Tansu). One thread does all publishing, in order, so a record built from older state is never
sent after one built from newer state:

- **a version** V: ``freeze`` copies the weights between two train steps; its number is made
  durable (RocksDB) before anything of it is sent; then the model parts, the sweep (every live
  item's vector by V's tower), a flush, and one ``VersionComplete`` whose ``item_offsets`` are
  where this producer's item records ended, per partition;
- **item changes** between versions (``items_changed``, called by the engine once an item batch
  is durable and applied): each changed item's current state, by the newest complete version's
  tower and, while a sweep is in flight, by the in-flight one's too; a deleted item is one
  tombstone.

A failure (broker away, a record refused) gives up the version in flight (it never completes,
so no replica switches to it), shows ``publish`` on ``/healthz`` and in the metrics, and makes
the next attempt a new version with a new number: its sweep repairs whatever was lost meanwhile.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np
import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from producers.kafka_config import client_config
from producers.topics import ensure_topics
from streams import metrics
from streams.health import Health
from towerstream.engine import Engine
from towerstream.errors import TowerstreamError
from towerstream.published import (
    ITEM_VECTORS, MODEL, VERSION_KEY, VersionComplete, encode_item_vector, encode_model_part, pack_model, part_key,
    split_model,
)
from towerstream.settings import Settings
from towerstream.versions import FrozenVersion, freeze, live_rows, read_items

log = structlog.get_logger(__name__)

#: RocksDB key of the next version number: written before any record of a version is sent.
NEXT_VERSION_KEY = "pub:next_version"
#: Items read, embedded and sent per step of a sweep (item changes are published between steps,
#: so this bounds how long a new item waits behind a sweep).
SWEEP_CHUNK = 1024
#: The next version starts no sooner than this many times the last one took to publish, counted
#: from its end: a large catalog's sweeps then take at most a third of the publisher's time (and of
#: what every replica reads), whatever ``version_every_s`` says.
SWEEP_SPACING = 2.0
#: Records read back from the end of each model partition to find the newest ``VersionComplete``.
TAIL_RECORDS = 2000
#: Seconds between attempts while publishing fails.
RETRY_S = 2.0


class PublishError(TowerstreamError):
    """Kafka did not take a published record (``cause`` says why)."""


class _Stopping(Exception):
    pass


class Publisher:
    """Publishes versions on ``settings.version_every_s`` (and one as soon as possible after each start)."""

    def __init__(self, settings: Settings, engine: Engine, health: Health) -> None:
        self.settings = settings
        self.engine = engine
        self.health = health
        self.item_topic = settings.topic(ITEM_VECTORS)
        self.model_topic = settings.topic(MODEL)
        self._changes: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()  # the producer's callbacks run on its sender thread
        self._errors: list[BaseException] = []
        #: Per item-vectors partition: the offset after the last record this producer wrote there.
        self._item_ends: dict[int, int] = {}
        self._next_version: int | None = None
        self._need_version = True
        #: When the last version finished, and how long it took to publish (``_due``).
        self._last_version_at = 0.0
        self._last_version_s = 0.0
        #: Newest complete version (its frozen towers publish item changes) and the one in flight.
        self.complete: FrozenVersion | None = None
        self.inflight: FrozenVersion | None = None
        #: Item ids with a record of the version in flight (its ``VersionComplete.items``).
        self._inflight_ids: set[str] = set()
        self.items = 0
        self.finished_ms: int | None = None

    # ----- the engine's side -----------------------------------------------------------------
    def items_changed(self, item_ids: list[str]) -> None:
        """Item events made durable and applied (the engine's items thread): publish their state."""
        if item_ids and not self._stop.is_set():
            self._changes.put(item_ids)

    def summary(self) -> dict[str, Any]:
        """``/healthz`` "published"."""
        complete, inflight = self.complete, self.inflight
        return {"version": complete.version if complete else None, "publishing": inflight.version if inflight else None,
                "items": self.items, "finished_ms": self.finished_ms}

    # ----- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop at the next step (a version in flight is given up: the next start takes a new one)."""
        self._stop.set()
        self._changes.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                if self._producer is None:
                    self._connect()
                self._drain(block_s=0.2)
                if self._due():
                    self._publish_version()
            except _Stopping:
                break
            except Exception as exc:  # noqa: BLE001 - any failure: visible, and a new version later
                self._failed(exc)
                self._stop.wait(RETRY_S)
        self._close(self.settings.stop_broker_wait_s)

    def _connect(self) -> None:
        ensure_topics(self.settings, [ITEM_VECTORS, MODEL], timeout_ms=10_000)
        self._producer = KafkaProducer(
            **client_config(self.settings, client_id=f"{self.settings.app_id}-publisher"),
            acks="all", enable_idempotence=True,  # per-key order kept across retries
            compression_type=self.settings.compression_type, linger_ms=5, batch_size=256 * 1024,
            max_block_ms=10_000, request_timeout_ms=10_000, delivery_timeout_ms=30_000, retry_backoff_ms=100,
        )
        if self._next_version is None:
            stored = self.engine.store.get_bytes(NEXT_VERSION_KEY)
            newest = self._newest_complete_on_topic()
            self._next_version = max(int(stored) if stored else 1, newest + 1)
            log.info("publisher_started", next_version=self._next_version, newest_on_topic=newest,
                     topic=self.model_topic)

    def _close(self, timeout: float) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - closing after a failure may fail again
                log.warning("publisher_close_failed", error=repr(exc)[:300])

    def _failed(self, exc: BaseException) -> None:
        inflight = self.inflight
        log.error("publish_failed", error=f"{type(exc).__name__}: {exc}"[:500],
                  version=inflight.version if inflight else None)
        metrics.PUBLISH_FAILURES.inc()
        self.health.degrade("publish", "publishing to Kafka failed", error=f"{type(exc).__name__}: {exc}"[:300],
                            version_given_up=inflight.version if inflight else None)
        self.inflight = None
        self._need_version = True
        self._close(0)
        with self._lock:
            self._errors.clear()

    # ----- versions ----------------------------------------------------------------------------
    def _due(self) -> bool:
        if not self.engine.ready:
            return False
        if self._need_version:
            return True
        complete = self.complete
        wait = max(self.settings.version_every_s, SWEEP_SPACING * self._last_version_s)
        return (complete is not None and time.monotonic() - self._last_version_at >= wait
                and self.engine.model_version != complete.steps)

    def _take_number(self) -> int:
        """The next version number, durable before anything of the version is sent: never reused."""
        assert self._next_version is not None
        version = self._next_version
        self.engine.store.put_bytes(NEXT_VERSION_KEY, str(version + 1).encode())
        self.engine.store.flush()
        self._next_version = version + 1
        return version

    def _publish_version(self) -> None:
        t0 = time.perf_counter()
        version = self._take_number()
        frozen = freeze(self.engine, version)
        self.inflight, self._inflight_ids = frozen, set()
        self._need_version = False
        arrays, meta = frozen.model_payload()
        parts = split_model(version, pack_model(arrays, meta))
        for part in parts:
            self._send(self.model_topic, part_key(part.index), encode_model_part(part))
        rows = live_rows(self.engine)
        for start in range(0, len(rows), SWEEP_CHUNK):
            if self._stop.is_set():
                raise _Stopping
            for iv in read_items(self.engine, rows[start:start + SWEEP_CHUNK]).vectors(frozen):
                self._send(self.item_topic, iv.item_id.encode(), encode_item_vector(iv))
                self._inflight_ids.add(iv.item_id)
            self._drain(block_s=0)  # item changes meanwhile: by both versions' towers
        self._drain(block_s=0)
        self._flush()
        done = VersionComplete(
            version=version, parts=len(parts), item_offsets=self._item_offsets(), items=len(self._inflight_ids),
            taken_ms=frozen.taken_ms, finished_ms=int(time.time() * 1000), trained=frozen.trained,
            extra={"steps": frozen.steps})
        self._send(self.model_topic, VERSION_KEY, done.encode())
        self._flush()
        self.complete, self.inflight = frozen, None
        self.items, self.finished_ms = done.items, done.finished_ms
        seconds = time.perf_counter() - t0
        self._last_version_at, self._last_version_s = time.monotonic(), seconds
        metrics.PUBLISHED_VERSION.set(version)
        metrics.VERSION_PUBLISH_SECONDS.observe(seconds)
        self.health.clear("publish")
        log.info("version_published", version=version, items=done.items, parts=done.parts, trained=done.trained,
                 seconds=round(seconds, 3), topic=self.model_topic)

    def _item_offsets(self) -> dict[int, int]:
        assert self._producer is not None
        partitions = self._producer.partitions_for(self.item_topic)
        with self._lock:
            return {p: self._item_ends.get(p, 0) for p in sorted(partitions)}

    def _newest_complete_on_topic(self) -> int:
        """The newest ``VersionComplete`` on the model topic (0: none): a lost RocksDB must not reuse a number."""
        consumer = KafkaConsumer(**client_config(self.settings, client_id=f"{self.settings.app_id}-publisher-start"),
                                 group_id=None, enable_auto_commit=False, request_timeout_ms=15_000)
        try:
            deadline = time.monotonic() + 15
            partitions = consumer.partitions_for_topic(self.model_topic)
            while not partitions and time.monotonic() < deadline:
                time.sleep(0.2)
                partitions = consumer.partitions_for_topic(self.model_topic)
            if not partitions:
                raise PublishError(f"no metadata for {self.model_topic}")
            tps = [TopicPartition(self.model_topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            ends, starts = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
            for tp in tps:
                consumer.seek(tp, max(starts[tp], ends[tp] - TAIL_RECORDS))
            newest, empty = 0, 0
            # The reported end can be low (Tansu: the last batch's base offset + 1): read until a
            # poll past it comes back empty.
            while empty < 2 and time.monotonic() < deadline + 30:
                got = consumer.poll(timeout_ms=300)
                if not got and all(consumer.position(tp) >= ends[tp] for tp in tps):
                    empty += 1
                for records in got.values():
                    for rec in records:
                        if rec.key == VERSION_KEY and rec.value is not None:
                            newest = max(newest, VersionComplete.decode(rec.value).version)
            return newest
        finally:
            consumer.close()

    # ----- item changes -----------------------------------------------------------------------
    def _drain(self, block_s: float) -> None:
        """Publish the item changes queued so far (waiting up to ``block_s`` for the first)."""
        ids: dict[str, None] = {}
        try:
            first = self._changes.get(timeout=block_s) if block_s > 0 else self._changes.get_nowait()
        except queue.Empty:
            first = []
        while True:
            if first is None:
                raise _Stopping
            ids.update(dict.fromkeys(first))
            try:
                first = self._changes.get_nowait()
            except queue.Empty:
                break
        self._raise_errors()
        if ids:
            self._publish_items(list(ids))

    def _publish_items(self, item_ids: list[str]) -> None:
        versions = [v for v in (self.complete, self.inflight) if v is not None]
        if not versions:
            return  # nothing published yet: the first version's sweep reads them
        rows = self.engine.items.rows(item_ids)
        known = rows >= 0
        batch = read_items(self.engine, rows[known])
        live = set(batch.ids)
        for frozen in versions:
            for iv in batch.vectors(frozen):
                self._send(self.item_topic, iv.item_id.encode(), encode_item_vector(iv))
        if self.inflight is not None:
            self._inflight_ids.update(live)
        for item_id in np.asarray(item_ids, dtype=object)[known].tolist():
            if item_id not in live:  # deleted: one tombstone for every version
                self._send(self.item_topic, item_id.encode(), None)
                self._inflight_ids.discard(item_id)

    # ----- the producer ---------------------------------------------------------------------------
    def _send(self, topic: str, key: bytes, value: bytes | None) -> None:
        assert self._producer is not None
        future = self._producer.send(topic, key=key, value=value)
        if topic == self.item_topic:
            future.add_callback(self._delivered)
        future.add_errback(self._refused)
        metrics.PUBLISHED_RECORDS.labels(topic).inc()

    def _delivered(self, md: Any) -> None:
        with self._lock:
            if md.offset + 1 > self._item_ends.get(md.partition, 0):
                self._item_ends[md.partition] = md.offset + 1

    def _refused(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def _raise_errors(self) -> None:
        with self._lock:
            first = self._errors[0] if self._errors else None
        if first is not None:
            raise PublishError(f"Kafka refused a published record: {type(first).__name__}: {first}") from first

    def _flush(self) -> None:
        assert self._producer is not None
        self._producer.flush(timeout=60)
        self._raise_errors()
