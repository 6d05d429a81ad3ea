"""Public datasets -> recordings, so ``evaluate`` and ``replay`` run on real data.

MovieLens-100k comes in two layouts and both are read:

* the original GroupLens files: ``u.data`` (tab separated: user, item, rating, unix time),
  ``u.item`` (``|`` separated, latin-1: id, "Title (Year)", release date, video date, IMDb URL,
  19 genre flags), ``u.user`` (``|``: id, age, gender, occupation, zip) and optionally
  ``u.genre`` (genre names; the standard list is used when it is missing);
* RecBole's atomic files ``ml-100k.inter`` / ``.item`` / ``.user``: tab separated with a typed
  header (``user_id:token``, ``movie_title:token_seq``...), as shipped in RecBole's wheel.

The recording holds every item first (title without the year, ``numbers={"year": ...}``,
genres as categories, text = title), then every user profile (age, gender, occupation, zip
prefix), then every rating as an ``Interaction`` in stable timestamp order (ties keep file
order). ``kind="rating"`` and ``weight`` is the star rating (1-5), unchanged: the recording keeps
the raw signal and the learner decides what a rating is worth. ``event_id`` is
``ml100k-<user>-<item>-<unix time>``, so converting twice gives the same file. Item and user
records carry the time of the first rating, so they are live before any interaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from towerstream.errors import TowerstreamError
from towerstream.events import Interaction, ItemUpsert, UserProfile
from towerstream.recording import RecordedRecord, record_of, write_recording

#: Genre order of ``u.item``'s 19 flag columns (``u.genre``), used when ``u.genre`` is absent.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")


class DatasetError(TowerstreamError):
    """The source directory is not a dataset this module can read; ``path`` says which file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class _Item:
    item_id: str
    title: str
    year: int | None
    genres: list[str]


@dataclass
class _Rating:
    user_id: str
    item_id: str
    rating: float
    ts: int


@dataclass
class MovieLens:
    """The parsed dataset, independent of its on-disk layout."""

    items: list[_Item] = field(default_factory=list)
    users: list[tuple[str, dict[str, str | int]]] = field(default_factory=list)
    ratings: list[_Rating] = field(default_factory=list)


def _year(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and len(text) == 4 else None


def _split_title(raw: str) -> tuple[str, int | None]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", 1995)``; titles without a year pass through."""
    m = _TITLE_YEAR.match(raw.strip())
    if m and m.group(1):
        return m.group(1), int(m.group(2))
    return raw.strip(), None


def _user_features(age: str, gender: str, occupation: str, zip_code: str) -> dict[str, str | int]:
    feats: dict[str, str | int] = {}
    if age.strip().isdigit():
        feats["age"] = int(age)
    for name, value in (("gender", gender), ("occupation", occupation)):
        if value.strip():
            feats[name] = value.strip()
    if zip_code.strip():
        # The first three characters name a region; the full code identifies too much.
        feats["zip_prefix"] = zip_code.strip()[:3]
    return feats


def _read_lines(path: Path) -> list[str]:
    # MovieLens-100k titles are latin-1 (e.g. "Misérables"); latin-1 also never fails to decode.
    return [ln for ln in path.read_text(encoding="latin-1").splitlines() if ln.strip()]


def read_original(src: Path) -> MovieLens:
    """Read ``u.data``, ``u.item``, ``u.user`` (and ``u.genre`` if present)."""
    ml = MovieLens()
    genres = list(ML100K_GENRES)
    if (src / "u.genre").exists():
        pairs = [ln.split("|") for ln in _read_lines(src / "u.genre")]
        genres = [name for name, _ in sorted(((p[0], int(p[1])) for p in pairs), key=lambda p: p[1])]
    for ln in _read_lines(src / "u.item"):
        cols = ln.split("|")
        if len(cols) < 5 + len(genres):
            raise DatasetError(src / "u.item", f"expected {5 + len(genres)} columns, got {len(cols)}")
        title, year = _split_title(cols[1])
        if year is None:
            m = _DATE_YEAR.search(cols[2])
            year = int(m.group(1)) if m else None
        flags = cols[5 : 5 + len(genres)]
        ml.items.append(
            _Item(cols[0].strip(), title or "unknown", year, [g for g, f in zip(genres, flags) if f.strip() == "1"])
        )
    if (src / "u.user").exists():
        for ln in _read_lines(src / "u.user"):
            cols = ln.split("|")
            if len(cols) < 5:
                raise DatasetError(src / "u.user", f"expected 5 columns, got {len(cols)}")
            ml.users.append((cols[0].strip(), _user_features(*cols[1:5])))
    for ln in _read_lines(src / "u.data"):
        cols = ln.split("\t")
        if len(cols) < 4:
            raise DatasetError(src / "u.data", f"expected 4 tab-separated columns, got {len(cols)}")
        ml.ratings.append(_Rating(cols[0].strip(), cols[1].strip(), float(cols[2]), int(float(cols[3]))))
    return ml


def _atomic(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a RecBole atomic file as ``{field: text}``; the ``:type`` suffix is dropped."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines:
        raise DatasetError(path, "empty file")
    names = [h.split(":", 1)[0] for h in lines[0].split("\t")]
    for ln in lines[1:]:
        if ln.strip():
            cols = ln.split("\t")
            yield dict(zip(names, cols + [""] * (len(names) - len(cols))))


def read_atomic(src: Path, stem: str) -> MovieLens:
    """Read RecBole's ``<stem>.inter`` / ``.item`` / ``.user``."""
    ml = MovieLens()
    if (src / f"{stem}.item").exists():
        for row in _atomic(src / f"{stem}.item"):
            title, year = _split_title(row.get("movie_title", "") or "unknown")
            year = _year(row.get("release_year", "")) or year
            genres = (row.get("class") or row.get("genre") or "").split()
            ml.items.append(_Item(row["item_id"].strip(), title or "unknown", year, genres))
    if (src / f"{stem}.user").exists():
        for row in _atomic(src / f"{stem}.user"):
            feats = _user_features(
                row.get("age", ""), row.get("gender", ""), row.get("occupation", ""), row.get("zip_code", "")
            )
            ml.users.append((row["user_id"].strip(), feats))
    for row in _atomic(src / f"{stem}.inter"):
        ml.ratings.append(
            _Rating(row["user_id"].strip(), row["item_id"].strip(), float(row["rating"]), int(float(row["timestamp"])))
        )
    return ml


def read_movielens(src: Path) -> MovieLens:
    """Detect the layout in ``src`` and parse it."""
    src = Path(src)
    if (src / "u.data").exists() and (src / "u.item").exists():
        return read_original(src)
    inters = sorted(src.glob("*.inter"))
    if inters:
        return read_atomic(src, inters[0].stem)
    raise DatasetError(src, "no MovieLens files found (want u.data + u.item, or <name>.inter)")


def movielens_records(ml: MovieLens) -> Iterator[RecordedRecord]:
    """Items, then users, then ratings in stable timestamp order."""
    ratings = sorted(ml.ratings, key=lambda r: r.ts)  # sorted() is stable: ties keep file order
    t0 = ratings[0].ts if ratings else 0
    t0_dt = datetime.fromtimestamp(t0, tz=timezone.utc)
    for it in ml.items:
        item = ItemUpsert(
            event_id=f"ml100k-item-{it.item_id}",
            item_id=it.item_id,
            title=it.title,
            text=it.title,
            categories=it.genres,
            numbers={"year": float(it.year)} if it.year is not None else {},
            ts=t0_dt,
        )
        yield record_of("items", item, key=it.item_id, timestamp_ms=t0 * 1000)
    for user_id, feats in ml.users:
        prof = UserProfile(user_id=user_id, features=feats, ts=t0_dt)
        yield record_of("users", prof, key=user_id, timestamp_ms=t0 * 1000)
    for r in ratings:
        ev = Interaction(
            event_id=f"ml100k-{r.user_id}-{r.item_id}-{r.ts}",
            user_id=r.user_id,
            item_id=r.item_id,
            kind="rating",
            weight=r.rating,
            ts=datetime.fromtimestamp(r.ts, tz=timezone.utc),
        )
        yield record_of("interactions", ev, key=r.user_id, timestamp_ms=r.ts * 1000)


def convert_movielens(src_dir: Path, out: Path) -> dict[str, int]:
    """Convert a MovieLens-100k directory (either layout) into a recording at ``out``.

    Returns the counts written: ``{"items": ..., "users": ..., "interactions": ..., "records": ...}``.
    """
    ml = read_movielens(Path(src_dir))
    n = write_recording(movielens_records(ml), out)
    return {"items": len(ml.items), "users": len(ml.users), "interactions": len(ml.ratings), "records": n}
