"""lightning_metarl: gradient-based meta-reinforcement learning on PyTorch Lightning and TorchRL.

The packages:

- :mod:`lightning_metarl.envs`: task families as natively batched TorchRL environments.
- :mod:`lightning_metarl.data`: batched trajectory collection and return estimators.
- :mod:`lightning_metarl.nn`: policies, per-task functional evaluation, baselines.
- :mod:`lightning_metarl.objectives`: inner and outer surrogate objectives.
- :mod:`lightning_metarl.algorithms`: one ``LightningModule`` per meta-RL algorithm.
"""

from lightning_metarl.errors import MetaRLError

__version__ = "0.1.0.dev0"

__all__ = ["MetaRLError", "__version__"]
