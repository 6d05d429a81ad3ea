"""Feature encoding: item content and user/context fields -> fixed-size int/float arrays.

Hashing is deterministic (crc32), not Python's salted ``hash``, so the same
content maps to the same buckets in every process and after a restart.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

_TOKEN = re.compile(r"[\w']+", re.UNICODE)


class ItemContentLike(Protocol):
    """Anything with an item's content fields (``ItemUpsert`` fits)."""

    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def categories(self) -> Sequence[str]: ...
    @property
    def numbers(self) -> Mapping[str, float]: ...
    @property
    def creator(self) -> str | None: ...


def hash_token(token: str, buckets: int) -> int:
    """Bucket in [1, buckets): 0 is reserved for padding."""
    return 1 + zlib.crc32(token.encode("utf-8")) % (buckets - 1)


def tokenize(text: str, limit: int) -> list[str]:
    return _TOKEN.findall(text.lower())[:limit]


def _squash(x: float) -> float:
    """Signed log: numbers of any scale land in a range an MLP can use."""
    return math.copysign(math.log1p(abs(x)), x)


def encode_item(
    item: ItemContentLike, *, text_buckets: int, cat_buckets: int, num_slots: int, max_tokens: int, max_cats: int
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """-> tokens (max_tokens,) int64, cats (max_cats,) int64, creator bucket, numbers (num_slots,) float32."""
    toks = np.zeros(max_tokens, dtype=np.int64)
    words = tokenize(f"{item.title} {item.text}", max_tokens)
    # Title words and bigrams of the title both count; duplicates are harmless in a mean bag.
    for j, w in enumerate(words):
        toks[j] = hash_token(w, text_buckets)
    cats = np.zeros(max_cats, dtype=np.int64)
    # Numbers also become tokens: the signed-log slot below cannot tell 1995 from 1998, a token can.
    words = ["c:" + c.lower() for c in item.categories]
    words += [t for name, value in sorted(item.numbers.items()) for t in number_tokens(name, float(value))]
    for j, w in enumerate(words[:max_cats]):
        cats[j] = hash_token(w, cat_buckets)
    creator = hash_token("cr:" + item.creator.lower(), cat_buckets) if item.creator else 0
    nums = np.zeros(num_slots, dtype=np.float32)
    for name, value in item.numbers.items():
        nums[zlib.crc32(name.encode()) % num_slots] += _squash(float(value))
    return toks, cats, creator, nums


class EncodedItems(NamedTuple):
    """Items' content as the trainer's tables hold it, one row per item."""

    tokens: np.ndarray  # (N, max_tokens) int64
    cats: np.ndarray  # (N, max_cats) int64
    creator: np.ndarray  # (N,) int64
    nums: np.ndarray  # (N, num_slots) float32

    def take(self, idx: Sequence[int] | np.ndarray | slice) -> EncodedItems:
        return EncodedItems(self.tokens[idx], self.cats[idx], self.creator[idx], self.nums[idx])


@dataclass(frozen=True)
class ItemEncoding:
    """How content becomes table rows: what ``encode_item`` needs, and nothing of PyTorch.

    Why a value of its own: the five sizes that decide the rows travel together, so that a batch
    of items is encoded with exactly the buckets and slots of the towers that read it.
    """

    text_buckets: int
    cat_buckets: int
    num_slots: int
    max_tokens: int
    max_cats: int

    @classmethod
    def of(cls, cfg: Any) -> ItemEncoding:
        """From a ``TowerConfig`` (or anything with the same fields)."""
        return cls(cfg.text_buckets, cfg.cat_buckets, cfg.num_slots, cfg.max_tokens, cfg.max_cats)

    def encode(self, items: Sequence[ItemContentLike | None]) -> EncodedItems:
        """One row per item; ``None`` (e.g. a delete) gets an empty row."""
        n = len(items)
        out = EncodedItems(np.zeros((n, self.max_tokens), dtype=np.int64), np.zeros((n, self.max_cats), dtype=np.int64),
                           np.zeros(n, dtype=np.int64), np.zeros((n, self.num_slots), dtype=np.float32))
        for j, item in enumerate(items):
            if item is not None:
                out.tokens[j], out.cats[j], out.creator[j], out.nums[j] = encode_item(
                    item, text_buckets=self.text_buckets, cat_buckets=self.cat_buckets, num_slots=self.num_slots,
                    max_tokens=self.max_tokens, max_cats=self.max_cats)
        return out


def number_tokens(name: str, value: float) -> list[str]:
    """Integer-like values (years, counts, ratings): exact and tens tokens; others: a log2 bucket."""
    if not math.isfinite(value):
        return []
    if value == int(value) and abs(value) < 100_000:
        v = int(value)
        return [f"n:{name}={v}", f"n:{name}/10={v // 10}"]
    return [f"n:{name}~{int(round(math.log2(1.0 + abs(value))))}{'-' if value < 0 else ''}"]


def feature_tokens(features: Mapping[str, object], prefix: str) -> list[str]:
    """``{"age": 31, "country": "fr"}`` -> ``["p:age~5", "p:country=fr"]`` (numbers bucketed by log2)."""
    out = []
    for key, value in features.items():
        if isinstance(value, bool) or isinstance(value, str):
            out.append(f"{prefix}{key}={value}")
        elif isinstance(value, (int, float)) and math.isfinite(float(value)):
            out.append(f"{prefix}{key}~{int(round(math.log2(1.0 + abs(float(value)))))}")
    return out


def encode_features(features: Mapping[str, object], prefix: str, *, buckets: int, limit: int) -> np.ndarray:
    ids = np.zeros(limit, dtype=np.int64)
    for j, tok in enumerate(feature_tokens(features, prefix)[:limit]):
        ids[j] = hash_token(tok, buckets)
    return ids
