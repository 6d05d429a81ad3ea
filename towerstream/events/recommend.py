"""Recommendation requests and responses, over HTTP and the Kafka request/reply stream."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from towerstream.events.base import EventModel, ExternalId

#: Hard upper bound on k in the schema; settings.max_k may lower it.
SCHEMA_MAX_K = 1000


class Filters(EventModel):
    """Business filters applied after retrieval (and seen-item exclusion)."""

    exclude_items: list[ExternalId] = Field(default_factory=list, max_length=10_000)
    include_categories: list[str] = Field(default_factory=list, max_length=100)
    exclude_categories: list[str] = Field(default_factory=list, max_length=100)
    exclude_creators: list[str] = Field(default_factory=list, max_length=100)


class RecommendRequest(EventModel):
    request_id: ExternalId | None = None
    user_id: ExternalId
    k: int = Field(default=10, ge=1, le=SCHEMA_MAX_K)
    exclude_seen: bool = True
    filters: Filters = Field(default_factory=Filters)
    context: dict[str, str | float | int | bool] = Field(default_factory=dict, max_length=64)
    reply_to: str | None = Field(default=None, max_length=249)


class ScoredItem(EventModel):
    item_id: str
    score: float


class RecommendResponse(EventModel):
    request_id: str | None = None
    user_id: str
    items: list[ScoredItem]
    #: "model": user tower + index; "popularity": fallback (unknown user, index not ready).
    source: Literal["model", "popularity"]
    fallback_reason: str | None = None
    model_version: int
    served_at_ms: int
