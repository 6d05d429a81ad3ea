"""Start, probe and stop a worker process: used by ``towerstream demo``/``worker`` and the tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from towerstream.errors import TowerstreamError
from towerstream.lifecycle import PARENT_PID_ENV, pdeathsig_preexec
from towerstream.settings import Settings


class WorkerError(TowerstreamError):
    """The worker process did not become ready, or died."""


def settings_env(settings: Settings) -> dict[str, str]:
    """Settings -> TOWERSTREAM_* variables for a child process (only fields that differ from defaults)."""
    env: dict[str, str] = {}
    defaults = Settings.model_construct()
    for name, value in settings:
        if value is None or value == getattr(defaults, name, object()):
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"TOWERSTREAM_{name.upper()}"] = str(value)
    env["TOWERSTREAM_KAFKA_BOOTSTRAP"] = settings.bootstrap
    return env


def http_json(url: str, timeout: float = 2.0, data: bytes | None = None, headers: dict[str, str] | None = None,
              method: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode(errors="replace")


class WorkerProcess:
    """``faust -A streams.app worker`` as a child process with the given settings.

    It dies with us: the kernel sends it SIGTERM when the thread that started it exits (start it
    from the main thread), and it watches our pid itself as well (``towerstream.lifecycle``).
    Its output goes to ``log_path``, to our own stdout/stderr with ``inherit_output``, or nowhere.
    """

    def __init__(self, settings: Settings, log_path: Path | None = None, extra_env: dict[str, str] | None = None,
                 inherit_output: bool = False) -> None:
        self.settings = settings
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.inherit_output = inherit_output
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    def start(self) -> WorkerProcess:
        env = {**os.environ, **settings_env(self.settings), **self.extra_env, "PYTHONUNBUFFERED": "1",
               PARENT_PID_ENV: str(os.getpid())}
        faust_bin = Path(sys.executable).parent / "faust"
        cmd = [str(faust_bin)] if faust_bin.exists() else [sys.executable, "-m", "faust"]
        level = {"warning": "warn", "critical": "crit"}.get(self.settings.log_level, self.settings.log_level)
        cmd += ["-A", "streams.app", "worker", "-l", level, "--web-port",
                str(self.settings.web_port)]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        out: IO[bytes] | int | None = None if self.inherit_output else (self._log or subprocess.DEVNULL)
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=None if self.inherit_output else subprocess.STDOUT,
            # Out of the terminal's process group: Ctrl-C reaches us, and we stop the worker.
            start_new_session=True,
            # SIGTERM, not SIGKILL: a worker whose parent died still writes its final checkpoint.
            preexec_fn=pdeathsig_preexec(signal.SIGTERM),
        )
        return self

    def health(self) -> tuple[int, Any]:
        try:
            return http_json(self.base_url + "/healthz", timeout=1.0)
        except (OSError, ValueError):
            return 0, None

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise WorkerError(f"worker exited with {self.proc.returncode}; see {self.log_path}")
            status, body = self.health()
            if status == 200:
                return dict(body)
            time.sleep(0.2)
        raise WorkerError(f"worker not ready after {timeout}s; last health: {self.health()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (graceful: final checkpoint), then SIGKILL if it does not exit in time.

        The worker bounds its own stop (``stop_timeout_s``); ``timeout`` (default a little
        more than that) is for a worker that cannot even do that.
        """
        if self.proc is None:
            return None
        if timeout is None:
            timeout = self.settings.stop_timeout_s + 5.0
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)  # a paused worker cannot act on SIGTERM
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no cleanup at all (fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
