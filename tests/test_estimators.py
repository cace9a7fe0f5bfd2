"""Meta-gradient estimators against a closed-form meta-gradient.

Problem (every "task" is one independent replication): an episode is ``T`` stateless steps,
each action ``a_t ~ N(theta, sigma^2)`` with reward ``r_t = -(a_t - g)^2`` (``g = 0``, so
``d = theta - g = theta``). One inner step on ``K`` pre-update episodes ``tau``:

    theta' = theta - alpha * grad L_in(theta, tau)

with ``L_in`` one of :func:`vpg_loss` (reward-to-go advantages), :func:`lvc_loss` (same
advantages) or :func:`dice_loss` (discount 1, no baseline). The three inner gradients have the
same *value* ``g_hat = 1/(K T) sum_{k,t} s_kt R_kt`` (``s = (a - theta) / sigma^2``,
``R`` the reward-to-go); they differ in what autograd differentiates through them. The outer
objective is the exact post-update return ``J(theta') = -((theta' - g)^2 + sigma^2)``.

The meta-objective is ``F(theta) = E_tau[J(theta'(tau))]`` (MAME, Gurumurthy et al. 2019, Eq. 1 with the inner
gradient estimated from samples). Its exact gradient (MAME, Gurumurthy et al. 2019, §3.2) is

    F'(theta) = E[J'(theta') d theta'/d theta |_tau fixed]   (post-update term, "post")
              + E[J(theta') d/d theta log P(tau | theta)]     (pre-update term,  "pre")

All integrands are polynomials in the standard normal noise, so every expectation is computed
exactly with sympy from the Gaussian moments ``E[eps^n] = (n - 1)!!``; ``F'`` itself is
obtained independently by differentiating ``E[J]`` under the reparametrisation
``a = theta + sigma eps``.

Findings asserted below (Monte-Carlo means of 10^5 replications in one batched autograd call,
within 5 standard errors of the exact values):

- MAML with the VPG inner step estimates ``post`` exactly: it drops ``pre``.
- :func:`dice_meta_loss` (magic box of the pre-update log-likelihood on the outer loss, VPG
  inner step) is unbiased for ``F'``.
- The DiCE and LVC *inner* objectives add ``alpha E[J'(theta') H_score]`` with ``H_score`` the
  score part of their curvature estimate (ProMP's ``grad J_pre``): equal to ``pre`` to first
  order in ``alpha`` only; their bias is ``O(alpha^2)`` (it comes from ``J'(theta')`` being
  correlated with the curvature estimate through the shared samples). For K = 1, T = 3:
  DiCE ``-8 alpha^2 d (17 d^2 + 47 sigma^2) / (9 sigma^2)``,
  LVC ``-8 alpha^2 d (5 d^2 + 17 sigma^2) / (9 sigma^2)``.
  LVC's curvature estimate itself is unbiased here (actions do not influence later rewards);
  :func:`test_lvc_hessian_biased_when_rewards_depend_on_earlier_actions` shows where it is not.
- LVC's meta-gradient variance is well below DiCE's.
"""

from __future__ import annotations

import functools
import math

import pytest
import sympy as sp
import torch

from lightning_metarl.nn.policy import gaussian_log_prob
from lightning_metarl.objectives import dice_loss, dice_meta_loss, lvc_loss, vpg_loss

K, T = 1, 3  # pre-update episodes per task, steps per episode
N_REPLICATIONS = 100_000
Z = 5.0  # statistical tolerance in standard errors
POINTS = [  # (d = theta - g, alpha, sigma)
    (1.0, 0.1, 1.0),
    (-0.5, 0.15, 0.8),
]

D, ALPHA, SIGMA = sp.symbols("d alpha sigma", real=True)


# ---------------------------------------------------------------------------- exact values
def poly_expectation(poly: sp.Poly) -> sp.Expr:
    """``E[poly]`` for independent standard normal generators: ``E[e^n] = (n-1)!!`` for even ``n``, else 0."""
    total = sp.Integer(0)
    for powers, coeff in poly.terms():
        moment = sp.Integer(1)
        for n in powers:
            moment *= 0 if n % 2 else sp.factorial2(n - 1)
        total += coeff * moment
    return total


def gaussian_expectation(expr: sp.Expr, noise: list[sp.Symbol]) -> sp.Expr:
    """``E[expr]`` for independent standard normal ``noise``, ``expr`` polynomial in them."""
    return sp.expand(poly_expectation(sp.Poly(sp.expand(expr), *noise)))


@functools.cache
def exact_meta_gradients(k: int, t_steps: int) -> dict[str, sp.Expr]:
    """Exact expected meta-gradients of the problem above, as expressions in ``d, alpha, sigma``.

    ``full`` = F' (pathwise), ``post``/``pre`` its two terms (score-function form), and the
    expected meta-gradients of the DiCE and LVC inner objectives.
    """
    theta = D  # g = 0
    eps = [[sp.Symbol(f"e{i}_{j}") for j in range(t_steps)] for i in range(k)]
    actions = [[sp.Symbol(f"a{i}_{j}") for j in range(t_steps)] for i in range(k)]
    noise = [e for row in eps for e in row]
    n = k * t_steps

    def reward(a):
        return -(a**2)

    def inner_gradient(th, acts):  # the common value g_hat of the three inner gradients
        return sum(
            (acts[i][j] - th) / SIGMA**2 * sum(reward(acts[i][u]) for u in range(j, t_steps))
            for i in range(k)
            for j in range(t_steps)
        ) / n

    def outer(th_adapted):
        return -(th_adapted**2 + SIGMA**2)

    sample = {actions[i][j]: theta + SIGMA * eps[i][j] for i in range(k) for j in range(t_steps)}
    adapted = theta + ALPHA * inner_gradient(theta, actions)  # a function of theta, samples held fixed
    j_value = outer(adapted).subs(sample)
    full = sp.diff(gaussian_expectation(j_value, noise), D)  # reparametrised: d/dtheta E[J]
    post = gaussian_expectation(sp.diff(outer(adapted), D).subs(sample), noise)
    pre = gaussian_expectation(j_value * sum(noise) / SIGMA, noise)  # d log P / d theta = sum eps / sigma

    j_prime = (-2 * adapted).subs(sample)
    score = [[eps[i][j] / SIGMA for j in range(t_steps)] for i in range(k)]
    rewards = [[reward(theta + SIGMA * eps[i][j]) for j in range(t_steps)] for i in range(k)]
    h_dice = sum(sum(score[i][: j + 1]) ** 2 * rewards[i][j] for i in range(k) for j in range(t_steps)) / n
    h_lvc = sum(score[i][j] ** 2 * sum(rewards[i][j:]) for i in range(k) for j in range(t_steps)) / n
    dice = post + gaussian_expectation(j_prime * ALPHA * h_dice, noise)
    lvc = post + gaussian_expectation(j_prime * ALPHA * h_lvc, noise)
    return {"full": sp.expand(full), "post": post, "pre": pre, "dice": sp.expand(dice), "lvc": sp.expand(lvc)}


def exact_value(name: str, d: float, alpha: float, sigma: float) -> float:
    return float(exact_meta_gradients(K, T)[name].subs({D: d, ALPHA: alpha, SIGMA: sigma}))


# ---------------------------------------------------------------------------- Monte Carlo
def meta_gradient_samples(
    inner: str, outer: str, d: float, alpha: float, sigma: float, seed: int, n: int = N_REPLICATIONS
) -> torch.Tensor:
    """Per-replication meta-gradients ``dF/dtheta`` (ascent direction), ``[n]``, float64.

    The replications are the task dimension of the objectives (``[n, K, T] -> [n]``); one
    backward pass through the batched inner step gives all of them.
    """
    gen = torch.Generator().manual_seed(seed)
    theta = torch.full((n,), d, dtype=torch.float64, requires_grad=True)
    log_std = torch.full((n, K, T, 1), math.log(sigma), dtype=torch.float64)
    actions = theta.detach()[:, None, None] + sigma * torch.randn((n, K, T), generator=gen, dtype=torch.float64)
    mask = torch.ones(n, K, T, dtype=torch.bool)
    log_prob = gaussian_log_prob(theta[:, None, None, None].expand(n, K, T, 1), log_std, actions[..., None])
    rewards = -(actions**2)
    reward_to_go = rewards.flip(-1).cumsum(-1).flip(-1)
    if inner == "vpg":
        inner_loss = vpg_loss(log_prob, reward_to_go, mask)
    elif inner == "lvc":
        inner_loss = lvc_loss(log_prob, reward_to_go, mask)
    elif inner == "dice":
        inner_loss = dice_loss(log_prob, rewards, mask, discount=1.0)
    else:
        raise ValueError(inner)
    (grad,) = torch.autograd.grad(inner_loss.sum(), theta, create_graph=True)
    adapted = theta - alpha * grad

    exact_outer_loss = adapted**2 + sigma**2  # -J(theta')
    if outer == "exact":
        outer_loss = exact_outer_loss
    elif outer == "dice_meta":
        outer_loss = dice_meta_loss(exact_outer_loss, [log_prob], [mask])
    elif outer == "dice_meta_baseline":
        outer_loss = dice_meta_loss(exact_outer_loss, [log_prob], [mask], baseline=exact_outer_loss.mean())
    elif outer == "sampled_vpg":  # VPG outer objective on 2 post-update episodes of one step
        post_actions = adapted.detach()[:, None, None] + sigma * torch.randn((n, 2, 1), generator=gen, dtype=torch.float64)
        post_log_prob = gaussian_log_prob(
            adapted[:, None, None, None].expand(n, 2, 1, 1), log_std[:, :2, :1], post_actions[..., None]
        )
        outer_loss = vpg_loss(post_log_prob, -(post_actions**2), torch.ones(n, 2, 1))
    else:
        raise ValueError(outer)
    (meta_grad,) = torch.autograd.grad(outer_loss.sum(), theta)
    return -meta_grad


@functools.cache
def mc(inner: str, outer: str, point: tuple[float, float, float], seed: int = 0) -> tuple[float, float, float]:
    """Mean, standard error and variance of the per-replication meta-gradients."""
    x = meta_gradient_samples(inner, outer, *point, seed=seed)
    var = float(x.var())
    return float(x.mean()), math.sqrt(var / x.numel()), var


def assert_matches(estimate: tuple[float, float, float], exact: float) -> None:
    mean, se = estimate[:2]
    assert abs(mean - exact) < Z * se, f"MC {mean:.5f} +- {se:.5f} vs exact {exact:.5f}"


def assert_differs(estimate: tuple[float, float, float], value: float) -> None:
    mean, se = estimate[:2]
    assert abs(mean - value) > Z * se, f"MC {mean:.5f} +- {se:.5f} not distinguishable from {value:.5f}"


# ---------------------------------------------------------------------------- the exact values
def test_exact_values_match_hand_derived_closed_forms():
    """One step per episode (T = 1), K episodes: the exact gradient and its post term by hand.

    ``g_hat = -(1/K) sum_k (eps_k / sigma)(d + sigma eps_k)^2``, ``E g_hat = -2d``,
    ``Var g_hat = (d^4/sigma^2 + 14 d^2 + 15 sigma^2) / K``, so
    ``F(d) = -d^2 (1 - 2 alpha)^2 - alpha^2 Var g_hat - sigma^2`` and
    ``F' = -2 d (1 - 2 alpha)^2 - alpha^2 (4 d^3 / sigma^2 + 28 d) / K``;
    ``post = -2 d (1 - 2 alpha) - 2 alpha / (K sigma^2) [K d (d^2 + sigma^2)
    - alpha (2 (K + 1) d^3 + (2 K + 10) d sigma^2)]``.
    """
    for k in (1, 2):
        values = exact_meta_gradients(k, 1)
        full = -2 * D * (1 - 2 * ALPHA) ** 2 - ALPHA**2 * (4 * D**3 / SIGMA**2 + 28 * D) / k
        post = -2 * D * (1 - 2 * ALPHA) - 2 * ALPHA / (k * SIGMA**2) * (
            k * D * (D**2 + SIGMA**2) - ALPHA * (2 * (k + 1) * D**3 + (2 * k + 10) * D * SIGMA**2)
        )
        assert sp.simplify(values["full"] - full) == 0
        assert sp.simplify(values["post"] - post) == 0
        # with one step per episode the LVC and DiCE objectives coincide
        assert sp.simplify(values["dice"] - values["lvc"]) == 0


def test_exact_gradient_is_post_plus_pre_term():
    """The pathwise derivative of E[J] equals the score-function decomposition post + pre (MAME, Gurumurthy et al. 2019, §3.2)."""
    values = exact_meta_gradients(K, T)
    assert sp.simplify(values["full"] - values["post"] - values["pre"]) == 0
    assert sp.simplify(values["pre"]) != 0


@pytest.mark.parametrize("name", ["dice", "lvc"])
def test_inner_dice_and_lvc_capture_the_pre_term_to_first_order_only(name):
    """Their expected meta-gradients differ from F' by a term of order alpha^2 (not zero)."""
    values = exact_meta_gradients(K, T)
    bias = sp.expand(values[name] - values["full"])
    assert sp.simplify(bias.coeff(ALPHA, 0)) == 0
    assert sp.simplify(bias.coeff(ALPHA, 1)) == 0
    assert sp.simplify(bias.coeff(ALPHA, 2)) != 0
    # and the VPG inner step misses the pre term already at first order
    first_order_gap = sp.expand(values["post"] - values["full"]).coeff(ALPHA, 1)
    assert sp.simplify(first_order_gap) != 0


# ---------------------------------------------------------------------------- Monte Carlo vs exact
@pytest.mark.parametrize("point", POINTS)
def test_maml_vpg_meta_gradient_drops_the_pre_update_term(point):
    estimate = mc("vpg", "exact", point)
    assert_matches(estimate, exact_value("post", *point))  # = full - pre
    assert_differs(estimate, exact_value("full", *point))


@pytest.mark.parametrize("point", POINTS)
def test_vpg_outer_objective_on_post_update_samples(point):
    """The VPG outer surrogate on sampled post-update episodes gives the same expected meta-gradient."""
    estimate = mc("vpg", "sampled_vpg", point)
    assert_matches(estimate, exact_value("post", *point))
    assert_differs(estimate, exact_value("full", *point))


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("outer", ["dice_meta", "dice_meta_baseline"])
def test_dice_meta_loss_is_unbiased(point, outer):
    assert_matches(mc("vpg", outer, point), exact_value("full", *point))


def test_dice_meta_loss_baseline_reduces_variance():
    point = POINTS[0]
    plain, baselined = mc("vpg", "dice_meta", point), mc("vpg", "dice_meta_baseline", point)
    assert baselined[2] < 0.9 * plain[2]


@pytest.mark.parametrize("point", POINTS)
def test_dice_inner_objective_meta_gradient(point):
    estimate = mc("dice", "exact", point)
    assert_matches(estimate, exact_value("dice", *point))
    assert_differs(estimate, exact_value("full", *point))  # the O(alpha^2) bias is visible here


@pytest.mark.parametrize("point", POINTS)
def test_lvc_inner_objective_meta_gradient(point):
    estimate = mc("lvc", "exact", point)
    assert_matches(estimate, exact_value("lvc", *point))
    assert_differs(estimate, exact_value("full", *point))


@functools.cache
def exact_estimator_moments(point: tuple[float, float, float]) -> dict[str, tuple[float, float]]:
    """Exact mean and variance of the per-replication meta-gradient of the DiCE and LVC inner objectives.

    The estimate of one replication is ``J'(theta') (1 + alpha (d g_hat/d theta|_tau + H_score))``
    with ``H_score`` the score part of the objective's curvature estimate; its moments are
    expectations of polynomials in the noise (exact rational arithmetic at ``point``).
    """
    d, alpha, sigma = (sp.nsimplify(x) for x in point)
    noise = [sp.Symbol(f"e{j}") for j in range(K * T)]

    def poly(x) -> sp.Poly:
        return sp.Poly(x, *noise, domain="QQ")

    eps = [noise[i * T : (i + 1) * T] for i in range(K)]
    score = [[poly(e / sigma) for e in row] for row in eps]
    rewards = [[poly(-((d + sigma * e) ** 2)) for e in row] for row in eps]
    to_go = [[sum(rewards[i][j:], poly(0)) for j in range(T)] for i in range(K)]
    scale = sp.Rational(1, K * T)
    pairs = [(i, j) for i in range(K) for j in range(T)]
    g_hat = sum((score[i][j] * to_go[i][j] for i, j in pairs), poly(0)) * scale
    d_fixed = sum((to_go[i][j] for i, j in pairs), poly(0)) * (-scale / sigma**2)
    h_score = {
        "dice": sum((sum(score[i][: j + 1], poly(0)) ** 2 * rewards[i][j] for i, j in pairs), poly(0)) * scale,
        "lvc": sum((score[i][j] ** 2 * to_go[i][j] for i, j in pairs), poly(0)) * scale,
    }
    moments = {}
    for name, h in h_score.items():
        estimate = (poly(d) + g_hat * alpha) * (-2) * (poly(1) + (d_fixed + h) * alpha)
        mean = poly_expectation(estimate)
        moments[name] = (float(mean), float(poly_expectation(estimate**2) - mean**2))
    return moments


@pytest.mark.parametrize("point", POINTS)
def test_lvc_variance_below_dice(point):
    exact = exact_estimator_moments(point)
    for name in ("dice", "lvc"):  # the moments' formula is the estimators' (same mean as above)
        assert exact[name][0] == pytest.approx(exact_value(name, *point), rel=1e-12)
    assert exact["lvc"][1] < 0.5 * exact["dice"][1]
    # measured on the same samples, with a margin (the ratio is about 1/3; the sample variances
    # themselves scatter by up to ~35% around the exact ones: the estimates are heavy-tailed)
    lvc, dice = mc("lvc", "exact", point), mc("dice", "exact", point)
    assert lvc[2] < 0.6 * dice[2]


# ---------------------------------------------------------------------------- DiCE derivatives
def _gaussian_scores(actions, mean, log_std):
    """Per-sample gradient [..., P] and Hessian [..., P, P] of log N(a; mean, exp(log_std)^2), P = 2 * dim.

    Parameter order: (mean_1..mean_m, log_std_1..log_std_m).
    """
    sigma = log_std.exp()
    u = (actions - mean) / sigma
    grad = torch.cat([u / sigma, u**2 - 1], dim=-1)
    m = actions.shape[-1]
    hess = torch.zeros(*actions.shape[:-1], 2 * m, 2 * m, dtype=actions.dtype)
    for i in range(m):
        hess[..., i, i] = -1 / sigma[..., i] ** 2
        hess[..., i, m + i] = hess[..., m + i, i] = -2 * u[..., i] / sigma[..., i]
        hess[..., m + i, m + i] = -2 * u[..., i] ** 2
    return grad, hess


def _random_batch(seed: int):
    gen = torch.Generator().manual_seed(seed)
    n_tasks, rollouts, horizon, dim = 2, 3, 5, 2
    params = torch.randn(2 * dim, generator=gen, dtype=torch.float64) * 0.3
    actions = torch.randn(n_tasks, rollouts, horizon, dim, generator=gen, dtype=torch.float64)
    rewards = torch.randn(n_tasks, rollouts, horizon, generator=gen, dtype=torch.float64)
    baseline = torch.randn(n_tasks, rollouts, horizon, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([[5, 2, 4], [1, 5, 3]])
    mask = torch.arange(horizon) < lengths[..., None]
    return params, actions, rewards, baseline, mask


def _log_prob(params, actions):
    dim = actions.shape[-1]
    return gaussian_log_prob(params[:dim].expand_as(actions), params[dim:].expand_as(actions), actions)


def _autograd_derivatives(loss_fn, params):
    params = params.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(params), params, create_graph=True)
    hess = torch.stack([torch.autograd.grad(g, params, retain_graph=True)[0] for g in grad])
    return grad.detach(), hess


def test_dice_derivatives_are_first_and_second_order_score_function_estimators():
    """grad / Hessian of :func:`dice_loss` equal the explicit score-function estimators on the same samples.

    ``grad = -1/(R T) sum_{r,t} S_t c_t`` and
    ``hess = -1/(R T) sum_{r,t} (S_t S_t^T + H_t) c_t`` with ``S_t, H_t`` the cumulative
    gradient and Hessian of the log-probabilities up to ``t`` and ``c_t = gamma^t r_t - b_t``,
    summed over tasks; padding (episodes ended early) contributes nothing.
    """
    params, actions, rewards, baseline, mask = _random_batch(1)
    discount = 0.9
    rollouts, horizon = rewards.shape[1:]
    got_grad, got_hess = _autograd_derivatives(
        lambda p: dice_loss(_log_prob(p, actions), rewards, mask, discount, baseline).sum(), params
    )
    dim = actions.shape[-1]
    s, h = _gaussian_scores(actions, params[:dim], params[dim:])
    valid = mask.to(torch.float64)
    s_cum = (s * valid[..., None]).cumsum(2)
    h_cum = (h * valid[..., None, None]).cumsum(2)
    cost = (rewards * discount ** torch.arange(horizon, dtype=torch.float64) - baseline) * valid
    want_grad = -(s_cum * cost[..., None]).sum((0, 1, 2)) / (rollouts * horizon)
    outer = s_cum[..., :, None] * s_cum[..., None, :]
    want_hess = -((outer + h_cum) * cost[..., None, None]).sum((0, 1, 2)) / (rollouts * horizon)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_hess, want_hess, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("objective", ["vpg", "lvc"])
def test_vpg_and_lvc_derivatives(objective):
    """VPG: ``-mean s A`` and ``-mean h A``; LVC: ``-mean s A`` and ``-mean (s s^T + h) A`` (same step only)."""
    params, actions, advantages, _, mask = _random_batch(2)
    fn = vpg_loss if objective == "vpg" else lvc_loss
    got_grad, got_hess = _autograd_derivatives(lambda p: fn(_log_prob(p, actions), advantages, mask).sum(), params)
    dim = actions.shape[-1]
    s, h = _gaussian_scores(actions, params[:dim], params[dim:])
    weight = (mask.to(torch.float64) * advantages) / mask.sum((1, 2), keepdim=True)
    want_grad = -(s * weight[..., None]).sum((0, 1, 2))
    curvature = h + (s[..., :, None] * s[..., None, :] if objective == "lvc" else 0)
    want_hess = -(curvature * weight[..., None, None]).sum((0, 1, 2))
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_hess, want_hess, rtol=1e-10, atol=1e-12)


def _per_sample_derivatives(objective: str, reward_fn, n: int, theta0: float, seed: int):
    """First and second derivative of ``-loss`` per replication, scalar mean parameter, sigma = 1."""
    gen = torch.Generator().manual_seed(seed)
    horizon = 2
    theta = torch.full((n,), theta0, dtype=torch.float64, requires_grad=True)
    actions = theta.detach()[:, None, None] + torch.randn(n, 1, horizon, generator=gen, dtype=torch.float64)
    log_prob = gaussian_log_prob(
        theta[:, None, None, None].expand(n, 1, horizon, 1), torch.zeros(n, 1, horizon, 1, dtype=torch.float64),
        actions[..., None],
    )
    rewards = reward_fn(actions)
    mask = torch.ones(n, 1, horizon, dtype=torch.bool)
    if objective == "dice":
        objective_value = -dice_loss(log_prob, rewards, mask)
    else:
        objective_value = -lvc_loss(log_prob, rewards.flip(-1).cumsum(-1).flip(-1), mask)
    (first,) = torch.autograd.grad(objective_value.sum(), theta, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), theta)
    return first.detach(), second


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    return float(x.mean()), float(x.std() / math.sqrt(x.numel()))


@pytest.mark.parametrize("objective", ["dice", "lvc"])
def test_curvature_estimates_unbiased_when_actions_do_not_affect_later_rewards(objective):
    """``r_t = -a_t^2``: E[sum_t r_t] / T = -(theta^2 + 1); both estimators are unbiased to second order."""
    theta0 = 0.7
    first, second = _per_sample_derivatives(objective, lambda a: -(a**2), 200_000, theta0, seed=3)
    for samples, exact in ((first, -2 * theta0), (second, -2.0)):
        mean, se = _mean_se(samples)
        assert abs(mean - exact) < Z * se, (objective, mean, se, exact)


def test_lvc_hessian_biased_when_rewards_depend_on_earlier_actions():
    """``r_1 = -a_1^2``, ``r_2 = -(a_1 + a_2)^2``: E[r_1 + r_2] / 2 = -(5 theta^2 + 3) / 2.

    Exact derivatives: ``-5 theta`` and ``-5``. DiCE is unbiased in both orders; LVC is
    unbiased in the first but its Hessian estimate drops the cross term
    ``2 d^2 E[r_2] / d theta_1 d theta_2 = -4`` (per T: -2) and averages to -3.
    """
    theta0 = 0.7

    def rewards(a):
        return torch.stack([-a[..., 0] ** 2, -(a[..., 0] + a[..., 1]) ** 2], dim=-1)

    for objective, exact_second in (("dice", -5.0), ("lvc", -3.0)):
        first, second = _per_sample_derivatives(objective, rewards, 200_000, theta0, seed=4)
        mean, se = _mean_se(first)
        assert abs(mean - (-5 * theta0)) < Z * se, (objective, mean, se)
        mean, se = _mean_se(second)
        assert abs(mean - exact_second) < Z * se, (objective, mean, se, exact_second)
        if objective == "lvc":
            assert abs(mean - (-5.0)) > Z * se
