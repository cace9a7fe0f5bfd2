"""One ``LightningModule`` per meta-RL algorithm."""

from lightning_metarl.algorithms.base import MetaRLModule
from lightning_metarl.algorithms.maml import MAML

__all__ = ["MAML", "MetaRLModule"]
