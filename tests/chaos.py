"""Kill -9 at random: the harness shared by ``tests/integration/test_faults.py`` and ``bench/faults.py``.

``kill_run`` replays a recording (catalog with updates, deletes and re-announcements, profiles,
interactions) through a real broker into a real worker process and SIGKILLs the worker at
moments drawn from a seeded RNG, restarting it each time. At every kill, with the worker dead,
it checks the order of durability: the offsets the consumer group has committed never run
ahead of the offsets whose effects are durable in the worker's RocksDB. At the end it kills the
worker once more and opens its data directory in process, as a restarted worker would, to
check the index and the training count exactly. ``KillRun.problems`` lists every violation.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaAdminClient, TopicPartition

from index_store import MetaStore
from producers.kafka_config import client_config
from producers.producer import EventProducer
from producers.replay import replay
from producers.topics import ensure_topics
from towerstream.events import Interaction, ItemDelete, ItemUpsert
from towerstream.processes import WorkerProcess, http_json
from towerstream.recording import RecordedRecord, record_of
from towerstream.settings import Settings
from towerstream.synthetic import StreamSpec, generate, make_item

DATA_TOPICS = ("interactions", "items", "users")


@dataclass
class Recording:
    records: list[RecordedRecord]
    live_items: set[str]  # items whose last event is an upsert
    last_item_event: dict[str, str]  # item id -> event id of its last event
    interaction_ids: list[str]


def faults_recording(seed: int, interactions: int, users: int = 80, items: int = 200) -> Recording:
    """A generated stream plus item updates, deletes and re-announcements, in event-time order."""
    spec = StreamSpec(users=users, items=items, interactions=interactions, late_items=0.3, seed=seed)
    rng = np.random.default_rng(seed + 1)
    out: list[RecordedRecord] = []
    live: set[str] = set()
    deleted: list[str] = []
    last: dict[str, str] = {}
    version: dict[str, int] = {}
    ids: list[str] = []
    for rec in generate(spec):
        out.append(rec)
        value = rec.value
        if rec.topic == "items":
            live.add(value["item_id"])
            last[value["item_id"]] = value["event_id"]
            version[value["item_id"]] = 1
            continue
        if rec.topic != "interactions":
            continue
        ids.append(value["event_id"])
        n = len(ids)
        assert rec.timestamp is not None
        ts = datetime.fromtimestamp(rec.timestamp / 1000 + 0.5, tz=timezone.utc)  # after this event
        if n % 20 == 0 and live:  # new content for a live item
            item_id = sorted(live)[int(rng.integers(0, len(live)))]
            version[item_id] += 1
            ev = make_item(int(item_id[1:]), spec, rng, ts).model_copy(
                update={"event_id": f"{item_id}-v{version[item_id]}", "title": f"v{version[item_id]} w0x1"})
            out.append(record_of("items", ev, key=item_id, timestamp_ms=int(ts.timestamp() * 1000)))
            last[item_id] = ev.event_id or ""
        elif n % 75 == 0 and len(live) > 10:  # delete
            item_id = sorted(live)[int(rng.integers(0, len(live)))]
            version[item_id] += 1
            dl = ItemDelete(op="delete", item_id=item_id, ts=ts, event_id=f"{item_id}-del{version[item_id]}")
            out.append(record_of("items", dl, key=item_id, timestamp_ms=int(ts.timestamp() * 1000)))
            live.discard(item_id)
            deleted.append(item_id)
            last[item_id] = dl.event_id or ""
        elif n % 199 == 0 and deleted:  # announce a deleted item again
            item_id = deleted.pop(0)
            version[item_id] += 1
            ev = make_item(int(item_id[1:]), spec, rng, ts).model_copy(
                update={"event_id": f"{item_id}-v{version[item_id]}"})
            out.append(record_of("items", ev, key=item_id, timestamp_ms=int(ts.timestamp() * 1000)))
            live.add(item_id)
            last[item_id] = ev.event_id or ""
    return Recording(out, live, last, ids)


@dataclass
class KillRun:
    kills: int = 0
    restarts_to_first_event_s: list[float] = field(default_factory=list)
    #: The worker log of each measured restart (same order), to see where a slow one spent its time.
    restart_logs: list[str] = field(default_factory=list)
    #: Restart to first event after a graceful stop (SIGTERM, checkpoint at shutdown): the reference.
    reference_restart_s: float | None = None
    startup_kills: int = 0
    offset_checks: int = 0
    problems: list[str] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        r = self.restarts_to_first_event_s
        return {
            "kills": self.kills, "startup_kills": self.startup_kills, "offset_checks": self.offset_checks,
            "reference_graceful_restart_s": round(self.reference_restart_s, 2) if self.reference_restart_s else None,
            "restart_to_first_event_s": {
                "n": len(r), "max": round(max(r), 2) if r else None,
                "median": round(statistics.median(r), 2) if r else None,
                "min": round(min(r), 2) if r else None, "all": [round(x, 2) for x in r],
            },
            "slowest_restart_log": self.restart_logs[r.index(max(r))] if r else None,
            "problems": self.problems, "final": self.final, "wall_s": round(self.wall_s, 1),
        }


def durable_state(data_dir: Path) -> tuple[dict[str, int], int]:
    """(next offset per "topic:partition", trained counter) from a dead worker's RocksDB."""
    store = MetaStore(Path(data_dir) / "engine" / "meta")
    try:
        offsets = {k[4:]: int(v) for k, v in store.scan("off:")}
        return offsets, store.counter("trained")
    finally:
        store.close()


def committed_offsets(settings: Settings) -> dict[str, int]:
    """Offsets committed by the worker's groups: Faust's, and the batch readers' of interactions
    and items (``streams.batch_consumer``); where two committed a partition, the higher one counts."""
    from streams.batch_consumer import group_id

    admin = KafkaAdminClient(**client_config(settings, client_id="chaos-admin"), request_timeout_ms=10_000)
    tps = [TopicPartition(settings.topic(t), n) for t in DATA_TOPICS for n in range(settings.topic_partitions)]
    out: dict[str, int] = {}
    try:
        for group in (settings.app_id, group_id(settings, "interactions"), group_id(settings, "items")):
            got = admin.list_group_offsets({group: tps})[group]
            for tp, om in got.items():
                key = f"{tp.topic}:{tp.partition}"
                if om.offset >= 0 and om.offset > out.get(key, -1):
                    out[key] = om.offset
    finally:
        admin.close()
    return out


def check_durability_order(settings: Settings, run: KillRun, where: str) -> int:
    """Committed offsets must not run ahead of durable effects; returns the durable trained count."""
    durable, trained = durable_state(settings.data_dir)
    committed = committed_offsets(settings)
    run.offset_checks += 1
    for tp, off in committed.items():
        if tp.rsplit(":", 1)[0] not in {settings.topic(t) for t in DATA_TOPICS}:
            continue
        if off > durable.get(tp, 0):
            run.problems.append(f"{where}: committed {tp}@{off} but durable only up to {durable.get(tp, 0)}")
    return trained


def _health(w: WorkerProcess) -> dict[str, Any]:
    status, body = w.health()
    return body if isinstance(body, dict) else {}


def kill_run(
    settings: Settings,
    recording: Recording,
    *,
    kills: int,
    seed: int,
    logs: Path,
    speed: float = 60.0,
    run_s: tuple[float, float] = (0.3, 4.0),
    startup_kill_p: float = 0.2,
    settle_timeout: float = 120.0,
    first_event_timeout: float = 90.0,
    on_progress: Callable[[str], None] = lambda line: None,
    reference_restart: bool = False,
) -> KillRun:
    """Replay ``recording`` while SIGKILLing the worker ``kills`` times; then verify everything."""
    rng = random.Random(seed)
    run = KillRun()
    t_start = time.monotonic()
    ensure_topics(settings)
    probes: list[str] = []
    n_logs = iter(range(10_000))

    def start() -> WorkerProcess:
        return WorkerProcess(settings, log_path=logs / f"worker-{next(n_logs)}.log").start()

    def probe(k: int) -> None:
        """One fresh interaction per restart, so there is always a new event to process."""
        ev = Interaction(event_id=f"probe-{k}", user_id=f"u{k % 7}", item_id="i1", ts=datetime.now(timezone.utc))
        with EventProducer(settings) as prod:
            prod.send_interaction(ev)
            if prod.flush(20).failed:
                run.problems.append(f"probe {k} not delivered")
        probes.append(ev.event_id)

    worker = start()
    worker.wait_ready(120)
    summary: dict[str, Any] = {}

    def produce() -> None:
        summary["replay"] = replay(iter(recording.records), settings, speed=speed, progress=False,
                                   create_topics=False)

    producer_thread = threading.Thread(target=produce, name="replay", daemon=True)
    producer_thread.start()

    def first_event_after(t0: float, trained_before: int, what: str) -> float | None:
        deadline = t0 + first_event_timeout
        while time.monotonic() < deadline:
            if _health(worker).get("trained_total", -1) > trained_before:
                return time.monotonic() - t0
            if not worker.alive():
                run.problems.append(f"{what}: worker exited with {worker.proc.returncode if worker.proc else None}")
                return None
            time.sleep(0.05)
        run.problems.append(f"{what}: no event processed within {first_event_timeout}s")
        return None

    try:
        if reference_restart:
            time.sleep(rng.uniform(*run_s))
            worker.stop()
            _, trained = durable_state(settings.data_dir)
            t0 = time.monotonic()
            worker = start()
            probe(-1)
            run.reference_restart_s = first_event_after(t0, trained, "graceful restart")
        for k in range(kills):
            time.sleep(rng.uniform(*run_s))  # the worker is processing: kill it at a random moment
            worker.kill()
            run.kills += 1
            trained_at_kill = check_durability_order(settings, run, f"kill {k + 1}")
            t0 = time.monotonic()
            worker = start()
            probe(k)
            if rng.random() < startup_kill_p:
                # Next kill lands while this worker is still starting (loading, joining, replaying).
                time.sleep(rng.uniform(0.5, 6.0))
                run.startup_kills += 1
                worker.kill()
                run.kills += 1
                trained_at_kill = check_durability_order(settings, run, f"kill {k + 1} (startup)")
                t0 = time.monotonic()
                worker = start()
                probe(k + 10_000)
            took = first_event_after(t0, trained_at_kill, f"restart {k + 1}")
            if took is not None:
                run.restarts_to_first_event_s.append(took)
                run.restart_logs.append(str(worker.log_path))
            on_progress(f"kill {run.kills}: first event after restart in "
                        f"{run.restarts_to_first_event_s[-1] if run.restarts_to_first_event_s else float('nan'):.2f}s")
        producer_thread.join(timeout=600)
        rep = summary.get("replay")
        if rep is None or rep.failed or rep.sent != len(recording.records):
            run.problems.append(f"replay incomplete: {rep}")
        expected_ids = set(recording.interaction_ids) | set(probes)
        want = len(expected_ids)
        deadline = time.monotonic() + settle_timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = _health(worker)
            if (body.get("trained_in_model") == want and body.get("items_indexed") == len(recording.live_items)
                    and body.get("trained_total") == want):
                break
            time.sleep(0.25)
        else:
            run.problems.append(f"live worker did not settle: want {want} trained, "
                                f"{len(recording.live_items)} items; health {body}")
        status, rec = http_json(f"{worker.base_url}/recommend/u1?k=10")
        if status != 200 or rec.get("source") != "model" or len(rec.get("items", [])) != 10:
            run.problems.append(f"/recommend after the kills: {status} {rec}")
        elif set(i["item_id"] for i in rec["items"]) - recording.live_items:
            run.problems.append(f"/recommend returned items that are not live: {rec['items']}")
        time.sleep(2)  # let the last offsets be committed, then kill once more
        worker.kill()
        check_durability_order(settings, run, "final kill")
        run.final = verify_data_dir(settings, recording, expected_ids, run)
    finally:
        worker.kill()
        run.wall_s = time.monotonic() - t_start
    return run


def verify_data_dir(settings: Settings, recording: Recording, expected_ids: set[str], run: KillRun) -> dict[str, Any]:
    """Open the dead worker's data directory as a restart would and check it exactly."""
    import faiss

    from streams.runtime import engine_config
    from towerstream.engine import Engine

    eng = Engine.open(settings.data_dir / "engine", engine_config(settings))
    try:
        index = eng.index._active()
        if isinstance(index, faiss.IndexIDMap2):
            stored = faiss.vector_to_array(index.id_map).astype(np.int64).tolist()
        else:  # pragma: no cover - the recording is far below the IVF threshold
            stored = eng.index.ids().tolist()
        in_index = eng.items.external(sorted(set(stored)))
        if len(stored) != len(set(stored)):
            run.problems.append(f"duplicate vectors: {len(stored)} stored for {len(set(stored))} ids")
        missing = recording.live_items - set(in_index)
        extra = set(in_index) - recording.live_items
        if missing or extra:
            run.problems.append(f"index != live items: missing {sorted(missing)[:10]}, extra {sorted(extra)[:10]}")
        stale = []
        for item_id, event_id in recording.last_item_event.items():
            rec = eng.item_record(item_id)
            if rec is None or (rec["event"].get("event_id") != event_id):
                stale.append(item_id)
        if stale:
            run.problems.append(f"item records not at their last event: {stale[:10]}")
        markers = {k[3:] for k, _ in eng.store.scan("ev:")}
        untrained = expected_ids - markers
        if untrained:
            run.problems.append(f"{len(untrained)} interactions never trained, e.g. {sorted(untrained)[:5]}")
        trained_counter = eng.store.counter("trained")
        if trained_counter != len(expected_ids) or eng.trained_in_model != len(expected_ids):
            run.problems.append(f"trained counter {trained_counter}, trained into the model {eng.trained_in_model}, "
                                f"expected {len(expected_ids)} each")
        return {
            "items_live": len(recording.live_items), "items_in_index": len(set(stored)),
            "vectors_stored": len(stored), "interactions": len(expected_ids),
            "interactions_with_marker": len(markers & expected_ids), "trained_counter": trained_counter,
            "trained_into_model": eng.trained_in_model, "model_version": eng.model_version,
        }
    finally:
        eng.close()
