"""From collected trajectories to policy-gradient targets: returns, baseline values, advantages."""

from __future__ import annotations

from tensordict import TensorDictBase

from lightning_metarl.data.returns import discounted_returns, gae, normalize_advantages
from lightning_metarl.nn.baseline import linear_baseline_values


def add_advantages(
    batch: TensorDictBase,
    discount: float,
    gae_lambda: float,
    normalize: bool = True,
) -> TensorDictBase:
    """Write ``"return"``, ``"value"`` and ``"advantage"`` (each ``[n_tasks, rollouts, T]``) into ``batch``.

    ``value`` is the linear feature baseline fitted per task to the discounted returns of this
    batch; ``advantage`` is GAE(``discount``, ``gae_lambda``) on it, standardised per task when
    ``normalize`` (the reference setting).
    """
    mask = batch.get("mask").to(batch.get(("next", "reward")).dtype)
    rewards = batch.get(("next", "reward")).squeeze(-1)
    returns = discounted_returns(rewards, mask, discount)
    values = linear_baseline_values(batch.get("observation"), returns, mask)
    advantages = gae(rewards, values, mask, discount, gae_lambda)
    if normalize:
        advantages = normalize_advantages(advantages, mask, dims=(-2, -1))
    batch.set("return", returns)
    batch.set("value", values)
    batch.set("advantage", advantages)
    return batch


def episode_returns(batch: TensorDictBase):
    """Undiscounted return of every episode, ``[n_tasks, rollouts]``."""
    mask = batch.get("mask").to(batch.get(("next", "reward")).dtype)
    return (batch.get(("next", "reward")).squeeze(-1) * mask).sum(-1)
