"""A worker stop that ends in time, broker or no broker.

Why: Faust stops its consumer (last commit, leaving the group) before it sends
``on_before_shutdown``, where our final checkpoint is written, and flushes its producer after;
with the broker gone each of those can wait without end, and aiokafka's consumer stop can let a
CancelledError of its own fetch tasks out, which breaks Faust's stop off before the checkpoint.
Supervisors SIGKILL after their grace (30 s on Kubernetes), so the broker steps wait at most
``stop_broker_wait_s`` each, the checkpoint runs whichever way Faust's stop ends,
and a watchdog armed by the first SIGTERM/SIGINT ends the process ``stop_timeout_s`` after it,
saying whether the final checkpoint was written. A worker started by ``towerstream`` also stops
when that parent goes away (``towerstream.lifecycle``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import faust
import structlog
from faust.worker import Worker as FaustWorker

from towerstream.lifecycle import PARENT_PID_ENV, die_with_parent, exit_after, watch_parent
from towerstream.logs import install_repeat_filter
from towerstream.settings import Settings

log = structlog.get_logger(__name__)
T = TypeVar("T")


async def bounded(aw: Awaitable[T], seconds: float, step: str) -> T | None:
    """``aw``, or ``None`` after ``seconds`` (logged): for the steps of a stop that need the broker."""
    try:
        return await asyncio.wait_for(aw, seconds)
    except asyncio.TimeoutError:
        log.warning("stop_step_gave_up", step=step, seconds=seconds, reason="the broker did not answer")
        return None


#: After Faust's loop has closed, how long its leftover threads (aiokafka's consumer thread
#: retrying a gone broker) may take to end before the process exits without them.
THREADS_GRACE_S = 2.0


class StopState:
    """What a stop has done so far, for the watchdog's last word."""

    def __init__(self) -> None:
        self.signalled_at: float | None = None
        self.final_checkpoint = False
        #: The app's "readers closed, final checkpoint" step; run once, whichever path gets there.
        self.finish: Callable[[], Awaitable[None]] | None = None
        self._finishing: asyncio.Future[None] | None = None

    async def finish_once(self) -> None:
        if self.finish is None:
            return
        if self._finishing is None:
            self._finishing = asyncio.ensure_future(self.finish())
        await asyncio.shield(self._finishing)


class BoundedStopApp(faust.App):  # type: ignore[misc]
    """Faust's app with its two broker waits of a stop bounded (``stop_broker_wait_s``)."""

    towerstream_settings: Settings
    towerstream_stop: StopState

    async def _stop_consumer(self) -> None:
        try:
            await bounded(super()._stop_consumer(), self.towerstream_settings.stop_broker_wait_s, "faust_consumer")
        except asyncio.CancelledError:  # raised inside Faust's consumer stop when the broker is gone
            log.warning("stop_step_gave_up", step="faust_consumer", reason="cancelled inside Faust")

    async def on_stop(self) -> None:
        """Faust's stop, and our final checkpoint even when Faust's stop breaks off before its
        ``on_before_shutdown`` (where the checkpoint normally runs)."""
        try:
            await super().on_stop()
        finally:
            await self.towerstream_stop.finish_once()

    async def _producer_flush(self, logger: Any) -> None:
        await bounded(super()._producer_flush(logger), self.towerstream_settings.stop_broker_wait_s, "producer_flush")


class BoundedStopWorker(FaustWorker):  # type: ignore[misc]
    """``faust worker`` whose stop ends within ``stop_timeout_s`` and that dies with its parent."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        install_repeat_filter(self._settings().log_repeat_window_s)  # Faust has just set up the handlers

    async def on_first_start(self) -> None:
        await super().on_first_start()  # installs Faust's signal handlers
        parent = os.environ.get(PARENT_PID_ENV)
        if parent:
            expected = int(parent)

            def parent_gone() -> None:
                log.warning("parent_gone", parent_pid=expected, action="stopping")
                os.kill(os.getpid(), signal.SIGTERM)

            die_with_parent(signal.SIGTERM, expected)  # covers a parent that died before our prctl
            watch_parent(expected, parent_gone)  # and systems without prctl

    def _shutdown_loop(self) -> None:
        """Faust's stop is over, or broke off: make sure the final checkpoint was attempted."""
        state: StopState = self.app.towerstream_stop
        try:
            self.loop.run_until_complete(state.finish_once())
        except BaseException as exc:  # noqa: BLE001 - the loop's end must come anyway
            log.error("final_checkpoint_failed", error=repr(exc)[:300])
        super()._shutdown_loop()

    def stop_and_shutdown(self) -> None:
        try:
            super().stop_and_shutdown()
        finally:
            self._exit_without_leftover_threads()

    def _exit_without_leftover_threads(self) -> None:
        """Faust's loop is closed; threads it started may still wait on a gone broker (they are
        not daemons, so Python would wait for them at exit): give them a moment, then exit."""
        runtime = getattr(self.app, "towerstream_runtime", None)
        for name in ("train_pool", "serve_pool", "commit_pool", "items_pool", "maintenance_pool"):
            pool = getattr(runtime, name, None)  # idle by now (the engine is closed): let them go
            if pool is not None:
                pool.shutdown(wait=False)
        end = time.monotonic() + THREADS_GRACE_S
        main = threading.main_thread()
        for thread in threading.enumerate():
            if thread is not main and not thread.daemon:
                thread.join(max(0.0, end - time.monotonic()))
        left = [t.name for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]
        if left:
            state: StopState = self.app.towerstream_stop
            log.warning("stop_left_threads", threads=left, final_checkpoint=state.final_checkpoint)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0 if state.final_checkpoint else 1)

    def _settings(self) -> Settings:
        return self.app.towerstream_settings  # type: ignore[no-any-return]

    def _schedule_shutdown(self, sig: signal.Signals) -> None:
        state: StopState = self.app.towerstream_stop
        if state.signalled_at is None:
            state.signalled_at = time.monotonic()
            limit = self._settings().stop_timeout_s
            log.info("stopping", signal=sig.name, within_s=limit)

            def gave_up() -> int:
                log.error("stop_timeout", seconds=limit, final_checkpoint=state.final_checkpoint,
                          left_undone="the broker parts of the stop (group leave, last commit, flush)")
                return 0 if state.final_checkpoint else 1

            exit_after(limit, gave_up)
        super()._schedule_shutdown(sig)
