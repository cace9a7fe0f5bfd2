"""Gaussian MLP policies with a state-independent log standard deviation (the ProMP policy).

A policy declares the TensorDict keys it reads (``in_keys``): ``"observation"`` first, then any
extra input concatenated to it at the input layer, such as a task context (CAVIA, Zintgraf et
al. 2019), the latent ``z`` of MAME's exploitation policy or MAESN's per-episode latent. An
extra input may have fewer leading dimensions than the observation (one context per task for
``[n_tasks, rollouts, T]`` observations): it is broadcast over the missing ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDictBase
from torch import nn

from lightning_metarl.nn.activation import Tanh
from lightning_metarl.nn.distributions import gaussian_log_prob
from lightning_metarl.nn.layers import per_task_dense

ACTIVATIONS = {"tanh": Tanh, "relu": nn.ReLU}


def mlp(in_dim: int, out_dim: int, hidden_sizes: Sequence[int], activation: str = "tanh") -> nn.Sequential:
    """A multilayer perceptron ``in_dim -> hidden_sizes -> out_dim`` with a linear output layer."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    sizes = [in_dim, *hidden_sizes]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], out_dim))
    return nn.Sequential(*layers)


def expand_to(x: torch.Tensor, batch: Sequence[int]) -> torch.Tensor:
    """``x`` (``[*P, d]`` with ``P`` a prefix of ``batch``, e.g. one value per task) expanded to ``[*batch, d]``."""
    prefix = x.shape[:-1]
    if tuple(batch[: len(prefix)]) != tuple(prefix):
        raise ValueError(f"policy input of shape {list(x.shape)} does not broadcast to {[*batch, x.shape[-1]]}")
    view = x.reshape(*prefix, *([1] * (len(batch) - len(prefix))), x.shape[-1])
    return view.expand(*batch, x.shape[-1])


def concat_inputs(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``inputs`` on the last dimension, broadcasting each over the first one's leading dims.

    ``inputs[0]`` is ``[*B, d0]``; every other input is ``[*P, d]`` with ``P`` a prefix of ``B``
    (e.g. one context per task) and is expanded to ``[*B, d]``.
    """
    first = inputs[0]
    batch = first.shape[:-1]
    return torch.cat([first, *(expand_to(x, batch) for x in inputs[1:])], dim=-1)


class GaussianMLPPolicy(nn.Module):
    """``pi(a|s, x) = N(mu([s, x]), diag(exp(log_std))^2)`` with ``mu`` an MLP and ``log_std`` a free vector.

    Args:
        observation_dim: size of the observation.
        action_dim: size of the action.
        hidden_sizes: hidden layer widths (reference: 64 x 64).
        activation: ``"tanh"`` (reference) or ``"relu"``.
        init_std: initial standard deviation of every action dimension (reference: 1.0).
        extra_inputs: ``{key: size}`` of inputs concatenated to the observation, in this order
            (e.g. ``{"context": 50}``); they follow ``"observation"`` in :attr:`in_keys`.
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        init_std: float = 1.0,
        extra_inputs: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        extra = dict(extra_inputs or {})
        #: The TensorDict keys the policy reads, in the order :meth:`forward` takes them.
        self.in_keys: list[str] = ["observation", *extra]
        self.mean_net = mlp(observation_dim + sum(extra.values()), action_dim, hidden_sizes, activation)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[..., action_dim]`` and log standard deviation (broadcast to the same shape).

        ``inputs`` are the tensors of :attr:`in_keys`, in that order.
        """
        x = inputs[0] if len(inputs) == 1 else concat_inputs(inputs)
        mean = self.mean_net(x)
        return mean, self.log_std.expand_as(mean)

    def forward_per_task(self, params: TensorDictBase, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:meth:`forward` with per-task parameters, or ``None`` where it does not apply.

        ``params`` (batch size ``[n_tasks]``) holds every parameter of the policy for each task;
        ``inputs`` have a leading task dimension. Each linear layer is one batched matrix
        product of all tasks, fused with the tanh that follows it
        (:func:`~lightning_metarl.nn.layers.per_task_dense`): the function that mapping
        :meth:`forward` over the task dimension computes (``torch.vmap``, as
        :func:`~lightning_metarl.nn.functional.call_per_task` does otherwise), without its
        per-call overhead. ``None`` when ``params`` lacks a parameter or a subclass overrides
        :meth:`forward` (the caller then maps :meth:`forward`).
        """
        log_std = params.get("log_std", None)
        if type(self).forward is not GaussianMLPPolicy.forward or log_std is None:
            return None
        x = inputs[0] if len(inputs) == 1 else concat_inputs(inputs)
        shape = x.shape[:-1]
        x = x.reshape(shape[0], -1, x.shape[-1])
        layers = list(self.mean_net.named_children())
        fused = False  # the previous linear layer computed this tanh
        for index, (name, layer) in enumerate(layers):
            if fused:
                fused = False
                continue
            if not isinstance(layer, nn.Linear):
                x = layer(x)
                continue
            weight, bias = params.get(("mean_net", name, "weight"), None), params.get(("mean_net", name, "bias"), None)
            if weight is None or bias is None:
                return None
            fused = index + 1 < len(layers) and type(layers[index + 1][1]) is Tanh
            x = per_task_dense(x, weight, bias, tanh=fused)
        mean = x.reshape(*shape, x.shape[-1])
        log_std = log_std.reshape(log_std.shape[0], *([1] * (mean.dim() - 2)), log_std.shape[-1])
        return mean, log_std.expand_as(mean)

    def log_prob(self, observation: torch.Tensor, action: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        """``log pi(a|s, x)`` summed over action dimensions, shape ``[...]``."""
        mean, log_std = self(observation, *extra)
        return gaussian_log_prob(mean, log_std, action)

    def entropy(self) -> torch.Tensor:
        """Differential entropy of the action distribution (state independent)."""
        return (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum()
