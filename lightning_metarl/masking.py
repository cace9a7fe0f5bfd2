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
