"""A restarted worker rejoins its consumer group as the member its killed predecessor was.

A worker killed with SIGKILL stays a member of its group until its session times out. On the
test broker a new incarnation that joins meanwhile can see the dead member elected group
leader and wait for an assignment that never comes (about 5 s, then a rejoin), which pushed
restart-to-first-event to 13-15 s. Removing the dead member first (LeaveGroup) is worse there:
removing one whose own join was still in flight wedged the group in endless rejoins.

So the worker records its member id in its data directory as soon as the coordinator hands it
out (the first JoinGroup round trip, before the join's wait), and a restarted worker sends its
first JoinGroup with that id: the coordinator sees the same member rejoining, not a second one.
If the id has expired meanwhile the coordinator answers UNKNOWN_MEMBER_ID and aiokafka joins
afresh, as it would have anyway. Only this worker's own data directory is read, so other
members of the group are never touched.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from towerstream.settings import Settings

log = structlog.get_logger(__name__)

_lock = threading.Lock()
_rejoin_member: str | None = None


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
    # Plain attribute reads only: ``app.consumer`` would create the consumer, from this thread
    # and before Faust has set up its loop (the worker then fails to start).
    obj: Any = app
    for attr in ("_consumer", "_thread", "_consumer", "_coordinator", "member_id"):  # faust -> aiokafka
        obj = getattr(obj, attr, None)
        if obj is None:
            return None
    return str(obj) or None


def rejoin_as_previous_member(settings: Settings) -> str | None:
    """Make the next group coordinator created in this process join with the recorded member id."""
    global _rejoin_member
    try:
        member_id = member_file(settings).read_text().strip()
    except OSError:
        return None
    if not member_id:
        return None
    import aiokafka.consumer.consumer as consumer_module
    from aiokafka.protocol.group import JoinGroupRequest

    with _lock:
        base = consumer_module.GroupCoordinator
        if not getattr(base, "_towerstream_rejoin", False):

            class _Coordinator(base):  # type: ignore[misc, valid-type]
                _towerstream_rejoin = True

                def __init__(self, *args: Any, **kwargs: Any) -> None:
                    global _rejoin_member
                    super().__init__(*args, **kwargs)
                    with _lock:
                        member_id = getattr(self, "member_id", None)
                        if _rejoin_member and member_id == JoinGroupRequest.UNKNOWN_MEMBER_ID:
                            self.member_id, _rejoin_member = _rejoin_member, None

            consumer_module.GroupCoordinator = _Coordinator
        _rejoin_member = member_id
    log.info("rejoining_group_as_previous_member", member_id=member_id)
    return member_id


def watch_member(app: Any, settings: Settings) -> threading.Thread:
    """Record the consumer's member id whenever it changes (a daemon thread polling every 50 ms).

    Polling, because the id is needed while the join is still in flight, before any Faust
    callback runs: a worker killed mid-join would otherwise leave a member nobody can name.
    """

    def run() -> None:
        known: str | None = None
        started = time.monotonic()
        while True:
            member_id = current_member_id(app)
            if member_id and member_id != known:
                try:
                    remember_member(settings, member_id)
                    known = member_id
                except OSError as exc:
                    log.warning("group_member_not_recorded", error=str(exc))
            time.sleep(0.05 if time.monotonic() - started < 60 else 0.5)

    t = threading.Thread(target=run, name="group-member", daemon=True)
    t.start()
    return t
