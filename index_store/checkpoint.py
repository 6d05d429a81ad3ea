"""Atomic, self-verifying checkpoints of the vector index plus opaque blobs.

Layout under `root`::

    ckpt-<seq:016d>/index.faiss     VectorIndex.save output
    ckpt-<seq:016d>/<name>.bin      one per blob (e.g. torch.save'd tower state; no torch here)
    ckpt-<seq:016d>/meta.json       seq, created_at_ms, caller meta, size + sha256 of every file

A checkpoint is written into ``ckpt-<seq>.tmp``, fsynced, then renamed: a directory named
``ckpt-<seq>`` is complete or was never there. meta.json is written last and lists checksums, so
a checkpoint damaged later (disk, a partial copy) is detected and the previous one used instead.
One writer per root is assumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from index_store._fs import fsync_dir, write_synced
from index_store.errors import CheckpointError, IndexStoreError
from index_store.vector_index import VectorIndex

__all__ = ["CheckpointInfo", "load_latest_checkpoint", "save_checkpoint"]

log = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"^ckpt-(\d{16})$")
_LEFTOVER_RE = re.compile(r"^ckpt-\d{16}\.(tmp|old)$")
_BLOB_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_INDEX_FILE = "index.faiss"
_META_FILE = "meta.json"


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a checkpoint lives and what it says about itself."""

    path: Path
    seq: int
    created_at_ms: int
    meta: dict[str, Any]


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def save_checkpoint(
    root: Path,
    seq: int,
    *,
    index: VectorIndex,
    blobs: Mapping[str, bytes | Callable[[BinaryIO], None]],
    meta: Mapping[str, Any],
    keep: int = 2,
) -> CheckpointInfo:
    """Write checkpoint `seq` atomically, then keep only the newest `keep` checkpoints.

    `seq` is the caller's monotone position (e.g. a journal sequence number or an offset);
    saving the same seq again replaces it. Blob names become ``<name>.bin`` and must be plain
    file-name characters. `meta` must be JSON-serialisable.
    """
    root = Path(root)
    if seq < 0 or keep < 1:
        raise IndexStoreError(f"seq must be >= 0 and keep >= 1, got seq={seq}, keep={keep}")
    for name in blobs:
        if not _BLOB_RE.match(name):
            raise IndexStoreError(f"blob name {name!r} must match {_BLOB_RE.pattern}")
    created_at_ms = time.time_ns() // 1_000_000
    manifest: dict[str, Any] = {
        "format": 1,
        "seq": seq,
        "created_at_ms": created_at_ms,
        "meta": dict(meta),
        "blobs": sorted(blobs),
        "files": {},
    }
    try:
        json.dumps(manifest)  # fail before touching disk
    except (TypeError, ValueError) as e:
        raise IndexStoreError(f"checkpoint meta is not JSON-serialisable: {e}") from e

    name = f"ckpt-{seq:016d}"
    final, tmp, old = root / name, root / f"{name}.tmp", root / f"{name}.old"
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    index.save(tmp / _INDEX_FILE)
    files: dict[str, dict[str, Any]] = manifest["files"]
    files[_INDEX_FILE] = _describe(tmp / _INDEX_FILE)
    for blob_name, data in blobs.items():
        fname = f"{blob_name}.bin"
        if callable(data):  # streamed: a large blob never exists in memory as a whole
            with open(tmp / fname, "wb") as f:
                writer = _HashingWriter(f)
                data(cast(BinaryIO, writer))
                f.flush()
                os.fsync(f.fileno())
            files[fname] = {"size": writer.size, "sha256": writer.sha256.hexdigest()}
            continue
        write_synced(tmp / fname, data)
        files[fname] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    write_synced(tmp / _META_FILE, json.dumps(manifest, indent=1, sort_keys=True).encode())
    fsync_dir(tmp)

    if final.exists():  # same seq saved again (e.g. a replay): swap it out, never half-delete
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(root)
    shutil.rmtree(old, ignore_errors=True)
    _prune(root, keep, protect=final)
    return CheckpointInfo(final, seq, created_at_ms, dict(meta))


def load_latest_checkpoint(
    root: Path, *, threads: int = 1
) -> tuple[CheckpointInfo, VectorIndex, dict[str, bytes]] | None:
    """Newest readable checkpoint under `root`, or None if there is none at all.

    ``*.tmp`` leftovers from a crash are ignored; a checkpoint that fails to parse or whose
    files do not match their recorded size and sha256 is skipped in favour of the previous
    one. CheckpointError (with every failure) only if checkpoints exist but none is readable.
    """
    root = Path(root)
    candidates = _complete(root)
    if not candidates:
        return None
    failures: list[tuple[Path, str]] = []
    for seq, path in reversed(candidates):
        try:
            return _read(path, seq, threads)
        except (OSError, ValueError, KeyError, TypeError, IndexStoreError) as e:
            log.warning("skipping unreadable checkpoint %s: %s", path, e)
            failures.append((path, f"{type(e).__name__}: {e}"))
    raise CheckpointError(f"no readable checkpoint under {root}", failures)


def _read(path: Path, seq: int, threads: int) -> tuple[CheckpointInfo, VectorIndex, dict[str, bytes]]:
    manifest = json.loads((path / _META_FILE).read_bytes())
    if manifest.get("format") != 1 or manifest["seq"] != seq:
        raise ValueError(f"meta.json says format {manifest.get('format')}, seq {manifest.get('seq')}")
    files: dict[str, dict[str, Any]] = manifest["files"]
    if _INDEX_FILE not in files:
        raise ValueError("meta.json lists no index file")
    for fname, expected in files.items():
        actual = _describe(path / fname)
        if actual != {"size": expected["size"], "sha256": expected["sha256"]}:
            raise ValueError(f"{fname} does not match its recorded size/sha256")
    index = VectorIndex.load(path / _INDEX_FILE, threads=threads)
    blobs = {name: (path / f"{name}.bin").read_bytes() for name in manifest["blobs"]}
    info = CheckpointInfo(path, seq, int(manifest["created_at_ms"]), dict(manifest["meta"]))
    return info, index, blobs


def _complete(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint dirs under root, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _prune(root: Path, keep: int, *, protect: Path) -> None:
    """Drop all but the newest `keep` checkpoints (never `protect`) and crash leftovers."""
    complete = _complete(root)
    for _, path in complete[: max(0, len(complete) - keep)]:
        if path == protect:
            continue
        # Rename first so a crash mid-delete never leaves a half-deleted "complete" checkpoint.
        doomed = path.with_name(f"{path.name}.old")
        try:
            os.rename(path, doomed)
        except OSError as e:
            log.warning("could not prune checkpoint %s: %s", path, e)
            continue
        shutil.rmtree(doomed, ignore_errors=True)
    for p in root.iterdir():
        if _LEFTOVER_RE.match(p.name):
            shutil.rmtree(p, ignore_errors=True)


def _describe(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}

