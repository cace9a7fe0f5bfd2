"""Return estimators over padded trajectories ``[..., T]`` with a validity mask.

All functions take time as the last dimension. ``mask[..., t]`` is 1 for the steps of an
episode and 0 for the padding after an early termination. The value after the last valid step
is taken as 0 (the finite-horizon convention of the reference samplers: paths end at
termination or at the horizon H). Entries on padding never leak into the results, even when
they hold garbage (NaN/inf from a diverged simulator): masking is a selection, not a product.
"""

from __future__ import annotations

import torch

from lightning_metarl.masking import masked_mean, standardize, zero_padding
from lightning_metarl.masking import valid as valid_steps

__all__ = [
    "discount_weights",
    "discounted_returns",
    "discounted_rewards",
    "gae",
    "masked_mean",
    "n_step_returns",
    "window_mean",
    "normalize_advantages",
]


def discount_weights(horizon: int, discount: float, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """``[discount^0, discount^1, ..., discount^(horizon-1)]``."""
    return torch.full((horizon,), float(discount), dtype=dtype, device=device).pow(
        torch.arange(horizon, dtype=dtype, device=device)
    )


def discounted_rewards(rewards: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """Per-step discounted rewards ``discount^t r_t`` (0 on padding).

    The cost of step ``t`` in the DiCE objective and the regression target of its baseline
    (the DiCE-MAML inner objective of the ProMP benchmark code).
    """
    weights = discount_weights(rewards.shape[-1], discount, rewards.dtype, rewards.device)
    return zero_padding(rewards, mask) * weights


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """Reward-to-go ``R_t = sum_{t' >= t} discount^(t'-t) r_t'`` over the valid steps; 0 on padding.

    A 0 in ``mask`` cuts the sum: nothing after it flows back into earlier steps.
    """
    rewards = zero_padding(rewards, mask)
    valid = valid_steps(mask).to(rewards.dtype)
    out = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = (rewards[..., t] + discount * running) * valid[..., t]
        out[..., t] = running
    return out


def n_step_returns(rewards: torch.Tensor, mask: torch.Tensor, discount: float, n: int) -> torch.Tensor:
    """Truncated N-step return ``R^N_t = sum_{k < N} discount^k r_{t+k}`` without bootstrapping; 0 on padding.

    The sum stops at the episode end (``mask``) and at the horizon. MAME's self-supervision
    target (MAME, Gurumurthy et al. 2019, §4.1.1) is the sum of the next ``N = 15`` rewards, i.e. ``discount = 1``.
    """
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    rewards = zero_padding(rewards, mask)
    valid = valid_steps(mask)
    horizon = rewards.shape[-1]
    out = rewards.clone()
    alive = valid  # alive[..., t]: steps t..t+k all belong to the episode
    for k in range(1, min(n, horizon)):
        pad = torch.zeros_like(valid[..., :k])
        alive = alive & torch.cat([valid[..., k:], pad], dim=-1)
        shifted = torch.cat([rewards[..., k:], torch.zeros_like(rewards[..., :k])], dim=-1)
        out = out + (discount**k) * torch.where(alive, shifted, torch.zeros_like(shifted))
    return zero_padding(out, mask)


def window_mean(x: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of ``x[..., t', :]`` over the valid steps ``t' in [t, t + n)`` of the same episode; 0 on padding.

    ``x`` is ``[..., T, F]`` (per-step features), ``mask`` ``[..., T]``. The window stops at the
    episode end and at the horizon and is divided by the number of steps it holds. MAME's
    truncated ``N``-step successor representation (Gurumurthy et al. 2019, §4.1.1) is this mean
    of per-step features with ``n = N``, the window of the ``N``-step return it predicts.
    """
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    ok = valid_steps(mask)
    x = torch.where(ok.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    if n == 1:
        return x
    zero = torch.zeros_like(x[..., :1, :])
    sums = torch.cat([zero, x.cumsum(-2)], dim=-2)  # sums[..., k, :] = sum of x[..., :k, :]
    horizon = x.shape[-2]
    start = torch.arange(horizon, device=x.device)
    end = (start + n).clamp_max(horizon)
    window = sums[..., end, :] - sums[..., start, :]
    # valid steps of the window: a prefix of it, since nothing after an episode end is valid
    counts = torch.cat([torch.zeros_like(ok[..., :1], dtype=torch.long), ok.long().cumsum(-1)], dim=-1)
    count = (counts[..., end] - counts[..., start]).clamp_min(1).to(x.dtype)
    return torch.where(ok.unsqueeze(-1), window / count.unsqueeze(-1), torch.zeros((), dtype=x.dtype, device=x.device))


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
    rewards, values = zero_padding(rewards, mask), zero_padding(values, mask)
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = rewards + discount * next_values - values
    return discounted_returns(deltas, mask, discount * gae_lambda)


def normalize_advantages(advantages: torch.Tensor, mask: torch.Tensor, dims: tuple[int, ...], eps: float = 1e-8) -> torch.Tensor:
    """Standardise ``advantages`` to zero mean and unit variance over ``dims`` (valid entries only).

    :func:`~lightning_metarl.masking.standardize`; the reference implementations normalise per
    task: pass the rollout and time dimensions.
    """
    return standardize(advantages, mask, dims, eps)
