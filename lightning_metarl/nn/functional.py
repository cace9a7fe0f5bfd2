"""Evaluating one module with per-task parameters, for all tasks in one batched call.

Parameters are TensorDicts (``TensorDict.from_module``). Shared parameters have batch size
``[]``; per-task (adapted) parameters have batch size ``[n_tasks]``. :func:`call_per_task`
maps the module's ``forward`` over the task dimension with ``torch.vmap``, so a MAML inner step
for 40 tasks is a single batched forward and backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn


def call_per_task(module: nn.Module, params: TensorDictBase, *args: torch.Tensor) -> Any:
    """``module(*args)`` evaluated with ``params`` in place of the module's own tensors.

    If ``params`` has batch size ``[n_tasks]``, every ``arg`` must have a leading task
    dimension of size ``n_tasks``; the call is vmapped over it and the outputs carry it too.
    With batch size ``[]`` the module is called once on the full ``args``. The module's own
    Parameters are never modified (``torch.func.functional_call``).
    """

    def apply(p: TensorDictBase, *xs: torch.Tensor) -> Any:
        return torch.func.functional_call(module, p.flatten_keys(".").to_dict(), xs, strict=True)

    if params.batch_dims == 0:
        return apply(params, *args)
    if params.batch_dims != 1:
        raise ValueError(f"per-task params must have one batch dimension, got batch size {list(params.batch_size)}")
    for x in args:
        if x.shape[:1] != params.batch_size:
            raise ValueError(f"inputs need a leading task dimension {list(params.batch_size)}, got {list(x.shape)}")
    return torch.vmap(apply, in_dims=(0,) * (1 + len(args)), randomness="error")(params, *args)


def module_params(module: nn.Module) -> TensorDictBase:
    """The parameters and buffers of ``module`` as a TensorDict (batch size ``[]``), sharing storage."""
    return TensorDict.from_module(module)
