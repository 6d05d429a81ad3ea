"""MovieLens-100k conversion: both layouts, ordering, fields, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest

from towerstream.datasets import ML100K_GENRES, DatasetError, convert_movielens
from towerstream.events import Interaction, ItemUpsert, UserProfile
from towerstream.recording import iter_recording


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in ML100K_GENRES)


def write_original(d: Path) -> Path:
    d.mkdir()
    kids = "Children's"
    (d / "u.item").write_bytes(
        "\n".join(
            [
                f"1|Toy Story (1995)|01-Jan-1995||http://x|{_flags('Animation', kids, 'Comedy')}",
                f"2|Misérables, Les (1995)|01-Jan-1995||http://x|{_flags('Drama')}",
                f"3|unknown|||http://x|{_flags('unknown')}",
            ]
        ).encode("latin-1")
    )
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|T8H1N\n", encoding="latin-1")
    # Two ratings share a timestamp: file order must be kept.
    (d / "u.data").write_text("2\t1\t5\t880000900\n1\t2\t3\t880000800\n1\t3\t4\t880000900\n1\t1\t1\t880000700\n")
    return d


def write_atomic(d: Path) -> Path:
    d.mkdir()
    (d / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "2\tMisérables, Les\t1995\tDrama\n"
        "3\tunknown\tunkonwn\tunknown\n",
        encoding="utf-8",
    )
    (d / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\tT8H1N\n"
    )
    (d / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "2\t1\t5\t880000900\n1\t2\t3\t880000800\n1\t3\t4\t880000900\n1\t1\t1\t880000700\n"
    )
    return d


@pytest.mark.parametrize("layout", ["original", "atomic"])
def test_convert_layout(tmp_path: Path, layout: str) -> None:
    src = (write_original if layout == "original" else write_atomic)(tmp_path / "src")
    counts = convert_movielens(src, tmp_path / "out.jsonl")
    assert counts == {"items": 3, "users": 2, "interactions": 4, "records": 9}
    recs = list(iter_recording(tmp_path / "out.jsonl"))
    assert [r.logical_topic() for r in recs] == ["items"] * 3 + ["users"] * 2 + ["interactions"] * 4

    items = [ItemUpsert.model_validate(r.value) for r in recs[:3]]
    assert items[0].title == "Toy Story" and items[0].text == "Toy Story"
    assert items[0].numbers == {"year": 1995.0}
    assert items[0].categories == ["Animation", "Children's", "Comedy"]
    assert items[1].title == "Misérables, Les"
    assert items[2].numbers == {} and items[2].categories == ["unknown"]

    users = [UserProfile.model_validate(r.value) for r in recs[3:5]]
    assert users[0].features == {"age": 24, "gender": "M", "occupation": "technician", "zip_prefix": "857"}
    assert users[1].features["zip_prefix"] == "T8H"

    inters = [Interaction.model_validate(r.value) for r in recs[5:]]
    assert [(i.user_id, i.item_id) for i in inters] == [("1", "1"), ("1", "2"), ("2", "1"), ("1", "3")]
    assert [i.weight for i in inters] == [1.0, 3.0, 5.0, 4.0]
    assert all(i.kind == "rating" for i in inters)
    assert [int(i.ts.timestamp()) for i in inters] == [880000700, 880000800, 880000900, 880000900]
    assert [r.timestamp for r in recs[5:]] == [880000700_000, 880000800_000, 880000900_000, 880000900_000]
    assert inters[0].event_id == "ml100k-1-1-880000700"
    # Catalog and users are live before the first interaction.
    assert all(r.timestamp == 880000700_000 for r in recs[:5])


def test_both_layouts_give_the_same_recording(tmp_path: Path) -> None:
    convert_movielens(write_original(tmp_path / "a"), tmp_path / "a.jsonl")
    convert_movielens(write_atomic(tmp_path / "b"), tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_conversion_is_deterministic(tmp_path: Path) -> None:
    src = write_original(tmp_path / "src")
    convert_movielens(src, tmp_path / "1.jsonl")
    convert_movielens(src, tmp_path / "2.jsonl")
    assert (tmp_path / "1.jsonl").read_bytes() == (tmp_path / "2.jsonl").read_bytes()


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        convert_movielens(tmp_path, tmp_path / "out.jsonl")
