"""Evaluating one policy with per-task parameters and inputs, for all tasks in one batched call.

Parameters are TensorDicts of the module's *parameters* (:func:`module_params`; buffers are
never adapted and always come from the module). Shared parameters have batch size ``[]``;
per-task (adapted) parameters have batch size ``[n_tasks]``, and :func:`call_per_task` maps
the module's ``forward`` over the task dimension with ``torch.vmap`` (or lets the module
compute it with batched matrix products, :meth:`GaussianMLPPolicy.forward_per_task`), so a MAML
inner step for 40 tasks is a single batched forward and backward pass. :func:`distribution_per_task` wraps
the policy's output in a :class:`~lightning_metarl.nn.distributions.DiagGaussian`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from lightning_metarl.masking import valid
from lightning_metarl.nn.distributions import DiagGaussian


def call_per_task(module: nn.Module, params: TensorDictBase, *args: torch.Tensor) -> Any:
    """``module(*args)`` evaluated with ``params`` in place of the module's own parameters.

    If ``params`` has batch size ``[n_tasks]``, every ``arg`` must have a leading task
    dimension of size ``n_tasks``; the call is vmapped over it and the outputs carry it too (a
    module with a ``forward_per_task(params, *args)`` method, such as
    :class:`~lightning_metarl.nn.GaussianMLPPolicy`, computes that function itself, batched over
    the tasks, unless the method returns ``None``). With batch size ``[]`` the module is called
    once on the full ``args``. Entries missing from ``params`` (buffers) are the module's own.
    The module is never modified (``torch.func.functional_call``).
    """

    def apply(p: TensorDictBase, *xs: torch.Tensor) -> Any:
        return torch.func.functional_call(module, p.flatten_keys(".").to_dict(), xs, strict=False)

    if params.batch_dims == 0:
        return apply(params, *args)
    if params.batch_dims != 1:
        raise ValueError(f"per-task params must have one batch dimension, got batch size {list(params.batch_size)}")
    for x in args:
        if x.shape[:1] != params.batch_size:
            raise ValueError(f"inputs need a leading task dimension {list(params.batch_size)}, got {list(x.shape)}")
    per_task = getattr(module, "forward_per_task", None)
    if per_task is not None:
        outputs = per_task(params, *args)
        if outputs is not None:
            return outputs
    return torch.vmap(apply, in_dims=(0,) * (1 + len(args)), randomness="error")(params, *args)


def on_valid_steps(fn: Callable[..., Any], inputs: Sequence[torch.Tensor], mask: torch.Tensor | None) -> Any:
    """``fn(*inputs)`` evaluated on the valid steps of ``mask`` only, with 0 on the padding.

    ``inputs[0]`` is ``[*B, d0]`` with ``B = mask.shape`` (e.g. ``[n_tasks, rollouts, T]``); every
    other input is ``[*P, d]`` with ``P`` a prefix of ``B`` (one latent per task or per episode).
    Where some step is padding, the valid rows of every input are gathered into ``[N, d]``
    tensors (``N`` valid steps), ``fn`` is called on them, and each output ``[N, *k]`` (a tensor
    or a tuple of tensors) is scattered back to ``[*B, *k]`` with 0 on the padding: the networks
    of an outer update need not compute the steps after an early termination, which are masked
    anyway. Each valid row gets the value of evaluating it alone; differentiable (also twice,
    and in forward mode). Without padding (or ``mask=None``) ``fn`` gets the inputs as they are.
    """
    if mask is None:
        return fn(*inputs)
    ok = valid(mask)
    if bool(ok.all()):
        return fn(*inputs)
    batch = ok.shape
    rows = ok.reshape(-1).nonzero().squeeze(-1)
    gathered = []
    for x in inputs:
        prefix = x.shape[:-1]
        if tuple(batch[: len(prefix)]) != tuple(prefix):
            raise ValueError(f"input of shape {list(x.shape)} does not broadcast to the mask's {list(batch)}")
        inner = math.prod(batch[len(prefix):])
        gathered.append(x.reshape(-1, x.shape[-1]).index_select(0, rows if inner == 1 else rows // inner))
    outputs = fn(*gathered)

    def scatter(y: torch.Tensor) -> torch.Tensor:
        full = y.new_zeros((math.prod(batch), *y.shape[1:]))
        return full.index_copy(0, rows, y).view(*batch, *y.shape[1:])

    return tuple(scatter(y) for y in outputs) if isinstance(outputs, tuple) else scatter(outputs)


def on_valid_steps_per_task(fn: Callable[..., Any], inputs: Sequence[torch.Tensor], mask: torch.Tensor | None) -> Any:
    """:func:`on_valid_steps` for a ``fn`` mapped over a leading task dimension (per-task parameters).

    ``mask`` is ``[n_tasks, *S]`` (e.g. ``[n_tasks, rollouts, T]``), ``inputs[0]`` ``[n_tasks, *S, d0]``
    and every other input ``[n_tasks, *P, d]`` with ``P`` a prefix of ``S``. Each task's valid
    rows are gathered into ``[n_tasks, L, d]`` (``L`` the most valid steps of any task; shorter
    tasks are filled with rows whose outputs are dropped), ``fn`` is called once on them, and
    its outputs are scattered back to ``[n_tasks, *S, *k]`` with 0 on the padding. Where no task
    has padding, ``fn`` gets the inputs as they are.
    """
    if mask is None:
        return fn(*inputs)
    ok = valid(mask).reshape(mask.shape[0], -1)
    n_tasks, rows = ok.shape
    counts = ok.sum(1, keepdim=True)
    longest = int(counts.max())
    if longest == rows:
        return fn(*inputs)
    steps = mask.shape[1:]
    order = torch.argsort((~ok).to(torch.uint8), dim=1, stable=True)[:, :longest]  # each task's valid rows first
    filler = torch.arange(longest, device=ok.device) >= counts
    source = torch.where(filler, torch.zeros_like(order), order)
    target = torch.where(filler, torch.full_like(order, rows), order)  # fillers land in a dropped extra row
    gathered = []
    for x in inputs:
        if x.dim() == 2:  # one value per task: the mapped fn broadcasts it
            gathered.append(x)
            continue
        prefix = x.shape[1:-1]
        if x.shape[:1] != ok.shape[:1] or tuple(steps[: len(prefix)]) != tuple(prefix):
            raise ValueError(f"input of shape {list(x.shape)} does not broadcast to the mask's {list(mask.shape)}")
        inner = math.prod(steps[len(prefix):])
        flat = x.reshape(n_tasks, -1, x.shape[-1])
        index = source if inner == 1 else source // inner
        gathered.append(torch.gather(flat, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1])))
    outputs = fn(*gathered)

    def scatter(y: torch.Tensor) -> torch.Tensor:
        width = y.shape[2:]
        full = y.new_zeros((n_tasks, rows + 1, *width))
        index = target.reshape(n_tasks, longest, *([1] * len(width))).expand_as(y)
        return full.scatter(1, index, y)[:, :rows].reshape(n_tasks, *steps, *width)

    return tuple(scatter(y) for y in outputs) if isinstance(outputs, tuple) else scatter(outputs)


def distribution_per_task(policy: nn.Module, params: TensorDictBase, inputs: Sequence[torch.Tensor],
                          mask: torch.Tensor | None = None) -> DiagGaussian:
    """The action distribution of ``policy`` (which returns ``(mean, log_std)``) under ``params`` for ``inputs``.

    With a ``mask`` of the inputs' steps the policy is evaluated on the valid steps only (mean
    and log-std 0 on the padding): :func:`on_valid_steps` for shared ``params`` (batch size
    ``[]``), :func:`on_valid_steps_per_task` for per-task ones.
    """
    compact = on_valid_steps if params.batch_dims == 0 else on_valid_steps_per_task
    mean, log_std = compact(lambda *xs: call_per_task(policy, params, *xs), inputs, mask)
    return DiagGaussian(mean, log_std)


def module_params(module: nn.Module) -> TensorDictBase:
    """The parameters of ``module`` as a nested TensorDict (batch size ``[]``), sharing storage; no buffers."""
    return TensorDict(dict(module.named_parameters()), batch_size=[]).unflatten_keys(".")
