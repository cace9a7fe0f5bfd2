"""Meta-gradient estimators when actions influence later rewards, checked by exact Gaussian quadrature.

Complements tests/test_estimators.py (stateless bandit, sympy) with an independent exact
method on a problem with state: every replication ("task") is a 1-D random walk,
``x_t = sum_{u <= t} a_u`` with ``a_u ~ N(theta, sigma^2)`` (an open-loop Gaussian policy)
and ``r_t = -(x_t - g)^2``, ``T = 3`` steps, ``K = 2`` pre-update and ``M = 2`` post-update
episodes, no discount. The per-step objective is
``J(theta) = E[mean_t r_t] = -mean_t [((t+1) theta - g)^2 + (t+1) sigma^2]``, and one inner
step ``theta' = theta + alpha g_hat`` with ``g_hat = mean_{k,t} s_kt R_kt`` (score times
reward-to-go, the common gradient value of the VPG, LVC and DiCE inner objectives).

Every estimator is a polynomial in the Gaussian noise, so its exact expectation is a
tensor-product Gauss-Hermite sum (exact for polynomials of degree ``<= 2n - 1`` per
variable). The exact meta-gradient ``F' = d/dtheta E[J(theta'(tau))]`` is differentiated
through the quadrature sum under the reparametrisation ``a = theta + sigma eps``.

Because ``r_t`` depends on earlier actions, LVC's curvature estimate is biased here
(``E[H_LVC] = -(2/T) sum_t (t+1)`` against the exact ``-(2/T) sum_t (t+1)^2``), unlike in the
stateless bandit.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from lightning_metarl.nn.policy import gaussian_log_prob
from lightning_metarl.objectives import dice_loss, dice_meta_loss, lvc_loss, vpg_loss

F64 = torch.float64
THETA, GOAL, SIGMA, ALPHA = 0.0, 1.0, 0.3, 0.1
K, M, T = 2, 2, 3
CHUNKS, CHUNK = 2, 100_000  # 2 x 10^5 replications
Z = 5.0
STEPS = torch.arange(1, T + 1, dtype=F64)  # t + 1


def gauss_hermite(points: int, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``[points^dims, dims]`` and weights of the standard normal, tensor product."""
    x, w = np.polynomial.hermite_e.hermegauss(points)
    x, w = torch.tensor(x, dtype=F64), torch.tensor(w / w.sum(), dtype=F64)
    nodes = torch.cartesian_prod(*[x] * dims).reshape(-1, dims)
    weights = torch.cartesian_prod(*[w] * dims).reshape(-1, dims).prod(-1)
    return nodes, weights


def rewards_of(actions: torch.Tensor) -> torch.Tensor:
    return -((actions.cumsum(-1) - GOAL) ** 2)


def reward_to_go(rewards: torch.Tensor) -> torch.Tensor:
    return rewards.flip(-1).cumsum(-1).flip(-1)


def objective(theta_post: torch.Tensor) -> torch.Tensor:
    """``J(theta')``, the exact post-update per-step return."""
    return -(((STEPS * theta_post[..., None] - GOAL) ** 2) + STEPS * SIGMA**2).mean(-1)


def objective_grad(theta_post: torch.Tensor) -> torch.Tensor:
    return -(2 * STEPS * (STEPS * theta_post[..., None] - GOAL)).mean(-1)


def pre_update_terms(eps: torch.Tensor, theta: torch.Tensor | float):
    """Score ``s``, rewards, reward-to-go and ``theta' = theta + alpha g_hat`` of pre-update noise ``[..., K, T]``."""
    actions = theta + SIGMA * eps
    rewards = rewards_of(actions)
    to_go = reward_to_go(rewards)
    score = eps / SIGMA
    return score, rewards, to_go, theta + ALPHA * (score * to_go).mean((-2, -1))


def curvature_estimates(score, rewards, to_go) -> dict[str, torch.Tensor]:
    """The explicit second-order estimates each inner objective's Hessian equals (d/dtheta s = -1/sigma^2)."""
    return {
        "vpg": -(to_go / SIGMA**2).mean((-2, -1)),
        "lvc": ((score**2 - 1 / SIGMA**2) * to_go).mean((-2, -1)),
        "dice": (rewards * (score.cumsum(-1) ** 2 - STEPS / SIGMA**2)).mean((-2, -1)),
    }


@functools.cache
def exact_values() -> dict[str, float]:
    """Exact ``F'``, its post and pre terms and each estimator's expectation (5-point rule: degree <= 9)."""
    eps, w = gauss_hermite(5, K * T)
    eps = eps.view(-1, K, T)
    theta = torch.tensor(THETA, dtype=F64, requires_grad=True)
    _, _, _, theta_post = pre_update_terms(eps, theta)
    (full,) = torch.autograd.grad((w * objective(theta_post)).sum(), theta)
    score, rewards, to_go, theta_post = (x.detach() for x in pre_update_terms(eps, THETA))
    j_prime = objective_grad(theta_post)
    h = curvature_estimates(score, rewards, to_go)
    out = {
        "full": float(full),
        "pre": float((w * objective(theta_post) * score.sum((-2, -1))).sum()),
        **{name: float((w * j_prime * (1 + ALPHA * est)).sum()) for name, est in h.items()},
        **{f"hessian_{name}": float((w * est).sum()) for name, est in h.items()},
    }
    out["post"] = out.pop("vpg")
    return out


@functools.cache
def exact_variances() -> dict[str, float]:
    """Exact variance of the per-replication meta-gradient ``g'_hat (1 + alpha H)`` of each inner objective.

    ``E[g'_hat^2 | theta'] = J'(theta')^2 + V(theta') / M`` with ``V`` the variance of one
    post-update episode's ``mean_t s_t R_t``: a degree-4 polynomial in ``theta'``, found by
    interpolating an inner 4-point quadrature (degree <= 7) at 5 points. The outer integrand
    then has degree 20 per variable: an 11-point rule is exact.
    """
    e_post, w_post = gauss_hermite(4, T)

    def post_moments(theta_post: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        actions = theta_post[:, None, None] + SIGMA * e_post
        y = (e_post / SIGMA * reward_to_go(rewards_of(actions))).mean(-1)
        mean = (w_post * y).sum(-1)
        return mean, (w_post * y * y).sum(-1) - mean**2

    knots = torch.linspace(-2, 2, 5, dtype=F64)
    coeffs = torch.linalg.solve(torch.vander(knots, 5), post_moments(knots)[1])
    probe = torch.linspace(-3, 3, 7, dtype=F64)
    mean_probe, var_probe = post_moments(probe)
    torch.testing.assert_close(mean_probe, objective_grad(probe))  # the post-update estimator is unbiased
    torch.testing.assert_close(torch.vander(probe, 5) @ coeffs, var_probe)  # V is that quartic

    eps, w = gauss_hermite(11, K * T)
    score, rewards, to_go, theta_post = pre_update_terms(eps.view(-1, K, T), THETA)
    second_moment = objective_grad(theta_post) ** 2 + (torch.vander(theta_post, 5) @ coeffs) / M
    out = {}
    for name, est in curvature_estimates(score, rewards, to_go).items():
        factor = 1 + ALPHA * est
        mean = (w * objective_grad(theta_post) * factor).sum()
        out[name] = float((w * second_moment * factor**2).sum() - mean**2)
    return out


def log_prob(theta: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    n = theta.shape[0]
    mean = theta[:, None, None, None].expand(n, *actions.shape[1:], 1)
    return gaussian_log_prob(mean, torch.full_like(mean, math.log(SIGMA)), actions[..., None])


def one_chunk(seed: int) -> dict[str, torch.Tensor]:
    """Per-replication meta-gradients (ascent) and inner curvatures, all estimators on the same samples."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.full((CHUNK,), THETA, dtype=F64, requires_grad=True)
    actions = theta.detach()[:, None, None] + SIGMA * torch.randn(CHUNK, K, T, generator=gen, dtype=F64)
    post_noise = SIGMA * torch.randn(CHUNK, M, T, generator=gen, dtype=F64)
    mask = torch.ones(CHUNK, K, T, dtype=torch.bool)
    post_mask = torch.ones(CHUNK, M, T, dtype=torch.bool)
    lp = log_prob(theta, actions)
    rewards = rewards_of(actions)
    inner_losses = {
        "vpg": vpg_loss(lp, reward_to_go(rewards), mask),
        "lvc": lvc_loss(lp, reward_to_go(rewards), mask),
        "dice": dice_loss(lp, rewards, mask, discount=1.0),
    }
    out = {}
    for name, inner in inner_losses.items():
        (grad,) = torch.autograd.grad(inner.sum(), theta, create_graph=True)
        (hessian,) = torch.autograd.grad(grad.sum(), theta, retain_graph=True)
        out[f"hessian_{name}"] = -hessian  # of the objective, not the loss
        theta_post = theta - ALPHA * grad
        post_actions = theta_post.detach()[:, None, None] + post_noise  # same values for every inner objective
        post_lp = log_prob(theta_post, post_actions)
        post_rewards = rewards_of(post_actions)
        outer = vpg_loss(post_lp, reward_to_go(post_rewards), post_mask)
        (meta,) = torch.autograd.grad(outer.sum(), theta, retain_graph=True)
        out[name] = -meta
        if name == "vpg":  # the DiCE objective of the whole graph: pre-update log-likelihood in the magic box
            full = dice_meta_loss(dice_loss(post_lp, post_rewards, post_mask, discount=1.0), [lp], [mask])
            (meta,) = torch.autograd.grad(full.sum(), theta, retain_graph=True)
            out["dice_meta"] = -meta
    return {k: v.detach() for k, v in out.items()}


@functools.cache
def samples() -> dict[str, torch.Tensor]:
    chunks = [one_chunk(seed) for seed in range(CHUNKS)]
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def mean_se(x: torch.Tensor) -> tuple[float, float]:
    return float(x.mean()), float(x.std() / math.sqrt(x.numel()))


def test_quadrature_reproduces_the_closed_form_for_one_step():
    """T = 1, K = 2: ``F(d) = -d^2 (1 - 4 alpha) - alpha^2 (d^4 + 18 d^2 sigma^2 + 15 sigma^4) / (K sigma^2)
    - 4 alpha^2 (K - 1) d^2 / K - sigma^2`` (Gaussian moments by hand), ``d = theta - g``."""
    eps, w = gauss_hermite(5, 2)
    for theta0 in (0.0, 0.7):
        theta = torch.tensor(theta0, dtype=F64, requires_grad=True)
        actions = theta + SIGMA * eps
        theta_post = theta + ALPHA * (eps / SIGMA * -((actions - GOAL) ** 2)).mean(-1)
        value = (w * -((theta_post - GOAL) ** 2 + SIGMA**2)).sum()
        (grad,) = torch.autograd.grad(value, theta)
        d, a, s, k = theta0 - GOAL, ALPHA, SIGMA, 2
        want = -2 * d * (1 - 4 * a) - a**2 * (4 * d**3 + 36 * d * s**2) / (k * s**2) - 8 * a**2 * (k - 1) * d / k
        assert float(grad) == exactly(want)


def exactly(x: float):
    """Equality up to float64 rounding."""
    return pytest.approx(x, rel=1e-12, abs=1e-12)


def test_exact_meta_gradient_is_post_plus_pre():
    exact = exact_values()
    assert exact["post"] + exact["pre"] == exactly(exact["full"])
    assert abs(exact["pre"]) > 1.0


def test_estimator_means_against_the_exact_values():
    exact, mc = exact_values(), samples()
    variances = exact_variances()
    for name, target in (("vpg", "post"), ("lvc", "lvc"), ("dice", "dice"), ("dice_meta", "full")):
        mean, se = mean_se(mc[name])
        assert abs(mean - exact[target]) < Z * se, (name, mean, se, exact[target])
    # MAML-VPG misses the pre-update term; the DiCE inner objective over-counts it (plug-in bias,
    # second order in alpha): both are resolvable here, with the exact standard errors.
    for name, target in (("vpg", "post"), ("dice", "dice")):
        exact_se = math.sqrt(variances[name] / mc[name].numel())
        assert abs(exact[target] - exact["full"]) > Z * exact_se, (name, exact[target], exact["full"], exact_se)


def test_curvature_estimates_and_their_variance():
    exact, mc = exact_values(), samples()
    assert exact["hessian_dice"] == exactly(-2 * float((STEPS**2).mean()))  # the true Hessian of J
    assert exact["hessian_lvc"] == exactly(-2 * float(STEPS.mean()))  # without the cross-time terms
    for name in ("vpg", "lvc", "dice"):
        mean, se = mean_se(mc[f"hessian_{name}"])
        assert abs(mean - exact[f"hessian_{name}"]) < Z * se, (name, mean, se)
    mean, se = mean_se(mc["hessian_lvc"])
    assert abs(mean - exact["hessian_dice"]) > Z * se  # LVC's bias is measurable
    # measured variance, paired on the same samples: Var(H_DiCE) - Var(H_LVC) > 5 standard errors
    x, y = mc["hessian_lvc"], mc["hessian_dice"]
    diff = (y - y.mean()) ** 2 - (x - x.mean()) ** 2
    mean, se = mean_se(diff)
    assert mean > Z * se, (mean, se)


def test_lvc_meta_gradient_variance_below_dice():
    variances, mc = exact_variances(), samples()
    assert variances["lvc"] < 0.5 * variances["dice"], variances
    assert float(mc["lvc"].var()) < float(mc["dice"].var())
