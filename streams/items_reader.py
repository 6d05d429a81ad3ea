"""The worker's side of the items reader process (``ITEMS_CONSUMER=process``, the default).

A child process (``streams.items_reader_child``) reads the items topic in the group
"<app_id>-items", decodes it and dead-letters what does not validate; this service applies the
decoded batches it hands over exactly as the in-process readers do (``apply_valid_items``: the
items thread, RocksDB first, then towers and Faiss) and answers each one, after which the child
counts its offsets as done. What stays in the worker is the engine's work and the unpickling;
what moved out (fetches, record unpacking, validation, and since round 9 the content encoding,
~25 us per item) no longer holds the GIL that queries wait for: the
worker's CPU at that rate went from 0.200 to 0.165 cores, the child's is ~0.07
(``bench/ingest_cpu.py``, docs/benchmarks.md round 7).

If the child dies it is started again (``towerstream_items_reader_restarts_total``); the batch
it had handed over but not had answered is read again and de-duplicated by event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import structlog
from mode import Service

from streams import metrics
from streams.agents import apply_valid_items
from streams.runtime import WorkerRuntime
from towers.features import EncodedItems, ItemEncoding
from towerstream.engine import SourcePos

log = structlog.get_logger(__name__)

#: The child's entry point: imported, so what it pickles names its module, not ``__main__``.
_CHILD_MAIN = "import sys; from streams.items_reader_child import main; main(sys.argv)"
#: How long a stopping child may take beyond its own bound on the broker steps
#: (``stop_broker_wait_s``: its last commit and group leave) before it is killed.
STOP_MARGIN_S = 2.0


class ItemsReaderProcess(Service):  # type: ignore[misc]
    """Starts, feeds from and stops the items reader's child process; a child service of the app."""

    name = "items"

    def __init__(self, runtime: WorkerRuntime, topic: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runtime, self.settings, self.topic = runtime, runtime.settings, topic
        self.proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        #: Blocking reads of the pipe (unpickling included) happen here, not on Faust's loop.
        self._link = ThreadPoolExecutor(max_workers=1, thread_name_prefix="items-link")
        self._closing = False
        self._task: asyncio.Future[None] | None = None

    async def on_start(self) -> None:
        self._task = self.add_future(self._run())

    async def on_stop(self) -> None:
        await self.close()

    def _spawn(self) -> tuple[subprocess.Popen[bytes], Connection]:
        ours, theirs = socket.socketpair()
        with theirs:
            proc = subprocess.Popen([sys.executable, "-c", _CHILD_MAIN, str(theirs.fileno()), str(os.getpid())],
                                    pass_fds=[theirs.fileno()])
        conn = Connection(ours.detach())
        conn.send(("settings", self.settings))
        return proc, conn

    def _offsets(self, engine: Any) -> dict[str, int]:
        prefix = self.settings.topic("items") + ":"
        return {tp: off for tp, off in engine.offsets.items() if tp.startswith(prefix)}

    async def _run(self) -> None:
        with contextlib.suppress(Exception):  # normally created up front; a failure shows in the child
            await self.topic.maybe_declare()
        loop = asyncio.get_running_loop()
        engine: Any = None
        while not self._closing:
            try:
                proc, conn = self.proc, self._conn = self._spawn()
            except OSError as exc:  # e.g. out of processes or memory: items wait, queries go on
                log.error("items_reader_not_started", error=repr(exc)[:300], retry_in_s=5.0)
                await asyncio.sleep(5.0)
                continue
            log.info("items_reader_started", pid=proc.pid)
            try:
                if engine is None:
                    engine = await self.runtime.wait_ready()
                conn.send(("ready", self._offsets(engine), ItemEncoding.of(engine.trainer.cfg)))
                await self._serve(engine, conn)
            except OSError:  # the child is gone: the pipe broke under a send
                pass
            except Exception:  # noqa: BLE001 - e.g. a message that does not unpickle: start afresh
                log.exception("items_reader_link_failed", pid=proc.pid)
                proc.kill()
            code = await loop.run_in_executor(None, proc.wait)
            conn.close()
            # What it reported stalled is its own; its successor finds (and reports) it again.
            self.runtime.health.clear_prefix(f"unreadable_batch:{self.settings.topic('items')}:")
            if self._closing:
                log.info("items_reader_stopped", pid=proc.pid, returncode=code)
                return
            metrics.ITEMS_READER_RESTARTS.inc()
            log.error("items_reader_exited", pid=proc.pid, returncode=code, restart_in_s=1.0)
            await asyncio.sleep(1.0)

    async def _serve(self, engine: Any, conn: Connection) -> None:
        """Apply each batch the child hands over and answer it, until the child exits."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                msg = await loop.run_in_executor(self._link, self._receive, conn)
            except (EOFError, OSError):
                return
            if msg[0] == "batch":
                conn.send(await self._apply(engine, *msg[1:]))
            elif msg[0] == "caught_up":  # after the batches before it, which are applied by now
                self.runtime.caught_up(msg[1])
            elif msg[0] == "health" and msg[1] in ("degrade", "clear", "notice"):
                getattr(self.runtime.health, msg[1])(*msg[2], **msg[3])
            elif msg[0] == "unreadable":
                metrics.UNREADABLE_BATCHES.labels(msg[1], msg[2]).inc()
            elif msg[0] == "reset":  # before any batch read from the log start: lower the offset first
                await self.runtime.log_reset(self.name, msg[1])
            elif msg[0] == "lag":
                self.runtime.lag.report(self.name, msg[1])
            elif msg[0] == "forget":
                self.runtime.lag.forget(msg[1])

    def _receive(self, conn: Connection) -> Any:
        """The next message; a query running meanwhile goes first (the unpickling holds the GIL)."""
        data = conn.recv_bytes()
        self.runtime.priority.pause()
        return pickle.loads(data)

    async def _apply(self, engine: Any, events: list[Any], sources: list[tuple[str, int, int]],
                     records: list[Any], dead: list[tuple[str, str]], failures: int,
                     encoded: EncodedItems | None = None) -> tuple[Any, ...]:
        for topic, kind in dead:
            metrics.DEAD_LETTERS.labels(topic, kind).inc()
        metrics.DEAD_LETTER_FAILURES.inc(failures)
        try:
            await apply_valid_items(self.runtime, engine, records, events, [SourcePos(*s) for s in sources], encoded)
        except Exception as exc:  # noqa: BLE001 - a bug, not bad input: the child reads the batch again
            log.exception("items_batch_failed", records=len(records))
            return ("retry", repr(exc)[:300])
        return ("applied", self._offsets(engine))

    async def close(self) -> None:
        """Let the child finish its batch, commit its offsets and leave the group; then it exits."""
        if self._closing:
            return
        self._closing = True
        proc, conn = self.proc, self._conn
        if proc is not None and conn is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
            limit = self.settings.stop_broker_wait_s + STOP_MARGIN_S
            try:  # meanwhile _serve answers the batch the child may still hand over
                await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, proc.wait), limit)
            except asyncio.TimeoutError:
                log.error("items_reader_stop_timeout", pid=proc.pid, seconds=limit)
                proc.kill()
        if self._task is not None and not self._task.done():  # e.g. still waiting for the engine
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5.0)
        self._link.shutdown(wait=False)
