"""Inner and outer surrogate objectives of gradient-based meta-RL, as pure functions.

- :mod:`~lightning_metarl.objectives.policy_gradient`: VPG, LVC and likelihood-ratio surrogates.
- :mod:`~lightning_metarl.objectives.dice`: the magic box and the DiCE objectives.
- :mod:`~lightning_metarl.objectives.ppo`: ProMP's clipped surrogate and inner-KL penalty.
- :mod:`~lightning_metarl.objectives.emaml`: E-MAML's exploration term.

Losses take ``[n_tasks, rollouts, T]`` tensors with a validity mask and return one value per
task (``[n_tasks]``). The only stateful piece is ProMP's adaptive KL coefficient
(:class:`KLPenaltyCoefficient`). The trust-region step is an optimiser: :mod:`lightning_metarl.optim`.
"""

from lightning_metarl.objectives.dice import (
    cumulative_log_prob,
    dice_loss,
    dice_meta_loss,
    dice_objective,
    magic_box,
)
from lightning_metarl.objectives.emaml import emaml_loss
from lightning_metarl.objectives.policy_gradient import (
    likelihood_ratio,
    likelihood_ratio_loss,
    lvc_loss,
    per_task_mean,
    vpg_loss,
)
from lightning_metarl.objectives.ppo import (
    KLPenaltyCoefficient,
    approximate_kl,
    clip_fraction,
    clipped_surrogate_loss,
    kl_penalty,
)

__all__ = [
    "KLPenaltyCoefficient",
    "approximate_kl",
    "clip_fraction",
    "clipped_surrogate_loss",
    "cumulative_log_prob",
    "dice_loss",
    "dice_meta_loss",
    "dice_objective",
    "emaml_loss",
    "kl_penalty",
    "likelihood_ratio",
    "likelihood_ratio_loss",
    "lvc_loss",
    "magic_box",
    "per_task_mean",
    "vpg_loss",
]
