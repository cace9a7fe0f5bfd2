"""The tanh activation of every MLP here, computed through the logistic function (faster on the CPU).

``torch.tanh`` on the CPU evaluates about 0.7 G elements/s on two cores (7 ms for the
``[40, 2000, 64]`` hidden layer of a ProMP meta-batch), the logistic function ``torch.sigmoid``
about 4 G/s. :class:`Tanh` computes ``tanh(x) = 2 sigmoid(2x) - 1``: in float32 its value differs
from ``torch.tanh`` by at most a few units in the last place of 1 (absolute error below 3e-7,
the size of the rounding of the layer's float32 input), in float64 by about 1e-16. Its
derivatives are those of ``torch.tanh`` written in terms of the output (``1 - tanh(x)^2``,
:func:`tanh_backward`, whose own derivative ``-2 grad tanh(x)`` allocates one tensor where
autograd's formula allocates three), so first and second derivatives (an inner step with
``create_graph`` and the meta-gradient through it) cost at most the elementwise passes of
``nn.Tanh``; forward-mode derivatives and ``torch.vmap`` are supported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _tanh_values(x: torch.Tensor) -> torch.Tensor:
    out = torch.mul(x, 2)  # the one new tensor; the other passes are in place
    return torch.sigmoid_(out).mul_(2).sub_(1)


class _Tanh(torch.autograd.Function):
    """``2 sigmoid(2x) - 1`` with tanh's derivative in terms of its output, differentiable to any order."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _tanh_values(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(output)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (output,) = ctx.saved_tensors
        return tanh_backward(grad, output)

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(tangent, tanh(x))


class _TanhBackward(torch.autograd.Function):
    """``grad * (1 - output^2)`` whose own derivative takes one new tensor instead of three (the second-order passes)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.tanh_backward(grad, output)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad_grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        grad, output = ctx.saved_tensors
        grad_of_grad = tanh_backward(grad_grad, output) if ctx.needs_input_grad[0] else None
        grad_of_output = None
        if ctx.needs_input_grad[1]:  # d/d output of grad (1 - output^2) = -2 grad output
            if torch.is_grad_enabled():  # a graph of this (third derivatives): no in-place passes
                grad_of_output = grad_grad * grad * output * -2
            else:
                grad_of_output = torch.mul(grad_grad, grad).mul_(output).mul_(-2)
        return grad_of_grad, grad_of_output

    @staticmethod
    def jvp(ctx: Any, tangent_grad: torch.Tensor | None, tangent_output: torch.Tensor | None) -> torch.Tensor:
        grad, output = ctx.saved_tensors
        tangent = torch.zeros_like(grad)
        if tangent_grad is not None:
            tangent = tangent + torch.ops.aten.tanh_backward(tangent_grad, output)
        if tangent_output is not None:
            tangent = tangent - 2 * grad * output * tangent_output
        return tangent


def tanh_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``grad * (1 - output^2)``: the gradient through ``output = tanh(x)``, differentiable to any order (``torch.ops.aten.tanh_backward``'s value)."""
    if not torch.is_grad_enabled():
        return torch.ops.aten.tanh_backward(grad, output)
    return _TanhBackward.apply(grad, output)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x)`` computed as ``2 sigmoid(2x) - 1`` (see the module docstring), differentiable to any order."""
    if not torch.is_grad_enabled():  # no graph to build (collection): skip the autograd.Function's overhead
        return _tanh_values(x)
    return _Tanh.apply(x)


class Tanh(nn.Module):
    """``nn.Tanh`` computed by :func:`tanh`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tanh(x)
