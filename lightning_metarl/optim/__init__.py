"""Optimisers of our own: TRPO's trust-region step (conjugate gradient, line search), reusable by any algorithm."""

from lightning_metarl.optim.trpo import (
    TRPOStepInfo,
    TrustRegion,
    TrustRegionObjective,
    conjugate_gradient,
    flat_grad,
    hessian_vector_product,
    trpo_step,
)

__all__ = ["TRPOStepInfo", "TrustRegion", "TrustRegionObjective", "conjugate_gradient", "flat_grad", "hessian_vector_product", "trpo_step"]
