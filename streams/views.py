"""HTTP views: recommendations, event intake (validated, then forwarded to Kafka), health, metrics.

Every bad request gets a 4xx with a message (never a 500): bodies are size-bounded,
validated with the same event schemas as the agents, and ``k`` is bounded. The views form a
plain aiohttp application (``build_web_app``) that the worker serves on Faust's event loop
(``WebServer``, a child service of the app); queries themselves run on a serving thread
(``WorkerRuntime.serve``). Intake hands its records to ``deliver`` (``deliver_to``: Faust's
producer, on the same loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from mode import Service
from multidict import MultiMapping
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel, TypeAdapter, ValidationError

from streams import metrics
from streams.http_api import HttpError, check_auth_header as _check_auth_header, errors_as_json as _errors_as_json
from streams.http_api import errors_text as _errors, get_request as _get_request, guarded as _guarded
from streams.http_api import drift_response, item_id_of, page_response
from streams.http_api import json_response as _json, post_request as _post_request
from streams.http_api import read_body as _read_body
from streams.runtime import WorkerRuntime
from towerstream.events import Interaction, ItemEvent, UserProfile, encode
from towerstream.events.recommend import RecommendRequest

if TYPE_CHECKING:
    from towerstream.engine import Engine

log = structlog.get_logger(__name__)

MAX_EVENTS_PER_REQUEST = 10_000
#: What ``/recommend`` answers (404) in role ``train``: serving replicas answer.
TRAINER_ANSWERS_NOT = "this process trains; ask a serving replica (towerstream serve)"
#: Seconds an intake request may wait for Kafka to accept its records (queueing included).
DELIVER_TIMEOUT_S = 10.0

#: ``deliver(topic_name, [(key, value, timestamp_s), ...])``: returns once Kafka has every record.
Deliver = Callable[[str, Sequence[tuple[bytes, bytes, float]]], Awaitable[None]]
Request = web.Request
Response = web.Response


def build_web_app(runtime: WorkerRuntime, deliver: Deliver) -> web.Application:
    """The worker's HTTP API as an aiohttp application."""
    s = runtime.settings

    def check_auth(request: Request, write: bool) -> None:
        check_auth_header(request.headers.get("Authorization"), write)

    def check_auth_header(header: str | None, write: bool) -> None:
        _check_auth_header(s, header, write)

    async def read_body(request: Request) -> Any:
        return await _read_body(s, request)

    def guarded(path: str, fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        return _guarded(path, fn)

    async def answer(req: RecommendRequest) -> Response:
        return web.Response(body=await answer_body(req), content_type="application/json")

    def serving_engine() -> Engine:
        if s.role == "train":
            raise HttpError(404, TRAINER_ANSWERS_NOT)
        if runtime.engine is None:
            raise HttpError(503, "worker is starting")
        return runtime.engine

    async def answer_body(req: RecommendRequest) -> bytes:
        engine = serving_engine()
        t0 = time.perf_counter()
        rec, resp = await runtime.serve(engine.respond, req)
        metrics.RECOMMEND_SECONDS.labels(rec.source).observe(time.perf_counter() - t0)
        if runtime.monitor is not None:
            runtime.monitor.observe_served(rec)
        return resp.model_dump_json().encode()

    async def explain(request: Request) -> Response:
        check_auth(request, write=False)
        req = get_request(request.match_info["user_id"], request.query)
        item_id = item_id_of(request.match_info["item_id"])
        engine = serving_engine()
        got = await runtime.serve(engine.explain, req.user_id, item_id, req.k, exclude_seen=req.exclude_seen,
                                  filters=req.filters, context=req.context or None)
        return web.Response(body=got.model_dump_json().encode(), content_type="application/json")

    def get_request(user_id: str, q: MultiMapping[str]) -> RecommendRequest:
        return _get_request(s, user_id, q)

    async def recommend_get(request: Request) -> Response:
        check_auth(request, write=False)
        return await answer(get_request(request.match_info["user_id"], request.query))

    async def recommend_post(request: Request) -> Response:
        check_auth(request, write=False)
        return await answer(await _post_request(s, request))

    def intake(topic_name: str, model: Any, key_of: Callable[[Any], str]) -> Callable[[Request], Awaitable[Response]]:
        adapter: TypeAdapter[Any] = TypeAdapter(model)

        async def post(request: Request) -> Response:
            check_auth(request, write=True)
            body = await read_body(request)
            docs = body if isinstance(body, list) else [body]
            if not docs or len(docs) > MAX_EVENTS_PER_REQUEST:
                raise HttpError(400, f"send 1 to {MAX_EVENTS_PER_REQUEST} events per request")
            events: list[BaseModel] = []
            errors = []
            for n, doc in enumerate(docs):
                try:
                    events.append(adapter.validate_python(doc))
                except ValidationError as exc:
                    errors.append({"index": n, "error": _errors(exc)})
            if errors:
                raise HttpError(422, f"{len(errors)} of {len(docs)} events are invalid; none were sent",
                                errors=errors[:20])
            records = [(key_of(e).encode(), encode(e), e.ts.timestamp()) for e in events]  # type: ignore[attr-defined]
            try:  # the deadline covers queueing too: a send can wait on metadata from a paused broker
                await asyncio.wait_for(deliver(topic_name, records), timeout=DELIVER_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - broker trouble is a 503, not a 500
                raise HttpError(503, f"could not deliver to Kafka in {DELIVER_TIMEOUT_S:.0f} s ({type(exc).__name__}); "
                                     "some events may have been delivered: resending them is safe (duplicates are "
                                     "dropped)") from None
            return _json({"accepted": len(events), "topic": s.topic(topic_name)}, status=202)

        return post

    post_interactions = intake("interactions", Interaction, lambda e: e.user_id)
    post_items = intake("items", ItemEvent, lambda e: e.item_id)
    post_users = intake("users", UserProfile, lambda e: e.user_id)

    async def healthz(request: Request) -> Response:
        engine = runtime.engine
        body: dict[str, Any] = {
            "ready": runtime.serving_ready, "kafka": runtime.kafka_up,
            "uptime_s": round(time.time() - runtime.started_at, 1),
        }
        if engine is not None:
            body.update(engine.stats())
        conditions = runtime.health.conditions()
        body["conditions"] = conditions
        body["state"] = runtime.state
        if "kafka" in conditions:  # since when, readable (``since`` in the condition is Unix time)
            body["kafka_unreachable_since"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(conditions["kafka"]["since"]))
        body["notices"] = runtime.health.notices()
        catching_up = sorted(runtime.catching_up)
        body["catching_up"] = catching_up
        body["lag"] = runtime.lag.summary()
        if runtime.publisher is not None:
            body["published"] = runtime.publisher.summary()
        ok = runtime.serving_ready and runtime.kafka_up and not conditions
        starting = "starting" if engine is None or engine.status == "loading" else engine.status
        if ok:
            body["status"] = "ok"
        elif not runtime.ready:
            body["status"] = starting
        elif catching_up:
            body["status"] = "catching up: " + ", ".join(catching_up)
        elif not runtime.kafka_up:
            body["status"] = "kafka unreachable"
        else:
            body["status"] = "degraded: " + "; ".join(f"{k}: {v['reason']}" for k, v in sorted(conditions.items()))
        return _json(body, status=200 if ok else 503)

    async def overview(request: Request) -> Response:
        """What the page shows besides answers and charts (the same keys as a replica's)."""
        check_auth(request, write=False)
        engine = runtime.engine
        stats = engine.stats() if engine is not None else {}
        monitor = runtime.monitor
        # The newest window that upserted anything (an idle window has no freshness to tell).
        fresh = next((r.freshness_lag_ms for r in reversed(monitor.recent) if r.freshness_lag_ms is not None), None) \
            if monitor is not None else None
        state = "serving" if runtime.serving_ready else (engine.status if engine is not None else "starting")
        return _json({
            "role": s.role, "ready": runtime.serving_ready, "state": state,
            "answers": s.role != "train",
            "model_version": int(stats["model_version"]) if stats else None,
            "items": int(stats.get("items_indexed", 0)), "users": int(stats.get("users_known", 0)),
            "interactions": int(stats.get("trained_total", 0)), "lag": runtime.lag.summary()["total"],
            "freshness_s": fresh.p50 / 1000 if fresh is not None else None,
            "freshness_what": "event time to index upsert, median of the newest drift window with upserts",
        })

    async def drift(request: Request) -> Response:
        check_auth(request, write=False)
        monitor = runtime.monitor
        return drift_response(s.app_id, monitor.recent if monitor is not None else (), request.query)

    async def page(request: Request) -> Response:
        return page_response()

    async def metrics_page(request: Request) -> Response:
        """towerstream's metrics, and Faust's when its sensor is on (``FAUST_METRICS``): one registry."""
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[_errors_as_json])
    for method, path, fn in (("GET", "/recommend/{user_id}", recommend_get), ("POST", "/recommend", recommend_post),
                             ("GET", "/explain/{user_id}/{item_id}", explain),
                             ("POST", "/interactions", post_interactions), ("POST", "/items", post_items),
                             ("POST", "/users", post_users), ("GET", "/healthz", healthz),
                             ("GET", "/metrics", metrics_page), ("GET", "/overview", overview),
                             ("GET", "/drift", drift), ("GET", "/", page)):
        app.router.add_route(method, path, guarded(path, fn))
    return app


def deliver_to(topics: dict[str, Any]) -> Deliver:
    """``Deliver`` for the worker: Faust's producer sends the records; returns once Kafka has them all."""

    async def deliver(topic_name: str, records: Sequence[tuple[bytes, bytes, float]]) -> None:
        topic = topics[topic_name]
        futs = [await topic.send(key=key, value=value, timestamp=ts) for key, value, ts in records]
        await asyncio.gather(*futs)

    return deliver


class WebServer(Service):  # type: ignore[misc]
    """Serves an aiohttp application on ``host:port`` from the loop it starts on; a child service of the app.

    It starts with the app, before the consumers have joined their groups, so ``/healthz``
    answers "starting" while the engine loads; a port that cannot be bound fails the start. It
    is closed by the worker's final step (``close``), after the final checkpoint, so probes see
    the whole stop.
    """

    def __init__(self, app: web.Application, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app, self.host, self.port = app, host, port
        self._runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("http_serving", host=self.host, port=self.port)

    async def close(self) -> None:
        """Stop accepting, finish the requests in flight (up to aiohttp's grace); idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
