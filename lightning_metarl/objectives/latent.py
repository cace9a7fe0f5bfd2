"""MAESN's objectives on the latent distribution ``q_omega(z) = N(mu, diag(sigma^2))`` (Gupta et al. 2018).

- :func:`latent_score_loss`: the inner objective on ``omega`` (Eq. 3, estimated with the
  likelihood-ratio gradient of Eq. 5): ``-mean_k log q_omega(z_k) A_k`` over a task's trajectories.
- :func:`kl_to_standard_normal`: the prior term ``KL(q_omega || N(0, I))`` of Eq. 2.
"""

from __future__ import annotations

import torch

from lightning_metarl.nn.distributions import gaussian_kl, gaussian_log_prob


def latent_score_loss(latent: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor,
                      advantage: torch.Tensor) -> torch.Tensor:
    """``-mean_k log q_omega(z_k) A_k`` per task, ``[n_tasks]`` (MAESN, Eq. 3 with the gradient of Eq. 5).

    Args:
        latent: the latents the trajectories were collected with, ``[n_tasks, rollouts, d]``
            (held fixed: they are samples).
        mean, log_std: the task's ``omega = (mu, log sigma)``, ``[n_tasks, d]``, the
            parameters the loss is differentiated in.
        advantage: one advantage per trajectory, ``[n_tasks, rollouts]`` (held fixed).

    Its gradient in ``omega`` is the likelihood-ratio estimate of ``-grad_omega E_{z ~ q_omega}[R]``:
    ``-mean_k grad log q_omega(z_k) A_k``.
    """
    log_q = gaussian_log_prob(mean.unsqueeze(-2), log_std.unsqueeze(-2), latent.detach())
    return -(log_q * advantage.detach()).mean(-1)


def kl_to_standard_normal(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag(sigma^2)) || N(0, I))`` summed over the last dimension (MAESN, Eq. 2).

    In closed form, ``sum_d (sigma_d^2 + mu_d^2 - 1) / 2 - log sigma_d``.
    """
    zero = torch.zeros_like(mean)
    return gaussian_kl(mean, log_std, zero, zero)
