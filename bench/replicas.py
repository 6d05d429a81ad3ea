"""Train once, serve anywhere (issue 17): what a serving replica costs and how fresh it is.

    .venv/bin/python bench/replicas.py latency       # 1M items: bootstrap, query p99 idle / under load, costs
    .venv/bin/python bench/replicas.py freshness     # 2 replicas: new item, interaction, model version
    .venv/bin/python bench/replicas.py throughput    # trainer interactions/s, publishing on vs off

Everything runs end to end, on one Tansu broker, with real processes: the trainer is the Faust
worker with ``TOWERSTREAM_ROLE=train`` (publishing through ``streams/publisher.py``), a replica is
``towerstream serve`` (``ReplicaProcess``). Each subcommand prints the machine, library versions,
seed and load average, measures its reference in the same run, and writes
``bench/results/replicas_<subcommand>.json``.

``latency`` (default 1M items, the ``build_state`` state cached in ``bench/.cache``):

1. the trainer starts on a copy of the state and publishes its first version (a sweep of every
   item's vector); the query users' histories (the state's own interaction events, same event
   ids, so the trainer drops them as duplicates) are produced to the interactions topic, where
   replicas read seen items and history;
2. a replica starts on the topics holding that complete version: start -> ``/healthz`` 200 is the
   **bootstrap** time; its RSS then is the memory per catalog;
3. recall@10 of the replica's answers against the exact top-10 of the state; queries with no
   ingestion (3 blocks); then 1,000 item upserts/s and 1,000 interactions/s into the trainer
   (producers in child processes) and 3 blocks of queries under that load. The replica's CPU
   time over the queries gives CPU per query; the trainer's ``published_records_total`` and
   sampled record sizes give the bytes replicated; answers carry ``model_version``, which against
   each ``VersionComplete.finished_ms`` gives the version switch delay at this size;
   After the queries, still under load, five ``/healthz`` calls are timed (a replica hashes its live
   ids there after every change); with ``--await-version S`` the replica's answers are then watched
   for up to S seconds for the next version (the 1M-item version switch delay);
4. reference, same run, same state, same load: the all-in-one worker (role ``worker``) answering
   from its own engine, publishing off unless ``--worker-publish`` (a worker no replica follows).

``freshness``: a trainer (``--version-every`` s between versions) and two replicas on a small
catalog; 1,000 interactions/s; probes as in ``bench/freshness.py`` asked of a replica (a new item
with a category of its own until ``include_category`` serves it; a user takes the item it is served
until the answer no longer holds it), and both replicas' ``/healthz`` versions polled against each
``VersionComplete.finished_ms``. Reference: the same item and interaction probes asked of the
all-in-one worker, same catalog and load.

``throughput``: ``bench/throughput.py``'s harness (a backlog produced once, a fresh trainer per run
reading it from the start) for the trainer with publishing on, and off
(``TOWERSTREAM_PUBLISH=false``) as the reference, alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    KeepAlive,
    Paced,
    PacedProcess,
    add_run_args,
    begin,
    build_state,
    bulk_producer,
    copy_state,
    cpu_seconds,
    fmt,
    health,
    interaction_json,
    interaction_stream,
    item_json,
    percentile,
    produce,
    rss_mib,
    scrape_metrics,
    shared_note,
    start_broker,
    start_worker,
    summarize,
    validate_samples,
    worker_settings,
    write_json,
)
from bench.freshness import InteractionProbes, ItemProbes  # noqa: E402
from bench.throughput import sample_rate  # noqa: E402
from towerstream.broker import free_port  # noqa: E402
from towerstream.settings import Settings  # noqa: E402

CLUSTERS = 16


# ----- processes -----------------------------------------------------------------------------------
def keep_logs(work: Path, name: str) -> None:
    """Copy the processes' logs out of the throw-away work dir (bench/results/logs/<name>/)."""
    from bench._common import RESULTS

    dst = RESULTS / "logs" / name
    dst.mkdir(parents=True, exist_ok=True)
    for log_file in work.glob("*.log"):
        shutil.copy(log_file, dst / log_file.name)


def start_replica(settings: Settings, log_path: Path, timeout: float = 300.0) -> tuple[Any, float, dict[str, Any]]:
    """``towerstream serve`` on ``settings``; returns (process, seconds from start to ready, health)."""
    from towerstream.replica_process import ReplicaProcess

    t0 = time.monotonic()
    r = ReplicaProcess(settings, log_path=log_path).start()
    try:
        body = r.wait_ready(timeout)
    except Exception:
        r.stop(timeout=10)
        raise
    return r, time.monotonic() - t0, body


def replica_settings(trainer: Settings) -> Settings:
    """A replica of ``trainer``'s topics: same prefix and app id, its own HTTP port."""
    return trainer.model_copy(update={"web_port": free_port()})


def wait_published(base_url: str, version: int, timeout: float) -> dict[str, Any]:
    """Until the trainer's ``/healthz`` says version ``version`` (or later) is complete."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub = health(base_url).get("published") or {}
        if (pub.get("version") or 0) >= version:
            return dict(pub)
        time.sleep(0.5)
    raise RuntimeError(f"version {version} not published in {timeout}s: {health(base_url).get('published')}")


# ----- what is on the published topics -------------------------------------------------------------
def read_topic(settings: Settings, topic: str, max_records: int | None = None, timeout: float = 60.0) -> list[Any]:
    """Records of ``topic`` from its start (all partitions), up to ``max_records``."""
    from kafka import KafkaConsumer, TopicPartition

    from producers.kafka_config import client_config

    c = KafkaConsumer(**client_config(settings, client_id="bench-meter"), group_id=None, enable_auto_commit=False,
                      fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024)
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline, empty = time.monotonic() + timeout, 0
        while time.monotonic() < deadline and empty < 3 and (max_records is None or len(out) < max_records):
            got = c.poll(timeout_ms=500, max_records=20_000)
            empty = 0 if got else empty + 1
            for recs in got.values():
                out.extend(recs)
        return out
    finally:
        c.close()


def record_bytes(r: Any) -> int:
    """Key + value bytes of one record (what a follower receives, before batch framing)."""
    return len(r.key or b"") + len(r.value or b"")


def versions_on_topic(settings: Settings) -> dict[int, dict[str, Any]]:
    """Per version on the model topic: ``VersionComplete`` fields and the model parts' bytes."""
    from towerstream.published import VERSION_KEY, VersionComplete, decode_model_part

    out: dict[int, dict[str, Any]] = {}
    for r in read_topic(settings, settings.topic("model")):
        if r.value is None:
            continue
        if r.key == VERSION_KEY:
            vc = VersionComplete.decode(r.value)
            out.setdefault(vc.version, {"part_bytes": 0}).update(
                finished_ms=vc.finished_ms, taken_ms=vc.taken_ms, items=vc.items, parts=vc.parts)
        else:
            p = decode_model_part(r.value)
            out.setdefault(p.version, {"part_bytes": 0})["part_bytes"] += record_bytes(r)
    return out


def sample_sizes(settings: Settings, topic: str, n: int) -> dict[str, Any]:
    recs = [r for r in read_topic(settings, settings.topic(topic), max_records=n) if r.value is not None]
    sizes = [record_bytes(r) for r in recs]
    return {"sampled": len(sizes), "mean_bytes": sum(sizes) / len(sizes) if sizes else None}


# ----- latency: 1M items, trainer + replica vs the all-in-one worker --------------------------------
def state_history(meta: dict[str, Any], seed: int, ts_ms: int) -> list[tuple[bytes, bytes]]:
    """The query users' interactions exactly as ``build_state`` learned them (same order, same event ids)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    items, users, query_users, hist_len = meta["items"], meta["users"], meta["query_users"], meta["hist_len"]
    per = max(items // CLUSTERS, 1)
    stream: list[tuple[str, int]] = []
    for u in range(users):  # every user, to keep the generator's sequence
        n = hist_len if u < query_users else 2
        ranks = np.minimum(rng.pareto(1.2, n).astype(np.int64), per - 1)
        stream += [(f"q{u}" if u < query_users else "", int(min(r * CLUSTERS + u % CLUSTERS, items - 1))) for r in ranks]
    out = []
    for j in rng.permutation(len(stream)).tolist():
        user, item = stream[j]
        if user:
            out.append((user.encode(), (f'{{"event_id":"b{j}","user_id":"{user}","item_id":"i{item}",'
                                        f'"kind":"click","ts":{ts_ms}}}').encode()))
    return out


def load_makers(meta: dict[str, Any], seed: int) -> tuple[Any, Any]:
    """(item upsert maker, interaction maker) for the paced load: new content for existing items;
    interactions of the state's users on its items."""
    items = meta["items"]
    up_rng = random.Random(seed * 1000 + 1)

    def upsert(n: int) -> tuple[bytes, bytes]:
        i = up_rng.randrange(items)
        return f"i{i}".encode(), item_json(f"i{i}", i % CLUSTERS, i + 1 + n, int(time.time() * 1000))

    def interaction(n: int) -> tuple[bytes, bytes]:
        return next(iter(interaction_stream(1, meta["users"], items, CLUSTERS, seed, int(time.time() * 1000),
                                            start=n, prefix="load-")))

    return upsert, interaction


def query_phase(http: KeepAlive, users: list[str], n: int, rng: random.Random,
                versions: list[tuple[float, int]] | None) -> tuple[list[float], int]:
    """``bench/query_latency.py``'s loop (k=10, seen excluded, one keep-alive connection), also
    noting each answer's ``model_version`` the first time it changes."""
    lat: list[float] = []
    errors = 0
    for _ in range(n):
        u = rng.choice(users)
        t0 = time.perf_counter()
        status, body = http.get_json(f"/recommend/{u}?k=10")
        dt = 1000 * (time.perf_counter() - t0)
        if status != 200 or body.get("source") != "model" or len(body.get("items", [])) != 10:
            errors += 1
        elif versions is not None and (not versions or versions[-1][1] != body.get("model_version")):
            versions.append((time.time(), int(body.get("model_version") or 0)))
        lat.append(dt)
    return lat, errors


def query_blocks(http: KeepAlive, users: list[str], blocks: int, n: int, rng: random.Random,
                 versions: list[tuple[float, int]] | None = None) -> list[dict[str, Any]]:
    """``blocks`` x ``n`` sequential plain queries: p50/p99 per block."""
    out = []
    for _ in range(blocks):
        lat, errors = query_phase(http, users, n, rng, versions)
        out.append({"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "errors": errors, "n": n})
    return out


def recall(http: KeepAlive, meta: dict[str, Any]) -> tuple[float, set[int]]:
    users = [f"q{u}" for u in range(meta["query_users"])]
    hits, versions = 0, set()
    for u in users:
        status, body = http.get_json(f"/recommend/{u}?k=10")
        got = {x["item_id"] for x in body.get("items", [])} if status == 200 else set()
        hits += len(got & set(meta["truth"][u]))
        if status == 200:
            versions.add(int(body.get("model_version") or 0))
    return hits / (10 * len(users)), versions


def under_load(settings: Settings, meta: dict[str, Any], args: argparse.Namespace, http: KeepAlive,
               users: list[str], rng: random.Random, pid: int, versions: list[tuple[float, int]] | None,
               trainer_url: str) -> dict[str, Any]:
    """1,000 upserts/s + 1,000 interactions/s into the trainer's topics while querying ``http``."""
    upsert, interaction = load_makers(meta, args.seed)
    ups = PacedProcess(settings, settings.topic("items"), upsert, rate=args.upsert_rate, linger_ms=5,
                       batch_size=64 * 1024)
    ints = PacedProcess(settings, settings.topic("interactions"), interaction, rate=args.interaction_rate,
                        linger_ms=5, batch_size=64 * 1024)
    m0 = scrape_metrics(trainer_url)
    h0 = health(trainer_url)
    ups.start()
    ints.start()
    t0 = time.monotonic()
    time.sleep(3.0)
    c0, tq = cpu_seconds(pid), time.monotonic()
    blocks = query_blocks(http, users, args.blocks, args.queries, rng, versions)
    q_s = time.monotonic() - tq
    cpu = cpu_seconds(pid) - c0
    # After the query blocks, load still on: what a readiness probe or a scrape costs (a replica's
    # /healthz hashes its live item ids after every change; seen taking ~1 s at 1M items).
    healthz_ms = []
    for _ in range(5):
        t1 = time.perf_counter()
        http.get_json("/healthz")
        healthz_ms.append(1000 * (time.perf_counter() - t1))
        time.sleep(0.5)
    elapsed = time.monotonic() - t0
    ups.stop()
    ints.stop()
    time.sleep(1.0)
    m1 = scrape_metrics(trainer_url)
    h1 = health(trainer_url)

    def delta(key: str) -> float:
        return m1.get(key, 0.0) - m0.get(key, 0.0)

    prefix = settings.topic_prefix
    return {
        "blocks": blocks, "p99_ms": summarize([b["p99_ms"] for b in blocks]),
        "p50_ms": summarize([b["p50_ms"] for b in blocks]),
        "errors": sum(b["errors"] for b in blocks), "queries_per_s": args.blocks * args.queries / q_s,
        "cpu_ms_per_query": 1000 * cpu / (args.blocks * args.queries), "server_cores": cpu / q_s,
        "upserts_sent_per_s": ups.achieved_rate(elapsed), "interactions_sent_per_s": ints.achieved_rate(elapsed),
        "upserts_applied": delta(f'towerstream_events_total{{topic="{prefix}.items"}}'),
        "interactions_applied": delta(f'towerstream_events_total{{topic="{prefix}.interactions"}}'),
        "trained": (h1.get("trained_total", 0) - h0.get("trained_total", 0)),
        "published_item_records": delta(f'towerstream_published_records_total{{topic="{prefix}.item-vectors"}}'),
        "published_model_records": delta(f'towerstream_published_records_total{{topic="{prefix}.model"}}'),
        "versions_published": ((h1.get("published") or {}).get("version") or 0)
        - ((h0.get("published") or {}).get("version") or 0),
        "seconds": elapsed, "loadavg": [round(x, 2) for x in os.getloadavg()], "healthz_ms": healthz_ms,
    }


def idle(http: KeepAlive, users: list[str], args: argparse.Namespace, rng: random.Random, pid: int) -> dict[str, Any]:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    blocks = query_blocks(http, users, args.blocks, args.queries, rng)
    q_s, cpu = time.monotonic() - t0, cpu_seconds(pid) - c0
    return {"blocks": blocks, "p99_ms": summarize([b["p99_ms"] for b in blocks]),
            "p50_ms": summarize([b["p50_ms"] for b in blocks]), "errors": sum(b["errors"] for b in blocks),
            "queries_per_s": args.blocks * args.queries / q_s,
            "cpu_ms_per_query": 1000 * cpu / (args.blocks * args.queries),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def cmd_latency(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    state, meta = build_state(args.items, args.users, args.query_users, 50, args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    broker = start_broker()
    users = [f"q{u}" for u in range(meta["query_users"])]
    out: dict[str, Any] = {"state": {k: v for k, v in meta.items() if k != "truth"}}
    from producers.topics import ensure_topics

    try:
        # --- trainer + replica -------------------------------------------------------------------
        prefix = f"rl{os.getpid()}"
        copy_state(state, work / "trainer")
        ts = worker_settings(broker, work / "trainer", prefix, topic_partitions=args.partitions, role="train",
                             checkpoint_every_s=3600.0, version_every_s=args.version_every)
        ensure_topics(ts)
        loader = bulk_producer(ts)
        hist = state_history(meta, args.seed, int(time.time() * 1000))
        validate_samples(hist, "interactions")
        produce(loader, ts.topic("interactions"), hist)
        loader.close()
        t0 = time.monotonic()
        trainer = start_worker(ts, work / "trainer.log", timeout=600)
        t_trainer = time.monotonic() - t0
        pub = wait_published(trainer.base_url, 1, timeout=600)
        t_first = time.monotonic() - t0
        print(f"trainer ready in {t_trainer:.0f}s; version {pub['version']} ({pub['items']:,} items) published "
              f"{t_first - t_trainer:.0f}s later", flush=True)
        assert trainer.proc is not None
        try:
            rs = replica_settings(ts)
            replica, t_boot, body = start_replica(rs, work / "replica.log", timeout=600)
            assert replica.proc is not None
            try:
                rss_ready = rss_mib(replica.proc.pid)
                cpu_boot = cpu_seconds(replica.proc.pid)  # CPU the bootstrap took: contention does not inflate it
                boot_load = [round(x, 2) for x in os.getloadavg()]
                print(f"replica bootstrap: {t_boot:.1f}s to ready, version {body.get('version')}, "
                      f"{body.get('items'):,} items, {cpu_boot:.1f} CPU-s, rss {rss_ready.get('VmRSS', 0):.0f} MiB; load {os.getloadavg()[0]:.2f}",
                      flush=True)
                http = KeepAlive(rs.web_host, rs.web_port)
                rec, rec_versions = recall(http, meta)
                rng = random.Random(args.seed)
                idle_r = idle(http, users, args, rng, replica.proc.pid)
                print(f"replica, no ingestion: p99 {fmt(idle_r['p99_ms'], ' ms', 2)}, "
                      f"{idle_r['cpu_ms_per_query']:.2f} ms CPU/query; recall@10 {rec:.3f}", flush=True)
                versions: list[tuple[float, int]] = []
                load_r = under_load(ts, meta, args, http, users, rng, replica.proc.pid, versions, trainer.base_url)
                print(f"replica, under load: p99 {fmt(load_r['p99_ms'], ' ms', 2)}, "
                      f"{load_r['cpu_ms_per_query']:.2f} ms CPU/query; {load_r['upserts_sent_per_s']:.0f} upserts/s, "
                      f"{load_r['interactions_sent_per_s']:.0f} interactions/s sent; "
                      f"{load_r['versions_published']} versions published meanwhile; /healthz under load "
                      f"{', '.join(f'{x:.0f}' for x in load_r['healthz_ms'])} ms; load {load_r['loadavg']}",
                      flush=True)
                rss_end = rss_mib(replica.proc.pid)
                if args.await_version:
                    # The version the load trained is being swept; wait for the replica to answer
                    # from it (its answers carry model_version; /healthz would hash every id).
                    deadline = time.monotonic() + args.await_version
                    while time.monotonic() < deadline:
                        _, b = http.get_json(f"/recommend/{users[0]}?k=1")
                        v = int((b or {}).get("model_version") or 0)
                        if not versions or versions[-1][1] != v:
                            versions.append((time.time(), v))
                        if v > 1:
                            break
                        time.sleep(0.1)
                http.close()
            finally:
                replica.stop(timeout=30)
        finally:
            trainer.kill()
        vinfo = versions_on_topic(ts)
        vec = sample_sizes(ts, "item-vectors", 20_000)
        inter = sample_sizes(ts, "interactions", 20_000)
        switch_delays = []
        for n, (seen_at, v) in enumerate(versions):
            fin = (vinfo.get(v) or {}).get("finished_ms")
            if fin and n > 0:  # first answer seen with a version switched to during the queries
                switch_delays.append(seen_at - fin / 1000)
        if switch_delays:
            print(f"version switch seen in answers {', '.join(f'{d:.2f}' for d in switch_delays)} s after its "
                  f"VersionComplete (versions {[v for _, v in versions]})", flush=True)
        out["replica"] = {
            "trainer_ready_s": t_trainer, "first_version_s": t_first - t_trainer, "bootstrap_s": t_boot,
            "bootstrap_cpu_s": cpu_boot, "bootstrap_loadavg": boot_load,
            "bootstrap_items": body.get("items"), "rss_ready_mib": rss_ready.get("VmRSS"),
            "rss_end_mib": rss_end.get("VmRSS"), "hwm_mib": rss_end.get("VmHWM"),
            "recall_at_10": rec, "recall_versions": sorted(rec_versions), "idle": idle_r, "load": load_r,
            "versions_seen_in_answers": versions, "version_first_answer_delay_s": switch_delays,
        }
        out["wire"] = {
            "item_vector_record": vec, "interaction_record": inter,
            "model_bytes_per_version": summarize([v["part_bytes"] for v in vinfo.values() if v.get("part_bytes")]),
            "versions": vinfo,
        }
        shutil.rmtree(work / "trainer", ignore_errors=True)

        # --- reference: the all-in-one worker, same state, same load ------------------------------
        if not args.skip_reference:
            wprefix = f"rw{os.getpid()}"
            copy_state(state, work / "worker")
            # Publishing off by default: the all-in-one worker as a deployment without replicas runs
            # it (with it on, its own 1M-item sweep runs through the "no ingestion" phase).
            wsettings = worker_settings(broker, work / "worker", wprefix, topic_partitions=args.partitions,
                                        checkpoint_every_s=3600.0, version_every_s=args.version_every,
                                        publish=args.worker_publish)
            ensure_topics(wsettings)
            t0 = time.monotonic()
            w = start_worker(wsettings, work / "worker.log", timeout=600)
            assert w.proc is not None
            try:
                t_w = time.monotonic() - t0
                http = KeepAlive(wsettings.web_host, wsettings.web_port)
                wrec, _ = recall(http, meta)
                rng = random.Random(args.seed)
                widle = idle(http, users, args, rng, w.proc.pid)
                wload = under_load(wsettings, meta, args, http, users, rng, w.proc.pid, None, w.base_url)
                wrss = rss_mib(w.proc.pid)
                http.close()
            finally:
                w.kill()
            print(f"all-in-one worker (reference): ready in {t_w:.0f}s; no ingestion p99 {fmt(widle['p99_ms'], ' ms', 2)};"
                  f" under load p99 {fmt(wload['p99_ms'], ' ms', 2)}; recall@10 {wrec:.3f}; load {wload['loadavg']}",
                  flush=True)
            out["worker"] = {"publish": args.worker_publish, "ready_s": t_w, "recall_at_10": wrec, "idle": widle, "load": wload,
                             "rss_mib": wrss.get("VmRSS")}
    finally:
        broker.stop()
        keep_logs(work, "replicas_latency")
        shutil.rmtree(work, ignore_errors=True)
    r = out["replica"]
    n_m = args.items / 1e6
    out["per_replica"] = {
        "cpu_ms_per_query_idle": r["idle"]["cpu_ms_per_query"], "cpu_ms_per_query_load": r["load"]["cpu_ms_per_query"],
        "bootstrap_s_per_million_vectors": r["bootstrap_s"] / n_m,
        "bootstrap_cpu_s_per_million_vectors": r["bootstrap_cpu_s"] / n_m, "rss_mib_per_million_items": r["rss_ready_mib"] / n_m,
        "bytes_per_item_vector_record": vec["mean_bytes"], "bytes_per_interaction_record": inter["mean_bytes"],
    }
    out["targets"] = {
        "replica_idle_p99_ms<=3": r["idle"]["p99_ms"]["median"] <= 3.0,
        "replica_load_p99_ms<=5": r["load"]["p99_ms"]["median"] <= 5.0,
        "bootstrap_s<=60": r["bootstrap_s"] <= 60.0,
    }
    print("per replica:", json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out["per_replica"].items()}))
    for k, v in out["targets"].items():
        print(f"target {k}: {'MET' if v else 'NOT MET'}")
    return out


# ----- freshness: two replicas ---------------------------------------------------------------------
class VersionWatch(threading.Thread):
    """Polls each replica's ``/healthz`` and records when it first reports each version."""

    def __init__(self, urls: list[tuple[str, int]], poll_s: float) -> None:
        super().__init__(daemon=True, name="version-watch")
        self.https = [KeepAlive(h, p) for h, p in urls]
        self.poll_s = poll_s
        self.first_seen: list[dict[int, float]] = [{} for _ in urls]
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            for n, http in enumerate(self.https):
                try:
                    _, body = http.get_json("/healthz")
                except OSError:
                    continue
                v = (body or {}).get("version")
                if v is not None and v not in self.first_seen[n]:
                    self.first_seen[n][int(v)] = time.time()
            time.sleep(self.poll_s)


def catalog_and_warmup(settings: Settings, args: argparse.Namespace, n_probe: int, tag: str) -> int:
    now_ms = int(time.time() * 1000)
    catalog = [(f"i{i}".encode(), item_json(f"i{i}", i % CLUSTERS, i, now_ms)) for i in range(args.items)]
    probe_items = [(f"px{k}".encode(), item_json(f"px{k}", k % CLUSTERS, k, now_ms, extra_category=f"pxc{k}"))
                   for k in range(n_probe)]
    validate_samples(catalog, "items")
    loader = bulk_producer(settings)
    produce(loader, settings.topic("items"), catalog + probe_items, now_ms)
    warm = list(interaction_stream(args.warmup, args.users, args.items, CLUSTERS, args.seed, now_ms, prefix=f"w{tag}-"))
    for k in range(n_probe):
        for j in range(5):
            user = f"pu{k}"
            warm.append((user.encode(), interaction_json(f"pw{tag}-{k}-{j}", user, f"i{(k + j * CLUSTERS) % args.items}",
                                                         "view", now_ms, "web")))
    validate_samples(warm, "interactions")
    n = produce(loader, settings.topic("interactions"), warm, now_ms)
    loader.close()
    return n


def wait_trained(base_url: str, trained: int, items: int, timeout: float = 240.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        h = health(base_url)
        if h.get("trained_total", 0) >= trained and h.get("items_indexed", 0) >= items:
            return h
        if time.monotonic() > deadline:
            raise RuntimeError(f"did not catch up with the warm-up: {h}")
        time.sleep(0.5)


def probe_window(settings: Settings, args: argparse.Namespace, host: str, port: int, n_probe: int, tag: str,
                 urls: list[tuple[str, int]] | None) -> dict[str, Any]:
    live = bulk_producer(settings, linger_ms=5, batch_size=64 * 1024)
    probe_prod = bulk_producer(settings, linger_ms=0, batch_size=16 * 1024)
    paced = Paced(live, settings.topic("interactions"),
                  lambda n: next(iter(interaction_stream(1, args.users, args.items, CLUSTERS, args.seed,
                                                         int(time.time() * 1000), start=n, prefix=f"l{tag}-"))),
                  rate=args.rate)
    items = ItemProbes(probe_prod, settings.topic("items"), host, port, args.item_every, args.poll_ms / 1000,
                       CLUSTERS, tag)
    inter = InteractionProbes(probe_prod, settings.topic("interactions"), host, port, args.interaction_every,
                              args.poll_ms / 1000, [(f"pu{k}", f"px{k}", f"pxc{k}") for k in range(n_probe)])
    watch = VersionWatch(urls, 0.05) if urls else None
    t0 = time.monotonic()
    paced.start()
    time.sleep(2.0)
    items.start()
    inter.start()
    if watch:
        watch.start()
    time.sleep(args.duration)
    items.stop_event.set()
    inter.stop_event.set()
    items.join(timeout=40)
    inter.join(timeout=40)
    if watch:
        watch.stop_event.set()
        watch.join(timeout=10)
    elapsed = time.monotonic() - t0
    paced.stop()
    live.close()
    probe_prod.close()
    il, xl = items.latencies_ms, inter.latencies_ms
    return {
        "item_p50_ms": percentile(il, 50), "item_p99_ms": percentile(il, 99), "item_max_ms": max(il) if il else None,
        "item_probes": len(il), "item_unseen_30s": len(items.unseen),
        "interaction_p50_ms": percentile(xl, 50), "interaction_p99_ms": percentile(xl, 99),
        "interaction_max_ms": max(xl) if xl else None, "interaction_probes": len(xl),
        "interaction_skipped": inter.skipped, "interaction_timeouts": inter.timeouts,
        "rate_sent": paced.achieved_rate(elapsed), "loadavg": [round(x, 2) for x in os.getloadavg()],
        "first_seen": watch.first_seen if watch else None,
        "item_latencies_ms": il, "interaction_latencies_ms": xl,
    }


def cmd_freshness(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    from producers.topics import ensure_topics

    work = Path(tempfile.mkdtemp(prefix="bench-replicas-fresh-"))
    broker = start_broker()
    n_probe = int(args.duration / args.interaction_every) + 5
    out: dict[str, Any] = {}
    try:
        prefix = f"rf{os.getpid()}"
        ts = worker_settings(broker, work / "trainer", prefix, topic_partitions=args.partitions, role="train",
                             version_every_s=args.version_every)
        ensure_topics(ts)
        warm = catalog_and_warmup(ts, args, n_probe, "t")
        trainer = start_worker(ts, work / "trainer.log")
        replicas = []
        try:
            wait_trained(trainer.base_url, warm, args.items + n_probe)
            v0 = wait_published(trainer.base_url, 1, timeout=120)["version"]
            if args.version_every <= 60:  # a version with the warm-up trained into it
                wait_published(trainer.base_url, v0 + 1, timeout=args.version_every + 90)
            for n in range(2):
                rs = replica_settings(ts)
                r, t_boot, _ = start_replica(rs, work / f"replica{n}.log")
                replicas.append((r, rs, t_boot))
            print(f"trainer and 2 replicas ready (bootstrap {', '.join(f'{b:.1f}s' for _, _, b in replicas)})", flush=True)
            urls = [(rs.web_host, rs.web_port) for _, rs, _ in replicas]
            res = probe_window(ts, args, urls[0][0], urls[0][1], n_probe, "t", urls)
        finally:
            for r, _, _ in replicas:
                r.stop(timeout=30)
            trainer.kill()
        vinfo = versions_on_topic(ts)
        delays: list[float] = []
        per_replica: list[dict[str, float]] = []
        for seen in res["first_seen"] or []:
            d = {}
            for v, info in vinfo.items():
                fin = info.get("finished_ms")
                if not fin or fin / 1000 < time.time() - 3600:
                    continue
                # The first poll that showed v or a later version (a replica may skip straight past v).
                at = [t for w, t in seen.items() if w >= v]
                if at and min(seen) < v:  # only versions finished after the replica was up
                    d[v] = min(at) - fin / 1000
            per_replica.append(d)
            delays += list(d.values())
        res["version_delays_s"] = per_replica
        res["version_p50_s"] = percentile(delays, 50)
        res["version_p99_s"] = percentile(delays, 99)
        res["version_max_s"] = max(delays) if delays else None
        res["version_n"] = len(delays)
        res["bootstrap_s"] = [b for _, _, b in replicas]
        # Publishing time of each version: weights taken -> VersionComplete sent (the sweep).
        res["versions"] = vinfo
        res["sweep_s"] = summarize([(i["finished_ms"] - i["taken_ms"]) / 1000 for i in vinfo.values()
                                    if i.get("finished_ms") and i.get("taken_ms")])
        out["replica"] = res
        print(f"replica: item p50 {res['item_p50_ms'] or 0:.0f} ms p99 {res['item_p99_ms'] or 0:.0f} ms "
              f"({res['item_probes']} probes, {res['item_unseen_30s']} unseen); interaction p50 "
              f"{res['interaction_p50_ms'] or 0:.0f} ms p99 {res['interaction_p99_ms'] or 0:.0f} ms "
              f"({res['interaction_probes']} probes, {res['interaction_skipped']} skipped); model version to both "
              f"replicas p50 {res['version_p50_s'] or 0:.2f} s p99 {res['version_p99_s'] or 0:.2f} s over "
              f"{res['version_n']} (version, replica) pairs; load {res['loadavg']}", flush=True)

        if not args.skip_reference:
            wprefix = f"rfw{os.getpid()}"
            ws = worker_settings(broker, work / "worker", wprefix, topic_partitions=args.partitions,
                                 version_every_s=args.version_every)
            ensure_topics(ws)
            warm = catalog_and_warmup(ws, args, n_probe, "w")
            w = start_worker(ws, work / "worker.log")
            try:
                wait_trained(w.base_url, warm, args.items + n_probe)
                ref = probe_window(ws, args, ws.web_host, ws.web_port, n_probe, "w", None)
            finally:
                w.kill()
            out["worker"] = ref
            print(f"all-in-one worker (reference): item p50 {ref['item_p50_ms'] or 0:.0f} ms p99 "
                  f"{ref['item_p99_ms'] or 0:.0f} ms; interaction p50 {ref['interaction_p50_ms'] or 0:.0f} ms p99 "
                  f"{ref['interaction_p99_ms'] or 0:.0f} ms; load {ref['loadavg']}", flush=True)
    finally:
        broker.stop()
        keep_logs(work, "replicas_freshness")
        shutil.rmtree(work, ignore_errors=True)
    r = out["replica"]
    out["targets"] = {
        "item_p99_ms<=1000": (r["item_p99_ms"] or 1e9) <= 1000 and r["item_unseen_30s"] == 0,
        "interaction_p99_ms<=1000": (r["interaction_p99_ms"] or 1e9) <= 1000 and r["interaction_timeouts"] == 0,
        "version_p99_s<=10": (r["version_p99_s"] if r["version_p99_s"] is not None else 1e9) <= 10,
    }
    for k, v in out["targets"].items():
        print(f"target {k}: {'MET' if v else 'NOT MET'}")
    return out


# ----- throughput: the trainer with and without publishing ---------------------------------------
def trainer_run(broker: Any, prefix: str, run: int, args: argparse.Namespace, total: int, work: Path,
                publish: bool) -> dict[str, Any]:
    data = work / f"trainer{run}{'p' if publish else 'n'}"
    app = f"{prefix}-t{run}{'p' if publish else 'n'}"
    settings = worker_settings(broker, data, prefix, app_id=app, topic_partitions=args.partitions,
                               checkpoint_every_s=30.0, role="train", publish=publish,
                               version_every_s=args.version_every)
    t_start = time.monotonic()
    w = start_worker(settings, work / f"{app}.log")
    assert w.proc is not None
    try:
        def read() -> int | None:
            b = health(w.base_url)
            return int(b["trained_total"] - b.get("untrained_events", 0)) if "trained_total" in b else None

        def ready() -> bool:
            return health(w.base_url).get("items_indexed", 0) >= args.items

        m0 = scrape_metrics(w.base_url)
        res = sample_rate(read, total, args.warmup, args.duration, ready, pid=w.proc.pid)
        m1 = scrape_metrics(w.base_url)
        res["startup_s"] = time.monotonic() - t_start
        res["rss_mib"] = rss_mib(w.proc.pid).get("VmRSS")
        key = f'towerstream_published_records_total{{topic="{prefix}.item-vectors"}}'
        res["published_item_records"] = m1.get(key, 0.0)
        res["versions"] = (health(w.base_url).get("published") or {}).get("version")
        res["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        del m0
    finally:
        w.stop(timeout=60)
        shutil.rmtree(data, ignore_errors=True)
    return res


def cmd_throughput(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    from producers.topics import ensure_topics

    work = Path(tempfile.mkdtemp(prefix="bench-replicas-tp-"))
    broker = start_broker()
    prefix = f"rt{os.getpid()}"
    on: list[dict[str, Any]] = []
    off: list[dict[str, Any]] = []
    try:
        settings = worker_settings(broker, work / "unused", prefix, topic_partitions=args.partitions)
        ensure_topics(settings)
        now_ms = int(time.time() * 1000)
        items = [(f"i{i}".encode(), item_json(f"i{i}", i % CLUSTERS, i, now_ms)) for i in range(args.items)]
        validate_samples(items, "items")
        prod = bulk_producer(settings)
        produce(prod, settings.topic("items"), items, now_ms)
        total = produce(prod, settings.topic("interactions"),
                        interaction_stream(args.events, args.users, args.items, CLUSTERS, args.seed, now_ms), now_ms)
        prod.close()
        for run in range(args.runs):
            for publish, into in ((True, on), (False, off)):
                r = trainer_run(broker, prefix, run, args, total, work, publish)
                into.append(r)
                print(f"run {run}: trainer, publish={'on' if publish else 'off'}: {r['rate']:,.0f}/s over "
                      f"{r['seconds']:.0f}s (slowest 1 s {r['min_1s_rate'] or 0:,.0f}/s; {r['cores_used'] or 0:.2f} "
                      f"cores; {r['events_per_cpu_s'] or 0:,.0f} events/CPU-s; versions {r['versions']}); load "
                      f"{r['loadavg']}", flush=True)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = {"publish_on": summarize([r["rate"] for r in on]), "publish_off": summarize([r["rate"] for r in off]),
           "publish_on_per_cpu_s": summarize([r["events_per_cpu_s"] for r in on]),
           "publish_off_per_cpu_s": summarize([r["events_per_cpu_s"] for r in off]), "runs_on": on, "runs_off": off}
    out["targets"] = {"trainer_publish_on>=5000/s": (out["publish_on"]["median"] or 0) >= 5000}
    print(f"trainer, publishing on:  {fmt(out['publish_on'], '/s', 0)}; {fmt(out['publish_on_per_cpu_s'], ' per CPU-s', 0)}")
    print(f"trainer, publishing off: {fmt(out['publish_off'], '/s', 0)} (reference); "
          f"{fmt(out['publish_off_per_cpu_s'], ' per CPU-s', 0)}")
    for k, v in out["targets"].items():
        print(f"target {k}: {'MET' if v else 'NOT MET'}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    lat = sub.add_parser("latency", help="1M items: bootstrap, query p99 idle and under load, per-replica costs")
    lat.add_argument("--items", type=int, default=1_000_000)
    lat.add_argument("--users", type=int, default=100_000)
    lat.add_argument("--query-users", type=int, default=1000)
    lat.add_argument("--blocks", type=int, default=3, help="query blocks per phase (p99 per block, median reported)")
    lat.add_argument("--queries", type=int, default=1000, help="queries per block")
    lat.add_argument("--upsert-rate", type=float, default=1000.0)
    lat.add_argument("--interaction-rate", type=float, default=1000.0)
    lat.add_argument("--version-every", type=float, default=30.0, help="TOWERSTREAM_VERSION_EVERY_S (default: the setting's)")
    lat.add_argument("--partitions", type=int, default=4)
    lat.add_argument("--skip-reference", action="store_true")
    lat.add_argument("--await-version", type=float, default=0.0,
                     help="after the load, wait up to this many seconds for the replica to switch to the next version")
    lat.add_argument("--worker-publish", action="store_true",
                     help="the reference worker publishes too (TOWERSTREAM_PUBLISH=true, the setting's default)")
    fr = sub.add_parser("freshness", help="2 replicas: new item, interaction and model version freshness")
    fr.add_argument("--duration", type=float, default=90.0)
    fr.add_argument("--rate", type=float, default=1000.0)
    fr.add_argument("--items", type=int, default=20_000)
    fr.add_argument("--users", type=int, default=5000)
    fr.add_argument("--warmup", type=int, default=20_000)
    fr.add_argument("--item-every", type=float, default=0.5)
    fr.add_argument("--interaction-every", type=float, default=1.0)
    fr.add_argument("--poll-ms", type=float, default=20.0)
    fr.add_argument("--version-every", type=float, default=30.0, help="TOWERSTREAM_VERSION_EVERY_S (default: the setting's)")
    fr.add_argument("--partitions", type=int, default=4)
    fr.add_argument("--skip-reference", action="store_true")
    tp = sub.add_parser("throughput", help="trainer interactions/s with publishing on and off")
    tp.add_argument("--runs", type=int, default=2)
    tp.add_argument("--duration", type=float, default=45.0)
    tp.add_argument("--events", type=int, default=600_000)
    tp.add_argument("--warmup", type=int, default=20_000)
    tp.add_argument("--items", type=int, default=20_000)
    tp.add_argument("--users", type=int, default=50_000)
    tp.add_argument("--partitions", type=int, default=4)
    tp.add_argument("--version-every", type=float, default=30.0)
    for p in (lat, fr, tp):
        add_run_args(p)
    args = ap.parse_args()
    t0 = time.monotonic()
    env = begin(args.seed)
    result = {"latency": cmd_latency, "freshness": cmd_freshness, "throughput": cmd_throughput}[args.cmd](args, env)
    payload = {"benchmark": f"replicas_{args.cmd}", "env": env, "params": vars(args) | {"out": str(args.out)},
               **result, "wall_s": time.monotonic() - t0}
    suffix = f"_{args.items}" if args.cmd == "latency" else ""
    write_json(f"replicas_{args.cmd}{suffix}", payload, args.out)
    print(shared_note(payload["env"]), f"; wall {payload['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
