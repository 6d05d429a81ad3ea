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
        description="host:port[,host:port]; unset means start the embedded Tansu broker",
    )
    embedded_broker_port: int = 9092
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    # Topics
    topic_prefix: str = "towerstream"
    topic_partitions: int = 4
    topic_replication: int = 1

    # Faust worker
    app_id: str = "towerstream"
    data_dir: Path = Path("./data")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    broker_session_timeout: float = 60.0
    broker_heartbeat_interval: float = 3.0
    consumer_max_fetch_wait_ms: int = 50
    log_level: str = "info"
    log_json: bool = True

    #: How the worker reads the interactions topic. "batch": record batches straight from an aiokafka
    #: consumer in its own group ("<app_id>-interactions"), no per-event Faust objects
    #: (streams/batch_consumer.py). "faust": a Faust agent in Faust's group, as before; its
    #: per-event Message/Event/ack machinery costs ~200-400 us of Python per event.
    interactions_consumer: Literal["batch", "faust"] = "batch"
    #: How the items topic is read. "batch": record batches from an aiokafka consumer in its own
    #: group "<app_id>-items" (``streams.batch_consumer``); the worker is ready only once it has
    #: caught up with the topic. "faust": an agent in Faust's group, with Faust's per-event work
    #: on its event loop (readiness does not wait for items).
    items_consumer: Literal["batch", "faust"] = "batch"
    #: The items reader's fetch waits (up to ``consumer_max_fetch_wait_ms``) for this many bytes:
    #: 65536 gives fewer, larger batches and ~10% less ingestion CPU at 1,000 upserts/s, but on
    #: Tansu (fetches wait their whole wait) added ~40 ms to item freshness p50; 1 by default.
    items_fetch_min_bytes: int = 1

    # Micro-batching and model cadence
    batch_max: int = 512
    batch_within_s: float = 0.05
    #: Committed interaction batches that queued while a train step ran are merged into one step
    #: of at most this many events (a backlog trains in larger, cheaper steps; light traffic does not queue).
    train_batch_max: int = 2048
    #: ...but only once the model has learned this many interactions: a fresh model needs many
    #: small steps (merged, a 6,000-event backlog took ~6 steps and left a new worker undertrained).
    train_merge_after: int = 20_000
    #: Committed-but-untrained interactions at most; intake waits beyond (bounds replay after a crash).
    train_queue_max: int = 4096
    #: "arrival": apply each micro-batch as it comes (live). "event_time": stage durably and apply
    #: in (event time, topic, partition, offset) order once input is idle for ordering_idle_s:
    #: deterministic, for replays and backfills, not for live serving latency.
    ordering: Literal["arrival", "event_time"] = "arrival"
    ordering_idle_s: float = 1.0
    checkpoint_every_s: float = 30.0
    #: Also checkpoint once this many seconds of training are unsaved: a restart replays about
    #: that much training before its first new event (0 turns the bound off).
    checkpoint_max_replay_s: float = 4.0
    reembed_every_s: float = 300.0
    #: A partition this worker reads is reported stalled (``/healthz`` 503, ``stalled:<topic>:<partition>``)
    #: once it has records to read (lag > 0) and its next offset has not moved for this many
    #: seconds; the condition clears as soon as it moves or catches up.
    stall_after_s: float = Field(default=60.0, gt=0)

    #: Faust's own Prometheus sensor (``towerstream_faust_*``: per-topic, per-stream counters and
    #: latencies). It runs on every event and cost ~10% of the event loop at 1,500 events/s;
    #: towerstream's per-batch metrics are on ``/metrics`` either way.
    faust_metrics: bool = False

    #: Python's GIL switch interval in the worker and in a serving replica (ms). In the all-in-one
    #: worker serving, intake and training share one process, in a replica queries and applying
    #: what it follows: a query waiting for the GIL waits up to this long at each hand-over, and a
    #: query hands over several times (CPython's default is 5 ms).
    gil_switch_interval_ms: float = 0.5

    # Model
    embedding_dim: int = 64
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    history_len: int = 50
    index_kind: Literal["auto", "flat", "ivf"] = "auto"

    # Serving
    default_k: int = 10
    max_k: int = 500
    api_token: SecretStr | None = None
    protect_reads: bool = False
    max_request_bytes: int = 1_000_000

    # Compression and unreadable record batches
    #: Codec of every record batch towerstream produces (CLI, replay, HTTP intake, dead letters,
    #: drift reports, recommend responses). Every consumer reads all of them whatever this says.
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    #: What a batch reader does with a record batch it cannot decode (bad CRC, unknown codec):
    #: ``stall`` stops that partition at the batch's offset (/healthz 503 names it) until an
    #: operator acts; ``skip`` dead-letters the batch's raw bytes and reads on after it.
    unreadable_batches: Literal["stall", "skip"] = "stall"

    # Stopping and outages
    #: A stopping worker (SIGTERM/SIGINT) exits at most this long after the signal, whatever it
    #: waits for; its final checkpoint comes first. Below Kubernetes' default 30 s grace.
    stop_timeout_s: float = Field(default=20.0, gt=0)
    #: Each step of a stop that needs the broker (a group's last commit and leave, the producer's
    #: flush) waits at most this long: with the broker gone the stop still ends in time.
    stop_broker_wait_s: float = Field(default=5.0, gt=0)
    #: Warnings and errors that repeat (same logger, same message template) are logged once per
    #: this many seconds, the next one saying how many were suppressed: a broker outage then
    #: costs a few lines every few seconds instead of hundreds a second. 0 logs every one.
    log_repeat_window_s: float = Field(default=10.0, ge=0)

    # Train once, serve anywhere (towerstream.published)
    #: What this worker does. "worker": trains and answers ``/recommend`` and the request stream from
    #: its own index (one process, the laptop default). "train": trains and publishes only; serving
    #: replicas (``towerstream serve``) answer.
    role: Literal["worker", "train"] = "worker"
    #: CPU niceness the ``train`` role gives itself at start (Linux ``nice``, 0-19; 0 leaves it).
    #: Training can wait a few milliseconds and a query cannot: where a trainer shares cores with
    #: serving replicas (the laptop's ``demo --replicas``, a small host) the scheduler then runs a
    #: query ahead of training. On cores of its own the trainer loses nothing. The all-in-one
    #: ``worker`` role serves, so it never lowers itself.
    train_nice: int = Field(default=10, ge=0, le=19)
    #: Publish item vectors and model versions to ``<prefix>.item-vectors`` and ``<prefix>.model``
    #: for serving replicas. Off: nothing is published and no replica can follow this trainer.
    publish: bool = True
    #: A new model version is taken this long (seconds) after the last one finished, when the towers
    #: have trained since; each version republishes every live item's vector, so this bounds
    #: replicas' staleness against the cost of a full sweep. The wait is at least twice the last
    #: version's publishing time, so sweeps of a large catalog never run back to back.
    version_every_s: float = Field(default=30.0, gt=0)

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
