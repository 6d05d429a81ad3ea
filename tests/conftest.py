"""Shared fixtures: a real Tansu broker on a free loopback port, unique topic names."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from towerstream.broker import EmbeddedBroker


@pytest.fixture(autouse=True)
def _repeat_limiting_stays_in_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """An in-process CLI run limits repeated warnings on every root handler, as the worker must.

    pytest's log-capture handlers live for the whole session, so the filter (and what it has
    seen) would follow them into later tests and hide their warnings from ``caplog``.
    """
    yield
    from towerstream.logs import RepeatFilter, forget_repeats

    plugin = request.config.pluginmanager.get_plugin("logging-plugin")
    handlers = [*logging.getLogger().handlers, getattr(plugin, "caplog_handler", None),
                getattr(plugin, "report_handler", None)]
    for handler in handlers:
        for f in [f for f in getattr(handler, "filters", []) if isinstance(f, RepeatFilter)]:
            handler.removeFilter(f)
    forget_repeats()


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One broker process for the session; tests isolate themselves with unique topic prefixes."""
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture()
def topic_prefix() -> str:
    """A unique topic prefix (and Faust app id) per test, so tests never share state."""
    return f"ts{uuid.uuid4().hex[:10]}"


# ----- worker processes -------------------------------------------------------------------
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

from towerstream.broker import free_port  # noqa: E402
from towerstream.processes import WorkerProcess  # noqa: E402
from towerstream.settings import Settings  # noqa: E402


def worker_settings(broker: EmbeddedBroker, data_dir: Path, prefix: str, **overrides: object) -> Settings:
    """Settings for a test worker: its own topics, group, data dir and port; fast group joins."""
    base: dict[str, object] = dict(
        kafka_bootstrap=broker.bootstrap, data_dir=data_dir, web_port=free_port(), topic_prefix=prefix,
        app_id=prefix, broker_session_timeout=6, broker_heartbeat_interval=2, consumer_max_fetch_wait_ms=20,
        topic_partitions=2, checkpoint_every_s=5, log_json=True,
    )
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture()
def start_worker(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    """Start real worker processes (``faust -A streams.app worker``); all are killed at teardown.

    A test that relies on a graceful stop (final checkpoint, offsets committed, group left) calls
    ``stop()`` and asserts on it; one left running at the end has nothing more to show, and a
    graceful stop of each (~3 s) was a good part of the suite's time. Each test has groups of
    its own.
    """
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        w = WorkerProcess(settings, log_path=tmp_path / f"worker-{len(started)}.log").start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()
