"""Evaluation helpers: reading logged curves back from TensorBoard."""

from lightning_metarl.evaluation.tensorboard import read_scalars

__all__ = ["read_scalars"]
