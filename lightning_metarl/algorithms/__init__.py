"""One ``LightningModule`` per meta-RL algorithm."""

from lightning_metarl.algorithms.base import MetaRLModule
from lightning_metarl.algorithms.emaml import EMAML
from lightning_metarl.algorithms.maml import MAML
from lightning_metarl.algorithms.promp import ProMP

__all__ = ["EMAML", "MAML", "MetaRLModule", "ProMP"]
