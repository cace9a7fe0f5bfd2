"""MAME's self-supervision network ``M_beta,z(s, a) = w_beta^T m_beta(s, a, z)`` (Gurumurthy et al. 2019, §4.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_metarl.data.returns import window_mean
from lightning_metarl.nn.functional import on_valid_steps
from lightning_metarl.nn.policy import concat_inputs, mlp


class SelfSupervisionNetwork(nn.Module):
    """Predicts a task-specific target from a state, an action and the task latent ``z``.

    ``m_beta(s, a, z)`` is an MLP that gives per-step features; the prediction at step ``t`` is
    ``w_beta^T`` applied to the mean of the features over the steps ``[t, t + window)`` of the
    same episode (the truncated ``window``-step successor representation of §4.1.1; ``window =
    1`` predicts from step ``t``'s features alone). ``w_beta`` is linear without bias, as
    ``M = w_beta^T m_beta`` in the paper.

    Args:
        observation_dim: size of ``s``.
        action_dim: size of ``a``.
        latent_dim: size of ``z``.
        target_dim: size of the predicted target (1 for returns and rewards).
        hidden_sizes: hidden widths of ``m_beta`` (paper: the policy's, 64 x 64 tanh).
        feature_dim: size of the features ``m_beta`` outputs.
        activation: ``"tanh"`` or ``"relu"``.
        window: the successor window ``N`` (15 for the ``N``-step return target).
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        latent_dim: int,
        target_dim: int = 1,
        hidden_sizes: Sequence[int] = (64, 64),
        feature_dim: int = 64,
        activation: str = "tanh",
        window: int = 15,
    ) -> None:
        super().__init__()
        self.in_keys = ["observation", "action", "latent"]
        self.window = int(window)
        self.target_dim = int(target_dim)
        self.features = mlp(observation_dim + action_dim + latent_dim, feature_dim, hidden_sizes, activation)
        self.head = nn.Linear(feature_dim, target_dim, bias=False)

    def forward(self, observation: torch.Tensor, action: torch.Tensor, latent: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Predictions ``[..., T, target_dim]`` for ``[..., T, *]`` states and actions; ``latent`` may be per task.

        ``m_beta`` runs on the valid steps of ``mask`` only (0 on padding, which the window excludes).
        """
        inputs = [observation, action, latent]
        if self.target_dim <= self.head.in_features:
            # w^T (window mean of m) = window mean of (w^T m): average the narrower of the two
            per_step = on_valid_steps(lambda *xs: self.head(self.features(concat_inputs(xs))), inputs, mask)
            return window_mean(per_step, mask, self.window)
        features = on_valid_steps(lambda *xs: self.features(concat_inputs(xs)), inputs, mask)
        return self.head(window_mean(features, mask, self.window))
