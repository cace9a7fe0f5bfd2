"""Inner and outer surrogate objectives of gradient-based meta-RL, and the TRPO step.

- :mod:`~lightning_metarl.objectives.policy_gradient`: VPG, LVC and likelihood-ratio surrogates.
- :mod:`~lightning_metarl.objectives.dice`: the magic box and the DiCE objectives.
- :mod:`~lightning_metarl.objectives.ppo`: ProMP's clipped surrogate and inner-KL penalty.
- :mod:`~lightning_metarl.objectives.trpo`: conjugate gradient and the trust-region step.
- :mod:`~lightning_metarl.objectives.emaml`: E-MAML's exploration term.

Losses take ``[n_tasks, rollouts, T]`` tensors with a validity mask and return one value per
task (``[n_tasks]``).
"""

from lightning_metarl.objectives.dice import (
    cumulative_log_prob,
    dice_loss,
    dice_meta_loss,
    dice_objective,
    magic_box,
)
from lightning_metarl.objectives.emaml import emaml_loss, standardize_over_meta_batch
from lightning_metarl.objectives.policy_gradient import (
    likelihood_ratio,
    likelihood_ratio_loss,
    lvc_loss,
    per_task_mean,
    vpg_loss,
)
from lightning_metarl.objectives.ppo import (
    KLPenaltyCoefficient,
    ProMPLoss,
    clip_fraction,
    clipped_surrogate_loss,
    kl_penalty,
)
from lightning_metarl.objectives.trpo import (
    TRPOStepInfo,
    conjugate_gradient,
    flat_grad,
    hessian_vector_product,
    trpo_step,
)

__all__ = [
    "KLPenaltyCoefficient",
    "ProMPLoss",
    "TRPOStepInfo",
    "clip_fraction",
    "clipped_surrogate_loss",
    "conjugate_gradient",
    "cumulative_log_prob",
    "dice_loss",
    "dice_meta_loss",
    "dice_objective",
    "emaml_loss",
    "flat_grad",
    "hessian_vector_product",
    "kl_penalty",
    "likelihood_ratio",
    "likelihood_ratio_loss",
    "lvc_loss",
    "magic_box",
    "per_task_mean",
    "standardize_over_meta_batch",
    "trpo_step",
    "vpg_loss",
]
