"""Prometheus metrics (the default registry; Faust's sensor serves it on /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("towerstream_events_total", "Valid events processed", ["topic"])
DEAD_LETTERS = Counter("towerstream_dead_letters_total", "Records sent to the dead-letter topic", ["topic", "kind"])
DEAD_LETTER_FAILURES = Counter(
    "towerstream_dead_letter_failures_total", "Dead letters the broker did not accept (logged with the record's position)"
)
DUPLICATES = Counter("towerstream_duplicates_total", "Events dropped as duplicates (same event id)", ["topic"])
UNKNOWN_ITEMS = Counter("towerstream_unknown_item_interactions_total", "Interactions on items with no content yet")
UNKNOWN_DELETES = Counter("towerstream_unknown_item_deletes_total", "Deletes of items never seen (ignored)")
STALE_ITEMS = Counter("towerstream_stale_item_events_total", "Item events older than the stored version (ignored)")
BATCH_SECONDS = Histogram(
    "towerstream_batch_seconds", "Time to apply one micro-batch", ["topic"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
UPSERT_LAG = Histogram(
    "towerstream_upsert_lag_seconds", "Event time to index upsert",
    buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
TRAIN_BATCH_EVENTS = Histogram(
    "towerstream_train_batch_events", "Interactions per train step (queued batches are merged under backlog)",
    buckets=(16, 64, 128, 256, 512, 1024, 2048, 4096),
)
LOSS = Gauge("towerstream_train_loss", "Loss of the last training step")
MODEL_VERSION = Gauge("towerstream_model_version", "Training steps applied")
INDEX_SIZE = Gauge("towerstream_index_items", "Items in the vector index")
READY = Gauge("towerstream_ready", "1 when the worker can answer recommendations and its items reader has caught up with the topic")
KAFKA_UP = Gauge("towerstream_kafka_reachable", "1 when the broker answered the last metadata probe")
RECOMMEND_SECONDS = Histogram(
    "towerstream_recommend_seconds", "Time to answer one recommendation request", ["source"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
CHECKPOINT_SECONDS = Gauge("towerstream_checkpoint_seconds", "Duration of the last checkpoint")
CHECKPOINT_PAUSE_SECONDS = Gauge("towerstream_checkpoint_pause_seconds",
                                 "Training-thread time the last checkpoint took (its state copy)")
HTTP_REJECTED = Counter("towerstream_http_rejected_total", "HTTP requests answered 4xx", ["path", "status"])
UNREADABLE_BATCHES = Counter(
    "towerstream_unreadable_batches_total",
    "Record batches a reader could not decode (bad CRC, unknown codec), by what it did: stalled, skipped",
    ["topic", "action"],
)
OFFSET_RESETS = Counter(
    "towerstream_offset_resets_total",
    "Partitions read again from the log start because the durable offset was outside the log",
    ["topic", "reason"],  # "past_end": the log was replaced; "before_start": retention or deletion passed it
)
CONSUMER_LAG = Gauge(
    "towerstream_consumer_lag",
    "Records in the log after this worker's next offset (log end offset minus next offset)",
    ["topic", "partition"],
)
LOG_LINES_SUPPRESSED = Counter(
    "towerstream_log_lines_suppressed_total",
    "Repeated warnings/errors left out of the log (log_repeat_window_s), by logger",
    ["logger"],
)
KAFKA_UNREACHABLE_SINCE = Gauge(
    "towerstream_kafka_unreachable_since_seconds",
    "Unix time since which the broker has not answered the worker's probe; 0 while it answers",
)
PUBLISHED_VERSION = Gauge("towerstream_published_version",
                          "Newest model version the trainer finished publishing for serving replicas (0: none yet)")
PUBLISHED_RECORDS = Counter("towerstream_published_records_total",
                            "Records the trainer handed to Kafka for serving replicas (item vectors, tombstones, model parts, version records)",
                            ["topic"])
VERSION_PUBLISH_SECONDS = Histogram(
    "towerstream_version_publish_seconds", "Time to publish one model version: freeze, model parts, the sweep of every item, flush",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
PUBLISH_FAILURES = Counter("towerstream_publish_failures_total",
                           "Times publishing to Kafka failed (the version in flight is given up; a new one follows)")
