"""Queries first: background work waits while a query runs, for a bounded time, and only then.

Real threads and a real asyncio loop; the times asserted are orderings (which happened first)
and lower bounds (a wait happened); whether a wait happened at all, and how it ended, is what
``on_pause`` reports, never a speed.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streams.runtime import WorkerRuntime
from towers import TowerConfig
from towerstream.engine import PAUSE_EVERY, Engine, EngineConfig
from towerstream.events import ItemUpsert
from towerstream.query_priority import (
    PausingSelector,
    QueryPriority,
    ServingSelector,
    pause_loop_for_queries,
    pausing,
    serving_loop_counts_as_query,
)
from towerstream.settings import Settings

T0 = 1_700_000_000_000


class Query(threading.Thread):
    """A query on another thread; ``finish`` ends it early once a test has seen what it needed."""

    def __init__(self, priority: QueryPriority, seconds: float, entered: threading.Event, left_at: list[float]) -> None:
        super().__init__()
        self.priority, self.seconds, self.entered, self.left_at = priority, seconds, entered, left_at
        self.release = threading.Event()

    def run(self) -> None:
        with self.priority.query():
            self.entered.set()
            self.release.wait(self.seconds)
            self.left_at.append(time.monotonic())

    def finish(self) -> None:
        self.release.set()
        self.join()


def hold_query(priority: QueryPriority, seconds: float, entered: threading.Event, left_at: list[float]) -> Query:
    """A query on another thread that runs for ``seconds``; ``left_at`` gets the time it ended."""
    t = Query(priority, seconds, entered, left_at)
    t.start()
    assert entered.wait(5)
    return t


def running_query(bound_s: float, query_s: float) -> tuple[QueryPriority, list[bool], list[float], Query]:
    """A ``QueryPriority`` bounded at ``bound_s``, the outcomes of its waits, and a query of
    ``query_s`` running on another thread (with the list that gets its end time)."""
    outcomes: list[bool] = []
    priority = QueryPriority(bound_s, on_pause=outcomes.append)
    left_at: list[float] = []
    return priority, outcomes, left_at, hold_query(priority, query_s, threading.Event(), left_at)


def test_pause_returns_at_once_when_no_query_runs() -> None:
    outcomes: list[bool] = []
    priority = QueryPriority(5.0, on_pause=outcomes.append)
    priority.pause()
    assert outcomes == []  # no wait happened (every wait, ended or given up, is reported)


def test_pause_waits_until_the_running_query_ends() -> None:
    priority, outcomes, left_at, t = running_query(10.0, 0.2)
    priority.pause()
    resumed_at = time.monotonic()
    t.join()
    assert left_at and resumed_at >= left_at[0]  # the background step went on only after the query
    assert outcomes == [False] and priority.active == 0


def test_pause_is_bounded_so_back_to_back_queries_cannot_starve_ingestion() -> None:
    priority, outcomes, left_at, t = running_query(0.05, 2.0)
    t0 = time.monotonic()
    priority.pause()
    waited = time.monotonic() - t0
    assert not left_at, "the query was still running when the pause gave up"
    assert waited >= 0.04 and outcomes == [True]  # it gave up at the bound (True), not at the query's end
    t.finish()  # seen what was needed while it ran: end it instead of sleeping out its time


def test_after_a_wait_that_hit_the_bound_the_thread_runs_free_as_long() -> None:
    """Queries that overlap without a gap: the background thread alternates waits and free runs."""
    priority, outcomes, left_at, t = running_query(0.3, 3.0)
    priority.pause()
    assert outcomes == [True]
    priority.pause()  # within the free run: no wait (none reported)
    assert outcomes == [True]
    time.sleep(0.35)
    priority.pause()  # the free run is over and the query still runs: waits again
    assert outcomes == [True, True] and not left_at
    other: list[float] = []
    waiter = threading.Thread(target=lambda: (priority.pause(), other.append(time.monotonic())))
    t1 = time.monotonic()
    waiter.start()
    waiter.join()
    assert other[0] - t1 >= 0.25  # the free run is this thread's own: another thread still waits
    t.finish()  # seen what was needed while it ran: end it instead of sleeping out its time


def test_the_free_run_after_a_bound_can_be_shorter_than_the_bound() -> None:
    outcomes: list[bool] = []
    priority = QueryPriority(0.3, on_pause=outcomes.append, free_s=0.05)
    left_at: list[float] = []
    t = hold_query(priority, 3.0, threading.Event(), left_at)
    priority.pause()
    assert outcomes == [True]
    priority.pause()  # within the 50 ms free run
    assert outcomes == [True]
    time.sleep(0.08)
    t0 = time.monotonic()
    priority.pause()  # 80 ms on: the free run is over (it would not be with free_s = the bound)
    assert outcomes == [True, True] and time.monotonic() - t0 >= 0.25 and not left_at
    t.finish()  # seen what was needed while it ran: end it instead of sleeping out its time


def test_waits_linger_after_the_last_query_and_a_new_query_meanwhile_extends_them() -> None:
    outcomes: list[bool] = []
    priority = QueryPriority(5.0, on_pause=outcomes.append, linger_s=0.2)
    left_at: list[float] = []
    hold_query(priority, 0.05, threading.Event(), left_at).join()
    priority.pause()  # no query runs, but the last one ended under 0.2 s ago: wait out the rest
    resumed = time.monotonic()
    assert resumed - left_at[0] >= 0.19 and outcomes == [False]  # ended by the linger, not the 5 s bound
    priority.pause()  # the linger is over: nothing to wait for
    assert outcomes == [False]
    # A query that starts within the linger keeps the thread waiting until it too has lingered.
    hold_query(priority, 0.0, threading.Event(), left_at).join()
    follow = threading.Timer(0.1, lambda: hold_query(priority, 0.1, threading.Event(), left_at).join())
    follow.start()
    priority.pause()
    resumed = time.monotonic()
    follow.join()
    assert len(left_at) == 3 and resumed - left_at[2] >= 0.19 and outcomes == [False, False]


def test_settings_reach_the_runtimes_query_priority(tmp_path: Path) -> None:
    s = Settings(kafka_bootstrap="127.0.0.1:9", data_dir=tmp_path, query_priority_wait_ms=4,
                 query_priority_linger_ms=0.5, query_priority_free_ms=2)
    p = WorkerRuntime(s).priority
    assert (p.max_wait_s, p.linger_s, p.free_s) == (0.004, 0.0005, 0.002)
    d = WorkerRuntime(Settings(kafka_bootstrap="127.0.0.1:9", data_dir=tmp_path)).priority
    assert (d.max_wait_s, d.linger_s, d.free_s) == (0.005, 0.0003, 0.001)


def test_a_zero_bound_turns_the_pause_off() -> None:
    priority, outcomes, left_at, t = running_query(0.0, 0.5)
    priority.pause()
    assert not left_at and outcomes == []
    t.finish()  # seen what was needed while it ran: end it instead of sleeping out its time


def test_nested_and_concurrent_queries_are_all_waited_for() -> None:
    priority = QueryPriority(10.0)
    left_at: list[float] = []
    a = hold_query(priority, 0.1, threading.Event(), left_at)
    b = hold_query(priority, 0.3, threading.Event(), left_at)
    assert priority.active == 2
    priority.pause()
    resumed_at = time.monotonic()
    a.join(), b.join()
    assert len(left_at) == 2 and resumed_at >= max(left_at)


def test_an_event_loop_runs_no_callback_while_a_query_runs() -> None:
    """Faust's loop: a callback that became ready during a query runs after the query."""
    priority = QueryPriority(10.0)
    loop = asyncio.new_event_loop()
    try:
        assert pause_loop_for_queries(loop, priority)
        assert pause_loop_for_queries(loop, priority)  # idempotent: not wrapped twice
        assert isinstance(loop._selector, PausingSelector)  # type: ignore[attr-defined]
        assert not isinstance(loop._selector._inner, PausingSelector)  # type: ignore[attr-defined]
        ran_at: list[float] = []
        left_at: list[float] = []
        fut = loop.create_future()

        def wake_during_a_query() -> None:
            time.sleep(0.1)  # the loop is idle in select() by now
            hold = hold_query(priority, 0.3, threading.Event(), left_at)
            # Woken from another thread while the query runs, as a fetch response would wake it.
            loop.call_soon_threadsafe(lambda: (ran_at.append(time.monotonic()), fut.set_result(None)))
            hold.join()

        driver = threading.Thread(target=wake_during_a_query)
        driver.start()
        loop.run_until_complete(asyncio.wait_for(fut, 10))
        driver.join()
        assert left_at and ran_at and ran_at[0] >= left_at[0]
    finally:
        loop.close()


def test_a_serving_loop_counts_as_a_query_from_io_until_it_is_idle() -> None:
    """The HTTP thread's loop: a request's whole burst of work (read, the handler's follow-up
    callbacks, the write) counts as a query; background waits end when the loop goes idle."""
    priority = QueryPriority(10.0)
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    seen: list[int] = []  # queries counted at each step of the burst
    done = threading.Event()

    def on_readable() -> None:  # a request arrives: the handler continues in later callbacks
        ours.recv(100)
        seen.append(priority.active)
        loop.call_soon(lambda: (seen.append(priority.active), loop.call_soon(finish)))

    def finish() -> None:
        seen.append(priority.active)
        ours.send(b"answer")
        done.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.add_reader(ours.fileno(), on_readable)
        loop.run_forever()

    try:
        assert serving_loop_counts_as_query(loop, priority)
        assert serving_loop_counts_as_query(loop, priority)  # idempotent: not wrapped twice
        assert not isinstance(loop._selector._inner, ServingSelector)  # type: ignore[attr-defined]
        server = threading.Thread(target=serve)
        server.start()
        time.sleep(0.1)
        assert priority.active == 0  # idle in select: no query
        theirs.send(b"request")
        assert done.wait(5)
        priority.pause()  # waits (without the bound, 10 s) until the loop has gone idle again
        assert seen == [1, 1, 1] and priority.active == 0
        assert theirs.recv(100) == b"answer"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        server.join(5)
        loop.close()
        ours.close()
        theirs.close()


def test_a_loop_without_a_selector_is_reported_not_wrapped() -> None:
    class NoSelectorLoop:
        pass

    assert pause_loop_for_queries(NoSelectorLoop(), QueryPriority()) is False


def test_an_item_batch_pauses_for_a_query_every_few_events_and_before_its_write_and_its_upsert(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, EngineConfig(tower=TowerConfig(dim=16, hidden=32, seed=1), index_kind="flat"))
    n = 40
    eng.apply_items([ItemUpsert(item_id=f"i{i}", title=f"t{i}", categories=["g"], ts=T0) for i in range(n)])
    row0 = eng.items.get("i0")
    before = eng.index.get([row0]).copy()
    calls: list[tuple[bool, bool, bool]] = []  # (durable yet?, i0 re-embedded yet?, its time and attributes yet?)

    def probe() -> None:
        rec = eng.item_record("i0")
        calls.append((rec is not None and rec["event"]["title"] == "new",
                      not np.allclose(eng.index.get([row0]), before), eng.item_ts.get(row0) == later))

    eng.pause = probe
    later = T0 + 1000
    res = eng.apply_items([ItemUpsert(item_id=f"i{i}", title="new", text=f"other words {i}", categories=["h"], ts=later)
                           for i in range(n)])
    assert res.upserted == n
    every = PAUSE_EVERY
    assert every < n
    checks = n // every  # pauses within each per-event loop of n events
    want = ([(False, False, False)] * (2 * checks + 1)  # dedup loop, record building, before the RocksDB write
            + [(True, False, False)] * (1 + (-(-n // every) - 1) + 2)  # before the items stage, between feature
            # chunks, before the tower forward, before the index upsert
            + [(True, True, True)] * checks)  # within the attributes loop (i0 is the first one set)
    assert calls == want
    eng.close()


def test_a_batch_that_grows_the_tables_does_not_pause_under_the_engine_lock(tmp_path: Path) -> None:
    eng = Engine.open(tmp_path, EngineConfig(tower=TowerConfig(dim=16, hidden=32, seed=1), index_kind="flat"))
    held: list[bool] = []

    def probe() -> None:  # would a query that needs the engine lock get it now?
        got: list[bool] = []
        t = threading.Thread(target=lambda: got.append(eng.lock.acquire(timeout=0) and (eng.lock.release() or True)))
        t.start()
        t.join()
        held.append(not got[0])

    eng.pause = probe
    eng.apply_items([ItemUpsert(item_id=f"i{i}", title=f"t{i}", categories=["g"], ts=T0) for i in range(40)])
    assert len(eng.index) == 40 and held and not any(held), held
    eng.close()


def test_the_runtime_counts_a_query_while_it_is_answered(tmp_path: Path) -> None:
    runtime = WorkerRuntime(Settings(data_dir=tmp_path, query_priority_wait_ms=5.0))
    seen: list[int] = []

    def answer(wait_s: float | None = None) -> str:
        seen.append(runtime.priority.active)
        return "ok"

    assert asyncio.run(runtime.serve(answer)) == "ok"
    assert seen == [1] and runtime.priority.active == 0
    assert runtime.priority.max_wait_s == pytest.approx(0.005)


def test_pausing_pauses_before_every_nth_item_and_yields_them_all() -> None:
    seen: list[object] = []
    out = [x for x in pausing(range(10), lambda: seen.append("pause"), 4) if not seen.append(x)]
    assert out == list(range(10))
    assert seen == [0, 1, 2, "pause", 3, 4, 5, 6, "pause", 7, 8, 9]
