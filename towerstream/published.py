"""What the trainer publishes for serving replicas, and its encoding on the wire.

The trainer is the only writer; replicas (``towerstream serve``) read every partition of these
topics without a consumer group. All are compacted in production (``cleanup.policy=compact``), so
the latest record per key is what a replica started a month later bootstraps from.

``<prefix>.item-vectors`` (key: item id, UTF-8)
    One record per item per model version: the item tower's output for that item at that version,
    with what serving filters on. A tombstone (value ``None``) deletes the item at every version.

``<prefix>.model`` (keys: ``part-<i>`` and ``version``)
    The serving model of a version (user tower weights, the user id table and profile features,
    the index's coarse quantizer) as one ``numpy.savez`` payload cut into ``part-<i>`` records,
    then one ``version`` record (``VersionComplete``) saying the version is finished: how many parts
    it has, and the item-vectors topic's end offsets once every vector of that version was written.
    A replica switches to version V only when it holds every part of V and has read the item-vectors
    topic up to those offsets; until then it answers from the version before, whole.

Versions strictly increase, also across trainer restarts (a restarted trainer never reuses the
number of a version it may have started to publish).
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "ITEM_VECTORS", "MODEL", "PART_BYTES", "VERSION_KEY", "ItemVector", "ModelPart", "VersionComplete",
    "decode_item_vector", "decode_model_part", "encode_item_vector", "encode_model_part", "join_parts",
    "pack_model", "part_key", "split_model", "unpack_model",
]

#: Logical topic names (``settings.topic(...)``).
ITEM_VECTORS = "item-vectors"
MODEL = "model"
VERSION_KEY = b"version"
#: Payload bytes per model part: under Kafka's default 1 MB ``max.message.bytes`` with room to spare.
PART_BYTES = 900_000

_ITEM_FORMAT = 1
#: format (u8), version (i64), dim (u16), meta length (u32); then dim float32, then meta JSON.
_ITEM_HEAD = struct.Struct("<BqHI")
_PART_FORMAT = 1
#: format (u8), version (i64), index (u32), count (u32); then the payload slice.
_PART_HEAD = struct.Struct("<BqII")


@dataclass(frozen=True)
class ItemVector:
    """One item's vector at one model version, with what serving filters and shows."""

    item_id: str
    version: int
    vector: npt.NDArray[np.float32]
    categories: tuple[str, ...] = ()
    creator: str | None = None
    title: str | None = None


def encode_item_vector(v: ItemVector) -> bytes:
    vec = np.ascontiguousarray(v.vector, dtype="<f4")
    meta = json.dumps({"c": list(v.categories), "r": v.creator, "t": v.title}, separators=(",", ":")).encode()
    return _ITEM_HEAD.pack(_ITEM_FORMAT, v.version, vec.shape[0], len(meta)) + vec.tobytes() + meta


def decode_item_vector(key: bytes, value: bytes) -> ItemVector:
    """Raises ``ValueError`` on a record this code cannot read (unknown format, truncated)."""
    if len(value) < _ITEM_HEAD.size:
        raise ValueError(f"item vector record of {len(value)} bytes is shorter than its header")
    fmt, version, dim, n_meta = _ITEM_HEAD.unpack_from(value)
    if fmt != _ITEM_FORMAT:
        raise ValueError(f"item vector format {fmt} is not {_ITEM_FORMAT}")
    end = _ITEM_HEAD.size + 4 * dim
    if len(value) != end + n_meta:
        raise ValueError(f"item vector record is {len(value)} bytes, its header says {end + n_meta}")
    vec = np.frombuffer(value, dtype="<f4", count=dim, offset=_ITEM_HEAD.size).astype(np.float32)
    meta = json.loads(value[end:])
    return ItemVector(key.decode(), version, vec, tuple(meta.get("c") or ()), meta.get("r"), meta.get("t"))


@dataclass(frozen=True)
class ModelPart:
    version: int
    index: int
    count: int
    payload: bytes


def part_key(index: int) -> bytes:
    return f"part-{index}".encode()


def encode_model_part(p: ModelPart) -> bytes:
    return _PART_HEAD.pack(_PART_FORMAT, p.version, p.index, p.count) + p.payload


def decode_model_part(value: bytes) -> ModelPart:
    if len(value) < _PART_HEAD.size:
        raise ValueError(f"model part of {len(value)} bytes is shorter than its header")
    fmt, version, index, count = _PART_HEAD.unpack_from(value)
    if fmt != _PART_FORMAT:
        raise ValueError(f"model part format {fmt} is not {_PART_FORMAT}")
    if not 0 <= index < count:
        raise ValueError(f"model part {index} of {count}")
    return ModelPart(version, index, count, value[_PART_HEAD.size:])


@dataclass(frozen=True)
class VersionComplete:
    """The record that finishes a version (key ``version`` on the model topic, JSON value)."""

    version: int
    parts: int
    #: item-vectors partition -> offset after the last record of this version's sweep.
    item_offsets: dict[int, int]
    #: Live items in the version (every one has a record of this version before ``item_offsets``).
    items: int
    #: Trainer wall clock (ms) when the version's weights were taken and when it was finished.
    taken_ms: int
    finished_ms: int
    #: Interactions trained into the version (the trainer's ``trained_in_model``).
    trained: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        body = {"version": self.version, "parts": self.parts,
                "item_offsets": {str(p): o for p, o in self.item_offsets.items()}, "items": self.items,
                "taken_ms": self.taken_ms, "finished_ms": self.finished_ms, "trained": self.trained,
                "extra": self.extra}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes) -> VersionComplete:
        d = json.loads(value)
        return cls(int(d["version"]), int(d["parts"]), {int(p): int(o) for p, o in d["item_offsets"].items()},
                   int(d["items"]), int(d["taken_ms"]), int(d["finished_ms"]), int(d.get("trained", 0)),
                   dict(d.get("extra") or {}))


def pack_model(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """Arrays + JSON-able meta -> one payload (``numpy.savez``, no pickles)."""
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def unpack_model(payload: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        meta = json.loads(z["__meta__"].tobytes())
    return arrays, meta


def split_model(version: int, payload: bytes, part_bytes: int = PART_BYTES) -> list[ModelPart]:
    n = max(1, -(-len(payload) // part_bytes))
    return [ModelPart(version, i, n, payload[i * part_bytes:(i + 1) * part_bytes]) for i in range(n)]


def join_parts(parts: list[ModelPart]) -> bytes:
    """Parts of one version, any order -> the payload; ``ValueError`` if any is missing or foreign."""
    if not parts:
        raise ValueError("no parts")
    version, count = parts[0].version, parts[0].count
    by_index = {p.index: p for p in parts if p.version == version and p.count == count}
    if len(by_index) != count or len(parts) != count:
        raise ValueError(f"version {version}: {len(by_index)} of {count} parts")
    return b"".join(by_index[i].payload for i in range(count))
