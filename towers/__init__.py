"""The two towers and their trainer: pure PyTorch + numpy, no I/O.

``TowerConfig`` holds every hyperparameter; ``TwoTowerTrainer`` owns the
feature tables, the two towers, the optimizers and the streaming frequency
estimate used for logQ correction.
"""

from towers.config import KIND_WEIGHTS, TowerConfig
from towers.features import ItemContentLike, hash_token
from towers.trainer import TwoTowerTrainer, resolve_device

__all__ = [
    "KIND_WEIGHTS",
    "ItemContentLike",
    "TowerConfig",
    "TwoTowerTrainer",
    "hash_token",
    "resolve_device",
]
