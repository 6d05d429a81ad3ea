"""The kafka-python edge: producing events, creating topics, recording and replaying.

Nothing in the core (towers/, index_store/) imports this package.
"""

from producers.errors import BrokerUnavailable, DeliveryError
from producers.kafka_config import client_config
from producers.producer import DeliverySummary, EventProducer, produce_lines
from producers.record import record
from producers.replay import replay
from producers.topics import ensure_topics

__all__ = [
    "BrokerUnavailable",
    "DeliveryError",
    "DeliverySummary",
    "EventProducer",
    "client_config",
    "ensure_topics",
    "produce_lines",
    "record",
    "replay",
]
