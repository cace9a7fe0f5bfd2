"""The DiCE magic-box operator and the objectives built on it (Foerster et al. 2018).

``magic_box(x) = exp(x - ⊥x)`` evaluates to 1, and its derivative is ``magic_box(x) * dx``.
Multiplying a cost ``c`` by ``magic_box(sum of the log-probabilities of the samples c depends
on)`` gives a surrogate whose ``n``-th derivative (any ``n``) is an unbiased estimator of the
``n``-th derivative of ``E[c]``: the score-function estimators of every order come out of
repeated autograd calls.

Every objective here takes log-probabilities rather than a policy, so it works for any
parameter subset they depend on: policy weights, a latent ``z`` through the policy, the
variational parameters ``omega`` of a latent distribution (MAESN), or an exploration policy
``mu_phi`` (MAME). They are pure functions on ``[n_tasks, rollouts, T]`` tensors returning one
value per task (``[n_tasks]``); a TorchRL ``LossModule`` would have to carry the per-task
(adapted) parameters, which is awkward, so the algorithms call these directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_metarl.masking import SAMPLE_DIMS, zero_padding


def magic_box(x: torch.Tensor) -> torch.Tensor:
    """The DiCE operator ``exp(x - ⊥x)`` (Foerster et al. 2018, Eq. 5), ``⊥`` being stop-gradient.

    Its value is exactly 1 and ``d magic_box(x) = magic_box(x) dx``, so ``magic_box(log p) * c``
    has the value ``c`` and the derivatives of the score-function estimators of ``E[c]``. Applied
    per time step to ``log pi(a_t|s_t)`` it is the likelihood ratio ``pi / ⊥pi`` of the LVC
    objective; applied to the cumulative log-probability ``tau_t`` it is the DiCE weight.
    """
    return torch.exp(x - x.detach())


def cumulative_log_prob(log_prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``tau_t = sum_{t' <= t} log pi(a_t'|s_t')`` over the valid steps, ``[..., T]``.

    Padding steps contribute 0 (their log-probabilities are ignored, even if not finite).
    """
    return zero_padding(log_prob, mask).cumsum(-1)


def dice_objective(log_prob: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-task DiCE surrogate ``mean_{rollouts, t} magic_box(tau_t) * values_t``, ``[n_tasks]``.

    ``tau_t`` is the cumulative log-probability (:func:`cumulative_log_prob`), so the value at
    step ``t`` is credited to the actions up to ``t`` only (causality). ``values`` may itself be
    differentiable in other parameters: MAME's inner step (MAME, Gurumurthy et al. 2019, §4, the equation after
    Eq. 5) is ``z' = z - alpha * grad_z dice_objective(log mu_phi(a|s), (M_{beta,z} - M)^2)``,
    whose derivative in ``phi`` through ``z'`` is the exploration policy's credit.

    The mean runs over the padded ``rollouts x T`` grid, padding counting as 0 (the reference
    DiCE implementation: ``reduce_mean(magic_box * values * mask)``): a constant divisor, so the
    estimator stays unbiased for ``E[sum_t values_t] / T``.

    Args:
        log_prob: ``log pi(a_t|s_t)``, ``[n_tasks, rollouts, T]``, differentiable.
        values: per-step costs or rewards, ``[n_tasks, rollouts, T]``.
        mask: 1 on valid steps, 0 on padding.
    """
    weights = magic_box(cumulative_log_prob(log_prob, mask))
    return zero_padding(weights * zero_padding(values, mask), mask).mean(SAMPLE_DIMS)


def dice_loss(
    log_prob: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    discount: float = 1.0,
    baseline: torch.Tensor | None = None,
) -> torch.Tensor:
    """The DiCE inner objective ``-mean magic_box(tau_t) (discount^t r_t - b_t)`` per task, ``[n_tasks]``.

    Reference definition (the DiCE-MAML inner objective of the ProMP benchmark code):
    ``b_t`` is a baseline fitted to the discounted per-step rewards ``discount^t r_t``
    (:func:`lightning_metarl.data.returns.discounted_step_rewards`). Its first derivative is the
    REINFORCE gradient with causal reward-to-go discounted from ``t = 0``; its second derivative
    is the unbiased score-function Hessian estimator, including the cross terms between time
    steps that the LVC objective drops.

    The baseline term ``-magic_box(tau_t) b_t`` has zero expectation in every derivative order as
    long as ``b_t`` does not depend on the actions up to ``t`` (e.g. a time-only baseline); a
    state-dependent ``b(s_t)`` correlates with the earlier actions inside ``tau_t`` and makes the
    estimator slightly biased, as in the reference implementation.

    Args:
        log_prob: ``log pi(a_t|s_t)``, ``[n_tasks, rollouts, T]``, differentiable.
        rewards: per-step rewards ``r_t``, ``[n_tasks, rollouts, T]`` (no gradient is taken).
        mask: 1 on valid steps, 0 on padding.
        discount: gamma; ``discount^t`` weights the reward of step ``t``.
        baseline: ``b_t``, ``[n_tasks, rollouts, T]``, or ``None`` for no baseline.
    """
    steps = torch.arange(rewards.shape[-1], dtype=rewards.dtype, device=rewards.device)
    adjusted = rewards.detach() * discount**steps
    if baseline is not None:
        adjusted = adjusted - baseline.detach()
    return -dice_objective(log_prob, adjusted, mask)


def dice_meta_loss(
    outer_loss: torch.Tensor,
    pre_update_log_probs: Sequence[torch.Tensor],
    pre_update_masks: Sequence[torch.Tensor],
    baseline: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Credit the outer loss to the pre-update trajectories it depends on, ``[n_tasks]``.

    The adapted parameters ``theta'_i = U(theta, tau_i)`` are a function of the pre-update
    trajectories ``tau_i``, so the outer cost of task ``i`` is a cost of the samples ``tau_i``
    too; the DiCE rule multiplies it by ``magic_box(log P(tau_i | theta))``:

        ``L_i = magic_box(sum_{k, rollouts, t} log pi(a|s)) * (L_outer_i - b) + b``

    Its value is ``L_outer_i``; its gradient adds the score-function term
    ``(L_outer_i - b) * grad log P(tau_i|theta)``, the exact "pre-update" term ``grad J_pre`` of
    ``d/dtheta E_tau[J(theta'(tau))]`` (MAME, Gurumurthy et al. 2019, §3.2). With the inner step taken on the plain
    :func:`~lightning_metarl.objectives.policy_gradient.vpg_loss` (whose derivative holds the
    samples fixed), ``dice_meta_loss`` gives an unbiased meta-gradient of that objective; the
    DiCE *inner* objective (:func:`dice_loss`) instead adds ProMP's linearised pre-update term
    and is unbiased only to first order in the inner step size (see tests/test_estimators.py).
    E-MAML's exploration term is this estimator with the mean log-probability and standardised
    post-update rewards (:func:`~lightning_metarl.objectives.emaml.emaml_exploration_loss`).

    Args:
        outer_loss: per-task outer loss ``[n_tasks]`` (a function of the adapted parameters).
        pre_update_log_probs: for each inner step, ``log pi_{theta_k}(a|s)`` of its pre-update
            batch, ``[n_tasks, rollouts, T]``, differentiable in the meta-parameters.
        pre_update_masks: the matching masks.
        baseline: a constant (w.r.t. the pre-update samples of the task) subtracted from the
            outer loss in the score term to reduce variance, e.g. the detached mean over tasks;
            ``None`` for none. Any detached value keeps the gradient's expectation unchanged
            when it does not depend on the task's own samples.
    """
    if len(pre_update_log_probs) != len(pre_update_masks):
        raise ValueError("need one mask per pre-update log-probability tensor")
    total = torch.zeros_like(outer_loss)
    for log_prob, mask in zip(pre_update_log_probs, pre_update_masks):
        total = total + zero_padding(log_prob, mask).sum(SAMPLE_DIMS)
    b = torch.zeros_like(outer_loss) if baseline is None else torch.as_tensor(baseline, dtype=outer_loss.dtype)
    b = b.detach()
    return magic_box(total) * (outer_loss - b) + b
