"""``towerstream`` command line: a thin layer that parses flags and calls plain functions.

Building the parser imports only the ``cli_*`` modules, which import nothing heavy at module
level (torch, faust, faiss, kafka, numpy, pydantic come in inside the commands): ``--help``
answers at once (``tests/unit/test_cli_manners.py``; its time is in ``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence
from typing import Any

#: Modules that add subcommands with ``register(subparsers)``; missing ones are skipped.
COMMAND_MODULES = (
    "towerstream.cli_run",
    "towerstream.cli_produce",
    "towerstream.cli_evaluate",
    "towerstream.cli_drift",
    "towerstream.cli_serve",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag shows its default; a flag whose default is ``None`` says in its help what it means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands (made with ``add_subparsers``, so of this class) show defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="towerstream", description="Streaming two-tower recommender on Kafka: trains on "
                    "interactions as they arrive and serves top-K recommendations over HTTP and Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and bad flags exit here, before anything heavy is imported

    import os

    from towerstream.lifecycle import StopSignals
    from towerstream.logs import configure_logging

    configure_logging(os.environ.get("TOWERSTREAM_LOG_LEVEL", "info"), json=False, cache=False)
    # SIGTERM (supervisors) and SIGINT stop every command the same way: KeyboardInterrupt in
    # the main thread, so each command's ``finally``/``with`` stops what it started; a stop
    # that hangs ends a little after the worker's own bound (towerstream.lifecycle).
    try:
        from towerstream.settings import Settings

        deadline = Settings().stop_timeout_s + 8.0
    except Exception:  # noqa: BLE001 - bad settings: the command itself reports them
        deadline = 28.0
    stop = StopSignals(deadline)
    with contextlib.suppress(ValueError):  # not the main thread (an embedding program): its signals
        stop.install()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    finally:
        with contextlib.suppress(ValueError):
            stop.uninstall()


if __name__ == "__main__":
    sys.exit(main())
