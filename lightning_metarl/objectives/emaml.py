"""E-MAML's exploration term (Stadie et al. 2018; "formulation I" of ProMP, Rothfuss et al. 2019, §4).

The gradient of ``E_tau[J(theta'(tau))]`` has a term for the pre-update sampling
distribution, ``E[J(theta') grad log P(tau | theta)]`` (``grad J_pre``, MAME, Gurumurthy et al. 2019, §3.2), that
the MAML meta-gradient through a log-likelihood inner step omits. E-MAML adds it as a
REINFORCE term: the post-update performance times the log-likelihood of the pre-update
actions. The ProMP benchmark code uses the task's mean
post-update reward, standardised over the meta-batch, and the mean (not the sum) of the
pre-update log-likelihoods, so the term is a rescaled, baselined version of that gradient.
For the unbiased form (sum of the log-probabilities, raw outer loss) see
:func:`lightning_metarl.objectives.dice.dice_meta_loss`.

A pure function batched over tasks, added to the outer loss of the algorithm.
"""

from __future__ import annotations

import torch

from lightning_metarl.distributed import standardize_over_ranks
from lightning_metarl.objectives.policy_gradient import per_task_mean


def emaml_loss(
    pre_log_prob: torch.Tensor,
    pre_mask: torch.Tensor,
    post_rewards: torch.Tensor,
    post_mask: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """E-MAML's term ``-mean_t(standardised post-update r_t) * mean_t log pi_theta(pre-update a_t)`` per task.

    Args:
        pre_log_prob: ``[n_tasks, rollouts, T]`` log-probabilities of the first pre-update
            batch's actions under the meta-parameters ``theta`` (differentiable).
        pre_mask: validity of the pre-update steps.
        post_rewards: ``[n_tasks, rollouts, T]`` post-update rewards (data), standardised with
            over all tasks' valid steps (of every process of a multi-process run:
            :func:`~lightning_metarl.distributed.standardize_over_ranks`).
        post_mask: validity of the post-update steps.
        eps: added to the standard deviation.

    Returns:
        ``[n_tasks]``, to be averaged over tasks and added to the outer loss.
    """
    adjusted = standardize_over_ranks(post_rewards.detach(), post_mask, eps)
    return -per_task_mean(adjusted, post_mask) * per_task_mean(pre_log_prob, pre_mask)
