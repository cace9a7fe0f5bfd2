"""What one collect-and-adapt phase hands to the meta-update: tasks, batches and the fast states that collected them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tensordict import TensorDictBase

from lightning_metarl.data import episode_returns


@dataclass
class MetaBatch:
    """The trajectories of one meta-batch of tasks and everything collection already knew about them.

    Attributes:
        tasks: the task parameters, batch size ``[n_tasks]``.
        pre_update: the batches collected before each inner step (``[n_tasks, rollouts, T]``).
        post_update: the batch collected by the adapted policy.
        fast_states: ``len(pre_update) + 1`` detached fast states: item ``k`` collected
            ``pre_update[k]``; the last one collected ``post_update``. Empty for methods
            that adapt nothing by gradient.
        timings: seconds spent per phase (``collect``, ``adapt``, then ``outer``), and on MuJoCo
            families ``physics``: the part of ``collect`` spent in the physics calls.
    """

    tasks: TensorDictBase
    pre_update: list[TensorDictBase]
    post_update: TensorDictBase
    fast_states: list[TensorDictBase] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _returns: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def batches(self) -> list[TensorDictBase]:
        """Every batch in collection order: the pre-update ones, then the post-update one."""
        return [*self.pre_update, self.post_update]

    @property
    def env_steps(self) -> int:
        """Env steps of this meta-batch, ``tasks x rollouts x H`` per batch: padding counted (though not simulated)."""
        return sum(batch.get("mask").numel() for batch in self.batches)

    def task_returns(self) -> torch.Tensor:
        """Mean undiscounted episode return of every task after each inner step, ``[n_steps + 1, n_tasks]``."""
        return torch.stack([episode_returns(b).mean(-1) for b in self.batches])

    def returns(self) -> dict[str, torch.Tensor]:
        """Mean undiscounted episode return after each inner step, computed once.

        ``return/step_k`` for the batch collected after ``k`` inner steps, plus
        ``return/pre_update`` (step 0) and ``return/post_update`` (the last step).
        """
        if self._returns is None:
            returns = {f"return/step_{k}": episode_returns(b).mean() for k, b in enumerate(self.batches)}
            returns["return/pre_update"] = returns["return/step_0"]
            returns["return/post_update"] = returns[f"return/step_{len(self.pre_update)}"]
            self._returns = returns
        return self._returns
