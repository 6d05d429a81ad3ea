"""Stopping ``towerstream worker`` with real signals, on a real broker: nothing is left behind.

Each test starts the real command (``towerstream worker``), records the pids of every process
it started (the Faust worker, the embedded broker) by walking /proc, sends a
signal and checks the outcome: the command exits, none of those processes is left, and where
the worker could stop, its final checkpoint is in its log. The waits have generous deadlines
(2 loaded cores); the stop times are printed (``pytest -s``) for docs/benchmarks.md, not
asserted. The last test checks that a broker outage costs a bounded number of log lines and
that /healthz says since when the broker is unreachable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from producers.topics import ensure_topics
from tests.conftest import worker_settings
from towerstream.broker import EmbeddedBroker, free_port
from towerstream.processes import WorkerProcess, http_json

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TOWERSTREAM = Path(sys.executable).parent / "towerstream"


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a live process, or None once it is gone (zombies count as gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[1]), fields[0]) if fields[0] not in ("Z", "X") else None


def descendants(root: int) -> dict[int, str]:
    """Every live process below ``root`` -> its command line."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        todo.extend(children.get(pid, []))
    return found


def alive(pids: dict[int, str]) -> dict[int, str]:
    return {pid: cmd for pid, cmd in pids.items() if _stat(pid) is not None}


def wait_gone(pids: dict[int, str], deadline_s: float) -> dict[int, str]:
    end = time.monotonic() + deadline_s
    while alive(pids) and time.monotonic() < end:
        time.sleep(0.2)
    return alive(pids)


class Cli:
    """``towerstream worker`` as a real command in a session of its own, like a shell job."""

    def __init__(self, tmp: Path, bootstrap: str | None, prefix: str) -> None:
        self.port = free_port()
        self.log = tmp / "worker.log"
        self.out = tmp / "cli.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERSTREAM_")}
        env.update({
            "TOWERSTREAM_DATA_DIR": str(tmp / "data"), "TOWERSTREAM_WEB_PORT": str(self.port),
            "TOWERSTREAM_TOPIC_PREFIX": prefix, "TOWERSTREAM_APP_ID": prefix,
            "TOWERSTREAM_BROKER_SESSION_TIMEOUT": "6", "TOWERSTREAM_BROKER_HEARTBEAT_INTERVAL": "2",
            "TOWERSTREAM_TOPIC_PARTITIONS": "2", "TOWERSTREAM_LOG_JSON": "true",
            "TOWERSTREAM_WORKER_LOG": str(self.log),
        })
        if bootstrap:
            env["TOWERSTREAM_KAFKA_BOOTSTRAP"] = bootstrap
        else:
            env["TOWERSTREAM_EMBEDDED_BROKER_PORT"] = str(free_port())
        self._out = open(self.out, "wb")
        self.proc = subprocess.Popen([str(TOWERSTREAM), "worker"], env=env, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.started: dict[int, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> tuple[int, Any]:
        try:
            return http_json(self.url + "/healthz", timeout=2.0)
        except (OSError, ValueError):
            return 0, None

    def wait_ready(self, want_broker: bool, timeout: float = 150.0) -> dict[str, str]:
        """Ready, with the worker (and the embedded broker) recorded."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.text()
            self.started = descendants(self.proc.pid)
            roles = self.roles()
            if self.health()[0] == 200 and "worker" in roles and (
                    "broker" in roles or not want_broker):
                return roles
            time.sleep(0.5)
        raise AssertionError(f"not ready: {self.health()} {self.started}\n{self.text()}")

    def roles(self) -> dict[str, str]:
        roles: dict[str, str] = {}
        for pid, cmd in self.started.items():
            if "streams.app" in cmd:
                roles["worker"] = str(pid)
            elif "tansu" in cmd:
                roles["broker"] = str(pid)
        return roles

    def stop_with(self, sig: int, group: bool = False) -> float:
        """Send ``sig``; the seconds until the command exited (deadline 90 s)."""
        t0 = time.monotonic()
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{signal.Signals(sig).name}: the command did not exit\n{self.text()}")
        return time.monotonic() - t0

    def text(self) -> str:
        self._out.flush()
        return self.out.read_text(errors="replace")[-4000:]

    def wait_said(self, *texts: str, timeout: float = 30.0) -> str:
        """The command's output once it holds every one of ``texts``."""
        end = time.monotonic() + timeout
        while not all(t in self.text() for t in texts) and time.monotonic() < end:
            time.sleep(0.3)
        return self.text()

    def worker_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        """Teardown: nothing may outlive a failed test either."""
        for pid in [self.proc.pid, *alive(self.started)]:
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self._out.close()


@pytest.fixture()
def cli(tmp_path: Path) -> Iterator[list[Cli]]:
    made: list[Cli] = []
    yield made
    for c in made:
        c.close()


def report(case: str, seconds: float) -> None:
    print(f"\nSTOP_TIME {json.dumps({'case': case, 'seconds': round(seconds, 2)})}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["sigterm", "sigint_ctrl_c"])
def test_a_stop_signal_to_worker_with_embedded_broker_leaves_nothing_and_checkpoints(
        tmp_path: Path, topic_prefix: str, cli: list[Cli], how: str) -> None:
    c = Cli(tmp_path, None, topic_prefix)
    cli.append(c)
    roles = c.wait_ready(want_broker=True)
    started = dict(c.started)
    out = c.wait_said("nothing reloaded")  # checked last: the stop is what this test is about
    if how == "sigterm":
        seconds = c.stop_with(signal.SIGTERM)
    else:  # Ctrl-C in a terminal: SIGINT to the command's whole process group
        seconds = c.stop_with(signal.SIGINT, group=True)
    report(f"{how} worker+embedded broker", seconds)
    assert not wait_gone(started, 30), (roles, alive(started))
    assert "final_checkpoint_saved" in c.worker_log(), c.worker_log()[-3000:]
    assert "state: " in out and "none yet: starting fresh" in out and "nothing reloaded" in out, out


@pytest.mark.timeout(300)
def test_sigterm_to_worker_with_external_broker_leaves_nothing_and_checkpoints(
        broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str, cli: list[Cli]) -> None:
    c = Cli(tmp_path, broker.bootstrap, topic_prefix)
    cli.append(c)
    c.wait_ready(want_broker=False)
    started = dict(c.started)
    report("sigterm worker, external broker", c.stop_with(signal.SIGTERM))
    assert not wait_gone(started, 30), alive(started)
    assert "final_checkpoint_saved" in c.worker_log(), c.worker_log()[-3000:]
    assert broker.proc is not None and broker.proc.poll() is None  # not ours to stop
    # A second start reloads that state and says so.
    c2 = Cli(tmp_path, broker.bootstrap, topic_prefix)
    cli.append(c2)
    c2.wait_ready(want_broker=False)
    out = c2.wait_said("found: reloading it", "reloaded from")
    assert "found: reloading it" in out and "reloaded from" in out, out
    c2.stop_with(signal.SIGTERM)


@pytest.mark.timeout(300)
def test_sigterm_while_the_broker_is_paused_still_exits_and_leaves_nothing(
        tmp_path: Path, topic_prefix: str, cli: list[Cli]) -> None:
    with EmbeddedBroker() as own:
        c = Cli(tmp_path, own.bootstrap, topic_prefix)
        cli.append(c)
        c.wait_ready(want_broker=False)
        started = dict(c.started)
        own.pause()
        try:
            end = time.monotonic() + 60
            while c.health()[1] is None or c.health()[1].get("kafka", True):
                assert time.monotonic() < end, c.health()
                time.sleep(0.5)
            report("sigterm worker, broker paused", c.stop_with(signal.SIGTERM))
            assert not wait_gone(started, 30), alive(started)
            # The checkpoint needs no broker: it is written even now.
            assert "final_checkpoint_saved" in c.worker_log(), c.worker_log()[-3000:]
        finally:
            own.resume()


@pytest.mark.timeout(300)
def test_sigkill_of_the_command_takes_worker_and_embedded_broker_with_it(
        tmp_path: Path, topic_prefix: str, cli: list[Cli]) -> None:
    c = Cli(tmp_path, None, topic_prefix)
    cli.append(c)
    roles = c.wait_ready(want_broker=True)
    started = dict(c.started)
    t0 = time.monotonic()
    os.kill(c.proc.pid, signal.SIGKILL)
    c.proc.wait()
    left = wait_gone(started, 60)
    report("sigkill of the command: children gone", time.monotonic() - t0)
    assert not left, (roles, left)


@pytest.mark.timeout(300)
def test_a_broker_outage_costs_a_bounded_number_of_log_lines_and_healthz_says_since_when(
        tmp_path: Path, topic_prefix: str) -> None:
    own = EmbeddedBroker().start()
    worker: WorkerProcess | None = None
    try:
        settings = worker_settings(own, tmp_path / "data", topic_prefix)
        ensure_topics(settings)
        worker = WorkerProcess(settings, log_path=tmp_path / "worker.log").start()
        worker.wait_ready(120)
        before = time.time()
        own.stop()  # gone: every client's reconnects are refused (a paused broker refuses nothing)
        end = time.monotonic() + 60
        body: Any = None
        while time.monotonic() < end:
            status, body = worker.health()
            if status == 503 and body and "kafka" in body.get("conditions", {}):
                break
            time.sleep(0.5)
        assert body and body["conditions"]["kafka"]["reason"] == "broker unreachable", body
        since = body["conditions"]["kafka"]["since"]
        assert before - 1 <= since <= time.time(), body
        assert body["kafka_unreachable_since"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(since))), body
        log = Path(tmp_path / "worker.log")
        start_lines = len(log.read_text(errors="replace").splitlines())
        window_s = 20.0
        time.sleep(window_s)
        lines = log.read_text(errors="replace").splitlines()[start_lines:]
        print(f"\nOUTAGE_LOG_LINES {len(lines)} in {window_s:g} s, "
              f"{sum(len(line) + 1 for line in lines)} bytes")  # for docs/benchmarks.md (pytest -s)
        # Without the repeat filter this is ~150-250 lines a second; with it, a few lines per
        # kind of failure per 10 s window (each process, each library logger and template).
        assert len(lines) < 3 * window_s, (len(lines), lines[-40:])
        assert any("suppressed" in line for line in lines), lines[-40:]
        # Still the same outage: ``since`` did not move.
        status, later = worker.health()
        assert status == 503 and later["conditions"]["kafka"]["since"] == since, later
    finally:
        if worker is not None:
            t0 = time.monotonic()
            worker.stop()
            report("stop with the broker gone (WorkerProcess.stop)", time.monotonic() - t0)
        own.stop()


@pytest.mark.timeout(180)
def test_sigterm_to_record_ends_it_as_ctrl_c_does_with_its_summary(
        broker: EmbeddedBroker, tmp_path: Path, topic_prefix: str) -> None:
    """The other commands stop on SIGTERM the way they stop on Ctrl-C: here ``record`` keeps
    what it wrote and prints its count, instead of dying mid-line."""
    from producers.producer import EventProducer
    from towerstream.events import Interaction

    settings = worker_settings(broker, tmp_path / "data", topic_prefix)
    ensure_topics(settings)
    out_file = tmp_path / "rec.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERSTREAM_")}
    env.update({"TOWERSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap, "TOWERSTREAM_TOPIC_PREFIX": topic_prefix})
    proc = subprocess.Popen([str(TOWERSTREAM), "record", "--topics", "interactions", "-o", str(out_file)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with EventProducer(settings) as prod:
            for i in range(5):
                prod.send_interaction(Interaction(event_id=f"e{i}", user_id="u1", item_id=f"i{i}", kind="click",
                                                  ts=1767225600000 + i))
            prod.flush()
        end = time.monotonic() + 60
        while not (out_file.exists() and len(out_file.read_text().splitlines()) >= 5):
            assert time.monotonic() < end and proc.poll() is None, "record never wrote the 5 records"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output.decode(errors="replace")
    assert "recorded=5" in output.decode(errors="replace")
    assert len(out_file.read_text().splitlines()) == 5
