"""Evaluation helpers: the long meta-test protocol; reading logged curves back from TensorBoard; pictures of trajectories and latents."""

from lightning_metarl.evaluation.adaptation import adaptation_curve, step_scale
from lightning_metarl.evaluation.figures import latent_ellipse_image, trajectory_image
from lightning_metarl.evaluation.tensorboard import logged_twice, read_scalars

__all__ = ["adaptation_curve", "latent_ellipse_image", "logged_twice", "read_scalars", "step_scale", "trajectory_image"]
