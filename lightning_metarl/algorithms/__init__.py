"""One ``LightningModule`` per meta-RL algorithm.

:class:`MetaRLModule` is the Lightning plumbing; :class:`GradientMetaRLModule` the layer of the
methods that adapt a per-task fast state by gradient steps (MAML, E-MAML, ProMP, CAVIA, MAME, MAESN).
"""

from lightning_metarl.algorithms.base import MetaRLModule
from lightning_metarl.algorithms.cavia import CAVIA
from lightning_metarl.algorithms.emaml import EMAML
from lightning_metarl.algorithms.gradient import GradientMetaRLModule
from lightning_metarl.algorithms.maesn import MAESN, LatentSpace
from lightning_metarl.algorithms.mame import MAME
from lightning_metarl.algorithms.maml import MAML
from lightning_metarl.algorithms.meta_batch import MetaBatch
from lightning_metarl.algorithms.promp import ProMP

__all__ = ["CAVIA", "EMAML", "MAESN", "MAME", "MAML", "GradientMetaRLModule", "LatentSpace", "MetaBatch", "MetaRLModule",
           "ProMP"]
