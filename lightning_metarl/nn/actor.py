"""The actors that collect trajectories: TorchRL policies (TensorDict in, TensorDict out) built from a policy and a fast state.

An actor evaluates a policy with given (shared or per-task) parameters for every
``[n_tasks, rollouts]`` copy of a batched env, samples an action with noise from a seeded
generator and writes ``"action"``, its behaviour log-density ``"action_log_prob"`` (what
likelihood-ratio objectives divide by) and the behaviour distribution's parameters ``"loc"``
and ``"log_std"`` (:func:`behaviour_distribution`: the KLs of an outer update to the policy
that collected need not evaluate it again). The policy's extra inputs (:attr:`in_keys` after
``"observation"``) come from, in this order: the per-episode latent the actor draws itself,
the actor's fixed per-task ``inputs`` (e.g. a CAVIA context or MAME's ``z``), or the
TensorDict. Collection calls :meth:`PolicyActor.begin_trial` once per trial (a new set of
tasks) and :meth:`PolicyActor.begin_episode` before every episode of it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from lightning_metarl.nn.distributions import DiagGaussian
from lightning_metarl.nn.functional import distribution_per_task

#: ``(generator, batch_size) -> latent [*batch_size, d]``: draws one latent per copy for an episode.
LatentSampler = Callable[[torch.Generator, torch.Size], torch.Tensor]
#: Batch keys of the mean and log standard deviation of the distribution each action was drawn from.
LOC, LOG_STD = "loc", "log_std"


def behaviour_distribution(batch: TensorDictBase) -> DiagGaussian:
    """The distribution each of ``batch``'s actions was drawn from, as the actor stored it (``"loc"``, ``"log_std"``).

    This is the policy that collected the batch, fixed: what the KL terms of an outer update
    (ProMP's inner KLs, the post-update KL) compare the current policy with. It equals that
    policy evaluated again up to rounding; TRPO re-evaluates it instead, so that the KL's
    gradient is exactly 0 at the start of its step (``MAML.trpo_update``).
    """
    return DiagGaussian(batch.get(LOC), batch.get(LOG_STD))


class PolicyActor(TensorDictModuleBase):
    """Sample actions of ``policy`` under ``params`` for every copy of a batched env.

    Args:
        policy: a module with ``in_keys`` whose ``forward(*inputs)`` returns ``(mean, log_std)``.
        params: its parameters, shared (batch size ``[]``) or per task (``[n_tasks]``).
        generator: source of the action noise (and of per-episode latents).
        inputs: per-task inputs of the policy that are not in the env's TensorDict
            (batch size ``[n_tasks]``, e.g. ``{"context": [n_tasks, d]}``).
        episode_latent: optional ``(key, sampler)``: at the start of every episode the actor
            draws a latent per copy with ``sampler(generator, batch_size)``, feeds it to the
            policy under ``key`` and writes it into every step of the batch (MAESN's
            ``z ~ q_omega``, drawn once per episode).
    """

    def __init__(
        self,
        policy: nn.Module,
        params: TensorDictBase,
        generator: torch.Generator,
        inputs: TensorDictBase | None = None,
        episode_latent: tuple[str, LatentSampler] | None = None,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.params = params.detach()
        # The policy may live on another device than the env (e.g. CUDA policy, CPU physics).
        self._policy_device = next(iter(self.params.values(True, True))).device
        self.generator = generator
        self.inputs = None if inputs is None else inputs.detach()
        self.episode_latent = episode_latent
        self.latent: torch.Tensor | None = None
        self.in_keys = list(policy.in_keys)
        self.out_keys = ["action", "action_log_prob", LOC, LOG_STD] + ([episode_latent[0]] if episode_latent else [])

    def begin_trial(self) -> None:
        """Forget everything carried over from another set of tasks (called once per collection)."""
        self.latent = None

    def begin_episode(self, batch_size: torch.Size) -> None:
        """Draw the per-episode latent of every copy (``batch_size`` ``[n_tasks, rollouts]``), if any."""
        if self.episode_latent is not None:
            self.latent = self.episode_latent[1](self.generator, batch_size)

    def _input(self, key: str, tensordict: TensorDictBase) -> torch.Tensor:
        if self.episode_latent is not None and key == self.episode_latent[0]:
            if self.latent is None:
                raise RuntimeError("begin_episode() must be called before the first step of an episode")
            return self.latent
        if self.inputs is not None and key in self.inputs.keys():
            return self.inputs.get(key)
        return tensordict.get(key)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Write ``"action"``, ``"action_log_prob"``, ``"loc"``, ``"log_std"`` (and the episode latent) into ``tensordict``."""
        observation = tensordict.get("observation")
        with torch.no_grad():
            inputs = [self._input(key, tensordict).to(self._policy_device) for key in self.in_keys]
            distribution = distribution_per_task(self.policy, self.params, inputs)
            action = distribution.sample_with(self.generator)
            log_prob = distribution.log_prob(action)
            tensordict.set("action", action.to(observation.device))
            tensordict.set("action_log_prob", log_prob.to(observation.device))
            tensordict.set(LOC, distribution.loc.to(observation.device))
            tensordict.set(LOG_STD, distribution.log_std.expand_as(distribution.loc).to(observation.device))
            if self.episode_latent is not None:
                tensordict.set(self.episode_latent[0], self.latent.to(observation.device))
        return tensordict
