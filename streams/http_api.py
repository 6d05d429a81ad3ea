"""Request parsing and error handling shared by the worker's views and a serving replica's.

Why one module: a client must not be able to tell a replica (``towerstream serve``) from the
all-in-one worker by how a request is parsed or refused. Both build their aiohttp routes from
these pieces: the same ``k`` bounds, query parameters, body limits, bearer-token check and JSON
errors (4xx with a message, never a 500).
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import MultiMapping
from pydantic import TypeAdapter, ValidationError

from streams import metrics
from towerstream.events import Filters
from towerstream.events.base import ExternalId
from towerstream.events.drift import DriftReport
from towerstream.events.recommend import RecommendRequest
from towerstream.settings import Settings

EXTERNAL_ID: TypeAdapter[str] = TypeAdapter(ExternalId)

Request = web.Request
Response = web.Response
Handler = Callable[[Request], Awaitable[Response]]

#: The page ``GET /`` serves: one self-contained file (no build step, nothing fetched from elsewhere).
PAGE = Path(__file__).with_name("page.html")
#: Drift reports a process keeps for ``GET /drift`` (the page's charts): at the 30 s default cadence, 3 hours.
DRIFT_KEPT = 360


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def errors_text(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors(include_url=False)[:5]
    )


def json_response(body: Any, status: int = 200) -> Response:
    return web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json")


def check_auth_header(s: Settings, header: str | None, write: bool) -> None:
    """401 unless the bearer token matches (writes always need it; reads only with ``protect_reads``)."""
    token = s.api_token.get_secret_value() if s.api_token else None
    if token is None or not (write or s.protect_reads):
        return
    header = header or ""
    if not header.startswith("Bearer ") or not hmac.compare_digest(header[7:].encode(), token.encode()):
        raise HttpError(401, "missing or invalid bearer token")


async def read_body(s: Settings, request: Request) -> Any:
    """The request's JSON body, at most ``max_request_bytes`` (413 beyond, 400 if not JSON)."""
    length = request.content_length
    if length is not None and length > s.max_request_bytes:
        raise HttpError(413, f"body of {length} bytes exceeds {s.max_request_bytes}")
    raw = bytearray()  # read() returns what has arrived so far, not the whole body: loop to EOF
    while len(raw) <= s.max_request_bytes:
        chunk = await request.content.read(s.max_request_bytes + 1 - len(raw))
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


def guarded(path: str, fn: Handler) -> Handler:
    """``HttpError`` -> its JSON answer, counted in ``towerstream_http_rejected_total``."""

    async def handler(request: Request) -> Response:
        try:
            return await fn(request)
        except HttpError as exc:
            metrics.HTTP_REJECTED.labels(path, str(exc.status)).inc()
            return json_response({"error": exc.message, **exc.extra}, status=exc.status)

    return handler


def parse_k(s: Settings, raw: str | None) -> int:
    if raw is None:
        return s.default_k
    try:
        k = int(raw)
    except ValueError:
        raise HttpError(400, f"k must be an integer, got {raw[:50]!r}") from None
    if not 1 <= k <= s.max_k:
        raise HttpError(400, f"k must be between 1 and {s.max_k}")
    return k


def get_request(s: Settings, user_id: str, q: MultiMapping[str]) -> RecommendRequest:
    """``GET /recommend/<user>?k=..&include_category=..&ctx.device=..&fields=title,categories`` -> the request model.

    ``fields`` names the item fields the answer carries (comma-separated); ``fields=`` (empty)
    asks for ids and scores only; absent, every field.
    """
    k = parse_k(s, q.get("k"))
    context: dict[str, str | float | int | bool] = {key[4:]: val for key, val in q.items() if key.startswith("ctx.")}
    fields = q.get("fields")
    extra: dict[str, Any] = {} if fields is None else {"fields": [f.strip() for f in fields.split(",") if f.strip()]}
    try:
        return RecommendRequest(
            user_id=EXTERNAL_ID.validate_python(user_id), k=min(k, 1000),
            exclude_seen=q.get("exclude_seen", "true").lower() not in ("0", "false", "no"),
            filters=Filters(
                include_categories=q.getall("include_category", []),
                exclude_categories=q.getall("exclude_category", []),
                exclude_items=q.getall("exclude_item", []),
                exclude_creators=q.getall("exclude_creator", []),
            ),
            context=context, **extra,
        )
    except ValidationError as exc:
        raise HttpError(400, errors_text(exc)) from None


def item_id_of(raw: str) -> str:
    """An item id from a path (400 if it is not an id)."""
    try:
        return EXTERNAL_ID.validate_python(raw)
    except ValidationError as exc:
        raise HttpError(400, "item_id: " + errors_text(exc)) from None


async def post_request(s: Settings, request: Request) -> RecommendRequest:
    """``POST /recommend`` body -> the request model (422 if invalid, 400 if ``k`` is too large)."""
    body = await read_body(s, request)
    try:
        req = RecommendRequest.model_validate(body)
    except ValidationError as exc:
        raise HttpError(422, errors_text(exc)) from None
    if req.k > s.max_k:
        raise HttpError(400, f"k must be between 1 and {s.max_k}")
    return req


@web.middleware
async def errors_as_json(request: Request, handler: Callable[[Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """aiohttp's own 4xx (unknown path, wrong method) as JSON with a message, like ours."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response({"error": f"{exc.reason}: {request.method} {request.path}"}, status=exc.status)


@functools.cache
def _page_bytes() -> bytes:
    return PAGE.read_bytes()


def page_response() -> Response:
    """``GET /``: the page for a person (it reads ``/overview``, ``/recommend`` and ``/drift``)."""
    return web.Response(body=_page_bytes(), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


def drift_response(source: str, reports: Iterable[DriftReport], q: MultiMapping[str]) -> Response:
    """``GET /drift?n=..``: the newest ``n`` drift reports this process built, oldest first."""
    raw = q.get("n")
    try:
        n = DRIFT_KEPT if raw is None else int(raw)
    except ValueError:
        raise HttpError(400, f"n must be an integer, got {raw[:50]!r}") from None
    if not 1 <= n <= DRIFT_KEPT:
        raise HttpError(400, f"n must be between 1 and {DRIFT_KEPT}")
    kept = list(reports)[-n:]
    return json_response({"source": source, "reports": [r.model_dump(mode="json") for r in kept]})
