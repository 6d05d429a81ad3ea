"""The Faust app. ``faust -A streams.app worker -l info`` (or ``towerstream worker``).

Configuration comes from ``TOWERSTREAM_*`` environment variables (towerstream.settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

import faust
import structlog
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.tables import TableManager

from streams import metrics
from streams.agents import drain_when_idle, register_agents
from streams.kafka_auth import aiokafka_kwargs, faust_credentials
from streams.batch_consumer import BatchConsumer, InteractionsConsumer, ItemsConsumer, group_id
from streams.faust_offsets import watch_faust_assignments
from streams.lag import watch_lag
from streams.membership import current_member_id, rejoin_as_previous_member, watch_member
from streams.runtime import WorkerRuntime
from streams.unreadable import is_decoding_error, report_faust_unreadable
from streams.shutdown import BoundedStopApp, BoundedStopWorker, StopState, bounded
from streams.views import WebServer, build_web_app, deliver_to
from towerstream.events.deadletter import MAX_RECORD_BYTES
from towerstream.broker import port_open
from towerstream.lifecycle import exit_after, lower_priority
from towerstream.logs import configure_logging, install_repeat_filter, undo_spinner_debug_level
from towerstream.settings import Settings, get_settings

log = structlog.get_logger(__name__)

#: The runtime whose /healthz reports an undecodable batch Faust's consumer fetched (one app a process).
_faust_health: list[WorkerRuntime] = []


def _patch_fetch_wait(ms: int) -> None:
    """Faust hard-codes ``fetch_max_wait_ms=1500`` for its consumer; we want fresher fetches.

    A long-poll fetch is not woken early by every broker (Tansu waits it out), so the
    setting bounds event latency. Wrapping the class the driver instantiates is the
    smallest change that keeps everything else Faust's.
    """
    import aiokafka
    import faust.transport.drivers.aiokafka as driver

    base = aiokafka.AIOKafkaConsumer
    if getattr(driver.aiokafka, "_towerstream_patched", False):
        return

    class _Consumer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("fetch_max_wait_ms") == 1500:
                kwargs["fetch_max_wait_ms"] = ms
            super().__init__(*args, **kwargs)

    class _Module:
        _towerstream_patched = True

        def __getattr__(self, name: str) -> Any:
            return _Consumer if name == "AIOKafkaConsumer" else getattr(aiokafka, name)

    driver.aiokafka = _Module()  # type: ignore[assignment]


def _patch_faust_unreadable() -> None:
    """Faust's fetcher crashes on a batch it cannot decode and its topics stop: name the batch first.

    Faust reads records with aiokafka's fetcher directly, in its consumer thread (where this runs,
    so the lookup uses that thread's connections); ``/healthz`` then shows where it stopped.
    """
    import faust.transport.drivers.aiokafka as driver

    cls = driver.AIOKafkaConsumerThread
    if getattr(cls, "_towerstream_unreadable", False):
        return
    fetch_records = cls._fetch_records

    async def _fetch_records(self: Any, consumer: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await fetch_records(self, consumer, *args, **kwargs)
        except Exception as exc:
            if _faust_health and is_decoding_error(exc):
                await report_faust_unreadable(
                    consumer, _faust_health[-1].health,
                    lambda topic, action: metrics.UNREADABLE_BATCHES.labels(topic, action).inc(), exc)
            raise

    cls._fetch_records = _fetch_records
    cls._towerstream_unreadable = True


class _TableManager(TableManager):  # type: ignore[misc]
    """Faust's table manager sleeps 1 s at start so that tables can register; we keep none.

    Skipping the sleep when no table is registered takes a second off every (re)start before
    the consumer subscribes; with tables it behaves exactly like Faust's.
    """

    async def on_start(self) -> None:
        if len(self):
            await super().on_start()
            return
        await self._update_channels()
        await self.recovery.start()


def broker_listening(settings: Settings) -> bool:
    """Does any bootstrap address accept a connection now (the probe's last answer may be 2 s old)?"""
    for address in settings.bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        if host and port.isdigit() and port_open(host, int(port), timeout=0.5):
            return True
    return False


def create_app(settings: Settings) -> faust.App:
    configure_logging(settings.log_level, settings.log_json, repeat_window_s=settings.log_repeat_window_s)
    install_repeat_filter(settings.log_repeat_window_s, lambda name: metrics.LOG_LINES_SUPPRESSED.labels(name).inc())
    _patch_fetch_wait(settings.consumer_max_fetch_wait_ms)
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = BoundedStopApp(
        settings.app_id,
        broker=",".join(f"kafka://{h}" for h in settings.bootstrap.split(",")),
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        autodiscover=False,
        # The HTTP API is our aiohttp app on Faust's loop (streams.views.WebServer), not Faust's web.
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=max(4096, settings.batch_max * 4),
        producer_acks=-1,
        producer_compression_type=settings.compression_type,
        # A dead letter carries a refused record of up to 2 MiB, base64-encoded.
        producer_max_request_size=MAX_RECORD_BYTES,
        # Tansu reports end offsets too low; this check would raise falsely. We keep no tables.
        recovery_consistency_check=False,
        TableManager=_TableManager,
        Worker=BoundedStopWorker,  # a stop ends within stop_timeout_s; the worker dies with its parent
    )
    app.towerstream_settings = settings
    app.towerstream_stop = stop_state = StopState()  # type: ignore[attr-defined]
    app.boot_strategy.enable_web = False  # wins over ``faust worker``'s --with-web default
    runtime = WorkerRuntime(settings)
    _faust_health.append(runtime)
    _patch_faust_unreadable()
    if settings.gil_switch_interval_ms > 0:
        sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    if settings.role == "train" and settings.train_nice > 0:
        # Before any thread starts (Linux threads inherit their creator's niceness).
        lower_priority(settings.train_nice)
    app.towerstream_runtime = runtime  # type: ignore[attr-defined]

    def topic(name: str, partitions: int | None = None, config: dict[str, Any] | None = None) -> Any:
        return app.topic(
            settings.topic(name), key_type=bytes, value_type=bytes, key_serializer="raw",
            value_serializer="raw", partitions=partitions or settings.topic_partitions, config=config,
        )

    topics = {name: topic(name) for name in ("interactions", "items", "users", "recommend-requests",
                                             "recommend-responses")}
    topics["dead-letters"] = topic("dead-letters", config={"max.message.bytes": str(MAX_RECORD_BYTES)})
    topics["drift-metrics"] = topic("drift-metrics")
    runtime.dead_letter_topic = topics["dead-letters"]
    runtime.topics = topics  # type: ignore[attr-defined]

    register_agents(app, runtime, topics)
    watch_faust_assignments(app, runtime)
    # Children of the app, started in this order before Faust's own consumer: the HTTP API first
    # (/healthz answers "starting" while the engine loads and the groups join), then the readers,
    # whose group joins overlap Faust's.
    http = app.add_dependency(WebServer(build_web_app(runtime, deliver_to(topics)), settings.web_host,
                                        settings.web_port))
    app.towerstream_http = http  # type: ignore[attr-defined]
    readers: list[BatchConsumer] = [
        app.add_dependency(cls(app, runtime, topics[cls.name]))
        for cls, how in ((InteractionsConsumer, settings.interactions_consumer), (ItemsConsumer, settings.items_consumer))
        if how == "batch"
    ]
    if settings.items_consumer == "batch":  # not ready before the catalog is read
        runtime.catching_up.add("items")
    try:
        from streams.drift_task import register_drift
    except ModuleNotFoundError as exc:  # drift monitoring is optional until its module exists
        if exc.name != "streams.drift_task":
            raise
    else:
        register_drift(app, runtime, topics)
    if settings.faust_metrics:  # into the default registry, which our /metrics serves
        setup_prometheus_sensors(app, pattern="/faust-metrics", name_prefix="towerstream_faust")

    @app.on_worker_init.connect
    def open_engine_early(sender: Any, **kwargs: Any) -> None:
        """``faust worker`` is starting: load the engine while the consumer joins its group."""
        if runtime.opening:
            return  # Faust sends this signal twice
        runtime.begin_open()
        rejoin_as_previous_member(settings)  # a SIGKILLed predecessor must not hold up the group join
        watch_member(lambda: current_member_id(app), settings)
        for consumer in readers:  # their own groups: same for them (they record their ids themselves)
            rejoin_as_previous_member(settings, group_id(settings, consumer.name))

    @app.task
    async def open_engine() -> None:
        undo_spinner_debug_level(settings.log_level)  # Faust's logging is set up by now
        await runtime.open()

    if settings.ordering == "event_time":

        @app.task
        async def sequencer() -> None:
            await drain_when_idle(runtime)

    @app.task
    async def probe_kafka() -> None:
        """Health of the broker link: a metadata request every 2 s (drives /healthz)."""
        from aiokafka import AIOKafkaClient

        client = AIOKafkaClient(
            bootstrap_servers=settings.bootstrap, request_timeout_ms=3000, **aiokafka_kwargs(settings)
        )
        booted = False
        while True:
            try:
                if not booted:
                    await asyncio.wait_for(client.bootstrap(), 5)
                    booted = True
                await asyncio.wait_for(client.fetch_all_metadata(), 3)
                up = True
            except Exception:  # noqa: BLE001 - any failure means "cannot reach Kafka now"
                up = False
            if up != runtime.kafka_up:
                log.info("kafka_reachability", reachable=up)
            if up:
                runtime.health.clear("kafka")
            else:  # /healthz shows since when (kept from the first failed probe)
                runtime.health.degrade("kafka", "broker unreachable", bootstrap=settings.bootstrap)
            since = runtime.health.conditions().get("kafka", {}).get("since", 0.0)
            metrics.KAFKA_UNREACHABLE_SINCE.set(since)
            runtime.kafka_up = up
            metrics.KAFKA_UP.set(1 if up else 0)
            await asyncio.sleep(2)

    @app.task
    async def lag_monitor() -> None:
        """End offsets of the partitions the readers report, lag gauges, stalled partitions."""
        from aiokafka import AIOKafkaConsumer

        await watch_lag(runtime.lag, lambda: AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap, group_id=None, enable_auto_commit=False,
            client_id=f"{settings.app_id}-lag", **aiokafka_kwargs(settings)))

    @app.on_partitions_revoked.connect
    async def forget_revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        """Faust's agents' partitions (users) that moved to another worker: no lag reported here."""
        runtime.lag.forget([f"{tp.topic}:{tp.partition}" for tp in revoked])

    @app.timer(interval=min(settings.checkpoint_every_s, 1.0))
    async def periodic_checkpoint() -> None:
        """Every CHECKPOINT_EVERY_S, or sooner once CHECKPOINT_MAX_REPLAY_S of training is unsaved."""
        engine = runtime.engine
        if not runtime.ready or engine is None:
            return
        budget = settings.checkpoint_max_replay_s
        if (time.time() - runtime.last_checkpoint_at >= settings.checkpoint_every_s
                or (budget > 0 and engine.unsaved_train_s >= budget)):
            await runtime.checkpoint()

    @app.timer(interval=settings.reembed_every_s)
    async def periodic_reembed() -> None:
        """Keep every vector, and the IVF lists they sit in, consistent with the current item tower."""
        engine = runtime.engine
        if engine is not None and runtime.ready:
            n = await runtime.run(engine.reembed_all)
            log.info("catalog_reembedded", items=n, model_version=engine.model_version)
            await asyncio.get_running_loop().run_in_executor(runtime.maintenance_pool, engine.refit_index)

    @app.on_before_shutdown.connect
    async def before_shutdown(app: faust.App, **kwargs: Any) -> None:
        await stop_state.finish_once()

    async def final_checkpoint() -> None:
        async def close_reader(consumer: BatchConsumer) -> None:
            # aiokafka's consumer stop lets a CancelledError of its own fetch tasks out when the
            # broker is gone: it must not cut the final checkpoint short.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await consumer.close()

        # Each one's batch in flight made durable, offsets committed, group left; the broker
        # parts are given up after stop_broker_wait_s.
        await bounded(asyncio.gather(*(close_reader(c) for c in readers)), settings.stop_broker_wait_s + 3.0,
                      "readers_close")
        t0, opened = time.perf_counter(), runtime.engine is not None
        try:
            await runtime.close()
        except Exception as exc:  # noqa: BLE001 - the journal replays what the checkpoint missed
            log.error("final_checkpoint_failed", error=repr(exc)[:300])
        else:
            stop_state.final_checkpoint = opened
            if opened:
                log.info("final_checkpoint_saved", seconds=round(time.perf_counter() - t0, 3))
            if not runtime.kafka_up or not broker_listening(settings):
                # All that is left needs the broker, which is gone: one more wait, not the whole bound.
                def gave_up() -> int:
                    log.warning("stop_without_broker", seconds=settings.stop_broker_wait_s,
                                final_checkpoint=stop_state.final_checkpoint,
                                left_undone="group leave, last commit, producer flush")
                    return 0 if stop_state.final_checkpoint else 1

                exit_after(settings.stop_broker_wait_s, gave_up)
        await bounded(http.close(), 10.0, "http_close")

    stop_state.finish = final_checkpoint
    return app


settings = get_settings()
app = create_app(settings)
