"""Vector index and durable state for towerstream workers.

Pure core: imports neither faust nor kafka, reads no environment, and touches disk only through
the paths it is given. ``VectorIndex`` owns search, ``MetaStore`` (RocksDB) owns durable
key/value state and the id maps, ``save_checkpoint``/``load_latest_checkpoint`` bundle an index
with opaque blobs (e.g. tower weights) atomically.
"""

from __future__ import annotations

from index_store.checkpoint import CheckpointInfo, load_latest_checkpoint, save_checkpoint
from index_store.errors import CheckpointError, DimensionMismatch, IndexStoreError, UnknownId
from index_store.id_map import IdMap
from index_store.item_attributes import ItemAttributes
from index_store.meta_store import MetaStore
from index_store.vector_index import IndexKind, VectorIndex

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "DimensionMismatch",
    "IdMap",
    "IndexKind",
    "IndexStoreError",
    "ItemAttributes",
    "MetaStore",
    "UnknownId",
    "VectorIndex",
    "load_latest_checkpoint",
    "save_checkpoint",
]
