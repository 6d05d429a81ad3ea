"""The train role's lower CPU priority (``towerstream.lifecycle.lower_priority``).

Real processes and the real kernel: niceness is read back from ``/proc``, as the scheduler sees it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from towerstream.lifecycle import lower_priority

#: Kernels built without autogroups have no such file; the niceness checks hold there too.
AUTOGROUPS = Path("/proc/self/autogroup").exists()

CHILD = """
import json, os, threading
from pathlib import Path
from towerstream.lifecycle import lower_priority
got = lower_priority({nice})
seen = []
t = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
t.start(); t.join()
print(json.dumps({{"returned": got, "main": os.getpriority(os.PRIO_PROCESS, 0), "thread": seen[0],
                  "group": Path("/proc/self/autogroup").read_text() if {autogroups} else None}}))
"""


def run_child(nice: int, new_session: bool) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", CHILD.format(nice=nice, autogroups=AUTOGROUPS)], capture_output=True, text=True,
                         check=True, start_new_session=new_session, env={**os.environ}, timeout=120)
    return dict(json.loads(out.stdout))


def test_a_session_leader_lowers_itself_its_later_threads_and_its_autogroup() -> None:
    got = run_child(7, new_session=True)
    assert got["returned"] == 7
    assert got["main"] == 7 and got["thread"] == 7
    if AUTOGROUPS:
        assert str(got["group"]).split()[-2:] == ["nice", "7"]


def test_a_process_in_its_parents_session_leaves_the_shared_autogroup_alone() -> None:
    before = Path("/proc/self/autogroup").read_text() if AUTOGROUPS else None
    got = run_child(5, new_session=False)
    assert got["main"] == 5
    assert got["group"] == before  # the terminal's (or pytest's) whole session is not slowed down
    if AUTOGROUPS:
        assert Path("/proc/self/autogroup").read_text() == before


def test_niceness_is_never_lowered() -> None:
    here = os.getpriority(os.PRIO_PROCESS, 0)
    assert lower_priority(0) == here
    assert os.getpriority(os.PRIO_PROCESS, 0) == here
