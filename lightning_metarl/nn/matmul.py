"""Batched matrix products in the memory layout the CPU's BLAS computes fastest, to any order of derivatives.

The per-task networks of a meta-batch (:meth:`GaussianMLPPolicy.forward_per_task`) multiply
``[n_tasks, steps, d]`` activations by ``[n_tasks, d, d']`` weights, and their first and second
derivatives (an inner step with ``create_graph``, then the meta-gradient through it) multiply the
same tensors in every combination of transposes. Batched GEMM on the CPU is several times slower
when the product's last dimension is the small one: ``[40, 2000, 64] @ [40, 64, 6]`` (a policy's
mean from its last hidden layer) and ``[40, 64, 2000] @ [40, 2000, 6]`` (that layer's weight
gradient) take 3-5 ms each on two cores, while their transposes ``[40, 6, 64] @ [40, 64, 2000]``
and ``[40, 6, 2000] @ [40, 2000, 64]`` take 0.9-1.7 ms. :func:`batched_matmul` computes
``C = A @ B`` as ``(B^T @ A^T)^T`` whenever ``C`` has fewer columns than rows, so the GEMM
always writes along the longer dimension (the result is then a transposed view, which the
elementwise operations and the next product read as they are). Its backward pass is made of
:func:`batched_matmul` again, so the second-order terms of a meta-gradient get the same layout
choice. The value is that of ``torch.bmm`` up to floating-point summation order.
"""

from __future__ import annotations

from typing import Any

import torch


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (``[n, m, k] @ [n, k, p]``), computed transposed when ``p < m``."""
    if b.shape[-1] < a.shape[-2]:
        return torch.bmm(b.transpose(1, 2), a.transpose(1, 2)).transpose(1, 2)
    return torch.bmm(a, b)


class _BatchedMatmul(torch.autograd.Function):
    """``a @ b`` with a backward pass (and its derivatives) made of the same layout-choosing product."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _bmm(a, b)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        a, b = ctx.saved_tensors
        grad_a = batched_matmul(grad, b.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_b = batched_matmul(a.transpose(1, 2), grad) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b

    @staticmethod
    def jvp(ctx: Any, tangent_a: torch.Tensor | None, tangent_b: torch.Tensor | None) -> torch.Tensor:
        a, b = ctx.saved_tensors
        out = None
        if tangent_a is not None:
            out = _bmm(tangent_a, b)
        if tangent_b is not None:
            term = _bmm(a, tangent_b)
            out = term if out is None else out + term
        return out


def batched_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.bmm(a, b)`` for ``a`` ``[n, m, k]`` and ``b`` ``[n, k, p]``, in the faster layout, differentiable to any order."""
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"batched_matmul needs [n, m, k] @ [n, k, p], got {list(a.shape)} @ {list(b.shape)}")
    if not torch.is_grad_enabled():  # no graph to build (collection): skip the autograd.Function's overhead
        return _bmm(a, b)
    return _BatchedMatmul.apply(a, b)
