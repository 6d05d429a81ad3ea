"""Waiting for a condition in tests that run real processes: a bound on a hang, never a speed check."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

#: How long a wait may take before it fails; ``TOWERSTREAM_TEST_WAIT_S`` lowers it (mutation runs).
WAIT_S = float(os.environ.get("TOWERSTREAM_TEST_WAIT_S", "240"))


def wait_for(what: str, cond: Callable[[], Any], timeout: float = WAIT_S, every: float = 0.3) -> Any:
    """The first truthy ``cond()``; AssertionError naming ``what`` (and the last value) after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f}s; last: {str(last)[:2000]}")
