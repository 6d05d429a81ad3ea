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

A worker is a member of more than one group (Faust's, and the interactions batch consumer's,
``streams.batch_consumer``): ids are recorded and reused per group id, each in its own file.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from towerstream.settings import Settings

log = structlog.get_logger(__name__)

_lock = threading.Lock()
#: group id -> the member id its next coordinator in this process joins with (used once).
_rejoin_members: dict[str, str] = {}


def member_file(settings: Settings, group_id: str | None = None) -> Path:
    """Where this worker records its member id in ``group_id`` (Faust's group when None)."""
    base = Path(settings.data_dir) / "faust"
    if group_id is None or group_id == settings.app_id:
        return base / "group-member"  # Faust's group: the name earlier versions used
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in group_id)
    return base / f"group-member.{safe}"


def remember_member(settings: Settings, member_id: str, group_id: str | None = None) -> None:
    path = member_file(settings, group_id)
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


def _install_patch() -> None:
    """Once per process: coordinators of a group with a recorded id start as that member."""
    import aiokafka.consumer.consumer as consumer_module
    from aiokafka.protocol.group import JoinGroupRequest

    base = consumer_module.GroupCoordinator
    if getattr(base, "_towerstream_rejoin", False):
        return

    class _Coordinator(base):  # type: ignore[misc, valid-type]
        _towerstream_rejoin = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            with _lock:
                if getattr(self, "member_id", None) == JoinGroupRequest.UNKNOWN_MEMBER_ID:
                    member_id = _rejoin_members.pop(str(getattr(self, "group_id", "")), None)
                    if member_id:
                        self.member_id = member_id

    consumer_module.GroupCoordinator = _Coordinator


def rejoin_as_previous_member(settings: Settings, group_id: str | None = None) -> str | None:
    """Make the next coordinator of ``group_id`` (Faust's group when None) join with the recorded id."""
    group = group_id or settings.app_id
    try:
        member_id = member_file(settings, group_id).read_text().strip()
    except OSError:
        return None
    if not member_id:
        return None
    with _lock:
        _install_patch()
        _rejoin_members[group] = member_id
    log.info("rejoining_group_as_previous_member", group=group, member_id=member_id)
    return member_id


def watch_member(read: Callable[[], str | None], settings: Settings, group_id: str | None = None) -> threading.Thread:
    """Record the member id ``read()`` returns whenever it changes (a daemon thread polling every 50 ms).

    Polling, because the id is needed while the join is still in flight, before any Faust
    callback runs: a worker killed mid-join would otherwise leave a member nobody can name.
    ``read`` must only read attributes (it runs on this thread, not the event loop).
    """

    def run() -> None:
        known: str | None = None
        started = time.monotonic()
        while True:
            try:
                member_id = read()
            except Exception:  # noqa: BLE001 - an object torn down under us: try again later
                member_id = None
            if member_id and member_id != known:
                try:
                    remember_member(settings, member_id, group_id)
                    known = member_id
                except OSError as exc:
                    log.warning("group_member_not_recorded", group=group_id or settings.app_id, error=str(exc))
            time.sleep(0.05 if time.monotonic() - started < 60 else 0.5)

    t = threading.Thread(target=run, name=f"group-member-{group_id or 'faust'}", daemon=True)
    t.start()
    return t
