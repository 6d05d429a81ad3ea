"""Queries first: background work in the worker stands aside while a query runs.

Why: every thread of the worker shares one GIL. A query releases it several times (Faiss, numpy,
the socket) and each time must take it back from whoever grabbed it meanwhile: Faust's event
loop reading the items topic, the items thread decoding and upserting. With 1,000 upserts/s
and without these waits, 5-23% of answers at 100k items took over 5 ms inside the worker
against ~1 ms of CPU each (``bench/query_latency.py``, "in the worker"). Here the background threads check, between steps of their own,
whether a query is running and wait (without the GIL) until it is done, for at most
``max_wait_s`` per check. A thread whose wait hit that bound does not wait again for the next
``free_s``: when queries follow each other without a gap, ingestion still gets ``free_s`` of
every ``max_wait_s + free_s``. The waits go on for ``linger_s`` after the last query ends, so
that a client's next query does not land in the middle of the ingestion work the end of the
last one let go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


class QueryPriority:
    """Counts the queries in flight; ``pause`` waits while there are any."""

    def __init__(self, max_wait_s: float = 0.005, on_pause: Callable[[bool], None] | None = None,
                 linger_s: float = 0.0, free_s: float | None = None) -> None:
        self.max_wait_s = max_wait_s
        #: Background waits go on this long after the last query ends: a client's next query
        #: (a closed-loop client answers in ~0.2 ms) finds the cores and the GIL free.
        self.linger_s = linger_s
        #: After a wait hit ``max_wait_s``, the thread runs this long without waiting (default: as long).
        self.free_s = max_wait_s if free_s is None else free_s
        self._last_end = 0.0
        #: Called after each wait with whether it hit ``max_wait_s`` (metrics).
        self.on_pause = on_pause
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._local = threading.local()  # per thread: when its last wait hit the bound

    @property
    def active(self) -> int:
        return self._active

    def begin(self) -> None:
        """A query (or a serving loop's burst of work) starts; pair with ``end``."""
        with self._cond:
            self._active += 1

    def end(self) -> None:
        with self._cond:
            self._active -= 1
            if not self._active:
                self._last_end = time.monotonic()
                self._cond.notify_all()

    @contextmanager
    def query(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        finally:
            self.end()

    def pause(self) -> None:
        """Wait while a query runs (and ``linger_s`` after), up to ``max_wait_s``; returns at once when none does."""
        if self.max_wait_s <= 0:
            return
        if not self._active and (self.linger_s <= 0 or time.monotonic() - self._last_end >= self.linger_s):
            return  # a racy read: a query starting now is not waited for
        timed_out_at = getattr(self._local, "timed_out_at", None)
        if timed_out_at is not None and time.monotonic() - timed_out_at < self.free_s:
            return  # this thread just waited the whole bound: run free for a while
        deadline = time.monotonic() + self.max_wait_s
        with self._cond:
            while True:
                now = time.monotonic()
                if not self._active and now - self._last_end >= self.linger_s:
                    done = True
                    break
                left = deadline - now
                if left <= 0:
                    done = False
                    break
                self._cond.wait(left if self._active else min(left, self.linger_s - (now - self._last_end)))
        self._local.timed_out_at = None if done else time.monotonic()
        if self.on_pause is not None:
            self.on_pause(not done)


def pausing(items: Iterable[T], pause: Callable[[], None], every: int) -> Iterator[T]:
    """``items``, with ``pause()`` before every ``every``-th one: a background loop over a batch
    steps aside for a running query at most that much work after it starts."""
    for n, item in enumerate(items):
        if n % every == every - 1:
            pause()
        yield item


class _WrappedSelector:
    """An event loop's selector, with ``select`` to be overridden; everything else is the inner one's."""

    def __init__(self, inner: Any, priority: QueryPriority) -> None:
        self._inner = inner
        self._priority = priority

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class PausingSelector(_WrappedSelector):
    """An event loop's selector that pauses for queries once per loop iteration.

    Wrapping the selector is how a foreign event loop (Faust's) yields between iterations without
    changes to the code it runs: ``BaseEventLoop._run_once`` calls ``select`` once, then runs
    the callbacks that became ready. The pause comes after ``select`` returns, so an iteration
    woken by I/O while a query runs waits for the query before running its callbacks.
    """

    def select(self, timeout: float | None = None) -> Any:
        events = self._inner.select(timeout)
        self._priority.pause()
        return events


class ServingSelector(_WrappedSelector):
    """The serving event loop's selector: the loop counts as a running query from the moment
    ``select`` hands it I/O until it is about to block again.

    Why: the engine call is only part of an HTTP query; reading and parsing the request,
    routing, building and writing the answer hold the GIL on this loop too (about a third of
    its time per query), and with only the engine call counted, background threads took the GIL
    in those stretches: inside the worker 0.7% of engine calls took over 5 ms while the client
    saw a p99 of 11 ms (100k items, 1,000 upserts/s; ad-hoc per-query timing in the worker).
    ``BaseEventLoop._run_once`` selects with a zero timeout while callbacks are ready, so the
    work a request sets off (the handler's task, the write) stays inside one busy stretch.
    """

    def __init__(self, inner: Any, priority: QueryPriority) -> None:
        super().__init__(inner, priority)
        self._busy = False

    def select(self, timeout: float | None = None) -> Any:
        if self._busy and (timeout is None or timeout > 0):  # nothing left to run: idle from here
            self._busy = False
            self._priority.end()
        events = self._inner.select(timeout)
        if events and not self._busy:
            self._busy = True
            self._priority.begin()
        return events


def serving_loop_counts_as_query(loop: Any, priority: QueryPriority) -> bool:
    """Make ``loop`` (the HTTP thread's selector event loop) count as a query while it works."""
    return _wrap_selector(loop, ServingSelector, priority)


def pause_loop_for_queries(loop: Any, priority: QueryPriority) -> bool:
    """Make ``loop`` (an asyncio selector event loop) pause for queries; False if it cannot."""
    return _wrap_selector(loop, PausingSelector, priority)


def _wrap_selector(loop: Any, wrapper: type[_WrappedSelector], priority: QueryPriority) -> bool:
    """Wrap ``loop``'s selector once (idempotent); False if the loop has none (not a selector loop)."""
    selector = getattr(loop, "_selector", None)
    if selector is None:
        return False
    if not isinstance(selector, wrapper):
        loop._selector = wrapper(selector, priority)
    return True
