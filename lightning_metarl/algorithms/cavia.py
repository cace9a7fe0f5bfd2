"""CAVIA (Zintgraf et al. 2019): adapt only a per-task context vector fed to the policy; the weights are meta-learned."""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from lightning_metarl.algorithms.maml import MAML
from lightning_metarl.errors import ConfigError

#: The fast-state and policy-input key of the context vector.
CONTEXT = "context"


class CAVIA(MAML):
    """Fast Context Adaptation via Meta-Learning: the inner loop adapts a context ``phi``, not the weights.

    The policy ``pi_theta(a | s, phi)`` takes a context vector ``phi`` (``context_size``
    entries) concatenated to the observation at its input layer. For every task ``phi`` starts
    at 0 and one policy-gradient step per inner step adapts it,
    ``phi_i = 0 - alpha * grad_phi L_in(theta, 0, tau_i)`` (the context update of Zintgraf et
    al. 2019, §3), with all tasks in one batched call; ``theta`` changes only in the outer step,
    on the post-update loss of ``theta`` with ``phi_i(theta)`` (their meta-update; second order
    through the inner step). The context is not a parameter: the outer update never touches it,
    and it is reset for every task.

    Inner objectives and outer optimizers are MAML's (``inner_objective``: ``"vpg"``
    (default), ``"lvc"``, ``"dice"``; ``outer_optimizer``: ``"adam"`` or ``"trpo"``, the paper
    uses TRPO); ``learn_inner_lr`` learns one step size per context entry.

    Args:
        context_size: entries of the context (paper: 50 for the MuJoCo tasks, 5 for 2D navigation).
        **kwargs: see :class:`~lightning_metarl.algorithms.maml.MAML`.
    """

    def __init__(self, *args: Any, context_size: int = 50, **kwargs: Any) -> None:
        if not isinstance(context_size, int) or context_size < 1:
            raise ConfigError(f"model.context_size must be a positive integer, got {context_size!r}")
        super().__init__(*args, **kwargs)

    def policy_inputs(self) -> dict[str, int]:
        """The context, after the observation."""
        return {CONTEXT: self.hparams.context_size}

    def initial_fast_state(self, n_tasks: int | None = None) -> TensorDictBase:
        """``{"context": 0}`` for every task, ``[n_tasks, context_size]`` (a leaf the inner step differentiates)."""
        n_tasks = self.hparams.meta_batch_size if n_tasks is None else n_tasks
        like = self.policy.log_std
        context = torch.zeros(n_tasks, self.hparams.context_size, dtype=like.dtype, device=like.device, requires_grad=True)
        return TensorDict({CONTEXT: context}, batch_size=[n_tasks])
