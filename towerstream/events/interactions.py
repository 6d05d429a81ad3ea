"""A user interacted with an item: the training signal."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from towerstream.events.base import EventModel, ExternalId, Timestamp

InteractionKind = Literal["view", "click", "like", "purchase", "rating"]
INTERACTION_KINDS: tuple[str, ...] = get_args(InteractionKind)

#: Context values are short strings or finite numbers (device, hour, country...).
ContextValue = str | float | int | bool


class Interaction(EventModel):
    """Keyed by ``user_id`` on ``towerstream.interactions``."""

    event_id: ExternalId
    user_id: ExternalId
    item_id: ExternalId
    kind: InteractionKind = "view"
    weight: float = Field(default=1.0, ge=0.0, le=1000.0)
    ts: Timestamp
    context: dict[str, ContextValue] = Field(default_factory=dict, max_length=64)
