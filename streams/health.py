"""What is wrong right now, and what went wrong recently: the state behind ``/healthz``.

Why one registry: several parts of the worker find degraded states (a partition that stopped
moving, a record batch no consumer can read, a broker that is away, offsets that no longer fit
the log). Each reports here under a key of its own; ``/healthz`` shows them all and turns 503
while any *condition* holds. *Notices* are things an operator must see but that do not stop
the worker from answering (a log reset it recovered from): they stay listed for a while.

Thread-safe: readers report from Faust's loop and from the threads they apply batches on.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

#: How many notices ``/healthz`` lists (the newest).
MAX_NOTICES = 20


class Health:
    """Degraded conditions (key -> reason and details) and recent notices."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conditions: dict[str, dict[str, Any]] = {}
        self._notices: deque[dict[str, Any]] = deque(maxlen=MAX_NOTICES)

    def degrade(self, key: str, reason: str, **detail: Any) -> None:
        """``key`` is degraded for ``reason``; ``since`` is kept from the first report."""
        with self._lock:
            since = self._conditions.get(key, {}).get("since", round(time.time(), 3))
            self._conditions[key] = {"reason": reason, "since": since, **detail}

    def clear(self, key: str) -> None:
        with self._lock:
            self._conditions.pop(key, None)

    def clear_prefix(self, prefix: str) -> None:
        with self._lock:
            for key in [k for k in self._conditions if k.startswith(prefix)]:
                del self._conditions[key]

    def notice(self, kind: str, **detail: Any) -> None:
        with self._lock:
            self._notices.append({"kind": kind, "at": round(time.time(), 3), **detail})

    @property
    def degraded(self) -> bool:
        with self._lock:
            return bool(self._conditions)

    def conditions(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._conditions.items()}

    def notices(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(n) for n in self._notices]
