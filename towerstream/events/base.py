"""Shared field types: external ids, event times, the frozen base model."""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

EVENT_SCHEMA_VERSION = 1

#: Earliest event time accepted (MovieLens-100k starts in 1997).
MIN_EVENT_TIME = datetime(1990, 1, 1, tzinfo=timezone.utc)
#: How far in the future an event time may lie (producer clock skew).
MAX_FUTURE_S = 24 * 3600


def _coerce_id(value: Any) -> Any:
    # Ints are accepted for convenience; bools are ints in Python and are not ids.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _check_id(value: str) -> str:
    if value.isprintable() and not value.isspace():
        return value  # the common case, checked in C: no control characters and not blank
    if not value.strip():
        raise ValueError("id must not be blank")
    if any(ord(c) < 32 for c in value):
        raise ValueError("id must not contain control characters")
    return value


#: External ids are strings (ints accepted); internal ids come from the id map.
ExternalId = Annotated[
    str,
    BeforeValidator(_coerce_id),
    Field(min_length=1, max_length=256),
    AfterValidator(_check_id),
]


def _parse_time(value: Any) -> Any:
    """Accept ISO 8601 strings, datetimes and epoch numbers (seconds or milliseconds)."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be an ISO 8601 string or epoch seconds/milliseconds")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("timestamp must be finite")
        seconds = value / 1000.0 if abs(value) >= 1e11 else float(value)
        try:
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"timestamp out of range: {value}") from exc
    return value


def _check_time(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    if value < MIN_EVENT_TIME:
        raise ValueError(f"timestamp {value.isoformat()} is before {MIN_EVENT_TIME.date()}")
    if value.timestamp() > time.time() + MAX_FUTURE_S:
        raise ValueError(f"timestamp {value.isoformat()} is more than a day in the future")
    return value


#: Event time: serialised as epoch milliseconds, parsed from ISO or epoch s/ms.
Timestamp = Annotated[
    datetime,
    BeforeValidator(_parse_time),
    AfterValidator(_check_time),
    PlainSerializer(lambda v: int(round(v.timestamp() * 1000)), return_type=int, when_used="json"),
]


def epoch_ms(value: datetime) -> int:
    return int(round(value.timestamp() * 1000))


class EventModel(BaseModel):
    """Frozen, strict about unknown fields, and finite numbers only."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, str_max_length=20_000)

    schema_version: int = Field(default=EVENT_SCHEMA_VERSION, ge=1, le=EVENT_SCHEMA_VERSION)
