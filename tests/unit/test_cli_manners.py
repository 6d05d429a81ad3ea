"""The command line's manners: fast help, every flag explained with its default, quiet when redirected."""

from __future__ import annotations

import argparse
import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from towerstream.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
#: What ``--help`` must not load: each costs from a tenth of a second (pydantic, numpy) to
#: seconds (torch, faust) of start-up that a person asking for help waits through.
HEAVY = ("torch", "faust", "faiss", "kafka", "aiokafka", "numpy", "river", "pydantic", "matplotlib",
         "rocksdict", "structlog", "tqdm")


def subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command's parser, with the words that reach it."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommand_paths(sub, (*prefix, name))


def test_help_of_every_command_loads_no_heavy_library() -> None:
    paths = [list(p) for p, _ in subcommand_paths(build_parser())]
    script = (
        "import contextlib, io, json, sys\n"
        "from towerstream.cli import main\n"
        f"for path in {paths!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main([*path, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert len(paths) > 10  # demo, worker, produce generate, drift plot, ...
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_every_flag_has_help_and_shows_its_default() -> None:
    missing, no_default = [], []
    for path, parser in subcommand_paths(build_parser()):
        formatter = parser.formatter_class(prog=parser.prog)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            where = " ".join((*path, action.option_strings[0] if action.option_strings else action.dest))
            if not (action.help or "").strip():
                missing.append(where)
            elif (action.option_strings and not action.required
                  and "default" not in (formatter._get_help_string(action) or "")):  # type: ignore[attr-defined]
                # The formatter appends "(default: X)"; a None default must be explained in words.
                no_default.append(where)
    assert missing == [] and no_default == []


def test_demo_help_names_its_defaults() -> None:
    demo = dict(subcommand_paths(build_parser()))[("demo",)]
    text = " ".join(demo.format_help().split())
    for flag, default in (("--users", "500"), ("--items", "1000"), ("--seed", "0"), ("--rate", "200.0")):
        assert f"{flag} " in text and f"(default: {default})" in text


def test_logs_carry_no_colour_codes_unless_stderr_is_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from towerstream.logs import configure_logging

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    try:
        for stream, coloured in ((io.StringIO(), False), (Terminal(), True)):
            monkeypatch.setattr(sys, "stderr", stream)
            configure_logging("info", json=False, cache=False)
            structlog.get_logger("manners").info("something_happened", topic="t", coloured=coloured)
            text = stream.getvalue()
            assert "something_happened" in text
            assert ("\x1b[" in text) is coloured
    finally:
        structlog.reset_defaults()


def test_kafka_clients_do_not_call_a_slow_loop_step_a_blocked_event_loop(caplog: pytest.LogCaptureFixture) -> None:
    """kafka-python's own default warns at 0.1 s (shown first, so the check can fail); ours at 5 s."""
    from kafka.net.compat import KafkaNetClient

    from producers.kafka_config import client_config
    from towerstream.settings import Settings

    async def step_of_a_loaded_machine() -> int:
        time.sleep(0.3)  # a batch compressed, or the GIL held by the thread serialising records
        return 1

    def warnings_of(factory: object) -> list[str]:
        caplog.clear()
        client = factory(bootstrap_servers=["127.0.0.1:1"])  # type: ignore[operator]
        try:
            with caplog.at_level(logging.WARNING, logger="kafka"):
                assert client._net.run(step_of_a_loaded_machine) == 1
        finally:
            client.close()
        return [r.getMessage() for r in caplog.records if "blocking the event loop" in r.getMessage()]

    assert warnings_of(KafkaNetClient)
    assert warnings_of(client_config(Settings(kafka_bootstrap="127.0.0.1:1"))["kafka_client"]) == []
