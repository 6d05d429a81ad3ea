"""Event schemas: round trips, and every kind of bad input rejected with a readable reason."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from towerstream.events import (
    Interaction,
    InvalidEvent,
    ItemDelete,
    ItemUpsert,
    RecommendRequest,
    UserProfile,
    decode_interaction,
    decode_item,
    decode_user,
    encode,
)
from towerstream.events.codec import MAX_EVENT_BYTES

ids = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=40).filter(
    lambda s: s.strip() != ""  # blank ids are rejected on purpose (see test below)
)
times = st.datetimes(
    min_value=datetime(1995, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(timezone.utc)
).map(lambda d: d.replace(microsecond=(d.microsecond // 1000) * 1000))
finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
context = st.dictionaries(st.text(min_size=1, max_size=10), st.one_of(st.text(max_size=10), finite, st.booleans()), max_size=4)


@settings(max_examples=60, deadline=None)
@given(ids, ids, ids, st.sampled_from(["view", "click", "like", "purchase", "rating"]),
       st.floats(min_value=0, max_value=1000), times, context)
def test_interaction_round_trips_through_bytes(eid: str, uid: str, iid: str, kind: str, w: float,
                                               ts: datetime, ctx: dict[str, object]) -> None:
    if ts > datetime.now(timezone.utc) + timedelta(hours=23):
        return
    ev = Interaction(event_id=eid, user_id=uid, item_id=iid, kind=kind, weight=w, ts=ts, context=ctx)  # type: ignore[arg-type]
    assert decode_interaction(encode(ev)) == ev


@settings(max_examples=60, deadline=None)
@given(ids, st.text(min_size=1, max_size=100), st.lists(st.text(min_size=1, max_size=20), max_size=5),
       st.dictionaries(st.text(min_size=1, max_size=10), finite, max_size=5), st.none() | ids, times)
def test_item_events_round_trip(iid: str, title: str, cats: list[str], nums: dict[str, float],
                                creator: str | None, ts: datetime) -> None:
    if ts > datetime.now(timezone.utc):
        return
    up = ItemUpsert(item_id=iid, title=title, categories=cats, numbers=nums, creator=creator, ts=ts)
    assert decode_item(encode(up)) == up
    dl = ItemDelete(op="delete", item_id=iid, ts=ts)
    assert decode_item(encode(dl)) == dl


def test_ints_are_accepted_as_ids_and_times_as_epoch_seconds_or_ms() -> None:
    a = decode_interaction(b'{"event_id": 1, "user_id": 7, "item_id": 9, "ts": 1700000000}')
    b = decode_interaction(b'{"event_id": "1", "user_id": "7", "item_id": "9", "ts": 1700000000000}')
    c = decode_interaction(b'{"event_id": "1", "user_id": "7", "item_id": "9", "ts": "2023-11-14T22:13:20Z"}')
    assert a == b == c and a.user_id == "7"


def test_items_without_op_are_upserts() -> None:
    ev = decode_item(b'{"item_id": "x", "title": "A film", "categories": ["drama"], "ts": 1700000000000}')
    assert isinstance(ev, ItemUpsert)


GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "kind": "click", "ts": 1700000000000}


@pytest.mark.parametrize(
    ("raw", "kind", "fragment"),
    [
        (b"", "empty", "empty"),
        (b"not json", "not_json", "JSON"),
        (b"[1, 2]", "invalid", "object"),
        (json.dumps({**GOOD, "extra": 1}).encode(), "invalid", "extra"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "user_id"}).encode(), "invalid", "user_id"),
        (json.dumps({**GOOD, "weight": "heavy"}).encode(), "invalid", "weight"),
        (json.dumps({**GOOD, "kind": "teleport"}).encode(), "invalid", "kind"),
        (b'{"event_id":"e","user_id":"u","item_id":"i","ts":1700000000000,"weight":NaN}', "invalid", "weight"),
        (json.dumps({**GOOD, "weight": 1e309}).encode(), "invalid", "weight"),
        (json.dumps({**GOOD, "weight": -1}).encode(), "invalid", "weight"),
        (json.dumps({**GOOD, "ts": -5}).encode(), "invalid", "ts"),
        (json.dumps({**GOOD, "ts": 10**15}).encode(), "invalid", "ts"),
        (json.dumps({**GOOD, "ts": 4102444800000}).encode(), "invalid", "future"),
        (json.dumps({**GOOD, "user_id": ""}).encode(), "invalid", "user_id"),
        (json.dumps({**GOOD, "user_id": "a\nb"}).encode(), "invalid", "control"),
        (json.dumps({**GOOD, "schema_version": 99}).encode(), "invalid", "schema_version"),
        (b"x" * (MAX_EVENT_BYTES + 1), "too_large", "exceeds"),
    ],
)
def test_bad_interactions_are_rejected_with_a_reason(raw: bytes, kind: str, fragment: str) -> None:
    with pytest.raises(InvalidEvent) as err:
        decode_interaction(raw)
    assert err.value.kind == kind
    assert fragment.lower() in err.value.reason.lower()


def test_bad_items_and_users_are_rejected() -> None:
    with pytest.raises(InvalidEvent):
        decode_item(b'{"item_id": "x", "title": "", "ts": 1700000000000}')
    with pytest.raises(InvalidEvent):
        decode_item(b'{"op": "delete", "ts": 1700000000000}')
    with pytest.raises(InvalidEvent):
        decode_item(b'{"item_id": "x", "title": "t", "numbers": {"p": "cheap"}, "ts": 1700000000000}')
    with pytest.raises(InvalidEvent):
        decode_user(b'{"user_id": "u", "features": {"a": [1]}, "ts": 1700000000000}')
    assert decode_user(b'{"user_id": "u", "features": {"age": 31}, "ts": 1700000000000}') == UserProfile(
        user_id="u", features={"age": 31}, ts=1700000000000  # type: ignore[arg-type]
    )


def test_events_are_frozen_and_requests_bound_k() -> None:
    ev = decode_interaction(json.dumps(GOOD).encode())
    with pytest.raises(ValueError):
        ev.user_id = "other"  # type: ignore[misc]
    with pytest.raises(ValueError):
        RecommendRequest(user_id="u", k=0)
    with pytest.raises(ValueError):
        RecommendRequest(user_id="u", k=100_000)


@pytest.mark.parametrize("blank", [" ", "\t", "\x85", "\u2003"])
def test_blank_ids_are_rejected(blank: str) -> None:
    with pytest.raises(InvalidEvent) as err:
        decode_interaction(json.dumps({**GOOD, "item_id": blank}).encode())
    assert "blank" in err.value.reason
