"""Inner and outer surrogate objectives of gradient-based meta-RL."""

from lightning_metarl.objectives.policy_gradient import per_task_mean, vpg_loss

__all__ = ["per_task_mean", "vpg_loss"]
