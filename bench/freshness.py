"""Freshness: Kafka timestamp -> the moment ``/recommend`` reflects it, while interactions flow.

    .venv/bin/python bench/freshness.py                  # 3 runs x 45 s at 1,000 interactions/s
    .venv/bin/python bench/freshness.py --runs 3 --duration 45 --rate 1000 --items 5000

Each run: a fresh worker process on its own topics (one Tansu broker for all runs), a catalog
of ``--items`` items and some warm-up history, then interactions produced at ``--rate``/s with
the current time, and two kinds of probes, both answered by the real serving path
(``GET /recommend`` over HTTP, user tower + Faiss search + filters + seen exclusion):

- **Item freshness**: every ``--item-every`` s a new item with a category of its own is produced
  (Kafka timestamp = send time). A poller asks ``/recommend/u1?k=1&include_category=<that
  category>&exclude_seen=false`` every ``--poll-ms`` until the answer holds the item: the
  latency is the response's arrival minus the Kafka timestamp.
- **Interaction freshness**: every ``--interaction-every`` s a probe user who has history but has
  never taken item X (an item with a category of its own) first gets X in
  ``/recommend/<user>?k=1&include_category=<X's category>`` (exclude_seen on); then an
  interaction (user, X) is produced and the poller waits for a model answer without X: X is
  excluded only once the user's history and seen items hold the event, which is also what
  their user vector is computed from (history and seen are updated together, under the
  engine lock, right after the train step). Offsets are committed on their own 1 s cadence:
  serving never waits for them.

Reference in the same run: the worker's own figure, ``towerstream_upsert_lag_seconds`` (event
time -> index upsert), which leaves out the HTTP path; and the anchors named in the issue
(Ekko: 2.4 s model update; Milvus: 5 s default staleness). Probe cost is reported too: a
not-found probe widens the filtered search over the whole catalog.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    add_run_args,
    begin,
    KeepAlive,
    Paced,
    bulk_producer,
    cpu_seconds,
    fmt,
    health,
    interaction_json,
    interaction_stream,
    item_json,
    percentile,
    produce,
    scrape_metrics,
    shared_note,
    start_broker,
    start_worker,
    summarize,
    validate_samples,
    worker_settings,
    write_json,
)


class ItemProbes(threading.Thread):
    """Produce a new item every `every` s; poll /recommend until each one is served."""

    def __init__(self, producer: Any, topic: str, host: str, port: int, every: float, poll_s: float,
                 clusters: int, tag: str) -> None:
        super().__init__(daemon=True, name="item-probes")
        self.producer, self.topic, self.every, self.poll_s, self.clusters, self.tag = (
            producer, topic, every, poll_s, clusters, tag)
        self.http = KeepAlive(host, port)
        self.stop_event = threading.Event()
        self.latencies_ms: list[float] = []
        self.polls = 0
        self.poll_seconds = 0.0
        self.sent = 0
        self.unseen: list[str] = []

    def run(self) -> None:
        pending: dict[str, tuple[str, float]] = {}  # item id -> (category, kafka ts in s)
        next_at = time.time()
        while not self.stop_event.is_set() or pending:
            now = time.time()
            if not self.stop_event.is_set() and now >= next_at:
                n = self.sent
                item, cat = f"fresh-{self.tag}-{n}", f"fresh-{self.tag}-{n}"
                ts_ms = int(time.time() * 1000)
                self.producer.send(self.topic, key=item.encode(),
                                   value=item_json(item, n % self.clusters, n, ts_ms, extra_category=cat),
                                   timestamp_ms=ts_ms)
                self.producer.flush(timeout=10)  # hand it to the broker now, as a live producer with linger 0 would
                pending[item] = (cat, ts_ms / 1000)
                self.sent += 1
                next_at += self.every
            for item, (cat, ts) in list(pending.items()):
                t0 = time.perf_counter()
                status, body = self.http.get_json(f"/recommend/u1?k=1&exclude_seen=false&include_category={quote(cat)}")
                t1 = time.time()
                self.poll_seconds += time.perf_counter() - t0
                self.polls += 1
                if status == 200 and any(x["item_id"] == item for x in body.get("items", [])):
                    self.latencies_ms.append(1000 * (t1 - ts))
                    del pending[item]
                elif t1 - ts > 30:
                    self.unseen.append(item)
                    del pending[item]
            time.sleep(self.poll_s)


class InteractionProbes(threading.Thread):
    """One probe at a time: user takes item X; poll until X is excluded from their model answer."""

    def __init__(self, producer: Any, topic: str, host: str, port: int, every: float, poll_s: float,
                 probes: list[tuple[str, str, str]]) -> None:
        super().__init__(daemon=True, name="interaction-probes")
        self.producer, self.topic, self.every, self.poll_s = producer, topic, every, poll_s
        self.probes = probes  # (user, item, category)
        self.http = KeepAlive(host, port)
        self.stop_event = threading.Event()
        self.latencies_ms: list[float] = []
        self.skipped = 0
        self.timeouts = 0

    def _answer(self, user: str, cat: str) -> tuple[int, Any]:
        return self.http.get_json(f"/recommend/{user}?k=1&include_category={quote(cat)}")

    def run(self) -> None:
        for n, (user, item, cat) in enumerate(self.probes):
            if self.stop_event.wait(self.every if n else 0.0):
                return
            status, body = self._answer(user, cat)
            if status != 200 or body.get("source") != "model" or [x["item_id"] for x in body["items"]] != [item]:
                self.skipped += 1  # the precondition (X served to this user before the event) does not hold
                continue
            ts_ms = int(time.time() * 1000)
            self.producer.send(self.topic, key=user.encode(),
                               value=interaction_json(f"probe-{user}-{item}", user, item, "click", ts_ms, "web"),
                               timestamp_ms=ts_ms)
            self.producer.flush(timeout=10)
            while True:
                time.sleep(self.poll_s)
                status, body = self._answer(user, cat)
                t1 = time.time()
                if status == 200 and body.get("source") == "model" and \
                        all(x["item_id"] != item for x in body["items"]):
                    self.latencies_ms.append(1000 * t1 - ts_ms)
                    break
                if t1 * 1000 - ts_ms > 30_000:
                    self.timeouts += 1
                    break


def one_run(broker: Any, run: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    prefix = f"fr{os.getpid()}r{run}"
    data = work / f"worker{run}"
    settings = worker_settings(broker, data, prefix, topic_partitions=args.partitions)
    from producers.topics import ensure_topics

    ensure_topics(settings)
    now_ms = int(time.time() * 1000)
    n_probe = int(args.duration / args.interaction_every) + 5
    catalog = [(f"i{i}".encode(), item_json(f"i{i}", i % args.clusters, i, now_ms)) for i in range(args.items)]
    probe_items = [(f"px{k}".encode(), item_json(f"px{k}", k % args.clusters, k, now_ms, extra_category=f"pxc{k}"))
                   for k in range(n_probe)]
    validate_samples(catalog, "items")
    loader = bulk_producer(settings)
    produce(loader, settings.topic("items"), catalog + probe_items, now_ms)
    warm = list(interaction_stream(args.warmup, args.users, args.items, args.clusters, args.seed + run, now_ms,
                                   prefix=f"w{run}-"))
    # Probe users get some history (items of their cluster), never their probe item.
    for k in range(n_probe):
        for j in range(5):
            user = f"pu{k}"
            warm.append((user.encode(), interaction_json(f"pw{run}-{k}-{j}", user, f"i{(k + j * args.clusters) % args.items}",
                                                         "view", now_ms, "web")))
    validate_samples(warm, "interactions")
    total_warm = produce(loader, settings.topic("interactions"), warm, now_ms)
    loader.close()

    w = start_worker(settings, work / f"worker{run}.log")
    try:
        deadline = time.monotonic() + 180
        while True:
            h = health(w.base_url)
            if h.get("trained_total", 0) >= total_warm and h.get("items_indexed", 0) >= args.items + n_probe:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not catch up with the warm-up: {h}")
            time.sleep(0.5)
        m0 = scrape_metrics(w.base_url)
        # Live traffic: its own producers (linger 5 ms, like EventProducer), so probes are not queued behind it.
        live = bulk_producer(settings, linger_ms=5, batch_size=64 * 1024)
        probe_prod = bulk_producer(settings, linger_ms=0, batch_size=16 * 1024)
        paced = Paced(live, settings.topic("interactions"),
                      lambda n: next(iter(interaction_stream(1, args.users, args.items, args.clusters, args.seed,
                                                             int(time.time() * 1000), start=n, prefix=f"l{run}-"))),
                      rate=args.rate)
        items = ItemProbes(probe_prod, settings.topic("items"), settings.web_host, settings.web_port,
                           args.item_every, args.poll_ms / 1000, args.clusters, f"{run}")
        inter = InteractionProbes(probe_prod, settings.topic("interactions"), settings.web_host, settings.web_port,
                                  args.interaction_every, args.poll_ms / 1000,
                                  [(f"pu{k}", f"px{k}", f"pxc{k}") for k in range(n_probe)])
        assert w.proc is not None
        c0, t0, n0 = cpu_seconds(w.proc.pid), time.monotonic(), h["trained_total"]
        paced.start()
        time.sleep(2.0)  # traffic first, then probes
        items.start()
        inter.start()
        time.sleep(args.duration)
        items.stop_event.set()
        inter.stop_event.set()
        items.join(timeout=40)
        inter.join(timeout=40)
        elapsed = time.monotonic() - t0
        paced.stop()
        h1 = health(w.base_url)
        cpu = cpu_seconds(w.proc.pid) - c0
        m1 = scrape_metrics(w.base_url)
    finally:
        w.stop(timeout=60)
        shutil.rmtree(data, ignore_errors=True)

    def lag_hist(m: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in m.items() if k.startswith("towerstream_upsert_lag_seconds_bucket")}

    b0, b1 = lag_hist(m0), lag_hist(m1)
    buckets = sorted(((float(k.split('le="')[1].split('"')[0]), b1[k] - b0.get(k, 0.0)) for k in b1),
                     key=lambda x: x[0])
    total = buckets[-1][1] if buckets else 0.0

    def bucket_q(q: float) -> float | None:
        for le, c in buckets:
            if total and c >= q * total:
                return le * 1000
        return None

    il, xl = items.latencies_ms, inter.latencies_ms
    res = {
        "item_p50_ms": percentile(il, 50), "item_p99_ms": percentile(il, 99), "item_max_ms": max(il) if il else None,
        "item_probes": len(il), "item_unseen_30s": len(items.unseen),
        "interaction_p50_ms": percentile(xl, 50), "interaction_p99_ms": percentile(xl, 99),
        "interaction_max_ms": max(xl) if xl else None, "interaction_probes": len(xl),
        "interaction_skipped": inter.skipped, "interaction_timeouts": inter.timeouts,
        "rate_sent": paced.achieved_rate(elapsed), "producer_behind_max_s": paced.behind_max,
        "rate_trained": (h1.get("trained_total", 0) - n0) / elapsed,
        "worker_cores_used": cpu / elapsed,
        "probe_poll_ms_mean": 1000 * items.poll_seconds / max(items.polls, 1), "probe_polls": items.polls,
        "upsert_lag_bucket_p50_ms": bucket_q(0.5), "upsert_lag_bucket_p99_ms": bucket_q(0.99),
        "item_latencies_ms": il, "interaction_latencies_ms": xl,
    }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=45.0, help="probing window per run (s)")
    ap.add_argument("--rate", type=float, default=1000.0, help="interactions/s produced during the window")
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--clusters", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=20_000, help="interactions trained before probing")
    ap.add_argument("--item-every", type=float, default=0.5)
    ap.add_argument("--interaction-every", type=float, default=1.0)
    ap.add_argument("--poll-ms", type=float, default=20.0)
    ap.add_argument("--partitions", type=int, default=4)
    add_run_args(ap)
    args = ap.parse_args()

    t_begin = time.monotonic()
    env = begin(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-freshness-"))
    broker = start_broker()
    runs: list[dict[str, Any]] = []
    try:
        for run in range(args.runs):
            r = one_run(broker, run, args, work)
            runs.append(r)
            print(f"run {run}: item p50 {r['item_p50_ms'] or 0:.0f} ms p99 {r['item_p99_ms'] or 0:.0f} ms "
                  f"({r['item_probes']} items); interaction p50 {r['interaction_p50_ms'] or 0:.0f} ms "
                  f"p99 {r['interaction_p99_ms'] or 0:.0f} ms ({r['interaction_probes']} probes, "
                  f"{r['interaction_skipped']} skipped); interactions sent {r['rate_sent']:.0f}/s, trained "
                  f"{r['rate_trained']:.0f}/s; worker {r['worker_cores_used']:.2f} cores; probe poll "
                  f"{r['probe_poll_ms_mean']:.1f} ms", flush=True)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    keys = ("item_p50_ms", "item_p99_ms", "interaction_p50_ms", "interaction_p99_ms", "rate_sent", "rate_trained",
            "upsert_lag_bucket_p50_ms", "upsert_lag_bucket_p99_ms", "probe_poll_ms_mean", "worker_cores_used")
    summary = {k: summarize([r[k] for r in runs]) for k in keys}
    pooled_items = [x for r in runs for x in r["item_latencies_ms"]]
    pooled_inter = [x for r in runs for x in r["interaction_latencies_ms"]]
    pooled = {"item_p50_ms": percentile(pooled_items, 50), "item_p99_ms": percentile(pooled_items, 99),
              "item_n": len(pooled_items), "interaction_p50_ms": percentile(pooled_inter, 50),
              "interaction_p99_ms": percentile(pooled_inter, 99), "interaction_n": len(pooled_inter)}
    targets = {"item_p50_ms": 200.0, "item_p99_ms": 1000.0, "interaction_p99_ms": 2400.0}
    print(f"item freshness:        p50 {fmt(summary['item_p50_ms'], ' ms', 0)}, p99 {fmt(summary['item_p99_ms'], ' ms', 0)}"
          f" median (min-max) over {len(runs)} runs; pooled p50 {pooled['item_p50_ms'] or 0:.0f} ms, p99 "
          f"{pooled['item_p99_ms'] or 0:.0f} ms over {pooled['item_n']} items")
    print(f"interaction freshness: p50 {fmt(summary['interaction_p50_ms'], ' ms', 0)}, p99 "
          f"{fmt(summary['interaction_p99_ms'], ' ms', 0)}; pooled p50 {pooled['interaction_p50_ms'] or 0:.0f} ms,"
          f" p99 {pooled['interaction_p99_ms'] or 0:.0f} ms over {pooled['interaction_n']} probes")
    print(f"reference (worker-side event time -> index upsert, histogram buckets): p50 <= "
          f"{fmt(summary['upsert_lag_bucket_p50_ms'], ' ms', 0)}, p99 <= {fmt(summary['upsert_lag_bucket_p99_ms'], ' ms', 0)};"
          f" anchors: Ekko 2,400 ms model update, Milvus 5,000 ms default staleness")
    print(f"load: interactions sent {fmt(summary['rate_sent'], '/s', 0)}, trained {fmt(summary['rate_trained'], '/s', 0)}")
    for k, t in targets.items():
        v = summary[k]["median"]
        print(f"target {k} <= {t:.0f}: {'MET' if v is not None and v <= t else 'NOT MET'} (median {v or 0:.0f})")
    payload = {"benchmark": "freshness", "env": env, "params": vars(args) | {"out": str(args.out)},
               "summary": summary, "pooled": pooled, "targets_ms": targets, "runs": runs,
               "wall_s": time.monotonic() - t_begin}
    write_json("freshness", payload, args.out)
    print(shared_note(payload["env"]), f"; wall {payload['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
