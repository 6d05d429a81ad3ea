"""trim_heap gives freed heap pages back: what keeps a worker's RSS from ratcheting after checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from towerstream.heap import trim_heap


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim and /proc are Linux")
def test_freed_blocks_between_live_ones_are_returned() -> None:
    # 8 KiB blocks come from malloc; keeping every 10th alive stops the heap from shrinking at
    # its top, so freed memory stays resident until it is trimmed.
    blocks = [bytes(8192) for _ in range(30_000)]
    kept = blocks[::10]
    del blocks
    before = rss_mib()
    assert trim_heap() is True
    after = rss_mib()
    assert before - after > 100, (before, after)
    assert len(kept) == 3000
