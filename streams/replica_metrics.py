"""Prometheus metrics of a serving replica (``towerstream serve``), on the default registry.

Apart from ``streams.metrics`` so that the worker's ``/metrics`` does not list replica series it
never moves; the replica imports both (``towerstream_recommend_seconds`` and
``towerstream_http_rejected_total`` are shared).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REPLICA_VERSION = Gauge("towerstream_replica_version", "The model version this replica answers from (0: none yet)")
REPLICA_ITEMS = Gauge("towerstream_replica_items", "Live items in the active version's index")
REPLICA_USERS = Gauge("towerstream_replica_users", "Users with interactions this replica has read")
REPLICA_LAG = Gauge("towerstream_replica_lag", "Records of a followed topic not read yet (log end minus position, all partitions)",
                    ["topic"])
REPLICA_BEHIND_SECONDS = Gauge("towerstream_replica_behind_seconds",
                               "Now minus the timestamp of the newest record applied, per followed topic", ["topic"])
REPLICA_SWITCHES = Counter("towerstream_replica_version_switches_total", "Times this replica switched to a newer version")
REPLICA_SKIPPED = Counter("towerstream_replica_skipped_total",
                          "Records this replica skipped (undecodable, invalid, duplicate, stale version), by topic and reason",
                          ["topic", "reason"])
REPLICA_READY = Gauge("towerstream_replica_ready", "1 when this replica has a version and has read every followed topic "
                      "up to the end it saw at start")
REPLICA_REQUESTS = Counter("towerstream_replica_kafka_requests_total",
                           "recommend-requests records this replica answered (answered) or refused (invalid)", ["outcome"])
REPLICA_LOG_RESETS = Counter("towerstream_replica_log_resets_total",
                             "Followed partitions read again from their start because the log was replaced or cut",
                             ["topic"])
