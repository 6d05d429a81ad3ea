"""Bad input, table-driven, through the real broker and over HTTP.

Every malformed record lands in the dead-letter topic with its original bytes, its source
topic/partition/offset and a readable reason, and is counted by kind; the worker keeps going.
Duplicates and unknown ids are not errors: they follow the policies in docs/operations.md, "Policies"
(applied once and counted; trained but not recommendable; ignored and counted).
The same bodies over HTTP get a 4xx with a message, never a 500.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from producers.kafka_config import client_config
from producers.topics import ensure_topics
from tests.conftest import worker_settings
from towerstream.broker import EmbeddedBroker
from towerstream.events import DeadLetter
from towerstream.processes import WorkerProcess, http_json

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]

TS = int(time.time() * 1000) - 60_000  # a minute ago: valid event time


def interaction(**kw: Any) -> dict[str, Any]:
    return {"event_id": "x1", "user_id": "u1", "item_id": "i1", "kind": "click", "ts": TS, **kw}


def item(**kw: Any) -> dict[str, Any]:
    return {"item_id": "i1", "title": "Alien", "categories": ["sci-fi"], "ts": TS, **kw}


def js(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def raw_number(doc: dict[str, Any], field: str, token: str) -> bytes:
    """JSON with a bare token (NaN, Infinity, 1e999) that json.dumps would not write."""
    return js({**doc, field: "@@"}).replace(b'"@@"', token.encode())


#: 1,000,000 bytes of well-formed JSON: an interaction padded with a long context value.
_pad = js(interaction(event_id="big", context={"pad": ""}))
ONE_MB = _pad.replace(b'"pad": ""', b'"pad": "' + b"x" * (1_000_000 - len(_pad)) + b'"')
assert len(ONE_MB) == 1_000_000


@dataclass(frozen=True)
class Bad:
    name: str
    topic: str  # logical
    value: bytes | None
    kind: str  # DeadLetter.error_kind
    reason: str  # a fragment of the readable reason


BAD = [
    Bad("not json", "interactions", b"not json at all", "not_json", "Invalid JSON"),
    Bad("invalid utf-8", "interactions", b"\xff\xfe\x00\x80", "not_json", "Invalid JSON"),
    Bad("truncated json", "interactions", b'{"event_id": "t1", "user_id":', "not_json", "Invalid JSON"),
    Bad("nested 10k deep", "interactions", b"[" * 10_000, "not_json", "recursion limit"),
    Bad("array, not object", "interactions", b"[1, 2, 3]", "invalid", "should be an object"),
    Bad("string, not object", "interactions", b'"hello"', "invalid", "should be an object"),
    Bad("null", "interactions", b"null", "invalid", "should be an object"),
    Bad("missing fields", "interactions", js({"event_id": "m1"}), "invalid", "user_id: Field required"),
    Bad("extra field", "interactions", js(interaction(color="red")), "invalid", "color: Extra inputs"),
    Bad("id of wrong type", "interactions", js(interaction(user_id=1.5)), "invalid", "user_id"),
    Bad("blank id", "interactions", js(interaction(item_id="   ")), "invalid", "blank"),
    Bad("unknown kind", "interactions", js(interaction(kind="hate")), "invalid", "kind"),
    Bad("weight of wrong type", "interactions", js(interaction(weight="heavy")), "invalid", "weight"),
    Bad("ts of wrong type", "interactions", js(interaction(ts=True)), "invalid", "ts"),
    Bad("NaN weight", "interactions", raw_number(interaction(), "weight", "NaN"), "invalid", "finite"),
    Bad("Infinity weight", "interactions", raw_number(interaction(), "weight", "Infinity"), "invalid", "finite"),
    Bad("1e999 weight", "interactions", raw_number(interaction(), "weight", "1e999"), "invalid", "finite"),
    Bad("NaN ts", "interactions", raw_number(interaction(), "ts", "NaN"), "invalid", "finite"),
    Bad("NaN in context", "interactions", js(interaction(context={"a": 1})).replace(b'"a": 1', b'"a": NaN'),
        "invalid", "finite"),
    Bad("negative ts", "interactions", js(interaction(ts=-1)), "invalid", "before 1990"),
    Bad("absurd ts", "interactions", js(interaction(ts=1e30)), "invalid", "out of range"),
    Bad("ts in 2200", "interactions", js(interaction(ts="2200-01-01T00:00:00Z")), "invalid", "future"),
    Bad("empty value", "interactions", b"", "empty", "empty"),
    Bad("tombstone", "interactions", None, "empty", "tombstone"),
    Bad("1 MB value", "interactions", ONE_MB, "too_large", "exceeds"),
    Bad("item without title", "items", js({"item_id": "i9", "ts": TS}), "invalid", "title"),
    Bad("item NaN number", "items", raw_number(item(), "numbers", '{"price": NaN}'), "invalid", "finite"),
    Bad("item categories not a list", "items", js(item(categories="sci-fi")), "invalid", "categories"),
    Bad("item unknown op", "items", js(item(op="remove")), "invalid", "op"),
    Bad("delete without ts", "items", js({"op": "delete", "item_id": "i1"}), "invalid", "ts"),
    Bad("profile with nested feature", "users", js({"user_id": "u1", "features": {"a": {"b": 1}}, "ts": TS}),
        "invalid", "features"),
]


def metrics(worker: WorkerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(worker.base_url + "/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in m.items() if n == name and want <= set(lab))


def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def worker(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Any:
    data = tmp_path_factory.mktemp("badinput")
    prefix = f"bad{int(time.time() * 1000) % 10**8}"
    settings = worker_settings(broker, data / "worker", prefix)
    ensure_topics(settings)
    w = WorkerProcess(settings, log_path=data / "worker.log").start()
    w.wait_ready(90)
    yield settings, w
    w.kill()  # nothing is asserted on its stop (as ``start_worker``): no graceful shutdown to wait for


def test_malformed_records_are_dead_lettered_with_bytes_position_and_reason(worker: Any) -> None:
    settings, w = worker
    prod = KafkaProducer(**client_config(settings), acks="all", max_request_size=2 * 1024 * 1024)
    good = [("items", b"i1", js(item())), ("items", b"i2", js(item(item_id="i2")))]
    for topic, key, value in good:
        prod.send(settings.topic(topic), key=key, value=value).get(timeout=20)
    # Items and interactions are read by different consumers (the items reader is a process of
    # its own): Kafka orders neither topic against the other, so the interactions below on i1/i2
    # count as on known items only once both are indexed.
    wait_until(lambda: w.health()[1] and w.health()[1].get("items_indexed", 0) >= 2, 60, "i1 and i2 indexed")
    sent: dict[tuple[str, int, int], Bad] = {}
    for case in BAD:
        md = prod.send(settings.topic(case.topic), key=b"u1", value=case.value).get(timeout=20)
        sent[(md.topic, md.partition, md.offset)] = case
    # Policies, not errors: a duplicate event id (twice, once with other content), an interaction on
    # an item nobody announced, a delete of an item nobody announced, the same item event twice.
    policy = [
        ("interactions", js(interaction(event_id="dup-1"))),
        ("interactions", js(interaction(event_id="dup-1"))),
        ("interactions", js(interaction(event_id="dup-1", item_id="i2", kind="like"))),
        ("interactions", js(interaction(event_id="on-unknown", item_id="never-announced"))),
        ("items", js({"op": "delete", "item_id": "ghost", "ts": TS})),
        ("items", js(item(item_id="i2"))),
        ("interactions", js(interaction(event_id="sentinel"))),
    ]
    for topic, value in policy:
        prod.send(settings.topic(topic), key=b"u1", value=value).get(timeout=20)
    prod.close()

    # The worker goes on: the sentinel after every bad record is trained.
    wait_until(lambda: w.health()[1] and w.health()[1].get("trained_in_model", 0) >= 3, 60, "sentinel trained")
    wait_until(lambda: total(metrics(w), "towerstream_unknown_item_deletes_total") >= 1, 30, "ghost delete")
    # i2's second event comes after the ghost delete in the same partition, and can be in the
    # next item batch (a batch closes 50 ms after its first record; the sends above are one by one).
    wait_until(lambda: total(metrics(w), "towerstream_duplicates_total", topic=settings.topic("items")) >= 1, 30,
               "the repeated item event")
    assert w.alive()
    status, health = w.health()
    assert status == 200, health
    # dup-1 once, on-unknown, sentinel: three distinct events trained, once each.
    assert health["trained_total"] == 3 and health["trained_in_model"] == 3, health
    assert health["items_indexed"] == 2  # i1, i2; never "never-announced", never "ghost"

    consumer = KafkaConsumer(
        settings.topic("dead-letters"), bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
        consumer_timeout_ms=4000, fetch_max_wait_ms=50, group_id=None, max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    letters = [DeadLetter.model_validate_json(m.value) for m in consumer]
    consumer.close()
    by_pos = {(dl.source_topic, dl.partition, dl.offset): dl for dl in letters}
    assert len(letters) == len(BAD), sorted(dl.reason[:60] for dl in letters)
    for pos, case in sent.items():
        dl = by_pos.get(pos)
        assert dl is not None, f"{case.name}: no dead letter for {pos}"
        assert dl.original == (case.value or b""), case.name
        assert dl.original_size == len(case.value or b"") and not dl.truncated, case.name
        assert dl.error_kind == case.kind, (case.name, dl.error_kind, dl.reason)
        assert case.reason.lower() in dl.reason.lower(), (case.name, dl.reason)
        assert len(dl.reason) < 1000 and dl.received_at_ms > 0

    m = metrics(w)
    for topic in ("interactions", "items", "users"):
        for kind in {c.kind for c in BAD}:
            expected = sum(1 for c in BAD if c.topic == topic and c.kind == kind)
            got = total(m, "towerstream_dead_letters_total", topic=settings.topic(topic), kind=kind)
            assert got == expected, (topic, kind, got, expected)
    assert total(m, "towerstream_dead_letter_failures_total") == 0
    assert total(m, "towerstream_duplicates_total", topic=settings.topic("interactions")) == 2
    assert total(m, "towerstream_duplicates_total", topic=settings.topic("items")) == 1
    assert total(m, "towerstream_unknown_item_interactions_total") == 1
    assert total(m, "towerstream_unknown_item_deletes_total") == 1


_ENDPOINT = {"interactions": "/interactions", "items": "/items", "users": "/users"}


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_the_same_bodies_over_http_get_a_4xx_with_a_message(worker: Any, case: Bad) -> None:
    settings, w = worker
    status, body = http_json(w.base_url + _ENDPOINT[case.topic], data=case.value or b"", method="POST", timeout=10)
    assert 400 <= status < 500, (case.name, status, body)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    if status == 422:
        assert body["errors"] and body["errors"][0]["index"] == 0


def test_policy_inputs_over_http_are_accepted_and_applied_once(worker: Any) -> None:
    settings, w = worker
    before = metrics(w)
    trained = w.health()[1]["trained_total"]
    ev = js([interaction(event_id="http-dup"), interaction(event_id="http-dup")])
    status, body = http_json(w.base_url + "/interactions", data=ev, method="POST", timeout=15)
    assert status == 202 and body["accepted"] == 2, body
    status, body = http_json(w.base_url + "/items", data=js({"op": "delete", "item_id": "ghost-2", "ts": TS}),
                             method="POST", timeout=15)
    assert status == 202, body
    wait_until(lambda: total(metrics(w), "towerstream_unknown_item_deletes_total")
               > total(before, "towerstream_unknown_item_deletes_total"), 30, "ghost-2 delete counted")
    wait_until(lambda: w.health()[1].get("trained_total") == trained + 1, 30, "http-dup trained")
    after = metrics(w)
    dup = "towerstream_duplicates_total"
    assert total(after, dup, topic=settings.topic("interactions")) == total(
        before, dup, topic=settings.topic("interactions")) + 1
    time.sleep(1)
    assert w.health()[1]["trained_total"] == trained + 1  # once, not twice
