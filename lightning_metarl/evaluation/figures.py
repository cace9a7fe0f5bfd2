"""Pictures for TensorBoard drawn without a plotting library: 2D trajectories, 2D latent distributions."""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: RGB colours: exploration (pre-update) trajectories, exploitation (post-update) ones, the goal.
EXPLORATION, EXPLOITATION, GOAL = (0.2, 0.45, 0.95), (0.9, 0.3, 0.1), (0.1, 0.65, 0.2)


def _draw_path(image: torch.Tensor, pixels: torch.Tensor, colour: Sequence[float]) -> None:
    """Draw the polyline through ``pixels`` (``[T, 2]``, float column/row) into ``image`` ``[3, H, W]``."""
    size = image.shape[-1]
    start, end = pixels[:-1], pixels[1:]
    steps = int((end - start).abs().max().clamp_min(1).ceil().item()) + 1
    fraction = torch.linspace(0, 1, steps).view(1, -1, 1)
    points = (start.unsqueeze(1) + fraction * (end - start).unsqueeze(1)).reshape(-1, 2).round().long()
    inside = ((points >= 0) & (points < size)).all(-1)
    column, row = points[inside].unbind(-1)
    image[:, row, column] = torch.tensor(colour).view(3, 1)


def trajectory_image(
    explore: torch.Tensor,
    exploit: torch.Tensor,
    goal: torch.Tensor,
    extent: float,
    size: int = 256,
) -> torch.Tensor:
    """An RGB image ``[3, size, size]`` (floats in ``[0, 1]``) of one task's trajectories.

    ``explore`` and ``exploit`` are positions ``[rollouts, T, 2]`` (blue and orange), ``goal`` a
    position ``[2]`` (a green square); the picture covers ``[-extent, extent]^2``, y upwards.
    """
    image = torch.ones(3, size, size)

    def to_pixels(xy: torch.Tensor) -> torch.Tensor:
        scaled = (xy.detach().float().cpu() + extent) / (2 * extent) * (size - 1)
        return torch.stack([scaled[..., 0], (size - 1) - scaled[..., 1]], dim=-1)

    for paths, colour in ((explore, EXPLORATION), (exploit, EXPLOITATION)):
        for path in to_pixels(paths):
            _draw_path(image, path, colour)
    column, row = to_pixels(goal).round().long().tolist()
    image[:, max(row - 3, 0):row + 4, max(column - 3, 0):column + 4] = torch.tensor(GOAL).view(3, 1, 1)
    return image


#: RGB colour of the prior's unit circle in :func:`latent_ellipse_image`.
PRIOR = (0.55, 0.55, 0.55)


def latent_ellipse_image(
    pre_mean: torch.Tensor,
    pre_std: torch.Tensor,
    post_mean: torch.Tensor,
    post_std: torch.Tensor,
    extent: float | None = None,
    size: int = 256,
) -> torch.Tensor:
    """An RGB image ``[3, size, size]`` of 2D latent distributions as one-standard-deviation ellipses.

    ``pre_*`` and ``post_*`` are ``[n_tasks, 2]`` means and standard deviations of every task's
    latent distribution before (blue) and after (orange) the inner step, over the prior
    ``N(0, I)`` (grey unit circle): the picture of MAESN's Figure 5a (Gupta et al. 2018). The
    picture covers ``[-extent, extent]^2`` (default: everything drawn, at least the prior).
    """
    angle = torch.linspace(0, 2 * torch.pi, 65)
    unit = torch.stack([angle.cos(), angle.sin()], dim=-1)

    def ellipses(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return mean.detach().float().cpu()[:, None] + std.detach().float().cpu()[:, None] * unit

    pre, post = ellipses(pre_mean, pre_std), ellipses(post_mean, post_std)
    if extent is None:
        extent = 1.1 * max(1.0, pre.abs().max().item(), post.abs().max().item())
    image = torch.ones(3, size, size)

    def to_pixels(xy: torch.Tensor) -> torch.Tensor:
        scaled = (xy + extent) / (2 * extent) * (size - 1)
        return torch.stack([scaled[..., 0], (size - 1) - scaled[..., 1]], dim=-1)

    _draw_path(image, to_pixels(unit), PRIOR)
    for paths, colour in ((pre, EXPLORATION), (post, EXPLOITATION)):
        for path in to_pixels(paths):
            _draw_path(image, path, colour)
    return image
