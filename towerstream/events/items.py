"""New, changed and removed catalog items."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag

from towerstream.events.base import EventModel, ExternalId, Timestamp


class ItemUpsert(EventModel):
    """Keyed by ``item_id`` on ``towerstream.items``; embedded from content at once."""

    op: Literal["upsert"] = "upsert"
    event_id: ExternalId | None = None
    item_id: ExternalId
    title: str = Field(min_length=1, max_length=1000)
    text: str = Field(default="", max_length=20_000)
    categories: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=64
    )
    numbers: dict[str, float] = Field(default_factory=dict, max_length=64)
    creator: str | None = Field(default=None, max_length=256)
    ts: Timestamp


class ItemDelete(EventModel):
    """Removes an item from the index and from recommendations."""

    op: Literal["delete"]
    event_id: ExternalId | None = None
    item_id: ExternalId
    ts: Timestamp


def _item_op(value: Any) -> str:
    if isinstance(value, dict):
        return "delete" if value.get("op") == "delete" else "upsert"
    return str(getattr(value, "op", "upsert"))


ItemEvent = Annotated[
    Union[Annotated[ItemUpsert, Tag("upsert")], Annotated[ItemDelete, Tag("delete")]],
    Discriminator(_item_op),
]
