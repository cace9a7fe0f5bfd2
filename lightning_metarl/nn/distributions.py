"""The diagonal Gaussian action distribution of every policy here, as a ``torch.distributions`` object."""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution, constraints
from torch.distributions.kl import register_kl


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Log density of a diagonal Gaussian, summed over the last dimension."""
    z = (action - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor, log_std_q: torch.Tensor) -> torch.Tensor:
    """``KL(N_p || N_q)`` of diagonal Gaussians, summed over the last dimension."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)


class DiagGaussian(Distribution):
    """``N(mean, diag(exp(log_std))^2)`` over the last dimension (the event), parameterised by the log-std.

    A ``torch.distributions.Distribution`` whose :meth:`log_prob` and ``kl_divergence`` are
    the closed forms :func:`gaussian_log_prob` and :func:`gaussian_kl` (the formulas of the
    reference implementations), differentiable in ``mean`` and ``log_std``. :meth:`sample_with`
    draws from an explicit ``torch.Generator`` (collection is seeded per run).
    """

    arg_constraints = {"mean": constraints.real, "log_std": constraints.real}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor) -> None:
        self.loc, self.log_std = mean, log_std
        super().__init__(mean.shape[:-1], mean.shape[-1:], validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def stddev(self) -> torch.Tensor:
        return self.log_std.exp()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log p(value)``, summed over the event dimension."""
        return gaussian_log_prob(self.loc, self.log_std, value)

    def entropy(self) -> torch.Tensor:
        """Differential entropy, summed over the event dimension."""
        return (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)

    def sample_with(self, generator: torch.Generator) -> torch.Tensor:
        """``mean + std * noise`` with standard normal noise drawn from ``generator`` (on its device)."""
        noise = torch.randn(self.loc.shape, generator=generator, dtype=self.loc.dtype, device=generator.device)
        return self.loc + self.log_std.exp() * noise.to(self.loc.device)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        return self.loc + self.log_std.exp() * torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)


@register_kl(DiagGaussian, DiagGaussian)
def _kl_diag_gaussian(p: DiagGaussian, q: DiagGaussian) -> torch.Tensor:
    return gaussian_kl(p.loc, p.log_std, q.loc, q.log_std)
