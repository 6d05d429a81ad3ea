"""``GET /recommend/<user>`` answered below aiohttp, on the same port; everything else is aiohttp's.

Why: a query is ~1 ms of GIL-holding CPU in the worker and four tenths of it were aiohttp's
per-request machinery (request and URL objects, routing, middlewares, the response's header
writer) and the event-loop turns it takes (``py-spy --gil`` of the worker at 100k items, 1,000
upserts/s). On a 2-core machine shared with ingestion, every such tenth of a millisecond is a
chance to be preempted or to wait for the GIL; ``docs/benchmarks.md`` has the A/B.

Each connection starts here. A request that is a plain ``GET /recommend/<user>?<query>`` over
HTTP/1.1, with no body, no escapes in the user id or the query, and no ``Connection: close`` or
upgrade, is parsed here and answered by the same view code as aiohttp's route
(``views.recommend_fast``). Anything else (another path or method, an escape, a header this
parser does not take on, a request the view refuses with a 4xx) hands the connection over to
aiohttp for good, with the bytes not yet answered: aiohttp then answers exactly as it would
have, errors and their metrics included. Serving clients keep their connections for queries,
so the common case stays here.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

import structlog
from aiohttp import web
from multidict import MultiDict

from streams import metrics

log = structlog.get_logger(__name__)

#: ``fast(user_id, query, authorization header)`` -> the JSON body of a 200; raises ``Declined``
#: for anything it does not answer with a 200 (aiohttp's route then answers the same request).
FastGet = Callable[[str, "MultiDict[str]", "str | None"], Awaitable[bytes]]
#: Where ``views.build_web_app`` puts its ``FastGet`` for ``HttpServer`` to find.
FAST_GET: web.AppKey[FastGet] = web.AppKey("fast_get", object)  # type: ignore[arg-type]

_PREFIX = b"GET /recommend/"
#: A request head longer than this goes to aiohttp (its own limit is 8,190 bytes a line).
MAX_HEAD = 8192
#: Idle keep-alive connections are closed after this long (aiohttp's default too).
KEEPALIVE_S = 75.0
_UNSAFE = frozenset("%+#")
_REFUSED_HEADERS = frozenset({"transfer-encoding", "expect", "upgrade"})


class Declined(Exception):
    """The fast path does not answer this request: aiohttp will."""


def parse_head(head: bytes) -> tuple[str, MultiDict[str], str | None] | None:
    """A request head (without the blank line) -> (user id, query, Authorization) or None."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "GET" or parts[2] != "HTTP/1.1" or not parts[1].startswith("/recommend/"):
        return None
    target = parts[1][len("/recommend/"):]
    user, _, raw_query = target.partition("?")
    if not user or "/" in user or _UNSAFE.intersection(target):
        return None
    auth: str | None = None
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name[0] in " \t" or name != name.strip():
            return None  # folded or malformed: aiohttp's parser decides
        key, value = name.lower(), value.strip()
        if key in _REFUSED_HEADERS or (key == "content-length" and value != "0"):
            return None
        if key == "connection" and value.lower() != "keep-alive":
            return None
        if key == "authorization":
            auth = value
    query: MultiDict[str] = MultiDict()
    if raw_query:
        for pair in raw_query.split("&"):
            if pair:
                k, _, v = pair.partition("=")
                query.add(k, v)
    return user, query, auth


class _Date:
    """The ``Date`` header, formatted once a second."""

    def __init__(self) -> None:
        self.second, self.value = -1, b""

    def now(self) -> bytes:
        t = int(time.time())
        if t != self.second:
            self.second, self.value = t, formatdate(t, usegmt=True).encode()
        return self.value


class FastGetConnections:
    """The connections still on the fast path, so that a stop can close them."""

    def __init__(self) -> None:
        self.open: set[FastGetProtocol] = set()

    async def close(self, grace_s: float = 5.0) -> None:
        """Let answers in flight finish (up to ``grace_s``), then close every connection."""
        busy = [p.task for p in self.open if p.task is not None]
        if busy:
            await asyncio.wait(busy, timeout=grace_s)
        for p in list(self.open):
            p.close()


class FastGetProtocol(asyncio.Protocol):
    """One client connection, served here until a request needs aiohttp (see the module doc)."""

    def __init__(self, fast: FastGet, make_handler: Callable[[], asyncio.Protocol],
                 connections: FastGetConnections, date: _Date) -> None:
        self.fast, self.make_handler, self.connections, self.date = fast, make_handler, connections, date
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.task: asyncio.Task[None] | None = None
        self.idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._gone = False  # handed over or closed
        self._eof = False

    # ----- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as aiohttp does
        self.connections.open.add(self)
        loop = asyncio.get_running_loop()
        self.idle_since = loop.time()
        self._idle_timer = loop.call_later(KEEPALIVE_S, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is None:
            self._next()

    def eof_received(self) -> bool:
        self._eof = True
        if self.task is None:
            self.close()
        return True  # keep the transport: an answer in flight is still written, then closed

    def connection_lost(self, exc: BaseException | None) -> None:
        self._leave()
        if self.task is not None:
            self.task.cancel()

    # ----- requests
    def _next(self) -> None:
        """Serve the request at the head of the buffer, wait for more bytes, or hand over."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD or not (_PREFIX.startswith(buf) or buf.startswith(_PREFIX)):
                self._hand_over()
            return
        parsed = parse_head(buf[:end]) if end <= MAX_HEAD else None
        if parsed is None:
            self._hand_over()
            return
        self.task = asyncio.get_running_loop().create_task(self._serve(*parsed, end + 4))

    async def _serve(self, user: str, query: MultiDict[str], auth: str | None, head_len: int) -> None:
        try:
            body = await self.fast(user, query, auth)
        except Exception as exc:  # noqa: BLE001 - Declined, or a bug: aiohttp answers (a 500 with its log)
            if not isinstance(exc, Declined):
                log.exception("fast_get_failed", user_id=user[:100])
            self.task = None
            self._hand_over()
            return
        metrics.HTTP_FAST.labels("served").inc()
        if self._gone or self.transport is None:
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\n\r\n%s"
                             % (len(body), self.date.now(), body))
        self.buf = self.buf[head_len:]
        self.task = None
        self.idle_since = asyncio.get_running_loop().time()
        if self.transport.is_closing():
            return
        if self.buf:
            self._next()
        if self._eof and self.task is None and not self._gone:
            self.close()  # the client sent all it will: what could be answered was

    def _hand_over(self) -> None:
        """From now on aiohttp owns the connection, starting with the bytes not yet answered."""
        if self._gone or self.transport is None:
            return
        self._leave()
        metrics.HTTP_FAST.labels("handed_over").inc()
        handler = self.make_handler()
        self.transport.set_protocol(handler)
        handler.connection_made(self.transport)
        if self.buf:
            handler.data_received(self.buf)
        self.buf = b""

    def _check_idle(self) -> None:
        if self._gone:
            return
        loop = asyncio.get_running_loop()
        left = self.idle_since + KEEPALIVE_S - loop.time()
        if self.task is None and not self.buf and left <= 0:
            self.close()
        else:
            self._idle_timer = loop.call_later(max(left, 1.0), self._check_idle)

    def close(self) -> None:
        if self.transport is not None and not self._gone:
            self.transport.close()
        self._leave()

    def _leave(self) -> None:
        """Off the fast path for good (handed over, closed or lost): no idle timer, not in ``connections``."""
        self._gone = True
        self.connections.open.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()


def fast_get_server(fast: FastGet, aiohttp_server: Any,
                    connections: FastGetConnections) -> Callable[[], asyncio.Protocol]:
    """The protocol factory for ``loop.create_server``: aiohttp's ``web.Server`` takes over when needed."""
    date = _Date()
    return lambda: FastGetProtocol(fast, aiohttp_server, connections, date)
