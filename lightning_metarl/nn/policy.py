"""Gaussian MLP policies with a state-independent log standard deviation (the ProMP policy)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(in_dim: int, out_dim: int, hidden_sizes: Sequence[int], activation: str = "tanh") -> nn.Sequential:
    """A multilayer perceptron ``in_dim -> hidden_sizes -> out_dim`` with a linear output layer."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    sizes = [in_dim, *hidden_sizes]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], out_dim))
    return nn.Sequential(*layers)


class GaussianMLPPolicy(nn.Module):
    """``pi(a|s) = N(mu(s), diag(exp(log_std))^2)`` with ``mu`` an MLP and ``log_std`` a free vector.

    Args:
        observation_dim: size of the observation (plus any latent concatenated to it).
        action_dim: size of the action.
        hidden_sizes: hidden layer widths (reference: 64 x 64).
        activation: ``"tanh"`` (reference) or ``"relu"``.
        init_std: initial standard deviation of every action dimension (reference: 1.0).
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.mean_net = mlp(observation_dim, action_dim, hidden_sizes, activation)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[..., action_dim]`` and log standard deviation (broadcast to the same shape)."""
        mean = self.mean_net(observation)
        return mean, self.log_std.expand_as(mean)

    def log_prob(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``log pi(a|s)`` summed over action dimensions, shape ``[...]``."""
        mean, log_std = self(observation)
        return gaussian_log_prob(mean, log_std, action)

    def entropy(self) -> torch.Tensor:
        """Differential entropy of the action distribution (state independent)."""
        return (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum()


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Log density of a diagonal Gaussian, summed over the last dimension."""
    z = (action - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor, log_std_q: torch.Tensor) -> torch.Tensor:
    """``KL(N_p || N_q)`` of diagonal Gaussians, summed over the last dimension."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)
