"""The HTTP API on a thread and event loop of its own, apart from Faust's.

Why: on Faust's event loop a query waited for whatever the loop was doing: Faust's per-event
path for a batch of item events, offset commits, the producer. With 1,000 item upserts/s that
put the p99 of ``/recommend`` at 14-30 ms at 100k items, against ~5 ms on an idle worker. On
its own loop a query only competes for the GIL, which CPython hands over every
``gil_switch_interval_ms``. Intake requests still send through Faust's producer: ``deliver``
runs the sends on Faust's loop and the view awaits them from here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import structlog
from aiohttp import web

from streams.fast_get import FAST_GET, FastGetConnections, fast_get_server

log = structlog.get_logger(__name__)


class HttpServer:
    """Serves an aiohttp application on ``host:port`` from a daemon thread with its own loop."""

    def __init__(self, app: web.Application, host: str, port: int,
                 prepare_loop: Callable[[asyncio.AbstractEventLoop], None] | None = None) -> None:
        self.app, self.host, self.port = app, host, port
        #: Called with the thread's loop before it serves (queries first: ``towerstream.query_priority``).
        self.prepare_loop = prepare_loop
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started: Future[None] = Future()
        self._stop: asyncio.Event | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Bind and serve; raises here (in the caller) when the port cannot be bound."""
        self._thread = threading.Thread(target=self._main, name="http", daemon=True)
        self._thread.start()
        self._started.result(timeout)
        log.info("http_serving", host=self.host, port=self.port)

    def _main(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        if self.prepare_loop is not None:
            self.prepare_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        fast = self.app.get(FAST_GET)
        listener: asyncio.Server | None = None
        connections = FastGetConnections()
        try:
            await runner.setup()
            if fast is None:
                await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
            else:  # GET /recommend below aiohttp; aiohttp (runner.server) takes any other request
                listener = await asyncio.get_running_loop().create_server(
                    fast_get_server(fast, runner.server, connections), self.host, self.port, reuse_address=True)
        except BaseException as exc:
            await runner.cleanup()
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        try:
            await self._stop.wait()
        finally:
            if listener is not None:
                listener.close()
                await connections.close()
            await runner.cleanup()  # aiohttp's connections, those handed over included

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, finish the requests in flight (up to aiohttp's grace), end the thread."""
        loop, stop = self.loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)


def deliver_on(loop_of: Any, topics: dict[str, Any]) -> Any:
    """``views.Deliver`` for the worker: sends on Faust's loop (``loop_of()``), awaited from any loop."""

    async def send_all(topic_name: str, records: Sequence[tuple[bytes, bytes, float]]) -> None:
        topic = topics[topic_name]
        futs = [await topic.send(key=key, value=value, timestamp=ts) for key, value, ts in records]
        await asyncio.gather(*futs)

    async def deliver(topic_name: str, records: Sequence[tuple[bytes, bytes, float]]) -> None:
        fut = asyncio.run_coroutine_threadsafe(send_all(topic_name, records), loop_of())
        try:
            await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            fut.cancel()  # the caller's deadline passed: stop the sends on Faust's loop too
            raise

    return deliver
