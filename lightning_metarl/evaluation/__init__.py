"""Evaluation helpers: reading logged curves back from TensorBoard; pictures of trajectories."""

from lightning_metarl.evaluation.figures import trajectory_image
from lightning_metarl.evaluation.tensorboard import read_scalars

__all__ = ["read_scalars", "trajectory_image"]
