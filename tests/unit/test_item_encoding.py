"""Item content encoded apart from the engine (the items reader process does it) must give the
engine exactly what it would have encoded itself, and the reader must not need PyTorch for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_engine import SMALL, item
from towers.features import ItemEncoding, encode_item
from towerstream.engine import Engine
from towerstream.events import ItemDelete


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


def test_the_engine_applies_encoded_items_as_it_applies_raw_ones(tmp_path: Path) -> None:
    """Duplicates, a stale event, an item written twice in a batch and a delete: the rows that
    reach the tables are the right ones of the encoded batch (40 items: several chunks of
    ``PAUSE_EVERY``)."""
    first = [item(i, title=f"item {i} w{i % 7}") for i in range(40)]
    second = [item(3, ts=1_700_000_000_500, title="renamed three"), item(3, ts=1_700_000_000_400, title="stale"),
              first[5], item(7, ts=1_700_000_000_900, title="seven again", categories=["genre9"]),
              item(7, ts=1_700_000_001_000, title="seven last"),
              ItemDelete(item_id="i8", op="delete", ts=1_700_000_002_000), item(50, title="new fifty")]
    engines = [Engine.open(tmp_path / name, SMALL) for name in ("raw", "encoded")]
    try:
        enc = ItemEncoding.of(engines[1].trainer.cfg)
        for batch in (first, second):
            engines[0].apply_items(batch)
            engines[1].apply_items(batch, None, enc.encode([e if not isinstance(e, ItemDelete) else None
                                                            for e in batch]))
        a, b = (e.trainer for e in engines)
        n = len(engines[0].items)
        assert n == len(engines[1].items) == 41
        for name in ("item_tokens", "item_cats", "item_creator", "item_nums", "item_live"):
            np.testing.assert_array_equal(getattr(a, name)[:n], getattr(b, name)[:n], err_msg=name)
        row7 = engines[1].items.get("i7")
        assert row7 is not None and (b.item_cats[row7] != b.item_cats[engines[1].items.get("i6")]).any()
        rows = np.arange(n)
        np.testing.assert_allclose(a.embed_items(rows), b.embed_items(rows), atol=1e-6)
        assert engines[1].item_record("i7") == engines[0].item_record("i7")
        assert engines[1].item_record("i7")["event"]["title"] == "seven last"  # type: ignore[index]
        with pytest.raises(ValueError, match="encoded rows"):
            engines[1].apply_items([item(30)], None, enc.encode([item(30), item(31)]))
    finally:
        for e in engines:
            e.close()


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


def test_the_items_reader_process_does_not_import_pytorch() -> None:
    code = ("import sys, streams.items_reader_child, towers.features; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
