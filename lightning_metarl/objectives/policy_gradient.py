"""Policy-gradient surrogate objectives, one value per task.

Every function takes tensors ``[n_tasks, rollouts, T]`` and returns a loss ``[n_tasks]`` (the
masked mean over a task's samples), to be summed over tasks for a batched inner step (each
task's gradient then lands on its own slice of the per-task parameters) or averaged for the
outer step.
"""

from __future__ import annotations

import torch

_SAMPLE_DIMS = (-2, -1)


def per_task_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the valid samples of each task: ``[n_tasks, rollouts, T] -> [n_tasks]``."""
    mask = mask.to(x.dtype)
    return (x * mask).sum(_SAMPLE_DIMS) / mask.sum(_SAMPLE_DIMS).clamp_min(1)


def vpg_loss(log_prob: torch.Tensor, advantage: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The REINFORCE ("log-likelihood") surrogate ``-mean_t log pi(a_t|s_t) A_t`` per task.

    Its gradient is the vanilla policy gradient; used as MAML's inner objective (seed 000,
    Eq. 1, ``U(theta, T)``) and as the MAML-VPG outer objective on post-update samples.
    """
    return -per_task_mean(log_prob * advantage.detach(), mask)
