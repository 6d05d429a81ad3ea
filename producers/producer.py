"""EventProducer: events -> Kafka records, with every delivery accounted for.

Each send gets a future callback; the counters say how many records the broker
acknowledged and how many it did not. Nothing is dropped without being counted,
which is what lets the CLI exit non-zero on any loss.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import structlog
from kafka import KafkaProducer
from kafka.errors import KafkaError
from pydantic import BaseModel

from producers.errors import BrokerUnavailable, DeliveryError
from producers.kafka_config import client_config
from towerstream.events import (
    Interaction,
    InvalidEvent,
    ItemDelete,
    ItemUpsert,
    UserProfile,
    decode_interaction,
    decode_item,
    decode_user,
    encode,
)
from towerstream.events.base import epoch_ms
from towerstream.settings import Settings

log = structlog.get_logger(__name__)

#: How many error messages a summary keeps (the counts are always complete).
MAX_ERRORS_KEPT = 10
#: Failures logged one by one before the producer goes quiet (they are still counted).
MAX_FAILURES_LOGGED = 20

LineKind = Literal["interactions", "items", "users"]


@dataclass(frozen=True)
class DeliverySummary:
    """Counts since the producer started; ``pending`` were sent but not yet acknowledged."""

    sent: int
    failed: int
    elapsed_s: float
    rate: float
    errors: list[str] = field(default_factory=list)
    pending: int = 0

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.pending == 0

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        text = f"sent={self.sent} failed={self.failed} rate={self.rate:.1f}/s"
        return text + (f" pending={self.pending}" if self.pending else "")

    def raise_for_failures(self) -> None:
        if not self.ok:
            first = f": {self.errors[0]}" if self.errors else ""
            raise DeliveryError(
                f"{self.failed} record(s) failed, {self.pending} unacknowledged{first}"
            )


class EventProducer:
    """A KafkaProducer for towerstream events; a context manager.

    acks="all" so an acknowledged record survives a broker failover; retries are
    bounded by ``delivery_timeout_ms`` (the Kafka client's own upper bound on
    retrying), so a dead broker turns into counted failures, not a hang.
    ``compression_type`` defaults to ``Settings.producer_compression``.
    Construction raises BrokerUnavailable when no broker answers in ``max_block_ms``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        linger_ms: int = 5,
        compression_type: str | None = None,
        max_block_ms: int = 10_000,
        request_timeout_ms: int = 5_000,
        delivery_timeout_ms: int = 20_000,
        **kafka_overrides: Any,
    ) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._sent = 0
        self._failed = 0
        self._submitted = 0
        self._errors: list[str] = []
        self._started: float | None = None
        self._finished: float | None = None
        conf: dict[str, Any] = {
            **client_config(settings, client_id="towerstream-producer"),
            "acks": "all",
            "linger_ms": linger_ms,
            "compression_type": compression_type or settings.compression_type,
            "max_block_ms": max_block_ms,
            "bootstrap_timeout_ms": max_block_ms,
            "request_timeout_ms": request_timeout_ms,
            # Must cover linger + one request; the client retries inside this window.
            "delivery_timeout_ms": max(delivery_timeout_ms, linger_ms + request_timeout_ms),
            "retry_backoff_ms": 100,
        }
        conf.update(kafka_overrides)
        try:
            self._producer = KafkaProducer(**conf)
        except KafkaError as exc:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {settings.bootstrap} within {max_block_ms} ms: {exc}",
                bootstrap=settings.bootstrap,
            ) from exc
        self._closed = False

    # -- sending ------------------------------------------------------------

    def send_interaction(self, ev: Interaction) -> None:
        self.send_raw(
            self.settings.topic("interactions"),
            ev.user_id.encode(),
            encode(ev),
            timestamp_ms=epoch_ms(ev.ts),
            event_id=ev.event_id,
        )

    def send_item(self, ev: ItemUpsert | ItemDelete) -> None:
        self.send_raw(
            self.settings.topic("items"),
            ev.item_id.encode(),
            encode(ev),
            timestamp_ms=epoch_ms(ev.ts),
            event_id=ev.event_id or ev.item_id,
        )

    def send_user(self, ev: UserProfile) -> None:
        self.send_raw(
            self.settings.topic("users"),
            ev.user_id.encode(),
            encode(ev),
            timestamp_ms=epoch_ms(ev.ts),
            event_id=ev.user_id,
        )

    def send_event(self, ev: BaseModel) -> None:
        """Route by type: interactions by user_id, items by item_id, users by user_id."""
        if isinstance(ev, Interaction):
            self.send_interaction(ev)
        elif isinstance(ev, (ItemUpsert, ItemDelete)):
            self.send_item(ev)
        elif isinstance(ev, UserProfile):
            self.send_user(ev)
        else:
            raise TypeError(f"no topic for {type(ev).__name__}")

    def send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None = None,
        headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None = None,
        *,
        event_id: str | None = None,
    ) -> None:
        """Send bytes as they are (replay, fault tests); ``value=None`` is a tombstone."""
        if self._closed:
            raise RuntimeError("EventProducer is closed")
        hdrs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        with self._lock:
            if self._started is None:
                self._started = time.monotonic()
            self._submitted += 1
        try:
            fut = self._producer.send(
                topic, value=value, key=key, timestamp_ms=timestamp_ms, headers=hdrs or None
            )
        except (KafkaError, ValueError, TypeError) as exc:
            # Raised before the record was queued (no metadata in max_block_ms,
            # record too large...): the record is lost unless we count it.
            self._on_error(topic, event_id, exc)
            return
        fut.add_callback(self._on_ack)
        fut.add_errback(lambda exc: self._on_error(topic, event_id, exc))

    def count_failure(self, reason: str) -> None:
        """Count a record that never reached send (e.g. an invalid input line)."""
        with self._lock:
            if self._started is None:
                self._started = time.monotonic()
            self._submitted += 1
            self._failed += 1
            if len(self._errors) < MAX_ERRORS_KEPT:
                self._errors.append(reason)

    def _on_ack(self, _metadata: Any) -> None:
        with self._lock:
            self._sent += 1

    def _on_error(self, topic: str, event_id: str | None, exc: BaseException) -> None:
        text = str(exc)
        name = type(exc).__name__
        reason = text if text.startswith(name) else f"{name}: {text}"
        with self._lock:
            self._failed += 1
            n = self._failed
            if len(self._errors) < MAX_ERRORS_KEPT:
                self._errors.append(f"{topic} {event_id or '-'}: {reason}")
        if n <= MAX_FAILURES_LOGGED:
            log.bind(topic=topic, event_id=event_id).warning("delivery_failed", error=reason)
        elif n == MAX_FAILURES_LOGGED + 1:
            log.bind(topic=topic).warning("delivery_failures_continue", logged=MAX_FAILURES_LOGGED)

    # -- finishing ----------------------------------------------------------

    def flush(self, timeout: float | None = None) -> DeliverySummary:
        """Wait for outstanding records (at most ``timeout`` s); the summary says what is left."""
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:  # timed out: the remaining records show as pending
            log.warning("flush_timeout", timeout_s=timeout, error=str(exc))
        return self.summary()

    def summary(self) -> DeliverySummary:
        with self._lock:
            end = self._finished if self._finished is not None else time.monotonic()
            elapsed = end - self._started if self._started is not None else 0.0
            pending = self._submitted - self._sent - self._failed
            return DeliverySummary(
                sent=self._sent,
                failed=self._failed,
                elapsed_s=elapsed,
                rate=self._sent / elapsed if elapsed > 0 else 0.0,
                errors=list(self._errors),
                pending=pending,
            )

    def close(self, timeout: float = 30.0) -> DeliverySummary:
        """Flush, close, and count anything still unacknowledged as failed."""
        if self._closed:
            return self.summary()
        self.flush(timeout)
        self._closed = True
        try:
            self._producer.close(timeout=1)
        except KafkaError as exc:
            log.warning("close_error", error=str(exc))
        with self._lock:
            self._finished = time.monotonic()
            lost = self._submitted - self._sent - self._failed
            if lost > 0:
                self._failed += lost
                if len(self._errors) < MAX_ERRORS_KEPT:
                    self._errors.append(f"{lost} record(s) unacknowledged at close")
        if lost > 0:
            log.warning("unacknowledged_at_close", records=lost)
        return self.summary()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


_DECODERS = {
    "interactions": decode_interaction,
    "items": decode_item,
    "users": decode_user,
}


def produce_lines(
    lines: Iterable[str | bytes],
    kind: LineKind,
    producer: EventProducer,
    *,
    flush_timeout: float | None = 30.0,
) -> DeliverySummary:
    """Validate each JSON line against the event schema, send the valid ones.

    Invalid lines are counted as failed with ``line N: reason`` (also printed to
    stderr) and never sent; blank lines are skipped. The returned summary is the
    producer's (so it covers earlier sends on the same producer too), after a flush.
    """
    try:
        decode = _DECODERS[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {sorted(_DECODERS)}, not {kind!r}") from None
    for line_no, line in enumerate(lines, start=1):
        raw = line.strip()
        if not raw:
            continue
        try:
            ev = decode(raw)
        except InvalidEvent as exc:
            msg = f"line {line_no}: {exc.kind}: {exc.reason}"
            print(msg, file=sys.stderr)
            producer.count_failure(msg)
            continue
        producer.send_event(ev)
    return producer.flush(flush_timeout)
