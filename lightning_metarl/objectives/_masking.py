"""Masking helpers shared by the objectives (padding never reaches a value or a gradient)."""

from __future__ import annotations

import torch

SAMPLE_DIMS = (-2, -1)


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` on the valid entries, 0 on padding.

    A selection rather than a product: padded entries that are not finite (a diverged
    simulator, the log-probability of a garbage action) give neither NaN values nor NaN
    gradients, since ``torch.where`` sends exactly 0 to the unselected branch.
    """
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
