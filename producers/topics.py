"""Create the project's topics up front, idempotently.

Production clusters usually disable topic auto-creation, and an auto-created
topic gets the broker's default partition count, not ours.

Every topic, dead-letters and drift-metrics included, gets
``settings.topic_partitions`` partitions: Faust refuses to join tables and
streams whose topics are partitioned differently, and an extra partition on a
low-volume topic costs nothing; records keep per-key order either way.
The dead-letter topic accepts records up to ``MAX_RECORD_BYTES`` (a refused
1 MB record, base64-encoded, is larger than Kafka's default limit).
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from producers.errors import BrokerUnavailable
from producers.kafka_config import client_config
from towerstream.events.deadletter import MAX_RECORD_BYTES
from towerstream.settings import COMPACTED_TOPICS, TOPIC_NAMES, Settings

log = structlog.get_logger(__name__)


def _topic_configs(settings: Settings, topic: str) -> dict[str, str]:
    """Dead letters take large records; the published topics are state, so compacted."""
    if topic == settings.topic("dead-letters"):
        return {"max.message.bytes": str(MAX_RECORD_BYTES)}
    if topic in {settings.topic(n) for n in COMPACTED_TOPICS}:
        return {"cleanup.policy": "compact"}
    return {}


def ensure_topics(
    settings: Settings, names: Iterable[str] = TOPIC_NAMES, *, timeout_ms: int = 10_000
) -> list[str]:
    """Make sure ``settings.topic(name)`` exists for each logical name; returns the full names.

    Existing topics are left as they are (their partition count is not checked
    or changed). Raises BrokerUnavailable when no broker answers within ``timeout_ms``.
    """
    full = [settings.topic(n) for n in dict.fromkeys(names)]
    if not full:
        return []
    try:
        admin = KafkaAdminClient(
            **client_config(settings, client_id="towerstream-admin"),
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"cannot reach Kafka at {settings.bootstrap}: {exc}", bootstrap=settings.bootstrap
        ) from exc
    try:
        existing = set(admin.list_topics())
        missing = [t for t in full if t not in existing]
        for topic in missing:
            # One request per topic: a batch fails as a whole on its first error,
            # which would hide whether the others were created.
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            name=topic,
                            num_partitions=settings.topic_partitions,
                            replication_factor=settings.topic_replication,
                            topic_configs=_topic_configs(settings, topic),
                        )
                    ],
                    timeout_ms=timeout_ms,
                )
                log.info(
                    "topic_created",
                    topic=topic,
                    partitions=settings.topic_partitions,
                    replication=settings.topic_replication,
                )
            except TopicAlreadyExistsError:
                pass  # created concurrently by someone else: fine
    finally:
        admin.close()
    return full
