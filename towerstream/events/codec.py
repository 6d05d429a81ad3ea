"""Bytes <-> events, with readable reasons for everything that fails."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from towerstream.errors import TowerstreamError
from towerstream.events.interactions import Interaction
from towerstream.events.items import ItemDelete, ItemEvent, ItemUpsert
from towerstream.events.users import UserProfile

M = TypeVar("M", bound=BaseModel)

#: Records larger than this are refused before parsing.
MAX_EVENT_BYTES = 256 * 1024

_ITEM_ADAPTER: TypeAdapter[ItemUpsert | ItemDelete] = TypeAdapter(ItemEvent)


class InvalidEvent(TowerstreamError):
    """A record that is not a valid event; ``kind`` is a short category, ``reason`` is for people."""

    def __init__(self, reason: str, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - 5
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def _check_size(raw: bytes | str | None) -> None:
    if raw is None:
        raise InvalidEvent("record has no value (a tombstone); events are never deleted by tombstones", "empty")
    if len(raw) == 0:
        raise InvalidEvent("empty record value", "empty")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"record value of {len(raw)} bytes exceeds {MAX_EVENT_BYTES}", "too_large")


def _is_json_error(exc: ValidationError) -> bool:
    return any(e["type"] in ("json_invalid", "json_type") for e in exc.errors(include_url=False))


def _decode(model: type[M], raw: bytes | str) -> M:
    _check_size(raw)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidEvent(_reason(exc), "not_json" if _is_json_error(exc) else "invalid") from None


def decode_interaction(raw: bytes | str) -> Interaction:
    return _decode(Interaction, raw)


def decode_user(raw: bytes | str) -> UserProfile:
    return _decode(UserProfile, raw)


def decode_item(raw: bytes | str) -> ItemUpsert | ItemDelete:
    _check_size(raw)
    try:
        return _ITEM_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise InvalidEvent(_reason(exc), "not_json" if _is_json_error(exc) else "invalid") from None


def item_from_dict(doc: Any) -> ItemUpsert | ItemDelete:
    """An item event from parsed JSON (``op`` picks upsert or delete, as on the topic)."""
    return _ITEM_ADAPTER.validate_python(doc)


def encode(event: BaseModel) -> bytes:
    return event.model_dump_json().encode()
