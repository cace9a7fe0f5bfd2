"""The batched linear feature baseline against a per-task NumPy reference fit (nn/baseline.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightning_metarl.nn.baseline import fit_linear_baseline, linear_baseline_features, linear_baseline_values

F64 = torch.float64


def reference_fit(features: np.ndarray, targets: np.ndarray, reg_coeff: float = 1e-5) -> np.ndarray:
    """The reference implementation's fit on one task's valid samples (damped least squares, 5 tries)."""
    for _ in range(5):
        coeffs = np.linalg.lstsq(
            features.T @ features + reg_coeff * np.identity(features.shape[1]), features.T @ targets, rcond=-1
        )[0]
        if not np.any(np.isnan(coeffs)):
            break
        reg_coeff *= 10
    return coeffs


def reference_features(observation: np.ndarray) -> np.ndarray:
    """Reference features of one path ``[T, obs_dim]``."""
    obs = np.clip(observation, -10, 10)
    step = np.arange(len(observation)).reshape(-1, 1) / 100.0
    return np.concatenate([obs, obs**2, step, step**2, step**3, np.ones((len(observation), 1))], axis=1)


def random_batch(seed: int, n_tasks: int = 4, rollouts: int = 5, horizon: int = 30, obs_dim: int = 3):
    gen = torch.Generator().manual_seed(seed)
    observation = 4 * torch.randn(n_tasks, rollouts, horizon, obs_dim, generator=gen, dtype=F64)  # some beyond +-10
    observation[0, 0, 0, 0] = 25.0
    returns = torch.randn(n_tasks, rollouts, horizon, generator=gen, dtype=F64) + observation[..., 0]
    lengths = torch.randint(1, horizon + 1, (n_tasks, rollouts), generator=gen)
    mask = torch.arange(horizon) < lengths[..., None]
    observation = torch.where(mask[..., None], observation, torch.full_like(observation, float("nan")))
    returns = torch.where(mask, returns, torch.full_like(returns, float("nan")))
    return observation, returns, mask, lengths


def reference_values(observation, returns, lengths) -> torch.Tensor:
    """Per task: fit on the valid steps of its paths, predict on them; 0 on padding."""
    values = torch.zeros_like(returns)
    for task in range(observation.shape[0]):
        paths = [(observation[task, r, : int(n)].numpy(), returns[task, r, : int(n)].numpy()) for r, n in enumerate(lengths[task])]
        features = np.concatenate([reference_features(o) for o, _ in paths])
        coeffs = reference_fit(features, np.concatenate([y for _, y in paths]))
        for r, (o, _) in enumerate(paths):
            values[task, r, : len(o)] = torch.from_numpy(reference_features(o) @ coeffs)
    return values


def test_features_match_the_reference():
    observation = torch.tensor([[[-12.0, 0.5], [3.0, 11.0], [0.0, -1.0]]], dtype=F64)
    torch.testing.assert_close(linear_baseline_features(observation)[0], torch.from_numpy(reference_features(observation[0].numpy())))


@pytest.mark.parametrize("seed", [0, 1])
def test_values_match_the_reference_fit_per_task(seed):
    observation, returns, mask, lengths = random_batch(seed)
    values = linear_baseline_values(observation, returns, mask)
    assert torch.isfinite(values).all()
    torch.testing.assert_close(values, reference_values(observation, returns, lengths), rtol=1e-7, atol=1e-8)
    assert (values[~mask] == 0).all()


def test_float32_inputs_give_the_float64_fit():
    observation, returns, mask, lengths = random_batch(2)
    values = linear_baseline_values(observation.float(), returns.float(), mask)
    assert values.dtype == torch.float32
    torch.testing.assert_close(values.double(), reference_values(observation.float().double(), returns.float().double(), lengths), rtol=1e-4, atol=1e-4)


def test_without_regularisation_it_is_the_least_squares_fit():
    """With a full-rank design and a negligible ridge the fit is NumPy's least-squares solution."""
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(2, 50, 4, generator=gen, dtype=F64)
    targets = torch.randn(2, 50, generator=gen, dtype=F64)
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[1, 30:] = False
    coeffs = fit_linear_baseline(features, targets, mask, reg_coeff=1e-12)
    for task, n in ((0, 50), (1, 30)):
        want = np.linalg.lstsq(features[task, :n].numpy(), targets[task, :n].numpy(), rcond=None)[0]
        torch.testing.assert_close(coeffs[task], torch.from_numpy(want), rtol=1e-8, atol=1e-10)


def test_degenerate_batch():
    """Constant observations (collinear features), a single valid sample, an empty task: finite fits."""
    horizon = 6
    observation = torch.ones(3, 2, horizon, 1, dtype=F64)
    returns = torch.arange(3 * 2 * horizon, dtype=F64).reshape(3, 2, horizon)
    mask = torch.ones(3, 2, horizon, dtype=torch.bool)
    mask[1] = False
    mask[1, 0, 0] = True  # one sample
    mask[2] = False  # no samples at all
    values = linear_baseline_values(observation, returns, mask)
    assert torch.isfinite(values).all()
    want = reference_values(observation[:2], returns[:2], mask[:2].sum(-1))
    torch.testing.assert_close(values[:2], want, rtol=1e-7, atol=1e-7)
    assert (values[2] == 0).all()


class FlakySolver:
    """``torch.linalg.lstsq`` that fails (NaN) for systems whose ridge is below ``threshold``.

    The ridge of a call is read off the matrix: ``a - X^T X`` for the task's known Gram matrix.
    Records the ridge of every system it solves.
    """

    def __init__(self, gram: torch.Tensor, threshold: float) -> None:
        self.gram, self.threshold, self.calls = gram, threshold, []
        self.solve = torch.linalg.lstsq

    def __call__(self, a, b, *args, **kwargs):
        result = self.solve(a, b, *args, **kwargs)
        solution = result.solution.clone()
        regs = []
        for i in range(a.shape[0]):
            off_diagonal = a[i] - torch.diag(a[i].diagonal())
            task = next(j for j, g in enumerate(self.gram) if torch.allclose(off_diagonal, g - torch.diag(g.diagonal())))
            reg = float((a[i] - self.gram[task]).diagonal().mean())
            regs.append(reg)
            if reg < self.threshold * (1 - 1e-9):
                solution[i] = float("nan")
        self.calls.append(regs)
        return SimpleNamespace(solution=solution)


def test_non_finite_fits_are_retried_with_ten_times_the_regulariser(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    features = torch.randn(3, 40, 5, generator=gen, dtype=F64)
    features[1] *= 3.0  # distinct Gram matrices
    features[2] *= 0.5
    targets = torch.randn(3, 40, generator=gen, dtype=F64)
    mask = torch.ones(3, 40, dtype=torch.bool)
    gram = features.transpose(-1, -2) @ features
    solver = FlakySolver(gram, threshold=1e-3)
    monkeypatch.setattr(torch.linalg, "lstsq", solver)
    coeffs = fit_linear_baseline(features, targets, mask, reg_coeff=1e-5)
    monkeypatch.undo()
    # every task fails at 1e-5 and 1e-4, succeeds at 1e-3 (the third of five tries)
    assert [len(c) for c in solver.calls] == [3, 3, 3]
    for call, reg in zip(solver.calls, (1e-5, 1e-4, 1e-3)):
        assert call == pytest.approx([reg] * 3, rel=1e-6)
    for task in range(3):
        want = reference_fit(features[task].numpy(), targets[task].numpy(), reg_coeff=1e-3)
        torch.testing.assert_close(coeffs[task], torch.from_numpy(want), rtol=1e-8, atol=1e-10)


def test_a_task_that_never_fits_gets_zero_coefficients(monkeypatch):
    """Non-finite targets in one task: five tries with growing ridge, then a zero baseline; other tasks unaffected."""
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(3, 40, 5, generator=gen, dtype=F64)
    targets = torch.randn(3, 40, generator=gen, dtype=F64)
    targets[1, 7] = float("inf")
    mask = torch.ones(3, 40, dtype=torch.bool)
    calls = []
    solve = torch.linalg.lstsq

    def counting(a, b, *args, **kwargs):
        calls.append(a.shape[0])
        return solve(a, b, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "lstsq", counting)
    coeffs = fit_linear_baseline(features, targets, mask)
    monkeypatch.undo()
    assert calls == [3, 1, 1, 1, 1]
    assert (coeffs[1] == 0).all()
    for task in (0, 2):
        want = reference_fit(features[task].numpy(), targets[task].numpy())
        torch.testing.assert_close(coeffs[task], torch.from_numpy(want), rtol=1e-8, atol=1e-10)


def test_the_fit_is_bit_reproducible_on_an_ill_conditioned_system():
    """The same inputs give the same bits, call after call (torch's default lstsq driver does not)."""
    generator = torch.Generator().manual_seed(0)
    observation = torch.randn(3, 4, 12, 17, generator=generator, dtype=torch.float64) * torch.linspace(0.01, 5, 17)
    features = linear_baseline_features(observation).reshape(3, -1, 38)
    targets = torch.randn(3, 48, generator=generator, dtype=torch.float64)
    mask = torch.ones(3, 48, dtype=torch.bool)
    gram = features.transpose(-1, -2) @ features
    assert torch.linalg.cond(gram).min() > 1e6  # badly conditioned, as real baseline fits are
    fits = []
    for k in range(10):
        torch.empty(k * 13 + 5, dtype=torch.float64)  # other allocations in between
        fits.append(fit_linear_baseline(features.clone(), targets.clone(), mask.clone()))
    assert all(torch.equal(fits[0], fit) for fit in fits)
