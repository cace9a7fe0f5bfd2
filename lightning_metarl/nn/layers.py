"""The dense layers of per-task networks, ``[n_tasks, steps, k] -> [n_tasks, steps, p]``, fused with their tanh.

:meth:`GaussianMLPPolicy.forward_per_task` evaluates each linear layer of every task's
parameters on that task's steps. :func:`per_task_dense` computes ``x @ weight^T + bias`` as one
``torch.baddbmm`` call (the bias is the GEMM's accumulator, no separate addition), in the layout of
:func:`~lightning_metarl.nn.matmul.batched_matmul` (the GEMM writes along the longer
dimension), and with ``tanh=True`` the layer's activation too: the GEMM computes
``2 (x @ weight^T + bias)`` directly (scaling by 2 is exact), and
``tanh(a) = 2 sigmoid(2a) - 1`` (:mod:`~lightning_metarl.nn.activation`) follows in place. On a
ProMP meta-batch (``[40, 2000, 64]`` hidden layers) this saves two of the six passes over each
20 MB activation that ``bmm``, the bias, ``x * 2``, the sigmoid and its affine map took apart,
and their new tensors. The backward pass is made of
:func:`~lightning_metarl.nn.matmul.batched_matmul`,
:func:`~lightning_metarl.nn.activation.tanh_backward` (in terms of the saved output) and a sum,
all differentiable, so second derivatives (an inner step with ``create_graph`` and the meta-gradient through it)
work as with the unfused layers; forward-mode derivatives and ``torch.vmap`` are supported.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_metarl.nn.activation import tanh_backward
from lightning_metarl.nn.matmul import batched_matmul


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * (x @ weight^T + bias)`` for ``[n, m, k]``, ``[n, p, k]``, ``[n, p]``; computed transposed when ``p < m``."""
    m, p = x.shape[1], weight.shape[1]
    if p < m:
        return torch.baddbmm(bias.unsqueeze(2), weight, x.transpose(1, 2), beta=scale, alpha=scale).transpose(1, 2)
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2), beta=scale, alpha=scale)


def _dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tanh: bool) -> torch.Tensor:
    if tanh:  # 2 sigmoid(2a) - 1 with 2a from the GEMM; the passes after it are in place
        return torch.sigmoid_(_affine(x, weight, bias, 2.0)).mul_(2).sub_(1)
    return _affine(x, weight, bias, 1.0)


class _PerTaskDense(torch.autograd.Function):
    """:func:`per_task_dense` with a backward pass made of differentiable operations."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tanh: bool) -> torch.Tensor:
        return _dense(x, weight, bias, tanh)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, weight, bias, tanh = inputs
        ctx.tanh = tanh
        ctx.save_for_backward(x, weight, output if tanh else None)
        ctx.save_for_forward(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, output = ctx.saved_tensors
        delta = tanh_backward(grad, output) if ctx.tanh else grad
        grad_x = batched_matmul(delta, weight) if ctx.needs_input_grad[0] else None
        grad_weight = batched_matmul(delta.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        grad_bias = delta.sum(1) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None

    @staticmethod
    def jvp(ctx: Any, tangent_x: torch.Tensor | None, tangent_weight: torch.Tensor | None,
            tangent_bias: torch.Tensor | None, _: Any) -> torch.Tensor:
        x, weight, bias = ctx.saved_tensors
        tangent = torch.zeros(x.shape[0], x.shape[1], weight.shape[1], dtype=x.dtype, device=x.device)
        if tangent_x is not None:
            tangent = tangent + torch.bmm(tangent_x, weight.transpose(1, 2))
        if tangent_weight is not None:
            tangent = tangent + torch.bmm(x, tangent_weight.transpose(1, 2))
        if tangent_bias is not None:
            tangent = tangent + tangent_bias.unsqueeze(1)
        if ctx.tanh:
            tangent = torch.ops.aten.tanh_backward(tangent, _dense(x, weight, bias, True))
        if weight.shape[1] < x.shape[1]:  # the layout of the value (a transposed view), as forward mode requires
            tangent = tangent.transpose(1, 2).contiguous().transpose(1, 2)
        return tangent


def per_task_dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tanh: bool = False) -> torch.Tensor:
    """``x @ weight^T + bias`` per task, then ``tanh`` if asked: ``[n, m, k]``, ``[n, p, k]``, ``[n, p]`` -> ``[n, m, p]``.

    The value of ``torch.tanh(torch.bmm(x, weight.transpose(1, 2)) + bias.unsqueeze(1))`` up to
    float32 rounding (see the module docstring); differentiable to any order.
    """
    if x.dim() != 3 or weight.dim() != 3 or bias.dim() != 2 or x.shape[0] != weight.shape[0] \
            or x.shape[2] != weight.shape[2] or bias.shape != weight.shape[:2]:
        raise ValueError(f"per_task_dense needs x [n, m, k], weight [n, p, k], bias [n, p]; got "
                         f"{list(x.shape)}, {list(weight.shape)}, {list(bias.shape)}")
    if not torch.is_grad_enabled():  # no graph to build (collection): skip the autograd.Function's overhead
        return _dense(x, weight, bias, tanh)
    return _PerTaskDense.apply(x, weight, bias, tanh)
