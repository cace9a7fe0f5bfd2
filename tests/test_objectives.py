"""Surrogate objectives on hand-checked values: VPG, LVC, likelihood ratio, DiCE, PPO clip, KL penalty, E-MAML."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_metarl.masking import standardize
from lightning_metarl.nn import gaussian_kl
from lightning_metarl.objectives import (
    KLPenaltyCoefficient,
    clip_fraction,
    clipped_surrogate_loss,
    cumulative_log_prob,
    dice_loss,
    dice_meta_loss,
    dice_objective,
    emaml_loss,
    kl_penalty,
    likelihood_ratio_loss,
    lvc_loss,
    magic_box,
    per_task_mean,
    vpg_loss,
)

NAN = float("nan")


def t(x, **kw) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, **kw)


# ---------------------------------------------------------------------------- per-task means
def test_per_task_mean_ignores_padding_even_if_not_finite():
    x = t([[[1.0, 2.0, NAN]], [[4.0, math.inf, 6.0]]])
    mask = torch.tensor([[[1, 1, 0]], [[1, 0, 0]]])
    torch.testing.assert_close(per_task_mean(x, mask), t([1.5, 4.0]))
    # a task with no valid sample gives 0, not NaN
    torch.testing.assert_close(per_task_mean(x, torch.zeros_like(mask)), t([0.0, 0.0]))


def test_vpg_loss_value_and_gradient():
    log_prob = t([[[-1.0, -2.0], [-0.5, 3.0]]], requires_grad=True)
    advantage = t([[[2.0, 1.0], [-4.0, 100.0]]])
    mask = torch.tensor([[[1, 1], [1, 0]]])
    loss = vpg_loss(log_prob, advantage, mask)
    # -(-2 - 2 + 2) / 3
    torch.testing.assert_close(loss, t([2.0 / 3.0]))
    (grad,) = torch.autograd.grad(loss.sum(), log_prob)
    torch.testing.assert_close(grad, t([[[-2.0, -1.0], [4.0, 0.0]]]) / 3)


def test_lvc_equals_vpg_in_value_of_gradient_but_not_of_loss():
    log_prob = t([[[-1.0, -2.0, -0.3]]], requires_grad=True)
    advantage = t([[[2.0, 1.0, -1.5]]])
    mask = torch.ones(1, 1, 3)
    lvc = lvc_loss(log_prob, advantage, mask)
    torch.testing.assert_close(lvc, t([-(2.0 + 1.0 - 1.5) / 3]))  # ratios are 1
    (g_lvc,) = torch.autograd.grad(lvc.sum(), log_prob)
    (g_vpg,) = torch.autograd.grad(vpg_loss(log_prob, advantage, mask).sum(), log_prob)
    torch.testing.assert_close(g_lvc, g_vpg)


def test_likelihood_ratio_loss_hand_values():
    old = t([[[-1.0, -2.0]]])
    log_prob = (old + t([[[math.log(1.5), math.log(0.5)]]])).requires_grad_(True)
    advantage = t([[[2.0, -4.0]]])
    loss = likelihood_ratio_loss(log_prob, old, advantage, torch.ones(1, 1, 2))
    torch.testing.assert_close(loss, t([-(1.5 * 2.0 + 0.5 * -4.0) / 2]))
    (grad,) = torch.autograd.grad(loss.sum(), log_prob)  # d/dlogp of -ratio*A/2
    torch.testing.assert_close(grad, t([[[-1.5, 1.0]]]))
    # at the sampling parameters it is the LVC objective, derivatives included
    at_old = old.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(likelihood_ratio_loss(at_old, old, advantage, torch.ones(1, 1, 2)).sum(), at_old)
    (g2,) = torch.autograd.grad(lvc_loss(at_old, advantage, torch.ones(1, 1, 2)).sum(), at_old)
    torch.testing.assert_close(g1, g2)


# ---------------------------------------------------------------------------- DiCE
def test_magic_box_is_one_with_the_derivative_of_its_argument():
    x = t([0.3, -2.0], requires_grad=True)
    box = magic_box(x * x)
    torch.testing.assert_close(box, t([1.0, 1.0]))
    (grad,) = torch.autograd.grad(box.sum(), x, create_graph=True)
    torch.testing.assert_close(grad, 2 * x.detach())
    (second,) = torch.autograd.grad(grad.sum(), x)  # d/dx (2x * box) = 2 + (2x)^2
    torch.testing.assert_close(second, 2 + 4 * x.detach() ** 2)


def test_cumulative_log_prob_stops_at_padding():
    log_prob = t([[[-1.0, -2.0, NAN, NAN]]])
    mask = torch.tensor([[[1, 1, 0, 0]]])
    torch.testing.assert_close(cumulative_log_prob(log_prob, mask), t([[[-1.0, -3.0, -3.0, -3.0]]]))


def test_dice_loss_value_uses_discounted_rewards_minus_baseline_over_the_padded_grid():
    log_prob = t([[[-1.0, -2.0, -3.0], [-0.5, NAN, NAN]]], requires_grad=True)
    rewards = t([[[1.0, 2.0, 4.0], [3.0, NAN, NAN]]])
    baseline = t([[[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]]])
    mask = torch.tensor([[[1, 1, 1], [1, 0, 0]]])
    loss = dice_loss(log_prob, rewards, mask, discount=0.5, baseline=baseline)
    # (1 - .5) + (1 - .5) + (1 - .5) + (3 - 1) = 3.5 over 2 x 3 entries
    torch.testing.assert_close(loss, t([-3.5 / 6]))
    (grad,) = torch.autograd.grad(loss.sum(), log_prob)
    # d/dlogp_t = -(1/6) sum_{t' >= t} c_t' on the valid steps
    torch.testing.assert_close(grad, -t([[[1.5, 1.0, 0.5], [2.0, 0.0, 0.0]]]) / 6)


def test_dice_objective_passes_gradients_to_the_values():
    """MAME's inner step differentiates the DiCE-weighted regression loss w.r.t. z and, through the box, phi."""
    log_mu = t([[[-1.0, -1.0]]], requires_grad=True)
    z = t(0.5, requires_grad=True)
    loss = dice_objective(log_mu, (z - t([[[1.0, 2.0]]])) ** 2, torch.ones(1, 1, 2))
    torch.testing.assert_close(loss, t([(0.25 + 2.25) / 2]))
    (grad_z,) = torch.autograd.grad(loss.sum(), z, create_graph=True)
    torch.testing.assert_close(grad_z, t((2 * -0.5 + 2 * -1.5) / 2))
    (cross,) = torch.autograd.grad(grad_z, log_mu)  # d/dlogmu_t of sum_{t'>=t} 2 (z - M_t') / 2
    torch.testing.assert_close(cross, t([[[-2.0, -1.5]]]))


def test_dice_meta_loss_value_and_score_term():
    log_prob = t([[[-1.0, -2.0], [-0.5, 7.0]], [[-1.0, -1.0], [-1.0, -1.0]]], requires_grad=True)
    mask = torch.tensor([[[1, 1], [1, 0]], [[1, 1], [1, 1]]])
    outer = t([3.0, -1.0], requires_grad=True)
    loss = dice_meta_loss(outer, [log_prob], [mask], baseline=1.0)
    torch.testing.assert_close(loss, outer.detach())
    g_lp, g_outer = torch.autograd.grad(loss.sum(), [log_prob, outer])
    torch.testing.assert_close(g_outer, t([1.0, 1.0]))
    want = torch.stack([torch.full((2, 2), 2.0), torch.full((2, 2), -2.0)]).double() * mask
    torch.testing.assert_close(g_lp, want)
    with pytest.raises(ValueError):
        dice_meta_loss(outer, [log_prob], [])


# ---------------------------------------------------------------------------- PPO + KL penalty
def test_clipped_surrogate_hand_values():
    """eps = 0.3: clipping applies only where it makes the objective smaller (pessimistic bound)."""
    ratio = t([0.5, 0.5, 1.0, 1.5, 1.5, 1.2])
    advantage = t([1.0, -1.0, -1.0, 2.0, -2.0, -2.0])
    old = t([-1.0] * 6).view(1, 1, 6)
    log_prob = (old + ratio.log().view(1, 1, 6)).requires_grad_(True)
    loss = clipped_surrogate_loss(log_prob, old, advantage.view(1, 1, 6), torch.ones(1, 1, 6), clip_epsilon=0.3)
    terms = t([0.5, -0.7, -1.0, 2.6, -3.0, -2.4])  # min(rho A, clip(rho) A)
    torch.testing.assert_close(loss, -terms.mean().view(1))
    (grad,) = torch.autograd.grad(loss.sum(), log_prob)
    unclipped = t([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])  # d(rho A)/dlogp = rho A where the term is not clipped
    torch.testing.assert_close(grad.view(-1), -(ratio * advantage * unclipped) / 6)
    torch.testing.assert_close(
        clip_fraction(log_prob, old, torch.ones(1, 1, 6), 0.3), t([4 / 6])
    )


def test_gaussian_kl_hand_value():
    """KL(N(0, 1) || N(1, 2^2)) = log 2 + (1 + 1) / 8 - 1/2."""
    kl = gaussian_kl(t([[0.0]]), t([[0.0]]), t([[1.0]]), t([[math.log(2.0)]]))
    torch.testing.assert_close(kl, t([math.log(2.0) + 0.25 - 0.5]))


def test_kl_penalty_averages_tasks_then_weights_steps():
    inner_kl = t([[0.01, 0.04], [0.03, 0.00]])  # [n_tasks, n_steps]
    torch.testing.assert_close(kl_penalty(inner_kl, t([2.0, 10.0])), t((2.0 * 0.02 + 10.0 * 0.02) / 2))
    torch.testing.assert_close(kl_penalty(t([0.5, 0.25]), 4.0), t(1.5))


def test_adaptive_kl_coefficient_rule():
    coef = KLPenaltyCoefficient(1e-3, num_steps=4, target=0.01)
    # below target/1.5 -> halve; above 1.5 target -> double; in between (bounds included) -> keep
    new = coef.update([0.005, 0.02, 0.01, 0.01 / 1.5])
    torch.testing.assert_close(new, torch.tensor([5e-4, 2e-3, 1e-3, 1e-3]))
    new = coef.update([0.005, 0.02, 0.015, 0.0])
    torch.testing.assert_close(new, torch.tensor([2.5e-4, 4e-3, 1e-3, 5e-4]))
    with pytest.raises(ValueError):
        coef.update([0.1])


def test_fixed_kl_coefficient_does_not_move():
    coef = KLPenaltyCoefficient(5e-4)
    assert not coef.adaptive
    torch.testing.assert_close(coef.update([1.0]), torch.tensor([5e-4]))


def test_kl_coefficient_state_roundtrip():
    coef = KLPenaltyCoefficient(1e-3, num_steps=2, target=0.01)
    coef.update([0.0, 1.0])
    restored = KLPenaltyCoefficient(1e-3, num_steps=2, target=0.01)
    restored.load_state_dict(coef.state_dict())
    torch.testing.assert_close(restored.value, torch.tensor([5e-4, 2e-3]))
    # and it travels inside the state of a module that owns it
    owner = torch.nn.Module()
    owner.kl_coefficient = KLPenaltyCoefficient(1e-3, num_steps=2, target=0.01)
    owner.load_state_dict({"kl_coefficient.value": torch.tensor([7.0, 8.0])})
    torch.testing.assert_close(owner.kl_coefficient.value, torch.tensor([7.0, 8.0]))


# ---------------------------------------------------------------------------- E-MAML
def test_standardize_over_the_whole_meta_batch():
    x = t([[[1.0, 3.0]], [[5.0, NAN]]])
    mask = torch.tensor([[[1, 1]], [[1, 0]]])
    out = standardize(x, mask)
    std = math.sqrt(8 / 3)  # population std of 1, 3, 5
    torch.testing.assert_close(out, t([[[-2 / std, 0.0]], [[2 / std, 0.0]]]), atol=1e-7, rtol=1e-7)


def test_emaml_term_hand_values():
    """Task 1: post rewards 1, 3 -> mean standardised -1/std; task 2: 5 -> 2/std (std over the meta-batch)."""
    pre_log_prob = t([[[-1.0, -3.0]], [[-0.5, -0.5]]], requires_grad=True)
    pre_mask = torch.ones(2, 1, 2)
    post_rewards = t([[[1.0, 3.0]], [[5.0, 0.0]]])
    post_mask = torch.tensor([[[1, 1]], [[1, 0]]])
    term = emaml_loss(pre_log_prob, pre_mask, post_rewards, post_mask)
    std = math.sqrt(8 / 3) + 1e-8
    adjusted = t([-1.0 / std, 2.0 / std])
    torch.testing.assert_close(term, -adjusted * t([-2.0, -0.5]))
    (grad,) = torch.autograd.grad(term.sum(), pre_log_prob)
    torch.testing.assert_close(grad, (-adjusted / 2).view(2, 1, 1).expand(2, 1, 2))


# ---------------------------------------------------------------------------- padding
@pytest.mark.parametrize("objective", ["vpg", "lvc", "likelihood_ratio", "clip", "dice", "emaml"])
def test_non_finite_padding_gives_finite_values_and_gradients(objective):
    """Padded steps may hold NaN/inf (log-probabilities of garbage, diverged rewards); nothing leaks."""
    mask = torch.tensor([[[1, 1, 0], [1, 0, 0]]])
    bad = t([[[0.0, 0.0, NAN], [0.0, math.inf, -math.inf]]])
    theta = t(0.3, requires_grad=True)
    log_prob = -((theta - t([[[0.1, 0.5, 0.2], [-0.4, 0.0, 0.0]]])) ** 2) + bad
    data = t([[[1.0, -2.0, 0.0], [0.5, 0.0, 0.0]]]) + bad
    if objective == "vpg":
        loss = vpg_loss(log_prob, data, mask)
    elif objective == "lvc":
        loss = lvc_loss(log_prob, data, mask)
    elif objective == "likelihood_ratio":
        loss = likelihood_ratio_loss(log_prob, data, data, mask)
    elif objective == "clip":
        loss = clipped_surrogate_loss(log_prob, data, data, mask)
    elif objective == "dice":
        loss = dice_loss(log_prob, data, mask, 0.9, baseline=data)
    else:
        loss = emaml_loss(log_prob, mask, data, mask)
    (grad,) = torch.autograd.grad(loss.sum(), theta)
    assert torch.isfinite(loss).all() and torch.isfinite(grad), (loss, grad)
    assert grad != 0


def test_approximate_kl_estimates_the_kl_to_the_sampling_policy():
    """``(rho - 1) - log rho`` over samples of ``pi_old``: never negative, 0 at ``pi = pi_old``, mean = analytic KL."""
    from lightning_metarl.nn import gaussian_log_prob
    from lightning_metarl.objectives import approximate_kl

    generator = torch.Generator().manual_seed(0)
    old_mean, old_log_std = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    new_mean, new_log_std = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([0.2, -0.1], dtype=torch.float64)
    actions = torch.randn(400_000, 2, generator=generator, dtype=torch.float64)  # drawn from pi_old
    old = gaussian_log_prob(old_mean, old_log_std, actions)
    new = gaussian_log_prob(new_mean, new_log_std, actions)
    estimate = approximate_kl(new, old)
    assert (estimate >= 0).all()
    assert torch.equal(approximate_kl(old, old), torch.zeros_like(old))
    exact = gaussian_kl(old_mean, old_log_std, new_mean, new_log_std)
    standard_error = estimate.std() / len(estimate) ** 0.5
    assert abs(estimate.mean() - exact) < 4 * standard_error
