"""The networks' own kernels: the layout-choosing batched matrix product, the logistic-based tanh and the fused per-task layer.

Each must be the function it replaces (``torch.bmm``, ``torch.tanh``, its derivative
``tanh_backward``, a batched linear layer followed by tanh) in value and in first, second and
forward-mode derivatives, under ``torch.vmap`` too.
"""

from __future__ import annotations

import pytest
import torch

from lightning_metarl.nn.activation import Tanh, tanh, tanh_backward
from lightning_metarl.nn.layers import per_task_dense
from lightning_metarl.nn.matmul import batched_matmul
from lightning_metarl.nn.policy import mlp

# (n, m, k, p): the product's last dimension smaller than its rows (computed transposed), larger, equal
SHAPES = [(3, 9, 4, 2), (3, 2, 4, 9), (2, 5, 3, 5), (1, 1, 1, 1)]


def operands(n: int, m: int, k: int, p: int, dtype=torch.float64, transposed: bool = False):
    generator = torch.Generator().manual_seed(n * 1000 + m * 100 + k * 10 + p)
    a = torch.randn(n, m, k, generator=generator, dtype=dtype)
    b = torch.randn(n, p, k, generator=generator, dtype=dtype).transpose(1, 2) if transposed else \
        torch.randn(n, k, p, generator=generator, dtype=dtype)
    return a.requires_grad_(True), b.requires_grad_(True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("transposed", [False, True])
def test_batched_matmul_is_bmm_in_value_and_in_every_derivative(shape, transposed: bool):
    a, b = operands(*shape, transposed=transposed)
    torch.testing.assert_close(batched_matmul(a, b), torch.bmm(a, b), rtol=1e-14, atol=1e-14)
    assert torch.autograd.gradcheck(batched_matmul, (a, b), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(batched_matmul, (a, b))

    # second derivatives against those of torch.bmm through a nonlinear loss
    def second(product):
        (ga, gb) = torch.autograd.grad(product(a, b).sin().sum(), (a, b), create_graph=True)
        return torch.autograd.grad((ga.pow(2).sum() + gb.pow(3).sum()), (a, b))

    for ours, reference in zip(second(batched_matmul), second(torch.bmm)):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_batched_matmul_writes_along_the_longer_dimension():
    """A product with fewer columns than rows comes back as the transpose of a row-major ``[n, p, m]`` result."""
    a, b = operands(3, 9, 4, 2)
    out = batched_matmul(a, b)
    assert out.shape == (3, 9, 2) and out.stride() == (18, 1, 9)
    a, b = operands(3, 2, 4, 9)
    assert batched_matmul(a, b).is_contiguous()


def test_batched_matmul_under_vmap_and_in_float32():
    a, b = operands(4, 7, 5, 3)
    mapped = torch.vmap(batched_matmul)(a.unsqueeze(1).expand(4, 2, 7, 5), b.unsqueeze(1).expand(4, 2, 5, 3))
    torch.testing.assert_close(mapped, torch.bmm(a, b).unsqueeze(1).expand(4, 2, 7, 3), rtol=1e-14, atol=1e-14)
    a32, b32 = a.detach().float(), b.detach().float()
    torch.testing.assert_close(batched_matmul(a32, b32), torch.bmm(a32, b32), rtol=1e-5, atol=1e-5)


def test_batched_matmul_refuses_shapes_that_do_not_multiply():
    with pytest.raises(ValueError, match=r"\[n, m, k\] @ \[n, k, p\]"):
        batched_matmul(torch.zeros(2, 3, 4), torch.zeros(2, 5, 6))
    with pytest.raises(ValueError, match="batched_matmul"):
        batched_matmul(torch.zeros(3, 4), torch.zeros(4, 6))


def test_tanh_values_are_torch_tanh_to_float32_rounding():
    x = torch.cat([torch.linspace(-30, 30, 600_001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-8, float("inf"), float("-inf")])])
    exact = torch.tanh(x.double())
    ours = tanh(x)
    assert ours.dtype == torch.float32
    assert (ours.double() - exact).abs().max().item() < 3e-7  # a few units in the last place of 1
    assert ours[-2].item() == 1.0 and ours[-1].item() == -1.0
    assert torch.isnan(tanh(torch.tensor([float("nan")]))).all()
    x64 = torch.linspace(-30, 30, 100_001, dtype=torch.float64)
    assert (tanh(x64) - torch.tanh(x64)).abs().max().item() < 1e-15


def test_tanh_derivatives_are_those_of_torch_tanh():
    x = torch.linspace(-4, 4, 41, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(tanh, (x,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(tanh, (x,))

    def derivatives(f):
        (first,) = torch.autograd.grad(f(x).pow(3).sum(), x, create_graph=True)
        (second,) = torch.autograd.grad(first.sum(), x)
        return first, second

    for ours, reference in zip(derivatives(tanh), derivatives(torch.tanh)):
        torch.testing.assert_close(ours, reference, rtol=1e-13, atol=1e-13)
    _, tangent = torch.func.jvp(tanh, (x.detach(),), (torch.ones_like(x),))
    torch.testing.assert_close(tangent, 1 - torch.tanh(x.detach()) ** 2, rtol=1e-13, atol=1e-13)
    rows = x.detach().reshape(1, -1).expand(3, -1)
    torch.testing.assert_close(torch.vmap(tanh)(rows), torch.tanh(rows), rtol=1e-15, atol=1e-15)


def test_mlps_use_it():
    net = mlp(3, 2, (4,), "tanh")
    assert isinstance(net[1], Tanh)
    x = torch.randn(5, 3)
    reference = net[2](torch.tanh(net[0](x)))
    torch.testing.assert_close(net(x), reference, rtol=0, atol=1e-6)


def test_without_grad_mode_the_values_are_the_same_and_forward_mode_still_works():
    a, b = operands(3, 9, 4, 2)
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(batched_matmul(a, b), batched_matmul(a.detach(), b.detach()))
        assert torch.equal(tanh(x), tanh_through_autograd_function(x))
        _, tangent = torch.func.jvp(tanh, (x,), (torch.ones_like(x),))
    torch.testing.assert_close(tangent, 1 - torch.tanh(x) ** 2, rtol=1e-13, atol=1e-13)


def tanh_through_autograd_function(x: torch.Tensor) -> torch.Tensor:
    from lightning_metarl.nn.activation import _Tanh

    return _Tanh.apply(x)


def test_tanh_backward_is_atens_in_value_and_in_every_derivative():
    generator = torch.Generator().manual_seed(3)
    grad = torch.randn(4, 5, generator=generator, dtype=torch.float64).requires_grad_(True)
    output = torch.tanh(torch.randn(4, 5, generator=generator, dtype=torch.float64)).requires_grad_(True)
    torch.testing.assert_close(tanh_backward(grad, output), torch.ops.aten.tanh_backward(grad, output), rtol=0, atol=0)
    assert torch.autograd.gradcheck(tanh_backward, (grad, output), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(tanh_backward, (grad, output))  # third derivatives of tanh

    def second(f):  # the second-order passes of a meta-gradient, without and with a graph of them
        value = f(grad, output)
        first = torch.autograd.grad((value * value.cos()).sum(), (grad, output), create_graph=True)
        return torch.autograd.grad(sum((g * g).sum() for g in first), (grad, output))

    for ours, reference in zip(second(tanh_backward), second(torch.ops.aten.tanh_backward)):
        torch.testing.assert_close(ours, reference, rtol=1e-13, atol=1e-13)
    # a backward pass without a graph of it (the in-place branch)
    ours = torch.autograd.grad(tanh_backward(grad, output).sin().sum(), (grad, output))
    reference = torch.autograd.grad(torch.ops.aten.tanh_backward(grad, output).sin().sum(), (grad, output))
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)


def dense_reference(x, weight, bias, activation):
    out = torch.bmm(x, weight.transpose(1, 2)) + bias.unsqueeze(1)
    return torch.tanh(out) if activation else out


@pytest.mark.parametrize("activation", [False, True])
@pytest.mark.parametrize("shape", [(3, 9, 4, 2), (3, 2, 4, 9), (2, 5, 3, 5)])
def test_per_task_dense_is_a_batched_linear_layer_and_its_tanh_to_every_order(activation: bool, shape):
    n, m, k, p = shape
    generator = torch.Generator().manual_seed(m * 10 + p)
    x = torch.randn(n, m, k, generator=generator, dtype=torch.float64).requires_grad_(True)
    weight = torch.randn(n, p, k, generator=generator, dtype=torch.float64).requires_grad_(True)
    bias = torch.randn(n, p, generator=generator, dtype=torch.float64).requires_grad_(True)
    torch.testing.assert_close(per_task_dense(x, weight, bias, activation), dense_reference(x, weight, bias, activation),
                               rtol=1e-13, atol=1e-13)

    def layer(x, weight, bias):
        return per_task_dense(x, weight, bias, activation)

    assert torch.autograd.gradcheck(layer, (x, weight, bias), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(layer, (x, weight, bias))

    def meta_gradient(f):  # an inner step on (weight, bias) with its graph, then a loss after it
        inner = f(x, weight, bias, activation).pow(2).sum()
        g_weight, g_bias = torch.autograd.grad(inner, (weight, bias), create_graph=True)
        after = f(x, weight - 0.1 * g_weight, bias - 0.1 * g_bias, activation)
        return torch.autograd.grad(after.sin().sum(), (x, weight, bias))

    for ours, reference in zip(meta_gradient(per_task_dense), meta_gradient(dense_reference)):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    mapped = torch.vmap(layer)(x.unsqueeze(0).expand(2, -1, -1, -1), weight.unsqueeze(0).expand(2, -1, -1, -1),
                               bias.unsqueeze(0).expand(2, -1, -1))
    torch.testing.assert_close(mapped[1], dense_reference(x, weight, bias, activation), rtol=1e-13, atol=1e-13)
    with torch.no_grad():
        torch.testing.assert_close(per_task_dense(x, weight, bias, activation), dense_reference(x, weight, bias, activation),
                                   rtol=1e-13, atol=1e-13)


def test_per_task_dense_in_float32_and_its_shape_errors():
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*s, generator=generator) for s in [(4, 300, 17), (4, 64, 17), (4, 64)])
    torch.testing.assert_close(per_task_dense(x, weight, bias, True), dense_reference(x, weight, bias, True),
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"weight \[n, p, k\]"):
        per_task_dense(x, weight, bias[:, :3])
    with pytest.raises(ValueError, match="per_task_dense"):
        per_task_dense(x, weight.transpose(1, 2), bias)
