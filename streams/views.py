"""HTTP views: recommendations, event intake (validated, then forwarded to Kafka), health, metrics.

Every bad request gets a 4xx with a message (never a 500): bodies are size-bounded,
validated with the same event schemas as the agents, and ``k`` is bounded. The views form a
plain aiohttp application (``build_web_app``); the worker serves it from a thread and event
loop of its own (``streams.http_server``), apart from Faust's, so a query never waits behind
the agents' per-event work. Intake hands its records to ``deliver``, which the worker runs on
Faust's loop (its producer lives there).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from multidict import MultiMapping
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel, TypeAdapter, ValidationError

from streams import metrics
from streams.fast_get import FAST_GET, Declined
from streams.runtime import WorkerRuntime
from towerstream.events import Filters, Interaction, ItemEvent, RecommendResponse, UserProfile, encode
from towerstream.events.base import ExternalId
from towerstream.events.recommend import RecommendRequest

_USER_ID: TypeAdapter[str] = TypeAdapter(ExternalId)
MAX_EVENTS_PER_REQUEST = 10_000
#: What ``/recommend`` answers (404) in role ``train``: serving replicas answer.
TRAINER_ANSWERS_NOT = "this process trains; ask a serving replica (towerstream serve)"
#: Seconds an intake request may wait for Kafka to accept its records (queueing included).
DELIVER_TIMEOUT_S = 10.0

#: ``deliver(topic_name, [(key, value, timestamp_s), ...])``: returns once Kafka has every record.
Deliver = Callable[[str, Sequence[tuple[bytes, bytes, float]]], Awaitable[None]]
Request = web.Request
Response = web.Response


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors(include_url=False)[:5]
    )


def _json(body: Any, status: int = 200) -> Response:
    return web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json")


def build_web_app(runtime: WorkerRuntime, deliver: Deliver) -> web.Application:
    """The worker's HTTP API as an aiohttp application."""
    s = runtime.settings
    token = s.api_token.get_secret_value() if s.api_token else None

    def check_auth(request: Request, write: bool) -> None:
        check_auth_header(request.headers.get("Authorization"), write)

    def check_auth_header(header: str | None, write: bool) -> None:
        if token is None or not (write or s.protect_reads):
            return
        header = header or ""
        if not header.startswith("Bearer ") or not hmac.compare_digest(header[7:].encode(), token.encode()):
            raise HttpError(401, "missing or invalid bearer token")

    async def read_body(request: Request) -> Any:
        length = request.content_length
        if length is not None and length > s.max_request_bytes:
            raise HttpError(413, f"body of {length} bytes exceeds {s.max_request_bytes}")
        raw = bytearray()  # read() returns what has arrived so far, not the whole body: loop to EOF
        while len(raw) <= s.max_request_bytes:
            chunk = await request.content.read(s.max_request_bytes + 1 - len(raw))  # type: ignore[attr-defined]
            if not chunk:
                break
            raw += chunk
        if len(raw) > s.max_request_bytes:
            raise HttpError(413, f"body exceeds {s.max_request_bytes} bytes")
        if not raw:
            raise HttpError(400, "empty body")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"body is not JSON: {exc}") from None
        except RecursionError:
            raise HttpError(400, "body is not JSON we accept: nested too deeply") from None

    def guarded(path: str, fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            try:
                return await fn(request)
            except HttpError as exc:
                metrics.HTTP_REJECTED.labels(path, str(exc.status)).inc()
                return _json({"error": exc.message, **exc.extra}, status=exc.status)

        return handler

    def parse_k(raw: str | None) -> int:
        if raw is None:
            return s.default_k
        try:
            k = int(raw)
        except ValueError:
            raise HttpError(400, f"k must be an integer, got {raw[:50]!r}") from None
        if not 1 <= k <= s.max_k:
            raise HttpError(400, f"k must be between 1 and {s.max_k}")
        return k

    async def answer(req: RecommendRequest) -> Response:
        return web.Response(body=await answer_body(req), content_type="application/json")

    async def answer_body(req: RecommendRequest) -> bytes:
        if s.role == "train":
            raise HttpError(404, TRAINER_ANSWERS_NOT)
        if runtime.engine is None:
            raise HttpError(503, "worker is starting")
        engine = runtime.engine
        t0 = time.perf_counter()
        rec = await runtime.serve(
            engine.recommend, req.user_id, req.k, exclude_seen=req.exclude_seen, filters=req.filters,
            contexts=[req.context] if req.context else None,
        )
        metrics.RECOMMEND_SECONDS.labels(rec.source).observe(time.perf_counter() - t0)
        if runtime.monitor is not None:
            runtime.monitor.observe_served(rec)
        resp = RecommendResponse(
            request_id=req.request_id, user_id=req.user_id,
            items=[{"item_id": i, "score": sc} for i, sc in rec.items],  # type: ignore[misc]
            source=rec.source, fallback_reason=rec.fallback_reason,
            model_version=engine.model_version, served_at_ms=int(time.time() * 1000),
        )
        return resp.model_dump_json().encode()

    def get_request(user_id: str, q: MultiMapping[str]) -> RecommendRequest:
        """``GET /recommend/<user>?k=..&include_category=..&ctx.device=..`` -> the request model."""
        k = parse_k(q.get("k"))
        context = {key[4:]: val for key, val in q.items() if key.startswith("ctx.")}
        try:
            return RecommendRequest(
                user_id=_USER_ID.validate_python(user_id), k=min(k, 1000),
                exclude_seen=q.get("exclude_seen", "true").lower() not in ("0", "false", "no"),
                filters=Filters(
                    include_categories=q.getall("include_category", []),
                    exclude_categories=q.getall("exclude_category", []),
                    exclude_items=q.getall("exclude_item", []),
                    exclude_creators=q.getall("exclude_creator", []),
                ),
                context=context,
            )
        except ValidationError as exc:
            raise HttpError(400, _errors(exc)) from None

    async def recommend_get(request: Request) -> Response:
        check_auth(request, write=False)
        return await answer(get_request(request.match_info["user_id"], request.query))

    async def recommend_fast(user_id: str, query: MultiMapping[str], authorization: str | None) -> bytes:
        """The same request below aiohttp (``streams.fast_get``); any 4xx is left to the route above."""
        try:
            check_auth_header(authorization, write=False)
            return await answer_body(get_request(user_id, query))
        except HttpError:
            raise Declined from None

    async def recommend_post(request: Request) -> Response:
        check_auth(request, write=False)
        body = await read_body(request)
        try:
            req = RecommendRequest.model_validate(body)
        except ValidationError as exc:
            raise HttpError(422, _errors(exc)) from None
        if req.k > s.max_k:
            raise HttpError(400, f"k must be between 1 and {s.max_k}")
        return await answer(req)

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

    async def metrics_page(request: Request) -> Response:
        """towerstream's metrics, and Faust's when its sensor is on (``FAUST_METRICS``): one registry."""
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[_errors_as_json])
    for method, path, fn in (("GET", "/recommend/{user_id}", recommend_get), ("POST", "/recommend", recommend_post),
                             ("POST", "/interactions", post_interactions), ("POST", "/items", post_items),
                             ("POST", "/users", post_users), ("GET", "/healthz", healthz),
                             ("GET", "/metrics", metrics_page)):
        app.router.add_route(method, path, guarded(path, fn))
    app[FAST_GET] = recommend_fast
    return app


@web.middleware
async def _errors_as_json(request: Request, handler: Callable[[Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """aiohttp's own 4xx (unknown path, wrong method) as JSON with a message, like ours."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json({"error": f"{exc.reason}: {request.method} {request.path}"}, status=exc.status)
