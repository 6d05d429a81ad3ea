"""``towerstream`` command line: a thin layer that parses flags and calls plain functions."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules that add subcommands with ``register(subparsers)``; missing ones are skipped.
COMMAND_MODULES = (
    "towerstream.cli_run",
    "towerstream.cli_produce",
    "towerstream.cli_evaluate",
    "towerstream.cli_drift",
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

    from towerstream.logs import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(os.environ.get("TOWERSTREAM_LOG_LEVEL", "info"), json=False, cache=False)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
