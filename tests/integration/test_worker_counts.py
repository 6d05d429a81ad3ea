"""``produce`` and ``replay`` say what the worker did with what they sent (a real worker and broker).

Sending a file twice is what a person does by mistake (or a replay into the running demo): the
second time every record is a duplicate, Kafka accepts it all, and only the worker knows. The
commands read the worker's counters and say so; run as a person runs them (output redirected),
they print no progress-bar redraws, colour codes or library warnings either.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import worker_settings
from towerstream.broker import EmbeddedBroker
from towerstream.processes import WorkerProcess
from towerstream.recording import write_recording
from towerstream.settings import Settings
from towerstream.synthetic import StreamSpec, generate

ROOT = Path(__file__).resolve().parents[2]
N = 300


def run_cli(settings: Settings, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TOWERSTREAM_KAFKA_BOOTSTRAP=settings.bootstrap, TOWERSTREAM_TOPIC_PREFIX=settings.topic_prefix,
               TOWERSTREAM_WEB_PORT=str(settings.web_port), TOWERSTREAM_TOPIC_PARTITIONS="2")
    return subprocess.run([sys.executable, "-m", "towerstream.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def worker_line(out: str) -> dict[str, int]:
    m = re.search(r"^worker: applied=(\d+) duplicates=(\d+) dead_letters=(\d+) stale=(\d+)", out, re.MULTILINE)
    assert m, out
    return {"applied": int(m[1]), "duplicates": int(m[2]), "dead_letters": int(m[3]), "stale": int(m[4])}


def assert_quiet(proc: subprocess.CompletedProcess[str]) -> None:
    """Redirected output: no tqdm redraws, no ANSI codes, no kafka-python warnings."""
    text = proc.stdout + proc.stderr
    assert "\r" not in text and "\x1b[" not in text, text[-2000:]
    assert "blocking the event loop" not in text and "WARNING" not in text.upper().replace("WARNINGS", ""), text[-2000:]


def test_produce_and_replay_say_how_many_records_were_duplicates(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path, start_worker: Callable[[Settings], WorkerProcess]
) -> None:
    settings = worker_settings(broker, tmp_path / "data", topic_prefix)
    worker = start_worker(settings)
    events = tmp_path / "events.jsonl"
    events.write_text("".join(
        json.dumps({"event_id": f"counted-{n}", "user_id": f"u{n % 7}", "item_id": f"i{n % 11}", "kind": "click",
                    "ts": 1_767_225_600_000 + n}) + "\n" for n in range(N)))
    worker.wait_ready(timeout=90)

    first = run_cli(settings, "produce", "interactions", str(events))
    assert first.returncode == 0, first.stderr
    assert worker_line(first.stdout) == {"applied": N, "duplicates": 0, "dead_letters": 0, "stale": 0}
    assert_quiet(first)

    again = run_cli(settings, "produce", "interactions", str(events))
    assert again.returncode == 0, again.stderr
    assert "sent=300 failed=0" in again.stdout
    assert worker_line(again.stdout) == {"applied": 0, "duplicates": N, "dead_letters": 0, "stale": 0}
    assert "already seen" in again.stdout

    # A recording of generated items and interactions, replayed twice: the second time, all duplicates.
    rec = tmp_path / "stream.jsonl"
    write_recording(generate(StreamSpec(users=20, items=40, interactions=200, seed=5, profiles=False)), rec)
    replayed = run_cli(settings, "replay", str(rec))
    assert replayed.returncode == 0, replayed.stderr
    assert worker_line(replayed.stdout)["duplicates"] == 0
    assert_quiet(replayed)
    replayed = run_cli(settings, "replay", str(rec))
    counts = worker_line(replayed.stdout)
    assert counts["duplicates"] == 240 and counts["applied"] == 0, replayed.stdout


def test_without_a_worker_the_commands_say_that_duplicates_are_dropped(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    settings = worker_settings(broker, tmp_path / "data", topic_prefix)  # nothing listens on its port
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"event_id": "lonely-1", "user_id": "u1", "item_id": "i1", "kind": "view",
                                  "ts": 1_767_225_600_000}) + "\n")
    proc = run_cli(settings, "produce", "interactions", str(events))
    assert proc.returncode == 0, proc.stderr
    assert "sent=1 failed=0" in proc.stdout
    assert "no towerstream worker counted these topics" in proc.stdout
    assert "drops records whose event id it has already seen" in proc.stdout
