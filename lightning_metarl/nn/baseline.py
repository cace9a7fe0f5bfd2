"""The linear feature baseline of the reference implementations, fitted for all tasks at once.

Duan et al. (2016), "Benchmarking deep RL for continuous control": a ridge regression of the
returns on the features ``[o, o^2, t, t^2, t^3, 1]``, refitted per task on every batch
(as in the ProMP benchmark code, Rothfuss et al. 2019). Solved in float64 for all tasks in one batched call.
"""

from __future__ import annotations

import torch


def linear_baseline_features(observation: torch.Tensor, time_scale: float = 100.0) -> torch.Tensor:
    """Features ``[o, o^2, t, t^2, t^3, 1]`` of observations ``[..., T, obs_dim]``.

    ``o`` is clipped to ``+-10`` and ``t = step / time_scale`` (reference: ``t = step / 100``),
    so an observation of size ``d`` gives ``2 d + 4`` features.
    """
    o = observation.clamp(-10.0, 10.0)
    horizon = observation.shape[-2]
    t = (torch.arange(horizon, dtype=o.dtype, device=o.device) / time_scale).unsqueeze(-1)
    t = t.expand(*o.shape[:-1], 1)
    return torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)


def fit_linear_baseline(
    features: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    reg_coeff: float = 1e-5,
    max_tries: int = 5,
) -> torch.Tensor:
    """Ridge regression of ``targets`` on ``features`` for every task at once.

    Args:
        features: ``[n_tasks, N, F]`` (N samples of a task: rollouts x time, flattened).
        targets: ``[n_tasks, N]``, the regression targets (discounted returns; for the DiCE
            baseline, the discounted per-step rewards).
        mask: ``[n_tasks, N]``, 1 for samples that enter the fit. Masked-out samples are
            ignored even if they are not finite.
        reg_coeff: ridge regulariser; multiplied by 10 for the tasks whose fit is not finite,
            up to ``max_tries`` attempts in all (the reference's fallback).
        max_tries: number of attempts.

    Returns:
        Coefficients ``[n_tasks, F]`` (dtype of ``features``) solving
        ``(X^T X + reg I) w = X^T y`` in float64 by least squares (SVD-based ``gelsd``, numpy's
        ``lstsq``), as the reference; bit-reproducible from call to call. A task
        whose fit is still not finite after ``max_tries`` gets zero coefficients, so its
        baseline predicts 0 (the reference would keep the NaN coefficients and poison the
        advantages of every later step).
    """
    valid = (mask != 0).unsqueeze(-1) if mask.dtype != torch.bool else mask.unsqueeze(-1)
    zero = torch.zeros((), dtype=torch.float64, device=features.device)
    x, y = features.double(), targets.double()
    if not bool(valid.all()):  # selections, not products: padding may hold non-finite values
        x = torch.where(valid, x, zero)
        y = torch.where(valid.squeeze(-1), y, zero)
    gram = x.transpose(-1, -2) @ x
    rhs = (x.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    reg = torch.full(gram.shape[:-2], float(reg_coeff), dtype=gram.dtype, device=gram.device)
    coeffs = torch.zeros_like(rhs)
    todo = torch.ones(gram.shape[:-2], dtype=torch.bool, device=gram.device)
    for _ in range(max_tries):
        index = todo.nonzero().squeeze(-1)
        a = gram[index] + reg[index, None, None] * eye
        # gelsd (SVD), numpy's lstsq as in the reference: torch's default gelsy is not reproducible
        # on these ill-conditioned systems (identical inputs, different last bits from call to call).
        # It runs on the CPU: CUDA's lstsq has no SVD driver, and the systems are tiny.
        solution = torch.linalg.lstsq(a.cpu(), rhs[index].unsqueeze(-1).cpu(), driver="gelsd").solution
        solution = solution.squeeze(-1).to(a.device)
        ok = torch.isfinite(solution).all(-1)
        coeffs[index[ok]] = solution[ok]
        todo[index[ok]] = False
        if not todo.any():
            break
        reg = torch.where(todo, reg * 10, reg)
    return coeffs.to(features.dtype)


def linear_baseline_values(
    observation: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reg_coeff: float = 1e-5
) -> torch.Tensor:
    """Fit the linear feature baseline per task and predict it on the same samples.

    ``observation`` is ``[n_tasks, rollouts, T, obs_dim]``; ``returns`` (the regression
    targets) and ``mask`` are ``[n_tasks, rollouts, T]``. Returns the values
    ``[n_tasks, rollouts, T]`` (0 on padding). The reference refits the baseline on every
    batch, so it carries no state across iterations.
    """
    n_tasks = observation.shape[0]
    features = linear_baseline_features(observation)
    flat = features.reshape(n_tasks, -1, features.shape[-1])
    coeffs = fit_linear_baseline(flat, returns.reshape(n_tasks, -1), mask.reshape(n_tasks, -1), reg_coeff)
    values = (features @ coeffs[:, None, :, None]).squeeze(-1)
    valid = mask if mask.dtype == torch.bool else mask != 0
    return torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device))
