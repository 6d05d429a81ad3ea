"""``towerstream`` command line: a thin layer that parses flags and calls plain functions."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence

#: Modules that add subcommands with ``register(subparsers)``; missing ones are skipped.
COMMAND_MODULES = (
    "towerstream.cli_run",
    "towerstream.cli_produce",
    "towerstream.cli_evaluate",
    "towerstream.cli_drift",
    "towerstream.cli_serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="towerstream", description="Streaming two-tower recommender on Kafka")
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
    import os

    from towerstream.lifecycle import StopSignals
    from towerstream.logs import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
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
