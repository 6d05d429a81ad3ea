"""Start, probe and stop a serving replica (``towerstream serve``) as a child process.

The same life as a worker's (``towerstream.processes.WorkerProcess``: dies with us, stopped with
SIGTERM, ``wait_ready`` on ``/healthz``); only the command differs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import IO

from towerstream.lifecycle import PARENT_PID_ENV, pdeathsig_preexec
from towerstream.processes import WorkerProcess, settings_env


class ReplicaProcess(WorkerProcess):
    """``python -m towerstream.cli serve`` with the given settings (``web_port`` is its HTTP port)."""

    def start(self) -> ReplicaProcess:
        env = {**os.environ, **settings_env(self.settings), **self.extra_env, "PYTHONUNBUFFERED": "1",
               PARENT_PID_ENV: str(os.getpid())}
        cmd = [sys.executable, "-m", "towerstream.cli", "serve"]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        out: IO[bytes] | int | None = None if self.inherit_output else (self._log or subprocess.DEVNULL)
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=None if self.inherit_output else subprocess.STDOUT,
            start_new_session=True, preexec_fn=pdeathsig_preexec(signal.SIGTERM),
        )
        return self
