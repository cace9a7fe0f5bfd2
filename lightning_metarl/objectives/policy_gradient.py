"""Policy-gradient surrogate objectives, one value per task.

Every function takes tensors ``[n_tasks, rollouts, T]`` and returns a loss ``[n_tasks]`` (the
masked mean over a task's valid samples), to be summed over tasks for a batched inner step (each
task's gradient then lands on its own slice of the per-task parameters) or averaged for the
outer step. Padding never produces a value or a gradient, even where it holds non-finite
numbers. They take log-probabilities, not a policy, so they apply to any parameters the
log-probabilities depend on (policy weights, a latent ``z``, a latent distribution ``omega``).
They are pure functions rather than TorchRL ``LossModule`` s because the parameters are per-task
TensorDicts produced by the inner step.
"""

from __future__ import annotations

import torch

from lightning_metarl.masking import SAMPLE_DIMS, masked_mean, zero_padding
from lightning_metarl.objectives.dice import magic_box


def per_task_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the valid samples of each task: ``[n_tasks, rollouts, T] -> [n_tasks]``.

    Padding entries are ignored even if they are not finite; a task without valid samples gives 0.
    """
    return masked_mean(x, mask, SAMPLE_DIMS)


def vpg_loss(log_prob: torch.Tensor, advantage: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The REINFORCE ("log-likelihood") surrogate ``-mean_t log pi(a_t|s_t) A_t`` per task.

    Its gradient is the vanilla policy gradient; used as MAML's inner objective (MAME, Gurumurthy et al. 2019,
    Eq. 1, ``U(theta, T)``) and as the MAML-VPG outer objective on post-update samples. Its
    second derivative holds the samples fixed (``R(tau) grad^2 log pi(tau)``), so a meta-gradient
    through an inner step on it has only the ``grad J_post`` term of MAME, Gurumurthy et al. 2019, §3.2.
    """
    log_prob, advantage = zero_padding(log_prob, mask), zero_padding(advantage.detach(), mask)
    return -per_task_mean(log_prob * advantage, mask)


def likelihood_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """``pi_theta(a|s) / pi_old(a|s) = exp(log_prob - old_log_prob)``, with ``old_log_prob`` held constant."""
    return torch.exp(log_prob - old_log_prob.detach())


def likelihood_ratio_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantage: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Importance-sampled surrogate ``-mean_t pi_theta(a_t|s_t) / pi_old(a_t|s_t) A_t`` per task.

    With ``old_log_prob`` the sampling policy's log-probabilities this is the TRPO surrogate
    (Schulman et al. 2015, Eq. 14) used by MAML-TRPO on post-update samples, and ProMP's inner
    objective evaluated away from the sampling parameters (several outer steps per batch). At
    ``theta = theta_old`` it equals :func:`lvc_loss` in value and in all derivatives.
    """
    log_prob, old_log_prob = zero_padding(log_prob, mask), zero_padding(old_log_prob, mask)
    ratio = likelihood_ratio(log_prob, old_log_prob)
    return -per_task_mean(ratio * zero_padding(advantage.detach(), mask), mask)


def lvc_loss(log_prob: torch.Tensor, advantage: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Low-variance curvature objective ``-mean_t pi(a_t|s_t) / ⊥pi(a_t|s_t) A_t`` per task (ProMP, Eq. 10).

    The per-step ratio is ``magic_box(log pi(a_t|s_t))``. Its gradient equals the VPG gradient;
    its Hessian ``mean_t (grad log pi grad log pi^T + grad^2 log pi) A_t`` keeps only the
    same-step terms of the DiCE Hessian (:func:`~lightning_metarl.objectives.dice.dice_loss`),
    dropping the cross terms ``grad log pi(a_t') grad log pi(a_t)^T`` with ``t' != t``. That is
    what lowers its variance; it is biased when earlier actions change later states' advantages
    (no bias when actions do not influence the future, e.g. the bandit of tests/test_estimators.py).
    """
    log_prob, advantage = zero_padding(log_prob, mask), zero_padding(advantage.detach(), mask)
    return -per_task_mean(magic_box(log_prob) * advantage, mask)
