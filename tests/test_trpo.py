"""Conjugate gradient, KL Hessian-vector products and the TRPO step (accept, backtrack, reject)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_metarl.nn import gaussian_kl, gaussian_log_prob
from lightning_metarl.objectives import likelihood_ratio_loss, vpg_loss
from lightning_metarl.optim import conjugate_gradient, flat_grad, hessian_vector_product, trpo_step
from lightning_metarl.optim.trpo import TrustRegion, TrustRegionObjective

DTYPE = torch.float64


def random_spd(n: int, condition: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    eigenvalues = torch.logspace(0, math.log10(condition), n, dtype=DTYPE)
    return q @ torch.diag(eigenvalues) @ q.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conjugate_gradient_solves_random_spd_systems(seed):
    n = 12
    a = random_spd(n, condition=50.0, seed=seed)
    b = torch.randn(n, generator=torch.Generator().manual_seed(100 + seed), dtype=DTYPE)
    x = conjugate_gradient(lambda v: a @ v, b, iterations=n, residual_tol=1e-30)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-6, atol=1e-9)


def test_conjugate_gradient_error_decreases_with_iterations():
    """CG minimises the A-norm error over growing Krylov spaces: monotone, and within the classical bound

    ``||e_k||_A <= 2 ((sqrt(kappa) - 1) / (sqrt(kappa) + 1))^k ||e_0||_A``.
    """
    n, kappa = 30, 10.0
    a = random_spd(n, condition=kappa, seed=5)
    b = torch.randn(n, generator=torch.Generator().manual_seed(6), dtype=DTYPE)
    exact = torch.linalg.solve(a, b)
    errors = []
    for iterations in range(0, 11):
        e = conjugate_gradient(lambda v: a @ v, b, iterations=iterations, residual_tol=0.0) - exact
        errors.append(float(e @ a @ e))
    assert all(later <= earlier * (1 + 1e-9) for earlier, later in zip(errors, errors[1:]))
    rate = (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)
    for k, error in enumerate(errors):
        assert error <= 4 * rate ** (2 * k) * errors[0]
    assert errors[10] < 1e-4 * errors[0]


def test_conjugate_gradient_stops_at_tolerance():
    calls = []
    a = torch.eye(4, dtype=DTYPE) * 2

    def matvec(v):
        calls.append(1)
        return a @ v

    x = conjugate_gradient(matvec, torch.ones(4, dtype=DTYPE), iterations=10)
    torch.testing.assert_close(x, torch.full((4,), 0.5, dtype=DTYPE))
    assert len(calls) == 1  # exact after one step for a multiple of the identity


def test_hessian_vector_product_of_a_quadratic():
    a = random_spd(5, condition=10.0, seed=3)
    x = torch.randn(5, dtype=DTYPE, requires_grad=True)
    y = torch.randn(2, dtype=DTYPE, requires_grad=True)  # unused by the function: zero rows
    hvp = hessian_vector_product(0.5 * x @ a @ x, [x, y], damping=0.1)
    v = torch.randn(7, dtype=DTYPE)
    full = torch.zeros(7, 7, dtype=DTYPE)
    full[:5, :5] = a
    torch.testing.assert_close(hvp(v), full @ v + 0.1 * v)
    torch.testing.assert_close(hvp(2 * v), 2 * (full @ v + 0.1 * v))  # reusable graph


# ---------------------------------------------------------------------------- a small policy problem
def gaussian_problem(seed: int = 0, dim: int = 3, n: int = 256):
    """A state-independent Gaussian policy (mean, log_std) with samples from its current value."""
    gen = torch.Generator().manual_seed(seed)
    mean = torch.zeros(dim, dtype=DTYPE, requires_grad=True)
    log_std = torch.zeros(dim, dtype=DTYPE, requires_grad=True)
    actions = torch.randn(1, n, 1, dim, generator=gen, dtype=DTYPE)
    goal = torch.tensor([1.0, -0.5, 0.25], dtype=DTYPE)[:dim]
    advantage = -((actions - goal) ** 2).sum(-1)
    advantage = (advantage - advantage.mean()) / advantage.std()
    mask = torch.ones(1, n, 1)
    old = (mean.detach().clone(), log_std.detach().clone())
    old_log_prob = gaussian_log_prob(old[0].expand_as(actions), old[1].expand_as(actions), actions)

    def loss_fn():
        log_prob = gaussian_log_prob(mean.expand_as(actions), log_std.expand_as(actions), actions)
        return likelihood_ratio_loss(log_prob, old_log_prob, advantage, mask).mean()

    def kl_fn():
        return gaussian_kl(old[0], old[1], mean, log_std)

    return [mean, log_std], loss_fn, kl_fn


def test_trpo_step_respects_the_trust_region_and_improves_the_surrogate():
    params, loss_fn, kl_fn = gaussian_problem()
    before = [p.detach().clone() for p in params]
    info = trpo_step(params, loss_fn, kl_fn, max_kl=0.01)
    assert info.accepted
    assert 0 < info.kl <= 0.01
    assert info.loss_after < info.loss_before
    assert 0 < info.step_fraction <= 1 and info.evaluations >= 1
    assert info.step_fraction == pytest.approx(0.8 ** (info.evaluations - 1))
    # the record describes the parameters the step left behind
    assert float(kl_fn()) == pytest.approx(info.kl, rel=1e-9)
    assert float(loss_fn()) == pytest.approx(info.loss_after, rel=1e-9)
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params))
    # the full step of the quadratic model lands near the KL bound: the accepted KL is close to it
    assert info.kl > 0.5 * 0.01 * info.step_fraction**2
    assert info.expected_improvement > 0


def test_trust_region_optimizer_takes_the_step_of_trpo_step_with_its_settings():
    params, loss_fn, kl_fn = gaussian_problem()
    twin, twin_loss_fn, twin_kl_fn = gaussian_problem()
    optimizer = TrustRegion(params, max_kl=0.003, max_backtracks=4)
    info = optimizer.step(lambda: TrustRegionObjective(loss_fn, kl_fn))
    expected = trpo_step(twin, twin_loss_fn, twin_kl_fn, max_kl=0.003, max_backtracks=4)
    assert info == expected and info.accepted and info.kl <= 0.003
    for a, b in zip(params, twin):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="TrustRegionObjective"):
        optimizer.step(loss_fn)
    with pytest.raises(TypeError, match="max_kll"):
        TrustRegion(params, max_kll=0.01)
    assert optimizer.state_dict()["param_groups"][0]["max_kl"] == 0.003


def test_trpo_step_direction_is_the_natural_gradient():
    """With exact CG the step is along -F^{-1} g (F the KL Hessian): for a Gaussian mean, F = diag(1/sigma^2)."""
    params, loss_fn, kl_fn = gaussian_problem(seed=1)
    gradient = flat_grad(loss_fn(), params)
    info = trpo_step(params, loss_fn, kl_fn, max_kl=1e-4, damping=0.0, cg_iterations=20)
    assert info.accepted
    step = torch.cat([p.detach().reshape(-1) for p in params])  # started from 0
    fisher = torch.cat([torch.ones(3, dtype=DTYPE), torch.full((3,), 2.0, dtype=DTYPE)])  # mean: 1/s^2, log_std: 2
    direction = -gradient / fisher
    cosine = step @ direction / (step.norm() * direction.norm())
    assert cosine > 1 - 1e-9


def test_trpo_step_backtracks_when_the_quadratic_model_underestimates_the_kl():
    params, loss_fn, kl_fn = gaussian_problem(seed=2)

    def steep_kl():  # the KL plus a quartic term the quadratic model does not see
        delta = torch.cat([p.reshape(-1) for p in params])
        return kl_fn() + 1e3 * (delta @ delta) ** 2

    info = trpo_step(params, loss_fn, steep_kl, max_kl=0.01)
    assert info.accepted and info.evaluations > 1 and info.step_fraction < 1
    assert float(steep_kl()) <= 0.01


def test_trpo_step_rejects_a_step_that_violates_the_constraint():
    params, loss_fn, kl_fn = gaussian_problem(seed=3)
    before = [p.detach().clone() for p in params]

    def violating_kl():  # violated at every step size the line search tries
        delta = torch.cat([p.reshape(-1) for p in params])
        return kl_fn() + 1e9 * (delta @ delta) ** 2

    info = trpo_step(params, loss_fn, violating_kl, max_kl=0.01, max_backtracks=15)
    assert not info.accepted
    assert info.evaluations == 15 and info.step_fraction == 0.0 and info.kl == 0.0
    assert info.loss_after == info.loss_before
    for b, p in zip(before, params):
        assert torch.equal(b, p.detach())  # bit-for-bit unchanged


def test_trpo_step_rejects_a_step_that_does_not_improve_the_surrogate():
    params, loss_fn, kl_fn = gaussian_problem(seed=4)
    before = [p.detach().clone() for p in params]

    def bumpy_loss():  # the gradient at the start points the right way, the loss then rises steeply
        delta = torch.cat([p.reshape(-1) for p in params])
        return loss_fn() + 1e9 * (delta @ delta) ** 2

    info = trpo_step(params, bumpy_loss, kl_fn, max_kl=0.01)
    assert not info.accepted and info.step_fraction == 0.0
    for b, p in zip(before, params):
        assert torch.equal(b, p.detach())


# ---------------------------------------------------------------------------- through an inner step
def maml_problem(seed: int = 0, n_tasks: int = 3, n: int = 64):
    """MAML-TRPO on Gaussian bandits: the surrogate and the KL are functions of theta through theta'."""
    gen = torch.Generator().manual_seed(seed)
    dim, alpha = 2, 0.2
    mean = torch.zeros(dim, dtype=DTYPE, requires_grad=True)
    log_std = torch.zeros(dim, dtype=DTYPE, requires_grad=True)
    goals = torch.randn(n_tasks, 1, 1, dim, generator=gen, dtype=DTYPE)
    pre_actions = torch.randn(n_tasks, n, 1, dim, generator=gen, dtype=DTYPE)
    pre_adv = -((pre_actions - goals) ** 2).sum(-1)
    mask = torch.ones(n_tasks, n, 1)

    def adapted():
        m = mean.expand(n_tasks, dim)
        s = log_std.expand(n_tasks, dim)
        log_prob = gaussian_log_prob(m[:, None, None], s[:, None, None], pre_actions)
        gm, gs = torch.autograd.grad(vpg_loss(log_prob, pre_adv, mask).sum(), [m, s], create_graph=True)
        return m - alpha * gm, s - alpha * gs

    with torch.enable_grad():
        old_m, old_s = (x.detach() for x in adapted())
    post_actions = old_m[:, None, None] + old_s.exp()[:, None, None] * torch.randn(
        n_tasks, n, 1, dim, generator=gen, dtype=DTYPE
    )
    post_adv = -((post_actions - goals) ** 2).sum(-1)
    post_adv = (post_adv - post_adv.mean()) / post_adv.std()
    old_log_prob = gaussian_log_prob(old_m[:, None, None], old_s[:, None, None], post_actions)

    def loss_fn():
        m, s = adapted()
        log_prob = gaussian_log_prob(m[:, None, None], s[:, None, None], post_actions)
        return likelihood_ratio_loss(log_prob, old_log_prob, post_adv, mask).mean()

    def kl_fn():
        m, s = adapted()
        return gaussian_kl(old_m, old_s, m, s).mean()

    return [mean, log_std], loss_fn, kl_fn


def test_hessian_vector_product_through_an_inner_step():
    """The KL's Hessian-vector product through theta' = U(theta) equals central differences of its gradient."""
    params, _, kl_fn = maml_problem()
    sizes = [p.numel() for p in params]
    start = torch.cat([p.detach().reshape(-1) for p in params])

    def set_params(flat):
        with torch.no_grad():
            for p, chunk in zip(params, flat.split(sizes)):
                p.copy_(chunk.view_as(p))

    v = torch.randn(start.numel(), generator=torch.Generator().manual_seed(9), dtype=DTYPE)
    set_params(start + 0.3 * v)  # away from the old policy, where the KL's Hessian is not just the Fisher
    hvp = hessian_vector_product(kl_fn(), params, damping=0.0)
    product = hvp(v)
    eps = 1e-5
    set_params(start + 0.3 * v + eps * v)
    plus = flat_grad(kl_fn(), params)
    set_params(start + 0.3 * v - eps * v)
    minus = flat_grad(kl_fn(), params)
    torch.testing.assert_close(product, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-9)
    assert product.abs().max() > 1e-3


def test_trpo_step_through_an_inner_step():
    params, loss_fn, kl_fn = maml_problem(seed=1)
    info = trpo_step(params, loss_fn, kl_fn, max_kl=0.01)
    assert info.accepted and 0 < info.kl <= 0.01 and info.loss_after < info.loss_before
    assert float(kl_fn()) == pytest.approx(info.kl, rel=1e-9)
