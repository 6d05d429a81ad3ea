"""Item content as table rows (``ItemEncoding``): each item its own row, a delete an empty one;
and an item's durable record holds its event as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.test_engine import SMALL, item
from towers.features import ItemEncoding, encode_item
from towerstream.engine import Engine


def test_encoding_a_batch_gives_each_item_its_own_row_and_deletes_an_empty_one() -> None:
    enc = ItemEncoding.of(SMALL.tower)
    items = [item(1), None, item(2, title="a longer title with more words", numbers={"year": 1999.0})]
    out = enc.encode(items)
    for j in (0, 2):
        tokens, cats, creator, nums = encode_item(
            items[j], text_buckets=enc.text_buckets, cat_buckets=enc.cat_buckets, num_slots=enc.num_slots,
            max_tokens=enc.max_tokens, max_cats=enc.max_cats)
        assert (out.tokens[j] == tokens).all() and (out.cats[j] == cats).all()
        assert out.creator[j] == creator and (out.nums[j] == nums).all()
    assert not out.tokens[1].any() and not out.cats[1].any() and out.creator[1] == 0 and not out.nums[1].any()
    assert out.tokens[0].any() and not (out.tokens[0] == out.tokens[2]).all()


def test_item_records_hold_the_event_as_its_json_form(tmp_path: Path) -> None:
    """The record's event is what ``model_dump(mode="json")`` gives, non-ASCII text included."""
    eng = Engine.open(tmp_path, SMALL)
    try:
        ev = item(1, title="café crème", numbers={"year": 1999.0, "price": 2.5})
        eng.apply_items([ev])
        rec = eng.item_record("i1")
        assert rec is not None and rec["event"] == json.loads(json.dumps(ev.model_dump(mode="json")))
        assert rec["deleted"] is False and rec["ts"] == 1_700_000_000_000
    finally:
        eng.close()
