"""ProMP's outer objective: PPO's clipped likelihood-ratio surrogate plus an inner-KL penalty.

ALGORITHMS.md, "Outer objectives: ProMP" (Rothfuss et al. 2019, Eq. 15):
``L(theta) = mean_tasks L_clip(theta'_i) + mean_k eta_k * mean_tasks KL(pi_theta_k,old || pi_theta_k)``,
the clipped surrogate on the post-update samples and the KL between the sampling-time and the
current pre-update policy of every inner step ``k`` on that step's samples, with ``eta`` fixed
or adapted after each iteration (:class:`KLPenaltyCoefficient`).

:func:`clipped_surrogate_loss` and :func:`kl_penalty` are pure functions;
:class:`ProMPLoss` is their TorchRL ``LossModule`` form (TensorDict in, ``loss_*`` out) for
callers that have computed the log-probabilities and KLs under the adapted per-task
parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn
from torchrl.objectives import LossModule

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
    ``KL > 1.5 * target`` (ALGORITHMS.md; reference: start 1e-3, target 0.01 on the
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


class ProMPLoss(LossModule):
    """ProMP's outer loss as a TorchRL ``LossModule``: clipped surrogate + inner-KL penalty.

    The input TensorDict has batch size ``[n_tasks]`` and holds, under the configurable keys
    (``set_keys``), the post-update samples' ``log_prob`` (under the current adapted
    parameters ``theta'(theta)``, differentiable), ``sample_log_prob`` (the sampling policy),
    ``advantage`` and ``mask``, each ``[n_tasks, rollouts, T]``, and ``inner_kl``
    ``[n_tasks, n_steps]``: for each inner step, the task's mean
    ``KL(pi_old || pi_theta)`` of the pre-update policy on that step's samples
    (differentiable). The policy evaluation stays with the caller because the adapted
    parameters are recomputed from ``theta`` at every outer step.

    Output keys: ``loss_objective`` (mean over tasks of :func:`clipped_surrogate_loss`),
    ``loss_inner_kl`` (:func:`kl_penalty` with the coefficients of ``kl_coefficient``), and the
    detached diagnostics ``inner_kl`` (``[n_steps]``, what :meth:`KLPenaltyCoefficient.update`
    takes) and ``clip_fraction``. The total loss is the sum of the ``loss_*`` entries.

    Args:
        clip_epsilon: PPO clip range (reference 0.3).
        kl_coefficient: the ``eta`` coefficients; default: fixed 5e-4 for one inner step.
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable input keys (see ``set_keys``)."""

        log_prob: str = "log_prob"
        sample_log_prob: str = "sample_log_prob"
        advantage: str = "advantage"
        mask: str = "mask"
        inner_kl: str = "inner_kl"

    default_keys = _AcceptedKeys

    def __init__(self, clip_epsilon: float = 0.3, kl_coefficient: KLPenaltyCoefficient | None = None) -> None:
        super().__init__()
        if clip_epsilon <= 0:
            raise ValueError(f"clip_epsilon must be positive, got {clip_epsilon}")
        self.clip_epsilon = float(clip_epsilon)
        self.kl_coefficient = kl_coefficient if kl_coefficient is not None else KLPenaltyCoefficient()

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[str]:
        keys = self.tensor_keys
        return [keys.log_prob, keys.sample_log_prob, keys.advantage, keys.mask, keys.inner_kl]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_objective", "loss_inner_kl", "inner_kl", "clip_fraction"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Compute the loss terms from ``tensordict`` (see the class docstring)."""
        keys = self.tensor_keys
        log_prob = tensordict.get(keys.log_prob)
        old_log_prob = tensordict.get(keys.sample_log_prob)
        mask = tensordict.get(keys.mask)
        surrogate = clipped_surrogate_loss(log_prob, old_log_prob, tensordict.get(keys.advantage), mask, self.clip_epsilon)
        inner_kl = tensordict.get(keys.inner_kl)
        return TensorDict(
            {
                "loss_objective": surrogate.mean(),
                "loss_inner_kl": self.kl_coefficient(inner_kl),
                "inner_kl": inner_kl.detach().mean(0),
                "clip_fraction": clip_fraction(log_prob, old_log_prob, mask, self.clip_epsilon).mean(),
            },
            batch_size=[],
        )


__all__ = [
    "KLPenaltyCoefficient",
    "ProMPLoss",
    "clip_fraction",
    "clipped_surrogate_loss",
    "kl_penalty",
]
