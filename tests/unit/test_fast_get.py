"""``GET /recommend`` below aiohttp (``streams.fast_get``): same answers, and aiohttp for the rest.

A real ``HttpServer`` serves the worker's real views over a real socket, with a real (small)
engine behind them; the client is a raw socket so that pipelining, hand-over mid-connection and
the exact bytes on the wire are what is tested.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams import metrics
from streams.fast_get import parse_head
from streams.http_server import HttpServer
from streams.runtime import WorkerRuntime
from streams.views import build_web_app
from towers import TowerConfig
from towerstream.broker import free_port
from towerstream.engine import Engine, EngineConfig
from towerstream.events import Interaction, ItemUpsert
from towerstream.settings import Settings

SMALL = EngineConfig(tower=TowerConfig(dim=16, hidden=32, uniform_negatives=16, seed=1), index_kind="flat")
T0 = 1_700_000_000_000
TOKEN = "t0ken"


def _engine(path: Path) -> Engine:
    eng = Engine.open(path, SMALL)
    eng.apply_items([ItemUpsert(item_id=f"i{i}", title=f"t{i % 3}", categories=[f"g{i % 3}"], ts=T0) for i in range(30)])
    eng.learn([Interaction(event_id=f"e{n}", user_id=f"u{n % 5}", item_id=f"i{n % 30}", ts=T0 + n) for n in range(60)])
    return eng


def _serve(tmp_path: Path, **settings: Any) -> Iterator[tuple[int, WorkerRuntime]]:
    s = Settings(kafka_bootstrap="127.0.0.1:9", data_dir=tmp_path / "data", web_port=free_port(), **settings)

    async def deliver(topic: str, records: Any) -> None:
        raise ConnectionError("no broker in this test")

    runtime = WorkerRuntime(s)
    runtime.engine = _engine(tmp_path / "engine")
    server = HttpServer(build_web_app(runtime, deliver), "127.0.0.1", s.web_port)
    server.start()
    try:
        yield s.web_port, runtime
    finally:
        server.stop()
        runtime.engine.close()


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[int, WorkerRuntime]]:
    yield from _serve(tmp_path)


@pytest.fixture()
def protected(tmp_path: Path) -> Iterator[tuple[int, WorkerRuntime]]:
    yield from _serve(tmp_path, api_token=TOKEN, protect_reads=True)


class Conn:
    """A raw HTTP/1.1 client connection that reads responses by Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, *requests: str) -> None:
        self.sock.sendall("".join(requests).encode())

    def response(self) -> tuple[int, dict[str, str], Any]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed before a response"
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        n = int(headers["content-length"])
        while len(self.buf) < n:
            self.buf += self.sock.recv(65536)
        body, self.buf = self.buf[:n], self.buf[n:]
        return int(lines[0].split(" ")[1]), headers, json.loads(body)

    def get(self, target: str, *headers: str) -> str:
        return f"GET {target} HTTP/1.1\r\nHost: x\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"


def _count(outcome: str) -> float:
    return metrics.HTTP_FAST.labels(outcome)._value.get()


def _items(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [(x["item_id"], x["score"]) for x in body["items"]]


def test_a_plain_get_is_answered_below_aiohttp_with_aiohttps_answer(served: tuple[int, WorkerRuntime]) -> None:
    port, _ = served
    c = Conn(port)
    served0, handed0 = _count("served"), _count("handed_over")
    c.send(c.get("/recommend/u1?k=3&exclude_category=g0"))
    status, headers, fast = c.response()
    assert status == 200 and headers["content-type"] == "application/json" and "date" in headers
    assert fast["source"] == "model" and len(fast["items"]) == 3
    assert all(int(i[1:]) % 3 != 0 for i, _ in _items(fast))
    assert (_count("served"), _count("handed_over")) == (served0 + 1, handed0)
    # The same request with the user id percent-escaped ("1" is %31) is aiohttp's to answer.
    c2 = Conn(port)
    c2.send(c2.get("/recommend/u%31?k=3&exclude_category=g0"))
    status, _, slow = c2.response()
    assert (_count("served"), _count("handed_over")) == (served0 + 1, handed0 + 1)
    assert status == 200 and _items(slow) == _items(fast)
    assert {k: v for k, v in slow.items() if k != "served_at_ms"} == {k: v for k, v in fast.items() if k != "served_at_ms"}


def test_pipelined_requests_are_answered_in_order_on_one_connection(served: tuple[int, WorkerRuntime]) -> None:
    port, _ = served
    c = Conn(port)
    served0 = _count("served")
    c.send(c.get("/recommend/u1?k=2"), c.get("/recommend/u2?k=4"), c.get("/recommend/nobody?k=1"))
    answers = [c.response() for _ in range(3)]
    assert [(s, b["user_id"], len(b["items"])) for s, _, b in answers] == [(200, "u1", 2), (200, "u2", 4), (200, "nobody", 1)]
    assert answers[2][2]["source"] == "popularity"  # an unknown user: the fallback, as aiohttp's route gives
    assert _count("served") == served0 + 3


def test_a_request_the_view_refuses_goes_to_aiohttp_and_the_connection_stays_usable(
    served: tuple[int, WorkerRuntime],
) -> None:
    port, _ = served
    c = Conn(port)
    handed0 = _count("handed_over")
    rejected0 = metrics.HTTP_REJECTED.labels("/recommend/{user_id}", "400")._value.get()
    c.send(c.get("/recommend/u1?k=0"), c.get("/recommend/u1?k=2"))
    status, _, body = c.response()
    assert status == 400 and "k must be between 1 and" in body["error"]
    assert metrics.HTTP_REJECTED.labels("/recommend/{user_id}", "400")._value.get() == rejected0 + 1
    status, _, body = c.response()  # the pipelined one, answered by aiohttp now
    assert status == 200 and len(body["items"]) == 2
    assert _count("handed_over") == handed0 + 1
    c.send(c.get("/healthz"))
    status, _, body = c.response()
    assert status in (200, 503) and "ready" in body
    c.send("POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    status, _, body = c.response()
    assert status == 422 and "events are invalid" in body["error"]


def test_protected_reads_need_the_token_on_the_fast_path_too(protected: tuple[int, WorkerRuntime]) -> None:
    port, _ = protected
    served0 = _count("served")
    c = Conn(port)
    c.send(c.get("/recommend/u1?k=2", f"Authorization: Bearer {TOKEN}"))
    status, _, body = c.response()
    assert status == 200 and len(body["items"]) == 2 and _count("served") == served0 + 1
    c.send(c.get("/recommend/u1?k=2", "Authorization: Bearer wrong"))
    status, _, body = c.response()
    assert status == 401 and body["error"] == "missing or invalid bearer token"
    c2 = Conn(port)
    c2.send(c2.get("/recommend/u1?k=2"))
    assert c2.response()[0] == 401
    assert _count("served") == served0 + 1


def test_stopping_the_server_closes_idle_fast_connections(tmp_path: Path) -> None:
    gen = _serve(tmp_path)
    port, _ = next(gen)
    c = Conn(port)
    c.send(c.get("/recommend/u1?k=1"))
    assert c.response()[0] == 200
    with pytest.raises(StopIteration):
        next(gen)  # HttpServer.stop
    assert c.sock.recv(1024) == b""


@pytest.mark.parametrize(("head", "ok"), [
    ("GET /recommend/u1?k=3&ctx.device=web HTTP/1.1\r\nHost: x\r\nConnection: keep-alive", True),
    ("GET /recommend/u1 HTTP/1.1\r\nContent-Length: 0", True),
    ("GET /recommend/u1 HTTP/1.0\r\nHost: x", False),  # 1.0 keep-alive rules: aiohttp's
    ("GET /recommend/u1 HTTP/1.1\r\nConnection: close", False),
    ("GET /recommend/u1 HTTP/1.1\r\nContent-Length: 5", False),
    ("GET /recommend/u1 HTTP/1.1\r\nTransfer-Encoding: chunked", False),
    ("GET /recommend/u1 HTTP/1.1\r\nExpect: 100-continue", False),
    ("GET /recommend/u%20x HTTP/1.1", False),  # escapes: aiohttp decodes them
    ("GET /recommend/u1?c=a+b HTTP/1.1", False),
    ("GET /recommend/a/b HTTP/1.1", False),  # not the route's shape
    ("GET /recommend/ HTTP/1.1", False),
    ("POST /recommend/u1 HTTP/1.1", False),
    ("GET /recommend/u1 HTTP/1.1\r\n folded: x", False),
    ("GET /recommend/u1 HTTP/1.1\r\nno-colon", False),
])
def test_the_fast_parser_takes_only_plain_gets(head: str, ok: bool) -> None:
    got = parse_head(head.encode())
    assert (got is not None) == ok
    if got is not None:
        user, query, auth = got
        assert user == "u1" and auth is None


def test_the_fast_parser_reads_repeated_and_blank_query_keys() -> None:
    got = parse_head(b"GET /recommend/u7?exclude_category=a&exclude_category=b&k=&flag HTTP/1.1\r\nAuthorization: Bearer z")
    assert got is not None
    user, query, auth = got
    assert user == "u7" and query.getall("exclude_category") == ["a", "b"] and query["k"] == "" and query["flag"] == ""
    assert auth == "Bearer z"
