"""TRPO's natural-gradient step: conjugate gradient on KL Hessian-vector products and a line search.

Schulman et al. (2015), Appendix C, with the settings of MAML-TRPO (Finn et al. 2017) and MAESN
(Gupta et al. 2018):
mean KL <= 0.01, 10 conjugate-gradient iterations, backtracking ratio 0.8, at most 15 step sizes.

Written for any list of parameter tensors and two closures, so the same step serves plain
TRPO and meta-learning: the surrogate and the KL may be computed through an inner adaptation
step (``kl_fn`` builds ``theta'(theta)`` with ``create_graph=True`` and returns the mean KL of
the post-update policy), in which case the Hessian-vector products differentiate through the
inner step. TRPO is an optimizer, not a loss: :func:`trpo_step` is the step on any list of
tensors, and :class:`TrustRegion` is the same step as a ``torch.optim.Optimizer``, which a
``LightningModule`` returns from ``configure_optimizers`` and steps with
``self.optimizers().step(closure)`` (so that Lightning counts its steps like any other).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def flat_grad(
    output: torch.Tensor,
    params: Sequence[torch.Tensor],
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> torch.Tensor:
    """Gradient of the scalar ``output`` w.r.t. ``params``, flattened into one vector (0 for unused parameters)."""
    grads = torch.autograd.grad(
        output, list(params), create_graph=create_graph, retain_graph=retain_graph, allow_unused=True
    )
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def hessian_vector_product(
    kl: torch.Tensor, params: Sequence[torch.Tensor], damping: float = 1e-5,
    reduce: Callable[[torch.Tensor], torch.Tensor] = _identity,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> (H + damping I) v`` with ``H`` the Hessian of the scalar ``kl`` w.r.t. ``params`` (Pearlmutter 1994).

    The gradient graph is built once; each product is one more backward pass through it.
    ``reduce`` combines the product ``H v`` with those of other processes (their mean).
    """
    grad = flat_grad(kl, params, create_graph=True)

    def product(vector: torch.Tensor) -> torch.Tensor:
        return reduce(flat_grad(grad @ vector.detach(), params, retain_graph=True)) + damping * vector

    return product


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iterations: int = 10,
    residual_tol: float = 1e-10,
) -> torch.Tensor:
    """Approximate solution of ``A x = b`` for symmetric positive definite ``A`` given by ``matvec``.

    Hestenes-Stiefel conjugate gradient from ``x = 0`` (Nocedal & Wright, Algorithm 5.2), at
    most ``iterations`` products; stops early once ``r^T r < residual_tol``. Exact after
    ``dim`` iterations in exact arithmetic.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iterations):
        if rr < residual_tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


@dataclass(frozen=True)
class TRPOStepInfo:
    """What one :func:`trpo_step` did.

    Attributes:
        accepted: whether the parameters were moved (otherwise they are unchanged).
        loss_before: surrogate loss at the start.
        loss_after: surrogate loss at the returned parameters.
        kl: mean KL at the returned parameters (0 if the step was rejected).
        step_fraction: fraction of the full trust-region step taken (0 if rejected).
        evaluations: number of step sizes tried by the line search.
        expected_improvement: ``-g^T step`` of the full step, the decrease of the loss predicted
            to first order.
    """

    accepted: bool
    loss_before: float
    loss_after: float
    kl: float
    step_fraction: float
    evaluations: int
    expected_improvement: float

    def metrics(self) -> dict[str, torch.Tensor]:
        """The step's diagnostics under the TensorBoard tags every TRPO-trained algorithm logs."""
        return {
            "loss/outer": torch.tensor(self.loss_after),
            "loss/surrogate_before": torch.tensor(self.loss_before),
            "loss/surrogate_after": torch.tensor(self.loss_after),
            "kl/post_update": torch.tensor(self.kl),
            "trpo/accepted": torch.tensor(float(self.accepted)),
            "trpo/step_fraction": torch.tensor(self.step_fraction),
            "trpo/line_search_trials": torch.tensor(float(self.evaluations)),
        }


def _set_flat(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n


def trpo_step(
    params: Sequence[torch.Tensor],
    loss_fn: Callable[[], torch.Tensor],
    kl_fn: Callable[[], torch.Tensor],
    max_kl: float = 0.01,
    cg_iterations: int = 10,
    damping: float = 1e-5,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
    reduce: Callable[[torch.Tensor], torch.Tensor] = _identity,
    evaluate_fn: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> TRPOStepInfo:
    """One trust-region step on ``params`` in place: minimise ``loss_fn`` subject to ``kl_fn() <= max_kl``.

    1. ``g = grad loss``; ``x ~= H^-1 g`` by :func:`conjugate_gradient` with ``H`` the Hessian
       of ``kl_fn`` (plus ``damping I``) at the current parameters.
    2. Full step ``-sqrt(2 max_kl / x^T H x) x``, the step that reaches the KL bound in the
       quadratic model.
    3. Backtracking line search on the fractions ``backtrack_ratio^k``,
       ``k = 0 .. max_backtracks - 1``: accept the first whose KL is at most ``max_kl`` and
       whose loss is below the initial loss (both finite). If none is, the parameters are
       restored exactly (the reference's ``accept_violation=False``).

    Args:
        params: the tensors to update (leaf tensors, e.g. ``list(module.parameters())``).
        loss_fn: closure returning the scalar surrogate loss at the current parameter values.
        kl_fn: closure returning the scalar mean ``KL(pi_old || pi_params)``, ``pi_old``
            fixed (detached) at the parameters this step starts from; it is 0 with zero
            gradient there. Hold ``pi_old``'s tensors as copies (``.detach().clone()``): the
            step writes the parameters in place, which invalidates views of them. Both
            closures run with gradients enabled (an inner step may need them) and must read
            the parameters' current values.
        max_kl: trust-region size ``delta`` (reference 0.01).
        cg_iterations: conjugate-gradient iterations (reference 10).
        damping: ``lambda`` in ``(H + lambda I)``. Default 1e-5, the reference
            implementations' regulariser; it only keeps conjugate gradient well posed when
            the KL is flat in some directions. Raise it (1e-3 .. 1e-1) if the Hessian through
            an inner step is badly conditioned.
        backtrack_ratio: step shrink factor per line-search trial (reference 0.8).
        max_backtracks: number of step sizes tried (reference 15).
        reduce: combines a tensor with the same tensor of the other processes of a
            multi-process run (:func:`~lightning_metarl.distributed.all_reduce_mean`): applied to
            the gradient, every Hessian-vector product and every loss and KL value, so that
            processes holding shares of the meta-batch take the one step of the whole batch.
        evaluate_fn: optional closure returning ``(loss, kl)`` at the current parameter values,
            the same numbers as ``loss_fn`` and ``kl_fn`` but without what differentiating them
            needs (no graph through an inner step, work the two share done once). The line
            search, which only compares values, calls it instead of the two closures.
    """
    params = list(params)
    start = torch.cat([p.detach().reshape(-1) for p in params]).clone()

    loss = loss_fn()
    gradient = reduce(flat_grad(loss, params))
    loss_before = float(reduce(loss.detach()))
    hvp = hessian_vector_product(kl_fn(), params, damping, reduce)
    direction = conjugate_gradient(hvp, gradient, cg_iterations)
    curvature = float(direction @ hvp(direction))
    del hvp

    def rejected(evaluations: int) -> TRPOStepInfo:
        _set_flat(params, start)
        return TRPOStepInfo(False, loss_before, loss_before, 0.0, 0.0, evaluations, 0.0)

    if not math.isfinite(curvature) or curvature <= 0 or not math.isfinite(loss_before):
        return rejected(0)
    full_step = -math.sqrt(2.0 * max_kl / curvature) * direction
    expected_improvement = float(-(gradient @ full_step))

    for k in range(max_backtracks):
        fraction = backtrack_ratio**k
        _set_flat(params, start + fraction * full_step)
        loss_value, kl_value = (loss_fn(), kl_fn()) if evaluate_fn is None else evaluate_fn()
        loss_new = float(reduce(loss_value.detach()))
        kl_new = float(reduce(kl_value.detach()))
        if math.isfinite(loss_new) and math.isfinite(kl_new) and loss_new < loss_before and kl_new <= max_kl:
            return TRPOStepInfo(True, loss_before, loss_new, kl_new, fraction, k + 1, expected_improvement)
    return rejected(max_backtracks)


@dataclass(frozen=True)
class TrustRegionObjective:
    """What one :class:`TrustRegion` step evaluates: the closures of :func:`trpo_step`.

    Attributes:
        loss_fn: the surrogate loss at the current parameter values (differentiable).
        kl_fn: the mean KL to the policy the step starts from (differentiable twice).
        evaluate_fn: optional ``(loss, kl)`` without the graphs, for the line search.
    """

    loss_fn: Callable[[], torch.Tensor]
    kl_fn: Callable[[], torch.Tensor]
    evaluate_fn: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None


#: The settings of :func:`trpo_step` that a :class:`TrustRegion` keeps in its parameter group, with their defaults.
TRUST_REGION_DEFAULTS: dict[str, float] = {
    "max_kl": 0.01, "cg_iterations": 10, "damping": 1e-5, "backtrack_ratio": 0.8, "max_backtracks": 15,
}


class TrustRegion(torch.optim.Optimizer):
    """:func:`trpo_step` as a ``torch.optim.Optimizer`` over one parameter group.

    ``step(closure)``: ``closure()`` returns a :class:`TrustRegionObjective` (in a
    ``LightningModule``, ``self.optimizers().step(closure=...)``; Lightning's precision plugin
    calls the closure once, then its ``on_before_optimizer_step`` hooks); the step returns its
    :class:`TRPOStepInfo`. The settings live in the parameter group (they are saved with the
    optimizer's state); ``reduce`` (the mean over the processes of a multi-process run) does
    not. The step keeps no state between calls.

    Args:
        params: the parameters the trust region constrains jointly (one group).
        reduce: see :func:`trpo_step`.
        **settings: ``max_kl``, ``cg_iterations``, ``damping``, ``backtrack_ratio``,
            ``max_backtracks`` of :func:`trpo_step` (defaults: :data:`TRUST_REGION_DEFAULTS`).
    """

    def __init__(self, params: Iterable[torch.Tensor], reduce: Callable[[torch.Tensor], torch.Tensor] = _identity,
                 **settings: float) -> None:
        unknown = sorted(set(settings) - set(TRUST_REGION_DEFAULTS))
        if unknown:
            raise TypeError(f"TrustRegion: unknown settings {unknown}; known: {sorted(TRUST_REGION_DEFAULTS)}")
        super().__init__(params, {**TRUST_REGION_DEFAULTS, **settings})
        if len(self.param_groups) != 1:
            raise ValueError("TrustRegion takes one parameter group: its KL constrains all parameters jointly")
        self.reduce = reduce

    def step(self, closure: Callable[[], TrustRegionObjective]) -> TRPOStepInfo:  # type: ignore[override]
        """One trust-region step on the group's parameters, in place, on the objective ``closure()`` returns."""
        objective = closure()
        if not isinstance(objective, TrustRegionObjective):
            raise TypeError(f"TrustRegion.step: the closure must return a TrustRegionObjective, got {type(objective).__name__}")
        group = self.param_groups[0]
        return trpo_step(group["params"], objective.loss_fn, objective.kl_fn, reduce=self.reduce,
                         evaluate_fn=objective.evaluate_fn, **{key: group[key] for key in TRUST_REGION_DEFAULTS})
