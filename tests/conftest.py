"""Shared fixtures: a real Tansu broker on a free loopback port, unique topic names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from towerstream.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One broker process for the session; tests isolate themselves with unique topic prefixes."""
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture()
def topic_prefix() -> str:
    """A unique topic prefix (and Faust app id) per test, so tests never share state."""
    return f"ts{uuid.uuid4().hex[:10]}"
