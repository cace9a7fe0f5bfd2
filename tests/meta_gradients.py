"""Shared checks of meta-gradients: float64 batches and central finite differences along random directions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lightning_metarl.algorithms import GradientMetaRLModule, MetaBatch


def to_double(batch):
    """``batch`` with its floating-point entries in float64."""
    return batch.apply(lambda x: x.double() if x.is_floating_point() else x)


def double_meta_batch(module: GradientMetaRLModule) -> MetaBatch:
    """Collect one meta-batch with ``module``, then turn the module, the batches and the fast states to float64."""
    meta_batch = module.collect_and_adapt(module.sample_tasks())
    module.double()
    meta_batch.pre_update = [to_double(b) for b in meta_batch.pre_update]
    meta_batch.post_update = to_double(meta_batch.post_update)
    meta_batch.fast_states = [to_double(state) for state in meta_batch.fast_states]
    return meta_batch


def assert_matches_finite_differences(
    objective: Callable[[], torch.Tensor],
    parameters: Sequence[torch.Tensor],
    first_order: Sequence[torch.Tensor],
    directions: int = 3,
    eps: float = 1e-6,
) -> None:
    """The autograd gradient of ``objective`` equals central differences along random directions.

    ``first_order`` is the gradient without the term through the inner step: it must differ
    from the full one, so the check proves that the second-order term is there.
    """
    meta_grad = torch.autograd.grad(objective(), list(parameters))
    generator = torch.Generator().manual_seed(1)
    for _ in range(directions):
        direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in parameters]
        values = []
        for sign in (1.0, -2.0, 1.0):
            with torch.no_grad():
                for p, d in zip(parameters, direction):
                    p.add_(sign * eps * d)
            values.append(objective().item())
        finite_difference = (values[0] - values[1]) / (2 * eps)
        analytic = sum((g * d).sum() for g, d in zip(meta_grad, direction)).item()
        assert abs(analytic - finite_difference) <= 1e-6 * max(1.0, abs(finite_difference))
        first = sum((g * d).sum() for g, d in zip(first_order, direction)).item()
        # the second-order term through the inner step is present and not negligible
        assert abs(analytic - first) > 1e-4 * max(1.0, abs(analytic))
