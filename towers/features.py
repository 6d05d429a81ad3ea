"""Feature encoding: item content and user/context fields -> fixed-size int/float arrays.

Hashing is deterministic (crc32), not Python's salted ``hash``, so the same
content maps to the same buckets in every process and after a restart.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Protocol

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
