"""Batched trajectory collection: one TorchRL rollout over all ``tasks x rollouts`` copies."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import nn

from lightning_metarl.envs.base import BatchedMetaEnv
from lightning_metarl.nn.functional import call_per_task
from lightning_metarl.nn.policy import gaussian_log_prob


class GaussianActor:
    """TorchRL policy callable (TensorDict in, TensorDict out) for a Gaussian policy.

    Reads ``"observation"`` (``[n_tasks, rollouts, obs_dim]``), evaluates ``policy`` with
    ``params`` (shared, or per task with batch size ``[n_tasks]``), samples ``"action"`` with
    noise from ``generator`` and writes its log-density ``"action_log_prob"`` (the behaviour
    log-probability that likelihood-ratio objectives divide by).
    """

    def __init__(
        self,
        policy: nn.Module,
        params: TensorDictBase,
        generator: torch.Generator,
    ) -> None:
        self.policy = policy
        self.params = params.detach()
        self.generator = generator

    def __call__(self, tensordict: TensorDictBase) -> TensorDictBase:
        observation = tensordict.get("observation")
        with torch.no_grad():
            # The policy may live on another device than the env (e.g. CUDA policy, CPU physics).
            policy_device = next(iter(self.params.values(True, True))).device
            mean, log_std = call_per_task(self.policy, self.params, observation.to(policy_device))
            mean, log_std = mean.to(observation.device), log_std.to(observation.device)
            noise = torch.randn(mean.shape, generator=self.generator, dtype=mean.dtype, device=self.generator.device)
            action = mean + log_std.exp() * noise.to(mean.device)
            tensordict.set("action", action)
            tensordict.set("action_log_prob", gaussian_log_prob(mean, log_std, action))
        return tensordict


def episode_mask(done: torch.Tensor) -> torch.Tensor:
    """``mask[..., t] = 1`` iff no step before ``t`` ended the episode; ``done`` is ``[..., T]``."""
    done = done.to(torch.int64)
    ended_before = torch.cumsum(done, dim=-1) - done
    return ended_before == 0


def collect(env: BatchedMetaEnv, actor: GaussianActor) -> TensorDictBase:
    """Run one episode of ``env.horizon`` steps in every copy of ``env``.

    Returns a TensorDict ``[n_tasks, rollouts, T]`` in TorchRL's rollout layout
    (``observation``, ``action``, ``action_log_prob``, ``("next", "reward")``,
    ``("next", "done")``, ...) plus ``"mask"``: 1 for the steps of each copy's episode, 0 for the
    padding after an early termination. Copies that terminate early are not restarted inside the
    horizon (their steps after termination are padding), as in the reference samplers' padded paths.
    """
    with torch.no_grad():
        batch = env.rollout(
            max_steps=env.horizon,
            policy=actor,
            auto_reset=True,
            break_when_any_done=False,
            break_when_all_done=False,
        )
    batch.set("mask", episode_mask(batch.get(("next", "done")).squeeze(-1)))
    return batch
