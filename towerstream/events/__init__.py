"""Event schemas: the single source of truth for what goes over Kafka and HTTP.

Producers, agents, HTTP views, replay, evaluation and tests all import these.
Every model is frozen, versioned (``schema_version``) and forbids extra fields.
"""

from towerstream.events.base import EVENT_SCHEMA_VERSION, EventModel, ExternalId, Timestamp
from towerstream.events.codec import InvalidEvent, decode_interaction, decode_item, decode_user, encode
from towerstream.events.deadletter import DeadLetter
from towerstream.events.interactions import INTERACTION_KINDS, Interaction, InteractionKind
from towerstream.events.items import ItemDelete, ItemEvent, ItemUpsert
from towerstream.events.recommend import Filters, RecommendRequest, RecommendResponse, ScoredItem
from towerstream.events.users import UserProfile

__all__ = [
    "EVENT_SCHEMA_VERSION",
    "INTERACTION_KINDS",
    "DeadLetter",
    "EventModel",
    "ExternalId",
    "Filters",
    "Interaction",
    "InteractionKind",
    "InvalidEvent",
    "ItemDelete",
    "ItemEvent",
    "ItemUpsert",
    "RecommendRequest",
    "RecommendResponse",
    "ScoredItem",
    "Timestamp",
    "UserProfile",
    "decode_interaction",
    "decode_item",
    "decode_user",
    "encode",
]
