"""Evict this worker's previous consumer-group member when it restarts after a crash.

A worker killed with SIGKILL stays a member of its group until its session times out. A new
incarnation that joins before that can be made to wait for the dead member (we measured joins
stuck about 5 s on the test broker, which pushed restart-to-first-event past 10 s). So each
worker records its member id in its data directory once it has joined, and a restarting worker
removes that member (Kafka's LeaveGroup, the admin "remove members" call) before it joins,
synchronously: on the test broker a LeaveGroup that arrives while our own JoinGroup is in flight
wedged the group in endless rejoins.
Only the member recorded in this worker's own data directory is removed, so other live workers
of the group are never touched. Any failure is logged and ignored: the dead member then simply
expires as it would have.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import structlog

from towerstream.settings import Settings

log = structlog.get_logger(__name__)


def member_file(settings: Settings) -> Path:
    return Path(settings.data_dir) / "faust" / "group-member"


def remember_member(settings: Settings, member_id: str) -> None:
    path = member_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(member_id)
    os.replace(tmp, path)


def current_member_id(app: Any) -> str | None:
    """The member id Faust's aiokafka consumer got from the coordinator (None if not joined)."""
    try:
        consumer = app.consumer._thread._consumer  # faust aiokafka driver -> aiokafka consumer
        member_id = consumer._coordinator.member_id
    except AttributeError:
        return None
    return member_id or None


def evict_previous_member(settings: Settings, timeout_ms: int = 3000) -> str | None:
    """Remove the member recorded by the previous incarnation; returns the outcome, for logs."""
    path = member_file(settings)
    try:
        member_id = path.read_text().strip()
        path.unlink()  # once per incarnation (Faust sends on_worker_init twice)
    except OSError:
        return None
    if not member_id:
        return None
    from kafka.admin import KafkaAdminClient, MemberToRemove

    from producers.kafka_config import client_config

    try:
        admin = KafkaAdminClient(**client_config(settings, client_id="towerstream-evict"),
                                 request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms)
        try:
            result = admin.remove_group_members(
                settings.app_id, [MemberToRemove(member_id=member_id, reason="worker restarted")])
        finally:
            admin.close()
        outcome = ",".join(getattr(err, "__name__", str(err)) for err in result.values()) or "no answer"
    except Exception as exc:  # noqa: BLE001 - best effort: the member expires by itself otherwise
        outcome = f"failed: {type(exc).__name__}: {exc}"[:300]
    log.info("previous_group_member_evicted", member_id=member_id, outcome=outcome)
    return outcome
