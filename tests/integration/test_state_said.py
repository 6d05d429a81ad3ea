"""``towerstream demo`` says where its state lives and what it reloaded; ``--fresh`` starts over.

Three real runs of the command on the real broker, each stopped with SIGTERM once it is
ready: the first finds nothing, the second reloads what the first left (the items it had,
its model version at least), the third with ``--fresh`` moves that state aside, says so, and
reloads nothing.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from towerstream.broker import EmbeddedBroker, free_port
from towerstream.processes import http_json

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TOWERSTREAM = Path(sys.executable).parent / "towerstream"


class Demo:
    def __init__(self, broker: EmbeddedBroker, tmp: Path, prefix: str, run: int, *extra: str) -> None:
        self.port = free_port()
        self.out = tmp / f"demo-{run}.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERSTREAM_")}
        env.update({
            "TOWERSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap, "TOWERSTREAM_DATA_DIR": str(tmp / "data"),
            "TOWERSTREAM_WEB_PORT": str(self.port), "TOWERSTREAM_TOPIC_PREFIX": prefix,
            "TOWERSTREAM_APP_ID": prefix, "TOWERSTREAM_BROKER_SESSION_TIMEOUT": "6",
            "TOWERSTREAM_BROKER_HEARTBEAT_INTERVAL": "2", "TOWERSTREAM_TOPIC_PARTITIONS": "2",
        })
        self._out = open(self.out, "wb")
        self.proc = subprocess.Popen(
            [str(TOWERSTREAM), "demo", "--users", "20", "--items", "40", "--rate", "100", "--duration", "1", *extra],
            env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        self._out.flush()
        return self.out.read_text(errors="replace")

    def wait_said(self, text: str, timeout: float = 150.0) -> str:
        end = time.monotonic() + timeout
        while text not in self.text():
            assert self.proc.poll() is None, self.text()[-4000:]
            assert time.monotonic() < end, f"never said {text!r}:\n{self.text()[-4000:]}"
            time.sleep(0.3)
        return self.text()

    def health(self) -> dict[str, Any]:
        status, body = http_json(f"http://127.0.0.1:{self.port}/healthz", timeout=2.0)
        return dict(body) if isinstance(body, dict) else {}

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=90)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self._out.close()


@pytest.mark.timeout(420)
def test_demo_says_where_its_state_is_what_it_reloaded_and_fresh_starts_over(
        broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str) -> None:
    data = (tmp_path / "data").resolve()
    first = Demo(broker, tmp_path, topic_prefix, 1)
    try:
        out = first.wait_said("stream done")
        assert f"state: {data}" in out and "none yet: starting fresh" in out, out
        assert f"fresh state in {data}: nothing reloaded" in out, out
        end = time.monotonic() + 90
        while (seen := first.health()).get("items_known", 0) < 40 or seen.get("untrained_events", 1) > 0:
            assert time.monotonic() < end, seen
            time.sleep(0.5)
    finally:
        first.stop()

    second = Demo(broker, tmp_path, topic_prefix, 2)
    try:
        out = second.wait_said("reloaded from")
        assert f"state: {data}" in out and "found: reloading it" in out, out
        said = re.search(r"reloaded from (\S+): model version (\d+), (\d+) items, (\d+) users", out)
        assert said is not None, out
        assert said.group(1) == str(data), out
        assert int(said.group(2)) >= int(seen["model_version"]) > 0, (out, seen)
        assert int(said.group(3)) == int(seen["items_known"]), (out, seen)
        assert int(said.group(4)) > 0, out
    finally:
        second.stop()

    third = Demo(broker, tmp_path, topic_prefix, 3, "--fresh")
    try:
        out = third.wait_said("nothing reloaded")
        aside = data.with_name(data.name + ".previous")
        assert f"--fresh: moved the previous state {data} to {aside}" in out, out
        assert "none yet: starting fresh" in out and "found: reloading it" not in out, out
        assert (aside / "engine" / "checkpoints").is_dir()  # the old state is kept, aside
    finally:
        third.stop()
