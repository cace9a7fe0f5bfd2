"""Collection that knows episodes: per-episode latents, trials of k episodes, what an actor may adapt, unsimulated padding."""

from __future__ import annotations

import contextlib

import pytest
import torch
from tensordict import TensorDictBase

from lightning_metarl import envs
from lightning_metarl.algorithms import MAML
from lightning_metarl.data import collect
from lightning_metarl.envs.mujoco_env import MujocoMetaEnv
from lightning_metarl.nn import GaussianMLPPolicy, PolicyActor, module_params

N_TASKS, ROLLOUTS, HORIZON, LATENT = 2, 3, 5, 4


def point_env():
    env = envs.make("Point-Corner", n_tasks=N_TASKS, rollouts_per_task=ROLLOUTS, horizon=HORIZON, seed=0)
    env.set_tasks(env.sample_tasks(N_TASKS, torch.Generator().manual_seed(0)))
    return env


def latent_policy(env) -> GaussianMLPPolicy:
    torch.manual_seed(0)
    return GaussianMLPPolicy(env.observation_dim, env.action_dim, (8,), extra_inputs={"latent": LATENT})


def gaussian_latent(generator: torch.Generator, batch_size: torch.Size) -> torch.Tensor:
    return torch.randn(*batch_size, LATENT, generator=generator)


def test_a_per_episode_latent_is_written_into_the_batch_and_constant_within_each_episode():
    env = point_env()
    policy = latent_policy(env)
    actor = PolicyActor(policy, module_params(policy), torch.Generator().manual_seed(1),
                        episode_latent=("latent", gaussian_latent))
    batch = collect(env, actor, episodes=3)
    assert batch.batch_size == (N_TASKS, ROLLOUTS, 3 * HORIZON)
    latent = batch["latent"]
    assert latent.shape == (N_TASKS, ROLLOUTS, 3 * HORIZON, LATENT)
    episodes = latent.unflatten(2, (3, HORIZON))
    assert torch.equal(episodes, episodes[:, :, :, :1].expand_as(episodes))  # constant within an episode
    firsts = episodes[:, :, :, 0]
    assert not torch.equal(firsts[:, :, 0], firsts[:, :, 1])  # a new draw per episode
    assert not torch.equal(firsts[:, 0], firsts[:, 1])  # and per copy
    # the action log-density is that of the policy with the latent as input
    expected = policy.log_prob(batch["observation"], batch["action"], batch["latent"])
    torch.testing.assert_close(batch["action_log_prob"], expected)
    assert torch.equal(batch["episode"][0, 0], torch.arange(3).repeat_interleave(HORIZON))


class CountingActor(PolicyActor):
    """An actor with a recurrent state: the number of steps it has taken in the current trial."""

    def begin_trial(self) -> None:
        super().begin_trial()
        self.count = torch.zeros(N_TASKS, ROLLOUTS)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict = super().forward(tensordict)
        tensordict.set("hidden", self.count.clone())
        self.count = self.count + 1
        return tensordict


def test_a_trial_carries_the_actor_state_across_episodes_and_resets_it_between_tasks():
    env = point_env()
    policy = GaussianMLPPolicy(env.observation_dim, env.action_dim, (8,))
    actor = CountingActor(policy, module_params(policy), torch.Generator().manual_seed(1))
    steps = torch.arange(2 * HORIZON, dtype=torch.float32).expand(N_TASKS, ROLLOUTS, -1)
    first = collect(env, actor, episodes=2)
    assert torch.equal(first["hidden"], steps)  # carried over the episode boundary
    # the env itself restarts every episode
    assert torch.equal(first["mask"], torch.ones(N_TASKS, ROLLOUTS, 2 * HORIZON, dtype=torch.bool))
    env.set_tasks(env.sample_tasks(N_TASKS, torch.Generator().manual_seed(5)))
    second = collect(env, actor, episodes=2)
    assert torch.equal(second["hidden"], steps)  # a new trial starts from the initial state


class ScaledPolicy(GaussianMLPPolicy):
    """A policy with a buffer (an observation scale), which adaptation must leave alone."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("observation_scale", torch.full((self.mean_net[0].in_features,), 0.5))

    def forward(self, observation: torch.Tensor, *extra: torch.Tensor):
        return super().forward(observation * self.observation_scale, *extra)


class ScaledMAML(MAML):
    def build_policy(self):
        return ScaledPolicy(self.env.observation_dim, self.env.action_dim, (8,))


def test_a_policy_with_a_buffer_adapts_only_its_parameters():
    torch.manual_seed(0)
    module = ScaledMAML(meta_batch_size=N_TASKS, rollouts_per_task=ROLLOUTS, horizon=HORIZON,
                        env_kwargs={"reward_type": "dense"})
    state = module.initial_fast_state()
    names = {".".join(key[1:]) for key in state.keys(True, True)}
    assert names == {name for name, _ in module.policy.named_parameters()}  # no buffer
    meta_batch = module.collect_and_adapt(module.sample_tasks())
    adapted = meta_batch.fast_states[-1]
    assert set(adapted.keys(True, True)) == set(state.keys(True, True))
    # the buffer is used by the per-task evaluation: changing it changes the log-density
    before = module.log_prob(adapted, meta_batch.post_update)
    module.policy.observation_scale.fill_(2.0)
    assert not torch.allclose(before, module.log_prob(adapted, meta_batch.post_update))
    torch.testing.assert_close(module.policy.observation_scale, torch.full_like(module.policy.observation_scale, 2.0))


@pytest.mark.parametrize("family", ["Walker2D-Rand-Params", "Hopper-Rand-Params", "Walker2D-Fwd-Bwd"])
def test_skipping_the_padding_leaves_every_valid_step_bit_identical(family, monkeypatch):
    torch.manual_seed(0)
    env = envs.make(family, n_tasks=3, rollouts_per_task=4, horizon=120, seed=3, num_threads=2)
    env.set_tasks(env.sample_tasks(3, torch.Generator().manual_seed(1)))
    policy = GaussianMLPPolicy(env.observation_dim, env.action_dim, init_std=2.0)

    def run() -> TensorDictBase:
        env.set_rng_state({"rng": torch.Generator().manual_seed(5).get_state()})
        return collect(env, PolicyActor(policy, module_params(policy), torch.Generator().manual_seed(7)))

    skipped = run()
    monkeypatch.setattr(MujocoMetaEnv, "padding_skipped", lambda self: contextlib.nullcontext())
    simulated = run()
    mask = skipped["mask"]
    assert torch.equal(mask, simulated["mask"])
    assert 0 < mask.float().mean() < 1  # some copies ended early: there is padding to skip
    for key in ("observation", "action", "action_log_prob", "loc", "log_std", ("next", "reward"), ("next", "observation"),
                ("next", "done"), ("next", "terminated")):
        assert torch.equal(skipped[key][mask], simulated[key][mask]), key
    # after its end a copy is frozen: no reward, its observation no longer changes
    assert (skipped["next", "reward"][~mask] == 0).all()
    ended = (~mask).any(-1)
    task, rollout = ended.nonzero()[0].tolist()
    first = int(mask[task, rollout].sum())
    padding = skipped["next", "observation"][task, rollout, first + 1:]
    assert len(padding) > 1 and torch.equal(padding, padding[:1].expand_as(padding))
    later = simulated["next", "observation"][task, rollout, first + 1:]
    assert not torch.equal(later, later[:1].expand_as(later))
