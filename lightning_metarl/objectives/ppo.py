"""ProMP's outer objective: PPO's clipped likelihood-ratio surrogate plus an inner-KL penalty.

ProMP (Rothfuss et al. 2019, Eq. 15):
``L(theta) = mean_tasks L_clip(theta'_i) + mean_k eta_k * mean_tasks KL(pi_theta_k,old || pi_theta_k)``,
the clipped surrogate on the post-update samples and the KL between the sampling-time and the
current pre-update policy of every inner step ``k`` on that step's samples, with ``eta`` fixed
or adapted after each iteration (:class:`KLPenaltyCoefficient`).

:func:`clipped_surrogate_loss` and :func:`kl_penalty` are pure functions; the coefficients are
the one stateful piece (a buffer, so they are checkpointed with the module that owns them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_metarl.masking import zero_padding
from lightning_metarl.objectives.policy_gradient import per_task_mean


def clipped_surrogate_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantage: torch.Tensor,
    mask: torch.Tensor,
    clip_epsilon: float = 0.3,
) -> torch.Tensor:
    """PPO's clipped surrogate ``-mean_t min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t)`` per task.

    ``rho_t = pi(a_t|s_t) / pi_old(a_t|s_t)`` with ``pi_old`` the sampling policy
    (``old_log_prob``, not differentiated); Schulman et al. (2017), Eq. 7. Tensors are
    ``[n_tasks, rollouts, T]``; returns ``[n_tasks]``. Reference ``eps``: 0.3 (ProMP).
    """
    log_prob, old_log_prob = zero_padding(log_prob, mask), zero_padding(old_log_prob.detach(), mask)
    ratio = torch.exp(log_prob - old_log_prob)
    advantage = zero_padding(advantage.detach(), mask)
    clipped = torch.clamp(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon)
    return -per_task_mean(torch.minimum(ratio * advantage, clipped * advantage), mask)


def clip_fraction(log_prob: torch.Tensor, old_log_prob: torch.Tensor, mask: torch.Tensor, clip_epsilon: float) -> torch.Tensor:
    """Fraction of valid samples whose ratio lies outside ``[1-eps, 1+eps]``, per task (a diagnostic)."""
    ratio = torch.exp(zero_padding((log_prob - old_log_prob).detach(), mask))
    outside = ((ratio - 1.0).abs() > clip_epsilon).to(ratio.dtype)
    return per_task_mean(outside, mask)


def approximate_kl(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """Per-sample estimate ``(rho - 1) - log rho`` of ``KL(pi_old || pi)``, ``rho = pi(a|s) / pi_old(a|s)``.

    Unbiased for samples drawn from ``pi_old`` and never negative (Schulman's "k3" estimator, the
    ``approx_kl`` of Stable-Baselines3's PPO); ``old_log_prob`` is not differentiated. Same shape
    as its inputs; average it with :func:`~lightning_metarl.objectives.per_task_mean`.
    """
    log_ratio = log_prob - old_log_prob.detach()
    return torch.expm1(log_ratio) - log_ratio


def kl_penalty(inner_kl: torch.Tensor, coefficient: torch.Tensor | float) -> torch.Tensor:
    """``mean_k eta_k * KL_k``: the inner-KL penalty of ProMP's outer objective.

    ``inner_kl`` holds one mean KL per inner step ``[n_steps]`` (or per task and step
    ``[n_tasks, n_steps]``, averaged over tasks first), ``coefficient`` one ``eta`` per step or
    a scalar. Averaging over the steps follows the reference implementation.
    """
    if inner_kl.dim() == 2:
        inner_kl = inner_kl.mean(0)
    coefficient = torch.as_tensor(coefficient, dtype=inner_kl.dtype, device=inner_kl.device)
    return (coefficient * inner_kl).mean()


class KLPenaltyCoefficient(nn.Module):
    """The inner-KL penalty coefficients ``eta`` (one per inner step), fixed or adaptive.

    With ``target`` set, :meth:`update` applies ProMP's rule to every step's coefficient after
    an outer update: halve ``eta`` if ``KL < target / 1.5``, double it if
    ``KL > 1.5 * target`` (ProMP benchmark code; reference: start 1e-3, target 0.01 on the
    Rand-Params envs). Without ``target`` the coefficients stay at ``init`` (reference: 5e-4).

    The coefficients are a persistent buffer, so they travel with ``state_dict`` /
    ``load_state_dict`` and with the checkpoint of a module that owns this one.

    Args:
        init: initial ``eta``, one value for all steps or one per step.
        num_steps: number of inner steps (ignored when ``init`` is a sequence).
        target: target KL of the adaptive rule; ``None`` keeps ``eta`` fixed.
    """

    value: torch.Tensor

    def __init__(self, init: float | Sequence[float] = 5e-4, num_steps: int = 1, target: float | None = None) -> None:
        super().__init__()
        values = [float(v) for v in init] if isinstance(init, Sequence) else [float(init)] * num_steps
        if not values or any(v < 0 for v in values):
            raise ValueError(f"KL penalty coefficients must be a non-empty list of non-negative numbers, got {init!r}")
        if target is not None and target <= 0:
            raise ValueError(f"target KL must be positive, got {target}")
        self.target = target
        self.register_buffer("value", torch.tensor(values, dtype=torch.get_default_dtype()))

    @property
    def adaptive(self) -> bool:
        """Whether :meth:`update` changes the coefficients."""
        return self.target is not None

    def forward(self, inner_kl: torch.Tensor) -> torch.Tensor:
        """The penalty :func:`kl_penalty` of ``inner_kl`` with the current coefficients."""
        return kl_penalty(inner_kl, self.value.to(inner_kl.dtype))

    @torch.no_grad()
    def update(self, inner_kl: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """Apply the adaptive rule to each step's coefficient given its measured mean KL; return the coefficients."""
        kl = torch.as_tensor(inner_kl, dtype=self.value.dtype, device=self.value.device).detach().reshape(-1)
        if kl.numel() != self.value.numel():
            raise ValueError(f"expected {self.value.numel()} KL values (one per inner step), got {kl.numel()}")
        if self.target is not None:
            factor = torch.ones_like(self.value)
            factor = torch.where(kl < self.target / 1.5, torch.full_like(factor, 0.5), factor)
            factor = torch.where(kl > self.target * 1.5, torch.full_like(factor, 2.0), factor)
            self.value.mul_(factor)
        return self.value.clone()

    def extra_repr(self) -> str:
        return f"value={self.value.tolist()}, target={self.target}"


__all__ = [
    "KLPenaltyCoefficient",
    "clip_fraction",
    "clipped_surrogate_loss",
    "kl_penalty",
]
