"""The long meta-test protocol: many adaptation steps on held-out tasks (MAESN, Gupta et al. 2018, §4, Figure 3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from tensordict import TensorDictBase

from lightning_metarl.data import episode_returns
from lightning_metarl.envs.base import BatchedMetaEnv

if TYPE_CHECKING:
    from lightning_metarl.algorithms.gradient import GradientMetaRLModule


def step_scale(iteration: int, halving_start: int | None) -> float:
    """Factor of the step size at adaptation ``iteration`` (0-based): 1 before ``halving_start``, then halved every iteration.

    MAESN's protocol (``halving_start=2``): ``1, 1, 1/2, 1/4, ...``.
    """
    if halving_start is None or iteration < halving_start:
        return 1.0
    return 0.5 ** (iteration - halving_start + 1)


def adaptation_curve(
    module: GradientMetaRLModule,
    env: BatchedMetaEnv,
    tasks: TensorDictBase,
    iterations: int,
    generator: torch.Generator,
    halving_start: int | None = 2,
) -> torch.Tensor:
    """Adapt ``module`` to ``tasks`` for ``iterations`` steps; every task's mean return per iteration, ``[iterations, n_tasks]``.

    From the module's initial fast state for ``len(tasks)`` tasks (MAML: theta; MAESN: the
    prior, ``omega = (0, 0)``), every iteration collects the adapting (``"explore"``) policy's
    trajectories in ``env``, records their mean undiscounted return per task and takes one inner
    step on them, with the step sizes scaled by :func:`step_scale`. The meta-parameters are not
    changed (first-order steps on a detached state). Action noise comes from ``generator``.
    """
    env.set_tasks(tasks)
    state = module.initial_fast_state(len(tasks)).detach()
    returns = []
    for k in range(iterations):
        batch = module.collect(module.actor(state, "explore", generator), "explore", env=env)
        returns.append(episode_returns(batch).mean(-1).detach().cpu())
        state = module.inner_step(state, batch, create_graph=False, step_scale=step_scale(k, halving_start))
    return torch.stack(returns)
