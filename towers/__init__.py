"""The two towers and their trainer: pure PyTorch + numpy, no I/O.

``TowerConfig`` holds every hyperparameter; ``TwoTowerTrainer`` owns the
feature tables, the two towers, the optimizers and the streaming frequency
estimate used for logQ correction.

The trainer (and so PyTorch) is imported on first use: the items reader process encodes
content with ``towers.features`` and must not pay PyTorch's ~250 MiB for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from towers.config import KIND_WEIGHTS, TowerConfig
from towers.features import EncodedItems, ItemContentLike, ItemEncoding, hash_token

if TYPE_CHECKING:
    from towers.trainer import TwoTowerTrainer, resolve_device

__all__ = [
    "KIND_WEIGHTS",
    "EncodedItems",
    "ItemContentLike",
    "ItemEncoding",
    "TowerConfig",
    "TwoTowerTrainer",
    "hash_token",
    "resolve_device",
]


def __getattr__(name: str) -> Any:
    if name in ("TwoTowerTrainer", "resolve_device"):
        from towers import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'towers' has no attribute {name!r}")
