"""Padding masks: the one place that selects valid steps out of ``[..., rollouts, T]`` tensors.

Masking is a selection (``torch.where``), not a product: padded entries that are not finite
(a diverged simulator, the log-probability of a garbage action) give neither NaN values nor NaN
gradients, since ``torch.where`` sends exactly 0 to the unselected branch.
"""

from __future__ import annotations

import torch

#: The rollout and time dimensions of a ``[n_tasks, rollouts, T]`` batch.
SAMPLE_DIMS = (-2, -1)


def valid(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` as booleans (it may be given as 0/1 numbers)."""
    return mask if mask.dtype == torch.bool else mask != 0


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` on the valid entries, 0 on padding."""
    return torch.where(valid(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Mean of ``x`` over the valid entries (over ``dim``, or all if ``None``); 0 where none is valid."""
    x = zero_padding(x, mask)
    count = valid(mask).to(x.dtype)
    if dim is None:
        return x.sum() / count.sum().clamp_min(1)
    return x.sum(dim) / count.sum(dim).clamp_min(1)


def standardize(x: torch.Tensor, mask: torch.Tensor, dim: tuple[int, ...] | None = None, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` over the valid entries (over ``dim``, or all if ``None``); 0 on padding.

    The population standard deviation, as the reference ``normalize_advantages``.
    """
    ok = valid(mask)
    if dim is None:
        dim = tuple(range(x.dim()))
    count = ok.to(x.dtype).sum(dim, keepdim=True).clamp_min(1)
    mean = zero_padding(x, ok).sum(dim, keepdim=True) / count
    centered = zero_padding(x - mean, ok)
    var = centered.pow(2).sum(dim, keepdim=True) / count
    return centered / (var.sqrt() + eps)
