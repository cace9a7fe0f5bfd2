"""MAESN's latent-conditioned policy ``pi_theta(a | s, z)`` with ``z = mu + eps * sigma`` drawn once per episode.

MAESN (Gupta et al. 2018, §3.2) feeds the policy a latent ``z ~ q_omega = N(mu, diag(sigma^2))``
drawn once per episode, so that its randomness is coherent over the whole episode. The
collected batch stores the standard-normal draw ``eps`` (``"latent_noise"``), not ``z``: the
policy computes ``z = mu + eps * exp(log_sigma)`` from the task's variational parameters
``omega = (mu, log_sigma)`` (``"latent_mean"``, ``"latent_log_std"``), so that the likelihood of
the batch's actions is a differentiable function of ``omega`` with the episode's noise held fixed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_metarl.nn.policy import GaussianMLPPolicy, expand_to

#: Policy inputs: the episode's standard-normal draw and the task's variational parameters.
LATENT_NOISE, LATENT_MEAN, LATENT_LOG_STD = "latent_noise", "latent_mean", "latent_log_std"
#: The latent itself, ``z = mu + eps * sigma`` (written into collected batches for the inner step).
LATENT = "latent"


def latent_sample(noise: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``z = mu + eps * exp(log_sigma)``; ``mean``/``log_std`` (``[*P, d]``) broadcast over ``noise``'s (``[*B, d]``) extra dims."""
    batch = noise.shape[:-1]
    return expand_to(mean, batch) + noise * expand_to(log_std, batch).exp()


def standard_normal_sampler(size: int):
    """A per-episode latent sampler for :class:`~lightning_metarl.nn.PolicyActor`: ``eps ~ N(0, I_size)`` per copy."""

    def sample(generator: torch.Generator, batch_size: torch.Size) -> torch.Tensor:
        return torch.randn((*batch_size, size), generator=generator, device=generator.device)

    return sample


class LatentPolicy(nn.Module):
    """``pi_theta(a | s, z)``: a :class:`GaussianMLPPolicy` on ``[s, z]`` with ``z = mu + eps * sigma`` (MAESN, §3.2).

    :attr:`in_keys` are ``("observation", "latent_noise", "latent_mean", "latent_log_std")``;
    the variational parameters may be given per task (``[n_tasks, d]``) and are broadcast over
    rollouts and time. The policy's own parameters are only those of the Gaussian MLP (the
    variational parameters live in the algorithm's per-task tables).

    Args:
        observation_dim, action_dim, hidden_sizes, activation, init_std: as
            :class:`GaussianMLPPolicy` (MAESN: 100 x 100 ReLU, std 1).
        latent_size: dimension ``d`` of ``z`` (MAESN: 2).
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        latent_size: int,
        hidden_sizes: Sequence[int] = (100, 100),
        activation: str = "relu",
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.latent_size = latent_size
        self.in_keys: list[str] = ["observation", LATENT_NOISE, LATENT_MEAN, LATENT_LOG_STD]
        self.net = GaussianMLPPolicy(observation_dim, action_dim, hidden_sizes, activation, init_std,
                                     extra_inputs={LATENT: latent_size})

    def forward(self, observation: torch.Tensor, noise: torch.Tensor, mean: torch.Tensor,
                log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log standard deviation of the action for ``z = mean + noise * exp(log_std)``."""
        latent = latent_sample(noise, mean, log_std)
        return self.net(observation, latent)

    @property
    def log_std(self) -> nn.Parameter:
        """The action log standard deviation (state independent)."""
        return self.net.log_std

    def entropy(self) -> torch.Tensor:
        """Differential entropy of the action distribution given ``z``."""
        return self.net.entropy()
