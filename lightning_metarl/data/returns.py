"""Return estimators over padded trajectories ``[..., T]`` with a validity mask.

All functions take time as the last dimension. ``mask[..., t]`` is 1 for the steps of an
episode and 0 for the padding after an early termination. The value after the last valid step
is taken as 0 (the finite-horizon convention of the reference samplers: paths end at
termination or at the horizon H).
"""

from __future__ import annotations

import torch


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """Reward-to-go ``R_t = sum_{t' >= t} discount^(t'-t) r_t'`` over the valid steps; 0 on padding."""
    rewards = rewards * mask
    out = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + discount * running * mask[..., t]
        out[..., t] = running
    return out * mask


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    discount: float,
    gae_lambda: float,
) -> torch.Tensor:
    """Generalised advantage estimate (Schulman et al. 2016, Eq. 16) on padded paths.

    ``delta_t = r_t + discount * V(s_{t+1}) - V(s_t)`` with ``V(s_{t+1}) = 0`` after the last
    valid step; ``A_t = sum_l (discount * gae_lambda)^l delta_{t+l}``. With ``gae_lambda = 1``
    this is ``discounted_returns - values``. Returns 0 on padding.
    """
    rewards, values = rewards * mask, values * mask
    next_values = torch.cat([values[..., 1:] * mask[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = rewards + discount * next_values - values
    return discounted_returns(deltas, mask, discount * gae_lambda)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1 (over ``dim``, or all if ``None``)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1)


def normalize_advantages(advantages: torch.Tensor, mask: torch.Tensor, dims: tuple[int, ...], eps: float = 1e-8) -> torch.Tensor:
    """Standardise ``advantages`` to zero mean and unit variance over ``dims`` (valid entries only).

    The reference implementations normalise per task: pass the rollout and time dimensions.
    """
    mean = masked_mean(advantages, mask, dims)
    for d in sorted(d % advantages.dim() for d in dims):
        mean = mean.unsqueeze(d)
    centered = (advantages - mean) * mask
    var = masked_mean(centered.pow(2), mask, dims)
    for d in sorted(d % advantages.dim() for d in dims):
        var = var.unsqueeze(d)
    return centered / (var.sqrt() + eps)
