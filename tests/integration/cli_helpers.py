"""Running ``towerstream`` produce/record/replay subcommands in-process, for the broker tests."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest
import structlog

from towerstream.cli_produce import register


@pytest.fixture(autouse=True)
def _structlog_restored() -> Iterator[None]:
    """The CLI points an unconfigured structlog at stderr; undo that for the next test."""
    was = structlog.is_configured()
    yield
    if not was:
        structlog.reset_defaults()


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    register(sub)
    args = p.parse_args(argv)
    rc: int = args.func(args)
    return rc
