"""User profile fields (age band, country...), used as user-tower features."""

from __future__ import annotations

from pydantic import Field

from towerstream.events.base import EventModel, ExternalId, Timestamp


class UserProfile(EventModel):
    """Keyed by ``user_id`` on ``towerstream.users``."""

    user_id: ExternalId
    features: dict[str, str | float | int | bool] = Field(default_factory=dict, max_length=64)
    ts: Timestamp
