"""The one settings object, read from ``TOWERSTREAM_*`` environment variables.

Built at entry points only (CLI, Faust app, benchmarks); core classes take
plain values or their own small frozen configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Defaults work on a laptop: embedded broker, ./data, port 6066 on loopback."""

    model_config = SettingsConfigDict(env_prefix="TOWERSTREAM_", env_file=None, frozen=True)

    # Kafka
    kafka_bootstrap: str | None = Field(
        default=None,
        description="Kafka bootstrap servers, host:port[,host:port]; unset: `towerstream worker`/`demo` start "
        "the embedded Tansu broker (memory only) on 127.0.0.1:`EMBEDDED_BROKER_PORT`, or reuse one listening there",
    )
    embedded_broker_port: int = Field(default=9092, description="port of the embedded broker (when "
                                      "`KAFKA_BOOTSTRAP` is unset)")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="how every client (Faust, aiokafka, kafka-python) talks to the brokers")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism, for the `SASL_*` protocols")
    sasl_username: str | None = Field(default=None, description="SASL user, for the `SASL_*` protocols")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password, for the `SASL_*` protocols")
    ssl_cafile: str | None = Field(default=None, description="CA bundle (PEM) for `SSL`/`SASL_SSL`")
    ssl_certfile: str | None = Field(default=None, description="client certificate (PEM) for `SSL`/`SASL_SSL`")
    ssl_keyfile: str | None = Field(default=None, description="client key (PEM) for `SSL`/`SASL_SSL`")

    # Topics
    topic_prefix: str = Field(default="towerstream", description="topics are `<prefix>.interactions`, "
                              "`<prefix>.items` and so on")
    topic_partitions: int = Field(default=4, description="partitions of the topics towerstream creates")
    topic_replication: int = Field(default=1, description="replication factor of the topics towerstream creates")

    # Faust worker
    app_id: str = Field(default="towerstream", description="Faust app id: names the consumer groups "
                        "(`<app_id>`, `<app_id>-interactions`, `<app_id>-items`, `<app_id>-replicas`)")
    data_dir: Path = Field(default=Path("./data"), description="RocksDB, checkpoints and Faust data of the worker; "
                           "a worker started on the same directory reloads them")
    web_host: str = Field(default="127.0.0.1", description="address the HTTP API binds to (loopback unless "
                          "you say otherwise)")
    web_port: int = Field(default=6066, description="port of the HTTP API (`/recommend`, event intake, "
                          "`/healthz`, `/metrics`)")
    broker_session_timeout: float = Field(default=60.0, description="consumer group session timeout (s); "
                                          "the embedded broker uses 6")
    broker_heartbeat_interval: float = Field(default=3.0, description="consumer group heartbeat interval (s); "
                                             "the embedded broker uses 2")
    consumer_max_fetch_wait_ms: int = Field(default=50, description="longest wait of a fetch for data (ms): "
                                            "bounds event latency (Faust hard-codes 1500 ms; we override it)")
    log_level: str = Field(default="info", description="log level of the worker and the CLI")
    log_json: bool = Field(default=True, description="the worker logs JSON lines (false: console lines, "
                           "coloured only on a terminal)")
    interactions_consumer: Literal["batch", "faust"] = Field(
        default="batch",
        description="how the worker reads the interactions topic. `batch`: record batches straight from an "
        "aiokafka consumer in its own group `<app_id>-interactions`, no per-event Faust objects "
        "(streams/batch_consumer.py; offsets committed per partition after the durable write). `faust`: a Faust "
        "agent in Faust's group; its per-event machinery costs ~200-400 us of Python per event. Switching an "
        "existing deployment re-reads from that group's committed offsets; event ids make the re-read harmless",
    )
    items_consumer: Literal["batch", "faust"] = Field(
        default="batch",
        description="how the items topic is read. `batch`: record batches from an aiokafka consumer in its own "
        "group `<app_id>-items`, decoded and applied on the items thread; the worker is ready only once it has "
        "caught up with the topic. `faust`: an agent in Faust's group, with Faust's per-event work on its event "
        "loop (readiness does not wait for items)",
    )
    items_fetch_min_bytes: int = Field(
        default=1,
        description="the items reader's fetch waits (up to `CONSUMER_MAX_FETCH_WAIT_MS`) for this many bytes: "
        "65536 gives fewer, larger batches and ~10% less ingestion CPU at 1,000 upserts/s, but on Tansu "
        "(fetches wait their whole wait) added ~40 ms to item freshness p50",
    )

    # Micro-batching and model cadence
    batch_max: int = Field(
        default=512,
        description="micro-batch size: interactions per commit and train step. Interactions are shown to "
        "serving (history, seen items, so the user vector) when they are durable, before their train step "
        "(`EngineConfig.visible_at_commit`)",
    )
    batch_within_s: float = Field(default=0.05, description="longest wait for a micro-batch to fill (s)")
    train_batch_max: int = Field(
        default=2048,
        description="committed interaction batches that queued while a train step ran are merged into one step "
        "of at most this many events (a backlog trains in larger, cheaper steps; light traffic does not queue). "
        "A merged step of more than 1,024 events takes one gradient step instead of two, with in-batch "
        "negatives drawn within blocks of 1,024 rows (`TowerConfig.single_step_above`, `in_batch_block`): a "
        "backlog is caught up faster, live 512-event batches train as before",
    )
    train_merge_after: int = Field(
        default=20_000,
        description="...but only once the model has learned this many interactions: a fresh model needs many "
        "small steps (merged, a 6,000-event backlog took ~6 steps and left a new worker undertrained)",
    )
    train_queue_max: int = Field(default=4096, description="committed-but-untrained interactions at most; "
                                 "intake waits beyond (bounds the replay after a crash)")
    ordering: Literal["arrival", "event_time"] = Field(
        default="arrival",
        description="`arrival`: apply each micro-batch as it comes (live). `event_time`: stage durably and apply "
        "in (event time, topic, partition, offset) order once input is idle for `ORDERING_IDLE_S`: "
        "deterministic (same recording, same seed, CPU: the same model and index bit for bit), for replays "
        "and backfills, not for live serving latency",
    )
    ordering_idle_s: float = Field(default=1.0, description="with `ORDERING=event_time`: input idle this long "
                                   "(s) before staged events are applied")
    checkpoint_every_s: float = Field(default=30.0, description="checkpoint cadence (s): towers, optimizer, "
                                      "index and engine state; also written at shutdown")
    checkpoint_max_replay_s: float = Field(
        default=4.0,
        description="also checkpoint once this many seconds of training are unsaved: a restart replays about "
        "that much training before its first new event (0 turns the bound off)",
    )
    reembed_every_s: float = Field(default=300.0, description="full catalog re-embedding cadence (s), each "
                                   "followed by a re-fit of the IVF lists (off the training thread)")
    stall_after_s: float = Field(
        default=60.0, gt=0,
        description="a partition this worker reads is reported stalled (`/healthz` 503, "
        "`stalled:<topic>:<partition>`) once it has records to read (lag > 0) and its next offset has not moved "
        "for this many seconds; the condition clears as soon as it moves or catches up",
    )
    faust_metrics: bool = Field(
        default=False,
        description="also export Faust's own Prometheus sensor (`towerstream_faust_*`: per-topic, per-stream "
        "counters and latencies) on `/metrics`. It runs on every event and cost ~10% of the event loop at "
        "1,500 events/s; towerstream's per-batch metrics are there either way",
    )
    gil_switch_interval_ms: float = Field(
        default=0.5,
        description="Python's GIL switch interval in the worker and in a serving replica (ms). In the "
        "all-in-one worker serving, intake and training share one process, in a replica queries and applying "
        "what it follows: a query waiting for the GIL waits up to this long at each hand-over, and a query "
        "hands over several times (CPython's default is 5 ms)",
    )

    # Model
    embedding_dim: int = Field(default=64, description="size of the user and item vectors")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="where the towers train "
                                                   "(`auto`: CUDA when available)")
    seed: int = Field(default=0, description="model seed: same seed, same recording, same model")
    history_len: int = Field(default=50, description="recent interactions of a user that the user tower reads")
    index_kind: Literal["auto", "flat", "ivf"] = Field(
        default="auto",
        description="`flat`: exact scan, O(N) deletes. `ivf`: O(1) upserts; an exact scan until ~24k items, then "
        "IVF lists, re-fit after each full re-embedding (recall@10 0.978 at 100k, 0.993 at 1M in "
        "docs/benchmarks.md). `auto` is `ivf` for the worker's expected catalog of 100k items",
    )

    # Serving
    default_k: int = Field(default=10, description="list length when a request gives no `k`")
    max_k: int = Field(default=500, description="largest `k` a request may ask for (beyond: 4xx)")
    api_token: SecretStr | None = Field(default=None, description="bearer token the write endpoints require "
                                        "(and reads, with `PROTECT_READS`); unset: none")
    protect_reads: bool = Field(default=False, description="with `API_TOKEN`: reads need the token too "
                                "(`/healthz` and `/metrics` stay open)")
    max_request_bytes: int = Field(default=1_000_000, description="largest HTTP request body (beyond: 413)")

    # Compression and unreadable record batches
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="none",
        description="codec of every record batch towerstream produces (CLI, replay, HTTP intake, dead letters, "
        "drift reports, recommend responses). Every consumer reads all of them whatever this says",
    )
    unreadable_batches: Literal["stall", "skip"] = Field(
        default="stall",
        description="what a batch reader does with a record batch it cannot decode (bad CRC, unknown codec): "
        "`stall` stops that partition at the batch's offset (`/healthz` 503 names it) until an operator acts; "
        "`skip` dead-letters the batch's raw bytes and reads on after it (docs/operations.md)",
    )

    # Stopping and outages
    stop_timeout_s: float = Field(
        default=20.0, gt=0,
        description="a stopping worker (SIGTERM/SIGINT) exits at most this long after the signal, whatever it "
        "waits for; its final checkpoint comes first. Below Kubernetes' default 30 s grace",
    )
    stop_broker_wait_s: float = Field(
        default=5.0, gt=0,
        description="each step of a stop that needs the broker (a group's last commit and leave, the "
        "producer's flush) waits at most this long: with the broker gone the stop still ends in time",
    )
    log_repeat_window_s: float = Field(
        default=10.0, ge=0,
        description="warnings and errors that repeat (same logger, same message template) are logged once per "
        "this many seconds, the next one saying how many were suppressed: a broker outage then costs a few "
        "lines every few seconds instead of hundreds a second. 0 logs every one",
    )

    # Train once, serve anywhere (towerstream.published)
    role: Literal["worker", "train"] = Field(
        default="worker",
        description="what this worker does. `worker`: trains and answers `/recommend` and the request stream "
        "from its own index (one process, the laptop default). `train`: trains and publishes only; serving "
        "replicas (`towerstream serve`) answer",
    )
    train_nice: int = Field(
        default=10, ge=0, le=19,
        description="CPU niceness the `train` role gives itself at start (Linux `nice`; 0 leaves it). Training "
        "can wait a few milliseconds and a query cannot: where a trainer shares cores with serving replicas "
        "(`demo --replicas`, a small host) the scheduler then runs a query ahead of training; on cores of its "
        "own the trainer loses nothing. The all-in-one `worker` role serves, so it never lowers itself",
    )
    publish: bool = Field(
        default=True,
        description="publish item vectors and model versions to `<prefix>.item-vectors` and `<prefix>.model` "
        "for serving replicas. Off: nothing is published and no replica can follow this trainer",
    )
    version_every_s: float = Field(
        default=30.0, gt=0,
        description="a new model version is taken this long (s) after the last one finished, when the towers "
        "have trained since; each version republishes every live item's vector, so this bounds replicas' "
        "staleness against the cost of a full sweep. The wait is at least twice the last version's publishing "
        "time, so sweeps of a large catalog never run back to back",
    )

    @property
    def engine_dir(self) -> Path:
        """The engine's RocksDB and checkpoints, inside ``data_dir``."""
        return Path(self.data_dir) / "engine"

    def has_state(self) -> bool:
        """Whether a worker started now reloads state (the CLI says so before the worker does)."""
        return self.engine_dir.is_dir() and any(self.engine_dir.iterdir())

    @property
    def compression_type(self) -> str | None:
        """``producer_compression`` as the Kafka clients spell it (``None``: uncompressed)."""
        return None if self.producer_compression == "none" else self.producer_compression

    def topic(self, name: str) -> str:
        """Full topic name, e.g. ``topic("interactions") -> "towerstream.interactions"``."""
        return f"{self.topic_prefix}.{name}"

    @property
    def bootstrap(self) -> str:
        """The address clients connect to (embedded broker when none is configured)."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.embedded_broker_port}"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None


TOPIC_NAMES = (
    "interactions",
    "items",
    "users",
    "dead-letters",
    "drift-metrics",
    "recommend-requests",
    "recommend-responses",
    "item-vectors",
    "model",
)

#: Topics whose latest record per key is the state (the published ones): created compacted.
COMPACTED_TOPICS = ("item-vectors", "model")


def get_settings() -> Settings:
    return Settings()
