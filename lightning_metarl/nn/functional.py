"""Evaluating one policy with per-task parameters and inputs, for all tasks in one batched call.

Parameters are TensorDicts of the module's *parameters* (:func:`module_params`; buffers are
never adapted and always come from the module). Shared parameters have batch size ``[]``;
per-task (adapted) parameters have batch size ``[n_tasks]``, and :func:`call_per_task` maps
the module's ``forward`` over the task dimension with ``torch.vmap``, so a MAML inner step for
40 tasks is a single batched forward and backward pass. :func:`distribution_per_task` wraps
the policy's output in a :class:`~lightning_metarl.nn.distributions.DiagGaussian`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from lightning_metarl.nn.distributions import DiagGaussian


def call_per_task(module: nn.Module, params: TensorDictBase, *args: torch.Tensor) -> Any:
    """``module(*args)`` evaluated with ``params`` in place of the module's own parameters.

    If ``params`` has batch size ``[n_tasks]``, every ``arg`` must have a leading task
    dimension of size ``n_tasks``; the call is vmapped over it and the outputs carry it too.
    With batch size ``[]`` the module is called once on the full ``args``. Entries missing from
    ``params`` (buffers) are the module's own. The module is never modified
    (``torch.func.functional_call``).
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
    return torch.vmap(apply, in_dims=(0,) * (1 + len(args)), randomness="error")(params, *args)


def distribution_per_task(policy: nn.Module, params: TensorDictBase, inputs: Sequence[torch.Tensor]) -> DiagGaussian:
    """The action distribution of ``policy`` (which returns ``(mean, log_std)``) under ``params`` for ``inputs``."""
    mean, log_std = call_per_task(policy, params, *inputs)
    return DiagGaussian(mean, log_std)


def module_params(module: nn.Module) -> TensorDictBase:
    """The parameters of ``module`` as a nested TensorDict (batch size ``[]``), sharing storage; no buffers."""
    return TensorDict(dict(module.named_parameters()), batch_size=[]).unflatten_keys(".")
