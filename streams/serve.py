"""A serving replica (``towerstream serve``): follows what the trainer publishes and answers.

Why a process of its own, without Faust: a replica owns no partitions of what it follows. It reads
every partition of ``item-vectors``, ``model`` and ``interactions`` from the beginning, in no
consumer group (a group would split the catalog between replicas), and hands the records to the
pure core (``towerstream.replica.Replica``), which holds the active version and answers. Only
``recommend-requests`` is read in a group (``<app_id>-replicas``), so that each request on Kafka is
answered once, by one replica; a replica joins it only once it is ready, so that a replica still
catching up never takes requests from one that could answer them.

Threads: the event loop fetches, serves HTTP and answers requests; one apply thread makes every
change to the core (decoding, index upserts, version switches), so that a bootstrap of a large
catalog does not stop the loop from answering ``/healthz``. Two readers feed it, each with its
own consumer: the published topics, and the interactions, so that a version's sweep (a record per
item) never queues a user's interaction behind more than one fetch of it. Queries read the core's active state
on the loop while the apply thread changes it; the core makes that safe (one assignment per switch).

Ready (``/healthz`` 200) means: the broker answers, a version is active, and every followed
partition has been read up to the end its log had when the replica started (``streams.follow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from aiohttp import web
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from streams import metrics
from streams import replica_metrics as rm
from streams.dead_letters import send_dead_letter
from streams.follow import FollowState
from streams.health import Health
from streams.http_api import HttpError, check_auth_header, drift_response, errors_as_json, get_request, guarded
from streams.http_api import item_id_of, json_response, page_response, post_request
from streams.kafka_auth import aiokafka_kwargs
from streams.log_bounds import probe_highwaters
from streams.replica_drift import ReplicaDrift
from towerstream.events import Interaction, RecommendResponse, decode_interaction, encode
from towerstream.drift import DriftConfig, DriftSettings
from towerstream.events.recommend import RecommendRequest
from towerstream.lifecycle import PARENT_PID_ENV, exit_after, watch_parent
from towerstream.published import ITEM_VECTORS, MODEL
from towerstream.replica import Replica
from towerstream.settings import Settings

log = structlog.get_logger(__name__)

INTERACTIONS = "interactions"
#: Two readers, each with a consumer of its own, taking turns on the one apply thread: a sweep's
#: flood of item vectors then never holds an interaction back by more than one applied fetch.
FOLLOWERS: dict[str, tuple[str, ...]] = {"published": (ITEM_VECTORS, MODEL), "interactions": (INTERACTIONS,)}
#: The followed topics (logical names), in the order their records are applied within one fetch:
#: vectors before the model records that may complete their version.
FOLLOWED = tuple(name for names in FOLLOWERS.values() for name in names)
#: Records one fetch hands over at most (each batch is applied on the apply thread).
FETCH_MAX_RECORDS = 2000
#: Seconds between looks at the followed topics' partitions (a topic that grew, or appeared).
METADATA_EVERY_S = 10.0
#: Seconds between two broker probes (drives ``/healthz``'s "kafka unreachable").
PROBE_EVERY_S = 2.0


class ReplicaServer:
    """The replica's I/O around one ``Replica``: readers, the request group, HTTP, health."""

    def __init__(self, settings: Settings, replica: Replica | None = None, drift: DriftConfig | None = None) -> None:
        self.settings = settings
        self.replica = replica or Replica(max_k=settings.max_k)
        self.drift = ReplicaDrift(settings, self.replica, drift or DriftConfig())
        self.health = Health()
        self.follow = FollowState(FOLLOWED)
        self.kafka_up = False
        self.started_at = time.time()
        self.stopping = asyncio.Event()
        self._apply = ThreadPoolExecutor(1, thread_name_prefix="replica-apply")
        self._ready_once = asyncio.Event()
        #: Skips this module counts itself (records the core never sees), (topic, reason) -> n.
        self._skipped: dict[tuple[str, str], int] = {}
        self._reported_skips: dict[tuple[str, str], int] = {}
        self._reported_switches = 0
        self._topic_of = {settings.topic(t): t for t in FOLLOWED}
        #: Followers that have taken their start targets (``FollowState.started`` once all have).
        self._followers_started: set[str] = set()

    # ----- state -------------------------------------------------------------------------------
    def _status(self) -> dict[str, Any]:
        st = self.replica.status()
        self._publish_metrics(st)
        return st

    @property
    def ready(self) -> bool:
        return self.kafka_up and self.follow.caught_up and self.replica.status().get("version") is not None

    def _skip(self, topic: str, reason: str, n: int = 1) -> None:
        self._skipped[(topic, reason)] = self._skipped.get((topic, reason), 0) + n

    def _publish_metrics(self, st: dict[str, Any]) -> None:
        rm.REPLICA_VERSION.set(st.get("version") or 0)
        rm.REPLICA_ITEMS.set(st.get("items") or 0)
        rm.REPLICA_USERS.set(st.get("users") or 0)
        switches = int(st.get("switches") or 0)
        if switches > self._reported_switches:
            rm.REPLICA_SWITCHES.inc(switches - self._reported_switches)
            self._reported_switches = switches
        skipped: dict[tuple[str, str], int] = dict(self._skipped)
        for topic, reasons in (st.get("skipped") or {}).items():
            for reason, n in reasons.items():
                skipped[(topic, reason)] = skipped.get((topic, reason), 0) + int(n)
        for key, n in skipped.items():
            if n > self._reported_skips.get(key, 0):
                rm.REPLICA_SKIPPED.labels(*key).inc(n - self._reported_skips.get(key, 0))
                self._reported_skips[key] = n
        for topic, lag in self.follow.lag().items():
            rm.REPLICA_LAG.labels(topic).set(lag)
        for topic, behind in self.follow.behind_ms().items():
            if behind is not None:
                rm.REPLICA_BEHIND_SECONDS.labels(topic).set(behind / 1000)
        rm.REPLICA_READY.set(1 if (self.kafka_up and self.follow.caught_up and st.get("version") is not None) else 0)

    # ----- Kafka clients ------------------------------------------------------------------------
    def _consumer(self, **kw: Any) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap, enable_auto_commit=False,
            fetch_max_wait_ms=s.consumer_max_fetch_wait_ms, request_timeout_ms=10_000,
            **{**aiokafka_kwargs(s), **kw},
        )

    async def _start(self, client: AIOKafkaConsumer | AIOKafkaProducer, what: str) -> None:
        """Start a client, retrying while the broker is away (the probe shows it in ``/healthz``)."""
        while True:
            try:
                await client.start()
                return
            except Exception as exc:  # noqa: BLE001 - any failure to connect: try again
                log.warning("kafka_client_not_started", client=what, error=repr(exc)[:200])
                with contextlib.suppress(Exception):
                    await client.stop()
                await asyncio.sleep(1.0)

    async def probe_kafka(self) -> None:
        """A metadata request every ``PROBE_EVERY_S``: drives ``kafka_up`` and the "kafka" condition."""
        s = self.settings
        client = AIOKafkaClient(bootstrap_servers=s.bootstrap, request_timeout_ms=3000, **aiokafka_kwargs(s))
        booted = False
        try:
            while True:
                try:
                    if not booted:
                        await asyncio.wait_for(client.bootstrap(), 5)
                        booted = True
                    await asyncio.wait_for(client.fetch_all_metadata(), 3)
                    up = True
                except Exception:  # noqa: BLE001 - any failure means "cannot reach Kafka now"
                    up = False
                if up != self.kafka_up:
                    log.info("kafka_reachability", reachable=up, bootstrap=s.bootstrap)
                if up:
                    self.health.clear("kafka")
                else:
                    self.health.degrade("kafka", "broker unreachable", bootstrap=s.bootstrap)
                self.kafka_up = up
                metrics.KAFKA_UP.set(1 if up else 0)
                await asyncio.sleep(PROBE_EVERY_S)
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    # ----- following the published topics --------------------------------------------------------
    async def _partitions(self, consumer: AIOKafkaConsumer, names: tuple[str, ...]) -> tuple[list[TopicPartition], list[str]]:
        """Every partition of these followed topics that exist now, and the topics that do not."""
        await consumer.topics()  # refreshes the cluster metadata
        tps: list[TopicPartition] = []
        missing: list[str] = []
        for name in names:
            parts = consumer.partitions_for_topic(self.settings.topic(name))
            if not parts:
                missing.append(name)
            tps += [TopicPartition(self.settings.topic(name), p) for p in sorted(parts or ())]
        return tps, missing

    async def _targets(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The end of each partition's log now: the listed end, raised to a fetch's exact high watermark."""
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        at = {tp: ends[tp] - 1 for tp in tps if ends[tp] > starts[tp]}
        highwaters: dict[TopicPartition, int] = {}
        if at:
            probe = self._consumer()
            try:
                await probe.start()
                highwaters = await probe_highwaters(probe, at)
            finally:
                await probe.stop()
        for tp in at:
            if tp not in highwaters:
                log.warning("log_end_unknown", topic=tp.topic, partition=tp.partition, listed_end=ends[tp],
                            reason="the probe fetch got no answer; the listed end is the target")
        return {tp: max(ends[tp], highwaters.get(tp, 0)) for tp in tps}

    async def _assign(self, consumer: AIOKafkaConsumer, follower: str) -> bool:
        """Assign every partition of the follower's topics, new ones from their start; True when none is missing.

        Until the follower has started, the targets (log ends at start) are taken; a partition or
        topic that appears later is read from its start and gates nothing.
        """
        tps, missing = await self._partitions(consumer, FOLLOWERS[follower])
        first = follower not in self._followers_started
        current = set(consumer.assignment())
        new = [tp for tp in tps if tp not in current]
        if new:
            positions = {tp: await consumer.position(tp) for tp in current}
            targets = await self._targets(consumer, new) if first else {}
            consumer.assign(tps)
            for tp, pos in positions.items():
                consumer.seek(tp, pos)
            await consumer.seek_to_beginning(*new)
            for tp in new:
                name = self._topic_of[tp.topic]
                self.follow.add(name, tp.partition, targets.get(tp))
                log.info("following", topic=tp.topic, partition=tp.partition, target=targets.get(tp))
        if missing:
            self.health.degrade(f"topics:{follower}", "followed topics do not exist yet", missing=missing)
        elif first:
            self.health.clear(f"topics:{follower}")
            self._followers_started.add(follower)
            if len(self._followers_started) == len(FOLLOWERS):
                self.follow.started = True
                log.info("follow_targets", targets=self.follow.summary())
        return not missing

    async def follow_topics(self, follower: str) -> None:
        """Read every partition of the follower's topics from the beginning and apply the records."""
        consumer = self._consumer(group_id=None, auto_offset_reset="none")
        await self._start(consumer, follower)
        loop = asyncio.get_running_loop()
        try:
            while not await self._assign(consumer, follower):
                await asyncio.sleep(1.0)
            looked_at = time.monotonic()
            while True:
                try:
                    batch = await consumer.getmany(timeout_ms=200, max_records=FETCH_MAX_RECORDS)
                except OffsetOutOfRangeError as exc:  # Kafka: retention or a new log passed the position
                    await self._reset(consumer, list(exc.args[0] if exc.args else ()), "out of range")
                    continue
                if batch:
                    newest = await loop.run_in_executor(self._apply, self._apply_batch, batch)
                    for name, ms in newest.items():
                        self.follow.newest_ms[name] = max(self.follow.newest_ms.get(name, -1), ms)
                await self._note_positions(consumer)
                if time.monotonic() - looked_at > METADATA_EVERY_S:
                    looked_at = time.monotonic()
                    await self._assign(consumer, follower)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), self.settings.stop_broker_wait_s)

    def _apply_batch(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> dict[str, int]:
        """On the apply thread: one fetch's records into the core, item vectors first; returns
        the newest record timestamp per topic."""
        by_topic: dict[str, list[ConsumerRecord[bytes, bytes]]] = {t: [] for t in FOLLOWED}
        for tp, records in batch.items():
            by_topic[self._topic_of[tp.topic]].extend(records)
        newest: dict[str, int] = {}
        for name in FOLLOWED:
            records = by_topic[name]
            if not records:
                continue
            if name == INTERACTIONS:
                events: list[Interaction] = []
                for r in records:
                    try:
                        events.append(decode_interaction(r.value if r.value is not None else b""))
                    except Exception as exc:  # noqa: BLE001 - the trainer dead-letters it; we count it
                        self._skip(INTERACTIONS, "invalid")
                        log.debug("interaction_skipped", topic=r.topic, partition=r.partition, offset=r.offset,
                                  error=str(exc).splitlines()[0][:200])
                if events:
                    self.replica.apply_interactions(events)
            else:
                rows = [(r.partition, r.offset, r.key or b"", r.value) for r in records]
                if name == ITEM_VECTORS:
                    self.replica.apply_item_records(rows)
                else:
                    self.replica.apply_model_records(rows)
            newest[name] = max(r.timestamp for r in records)
        return newest

    async def _note_positions(self, consumer: AIOKafkaConsumer) -> None:
        """Positions (past compacted gaps and control records too) and high watermarks after a fetch."""
        replaced: list[TopicPartition] = []
        for tp in consumer.assignment():
            pos = await consumer.position(tp)
            hw = consumer.highwater(tp)
            if hw is not None and pos > hw:
                replaced.append(tp)
                continue
            self.follow.applied(self._topic_of[tp.topic], tp.partition, pos, hw, None)
        if replaced:  # Tansu: a fetch past the end waits silently; the high watermark tells
            await self._reset(consumer, replaced, "past the end: the log was replaced")
        if any(self._topic_of[tp.topic] == ITEM_VECTORS for tp in consumer.assignment()):
            positions = self.follow.positions(ITEM_VECTORS)
            await asyncio.get_running_loop().run_in_executor(self._apply, self.replica.set_item_positions, positions)
        if not self._ready_once.is_set() and self.ready:
            self._ready_once.set()
            st = self._status()
            log.info("replica_ready", version=st.get("version"), items=st.get("items"), users=st.get("users"),
                     seconds=round(time.time() - self.started_at, 2))

    async def _reset(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], why: str) -> None:
        """Read partitions again from their start: a replaced or cut log holds what the trainer
        published since, and every record is keyed (re-reading is harmless). Shown as a notice."""
        if not tps:
            return
        await consumer.seek_to_beginning(*tps)
        for tp in tps:
            name = self._topic_of[tp.topic]
            st = self.follow.add(name, tp.partition, None)
            log.warning("log_reset", topic=tp.topic, partition=tp.partition, position=st.position, reason=why)
            self.health.notice("log_reset", topic=tp.topic, partition=tp.partition, position=st.position, reason=why)
            rm.REPLICA_LOG_RESETS.labels(name).inc()
            st.position, st.highwater, st.target = 0, None, None

    # ----- recommend-requests on Kafka ------------------------------------------------------------
    async def answer_requests(self, producer: AIOKafkaProducer) -> None:
        """Join ``<app_id>-replicas`` once ready; answer each request to ``reply_to`` or the responses topic."""
        s = self.settings
        await self._ready_once.wait()
        topic = s.topic("recommend-requests")
        consumer = self._consumer(
            group_id=f"{s.app_id}-replicas", auto_offset_reset="earliest",
            session_timeout_ms=int(s.broker_session_timeout * 1000),
            heartbeat_interval_ms=int(s.broker_heartbeat_interval * 1000),
        )
        await self._start(consumer, "requests")
        consumer.subscribe([topic])
        log.info("answering_requests", topic=topic, group=f"{s.app_id}-replicas")
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=100)
                sent = []
                for records in batch.values():
                    for r in records:
                        fut = await self._answer_record(producer, r)
                        if fut is not None:
                            sent.append(fut)
                if sent:
                    await asyncio.gather(*sent)
                if batch:
                    await consumer.commit()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), s.stop_broker_wait_s)

    async def _answer_record(self, producer: AIOKafkaProducer, r: ConsumerRecord[bytes, bytes]) -> Any:
        s = self.settings
        try:
            req = RecommendRequest.model_validate_json(r.value)
        except (ValueError, TypeError) as exc:  # TypeError: a tombstone
            rm.REPLICA_REQUESTS.labels("invalid").inc()
            self._skip("recommend-requests", "invalid")

            async def send(key: bytes | None, value: bytes) -> Any:
                return await producer.send(s.topic("dead-letters"), key=key, value=value)

            await send_dead_letter(send, r, str(exc).splitlines()[0][:500], "invalid",
                                   sent=lambda t, k: metrics.DEAD_LETTERS.labels(t, k).inc(),
                                   failed=metrics.DEAD_LETTER_FAILURES.inc)
            return None
        resp = self.recommend(req.model_copy(update={"k": min(req.k, s.max_k)}))
        rm.REPLICA_REQUESTS.labels("answered").inc()
        target = req.reply_to or s.topic("recommend-responses")
        return await producer.send(target, key=(req.request_id or req.user_id).encode(), value=encode(resp))

    def recommend(self, req: RecommendRequest) -> RecommendResponse:
        t0 = time.perf_counter()
        resp = self.replica.recommend(req)
        metrics.RECOMMEND_SECONDS.labels(resp.source).observe(time.perf_counter() - t0)
        self.drift.observe(resp)
        return resp

    # ----- HTTP ----------------------------------------------------------------------------------
    def web_app(self) -> web.Application:
        s = self.settings

        def check_read(request: web.Request) -> None:
            check_auth_header(s, request.headers.get("Authorization"), write=False)

        async def recommend_get(request: web.Request) -> web.Response:
            check_read(request)
            return self._answer(get_request(s, request.match_info["user_id"], request.query))

        async def recommend_post(request: web.Request) -> web.Response:
            check_read(request)
            return self._answer(await post_request(s, request))

        async def item(request: web.Request) -> web.Response:
            check_read(request)
            item_id = request.match_info["item_id"]
            found = self.replica.item(item_id)
            if found is None:
                raise HttpError(404, f"no live item {item_id[:200]!r} in version {self.replica.status().get('version')}")
            return json_response(found)

        async def explain(request: web.Request) -> web.Response:
            check_read(request)
            req = get_request(s, request.match_info["user_id"], request.query)
            got = self.replica.explain(req, item_id_of(request.match_info["item_id"]))
            return web.Response(body=got.model_dump_json().encode(), content_type="application/json")

        async def overview(request: web.Request) -> web.Response:
            check_read(request)
            return json_response(self.overview())

        async def drift(request: web.Request) -> web.Response:
            check_read(request)
            return drift_response(self.drift.source, self.drift.recent, request.query)

        async def page(request: web.Request) -> web.Response:
            return page_response()

        async def healthz(request: web.Request) -> web.Response:
            return self.healthz()

        async def metrics_page(request: web.Request) -> web.Response:
            self._status()
            return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application(middlewares=[errors_as_json])
        for method, path, fn in (("GET", "/recommend/{user_id}", recommend_get), ("POST", "/recommend", recommend_post),
                                 ("GET", "/items/{item_id}", item), ("GET", "/healthz", healthz),
                                 ("GET", "/metrics", metrics_page), ("GET", "/explain/{user_id}/{item_id}", explain),
                                 ("GET", "/overview", overview), ("GET", "/drift", drift), ("GET", "/", page)):
            app.router.add_route(method, path, guarded(path, fn))
        return app

    def _answer(self, req: RecommendRequest) -> web.Response:
        return web.Response(body=self.recommend(req).model_dump_json().encode(), content_type="application/json")

    def overview(self) -> dict[str, Any]:
        """What the page shows besides answers and charts (the same keys as the worker's)."""
        st = self._status()
        behind = [ms for ms in self.follow.behind_ms().values() if ms is not None]
        return {
            "role": "replica", "ready": self.ready, "state": "serving" if self.ready else "starting",
            "answers": True, "model_version": st.get("version"), "items": st.get("items", 0),
            "users": st.get("users", 0), "interactions": sum(self.follow.positions(INTERACTIONS).values()),
            "lag": sum(self.follow.lag().values()), "freshness_s": max(behind) / 1000 if behind else None,
            "freshness_what": "newest followed record time to now, the furthest behind topic",
        }

    def healthz(self) -> web.Response:
        st = self._status()
        conditions = self.health.conditions()
        version = st.get("version")
        behind = self.follow.behind()
        body: dict[str, Any] = {
            "version": version, "pending": st.get("pending", []), "items": st.get("items", 0),
            "items_digest": st.get("items_digest"), "users": st.get("users", 0),
            "lag": self.follow.lag(), "behind_ms": self.follow.behind_ms(),
            "kafka": self.kafka_up, "catching_up": behind, "conditions": conditions,
            "notices": self.health.notices(), "uptime_s": round(time.time() - self.started_at, 1),
            "positions": self.follow.summary(),
        }
        ok = False
        if not self.kafka_up:
            status = "kafka unreachable"
        elif not self.follow.caught_up:
            status = "catching up"
        elif version is None:
            status = "waiting for a model version"
        elif conditions:
            status = "degraded: " + "; ".join(f"{k}: {v['reason']}" for k, v in sorted(conditions.items()))
        else:
            status, ok = "ok", True
        body["status"] = status
        body["ready"] = ok
        return json_response(body, status=200 if ok else 503)

    # ----- the whole process ---------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until ``stopping`` is set; then stop everything within ``stop_timeout_s``."""
        s = self.settings
        runner = web.AppRunner(self.web_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, s.web_host, s.web_port)
        await site.start()
        log.info("replica_listening", host=s.web_host, port=s.web_port, bootstrap=s.bootstrap, app_id=s.app_id)
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, compression_type=s.compression_type,
                                    **aiokafka_kwargs(s))
        tasks = [asyncio.create_task(self.probe_kafka(), name="probe"),
                 *(asyncio.create_task(self.follow_topics(f), name=f"follow-{f}") for f in FOLLOWERS)]

        async def requests() -> None:
            await self._start(producer, "producer")
            await asyncio.gather(self.answer_requests(producer), self.drift.run(producer))

        tasks.append(asyncio.create_task(requests(), name="requests"))
        stop = asyncio.create_task(self.stopping.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
            for t in done:  # a task that ended by itself failed: say so and stop
                if t is not stop and t.exception() is not None:
                    log.error("replica_task_failed", task=t.get_name(), error=repr(t.exception())[:500])
                    raise t.exception()  # type: ignore[misc]
        finally:
            log.info("replica_stopping")
            for t in [*tasks, stop]:
                t.cancel()
            await asyncio.wait([*tasks, stop], timeout=s.stop_broker_wait_s + 1)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), s.stop_broker_wait_s)
            await runner.cleanup()
            self._apply.shutdown(wait=False, cancel_futures=True)
            log.info("replica_stopped")


def serve(settings: Settings) -> int:
    """``towerstream serve``: one replica until SIGTERM/SIGINT (then a clean stop, bounded)."""

    if settings.gil_switch_interval_ms > 0:
        # The apply thread (decoding, index upserts) and the loop answering queries share the GIL:
        # a short switch interval bounds how long a query waits for it (as in the worker).
        sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)

    async def main() -> None:
        server = ReplicaServer(settings, drift=DriftSettings().config())
        loop = asyncio.get_running_loop()
        stopped_by: list[int] = []

        def on_signal(signum: int) -> None:
            if stopped_by:
                return
            stopped_by.append(signum)
            log.info("stop_requested", signal=signal.Signals(signum).name)
            exit_after(settings.stop_timeout_s, lambda: 128 + signum)
            server.stopping.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        parent = os.environ.get(PARENT_PID_ENV)
        if parent and parent.isdigit():
            def gone() -> None:
                loop.call_soon_threadsafe(on_signal, signal.SIGTERM)

            watch_parent(int(parent), gone)
        try:
            await server.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
    return 0
