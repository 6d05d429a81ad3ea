"""Processes we start die with us, and a stop request ends within a bound.

Why: supervisors (systemd, supervisord, Kubernetes) stop a process with SIGTERM and, after a
grace period (30 s by default on Kubernetes), SIGKILL. A command that handles only SIGINT dies
on SIGTERM without stopping what it started, and a SIGKILLed one never gets to: its worker,
the worker and the embedded broker would run on without a parent. So:

- every child we start asks the kernel to signal it when we die (Linux ``PR_SET_PDEATHSIG``);
  the request is made in the child and fires when the *thread* that started it exits, so
  children are started from the main thread, and the child checks that its parent is still
  the one that started it (the parent may have died before the request was made);
- where ``prctl`` is missing, ``watch_parent`` notices a changed parent pid within a second;
- SIGTERM and SIGINT mean "stop": the first one starts the stop, later ones do not interrupt
  it, and a watchdog ends the process if the stop has not finished by its deadline.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

#: ``prctl`` option: the signal the kernel sends this process when its parent dies.
PR_SET_PDEATHSIG = 1
#: Environment variable naming the pid a worker expects as its parent (set by ``WorkerProcess``).
PARENT_PID_ENV = "TOWERSTREAM_PARENT_PID"


def _prctl() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(sig: int = signal.SIGKILL, expected_parent: int | None = None) -> None:
    """In a child: be sent ``sig`` when the parent dies; if it already has, act on it now."""
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(sig))
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)


def pdeathsig_preexec(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` (for children that are not our Python).

    The C function is looked up here, in the parent: between fork and exec the child only
    calls it and ``getppid``, nothing that could wait on a lock another thread held at fork.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def watch_parent(expected_parent: int, on_gone: Callable[[], None], every_s: float = 1.0) -> threading.Thread:
    """Call ``on_gone`` once, from a daemon thread, when our parent is no longer ``expected_parent``."""

    def watch() -> None:
        while os.getppid() == expected_parent:
            time.sleep(every_s)
        on_gone()

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def exit_after(seconds: float, why: Callable[[], int]) -> threading.Timer:
    """Watchdog: ``os._exit(why())`` unless the process has exited within ``seconds``.

    ``why`` logs what was left undone and returns the exit status. A daemon timer: a process
    that finishes its stop in time exits normally and the timer dies with it.
    """

    def fire() -> None:
        code = 1
        with contextlib.suppress(BaseException):
            code = why()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.name = "stop-watchdog"
    timer.start()
    return timer


class StopSignals:
    """SIGTERM and SIGINT stop a CLI command: the first raises ``KeyboardInterrupt`` in the main
    thread (so ``finally`` blocks stop what the command started), later ones are only noted, and
    a watchdog exits ``deadline_s`` after the first if the stop hangs (children then die by
    their death signal)."""

    def __init__(self, deadline_s: float, say: Callable[[str], None] | None = None) -> None:
        self.deadline_s = deadline_s
        self.signum: int | None = None
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def install(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def uninstall(self) -> None:
        """Put back the handlers ``install`` replaced (for a command run inside another program)."""
        for sig, handler in getattr(self, "_previous", {}).items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            self.say(f"{signal.Signals(signum).name}: already stopping (at most {self.deadline_s:.0f} s)")
            return
        self.signum = signum

        def gave_up() -> int:
            self.say(f"stop did not finish in {self.deadline_s:.0f} s: exiting; children die with us")
            return 128 + signum

        exit_after(self.deadline_s, gave_up)
        raise KeyboardInterrupt


def lower_priority(nice: int) -> int:
    """Raise this process's niceness to ``nice`` (never lower it: that needs privileges); returns it.

    Called before the process starts threads: on Linux niceness is per thread and a new thread
    inherits its creator's, so every later thread runs at this priority too. A process that leads
    a session of its own (as towerstream starts its children) is also an autogroup of its own,
    and the scheduler weighs autogroups against each other by the group's niceness, not its
    threads': that one is raised too, or the threads' niceness would count for nothing against
    other sessions.
    """
    now = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > now:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if os.getsid(0) == os.getpid():
        with contextlib.suppress(OSError, ValueError):  # no autogroups (a kernel without them)
            group = Path("/proc/self/autogroup")
            if int(group.read_text().split()[-1]) < nice:
                group.write_text(str(nice))
    return max(nice, now)
