"""``envs.make``: defaults as ``gymnasium.make`` has them, per-family default horizons, and
``env.rollout`` right after ``make`` (reset draws tasks when none are set, keeps them when set)."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from lightning_metarl import envs
from lightning_metarl.errors import ConfigError, UnknownTaskFamilyError

#: The path length of each family's benchmark (ProMP, Rothfuss et al. 2019; PEARL, Rakelly et al. 2019).
DEFAULT_HORIZONS = {
    "Point-Corner": 100,
    "Point-Semicircle": 20,
    "HalfCheetah-Fwd-Bwd": 100,
    "HalfCheetah-Vel": 200,
    "Ant-Fwd-Bwd": 100,
    "Ant-Goal": 200,
    "Walker2D-Fwd-Bwd": 200,
    "Walker2D-Rand-Params": 200,
    "Hopper-Rand-Params": 200,
    # MAESN (Gupta et al. 2018)
    "Wheeled-Semicircle": 200,
    "Ant-Semicircle": 200,
    "Block-Push": 100,
}
POINT_FAMILIES = ("Point-Corner", "Point-Semicircle")


def rollout_steps(env) -> int:
    """The whole episode for the point envs; a few steps for the (slower) MuJoCo envs."""
    return env.horizon if env.family in POINT_FAMILIES else 5


def seeded_rollout(env, max_steps: int, **kwargs):
    """``env.rollout`` with random actions from a fixed seed (they come from torch's global generator)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return env.rollout(max_steps, **kwargs)


def test_every_family_has_its_default_horizon():
    assert set(envs.available()) == set(DEFAULT_HORIZONS)
    for name, horizon in DEFAULT_HORIZONS.items():
        assert envs.family(name).default_horizon == horizon


@pytest.mark.parametrize("name", envs.available())
def test_make_with_defaults_then_rollout(name):
    env = envs.make(name)
    assert env.batch_size == torch.Size([1, 1])
    assert (env.n_tasks, env.rollouts_per_task) == (1, 1)
    assert env.horizon == type(env).default_horizon == DEFAULT_HORIZONS[name]
    assert env.tasks is None
    steps = rollout_steps(env)
    rollout = seeded_rollout(env, steps)
    assert rollout.batch_size == torch.Size([1, 1, steps])
    reward = rollout["next", "reward"]
    assert reward.shape == (1, 1, steps, 1) and torch.isfinite(reward).all()
    assert torch.isfinite(rollout["next", "observation"]).all()
    # the drawn tasks are the family's, from the env's own generator (seed 0), and stay set
    assert env.tasks is not None and env.tasks.batch_size == torch.Size([1])
    env.validate_tasks(env.tasks, **env.family_kwargs())
    expected = env.sample_tasks(1, torch.Generator().manual_seed(0), **env.family_kwargs())
    assert (env.tasks == expected).all()
    if name in POINT_FAMILIES:
        assert rollout["next", "truncated"][0, 0, -1, 0] and not rollout["next", "truncated"][0, 0, :-1].any()


def test_drawn_tasks_are_kept_across_resets_and_replaced_by_set_tasks():
    env = envs.make("Point-Semicircle", n_tasks=3, rollouts_per_task=2, seed=5)
    env.reset()
    drawn = env.tasks.clone()
    seeded_rollout(env, 4)
    env.reset()
    assert (env.tasks == drawn).all()
    chosen = env.sample_tasks(3, torch.Generator().manual_seed(11))
    env.set_tasks(chosen)
    seeded_rollout(env, 4)
    assert (env.tasks == chosen).all() and not (env.tasks == drawn).all()


def test_family_options_shape_the_drawn_tasks():
    env = envs.make("Point-Semicircle", n_tasks=8, radius=2.0)
    env.reset()
    torch.testing.assert_close(env.tasks["goal"].norm(dim=-1), torch.full((8,), 2.0))


@pytest.mark.parametrize("name", ["Point-Corner", "HalfCheetah-Vel", "Hopper-Rand-Params"])
def test_tasks_set_explicitly_are_used(name):
    env = envs.make(name, n_tasks=2, rollouts_per_task=2, horizon=4, seed=3)
    tasks = env.sample_tasks(2, torch.Generator().manual_seed(7), **env.family_kwargs())
    env.set_tasks(tasks)
    before = env.tasks.clone()
    seeded_rollout(env, 4)
    assert env.tasks is not None and (env.tasks == before).all() and (env.tasks == tasks).all()
    if name == "Hopper-Rand-Params":  # the per-task models of the set tasks are kept too
        masses = env.model.body_mass * tasks["body_mass"].numpy()
        for i in range(2):
            assert (env.task_model(i).body_mass == masses[i]).all()


def test_reset_with_tasks_set_draws_only_the_reset_noise():
    """With tasks set, reset consumes the generator exactly as before: seeded runs are unchanged."""
    env = envs.make("Point-Corner", n_tasks=2, rollouts_per_task=3, seed=9)
    env.set_tasks(TensorDict({"goal": torch.tensor([[2.0, 2.0], [-2.0, 2.0]])}, batch_size=[2]))
    observation = env.reset()["observation"]
    expected = torch.rand((2, 3, 2), generator=torch.Generator().manual_seed(9)) * 0.4 - 0.2
    assert torch.equal(observation, expected)


def test_explicit_horizon_overrides_the_default():
    for name in POINT_FAMILIES:
        env = envs.make(name, horizon=7)
        assert env.horizon == 7
        rollout = seeded_rollout(env, 10, break_when_any_done=False)
        truncated = rollout["next", "truncated"][0, 0, :, 0]
        assert truncated[6] and not truncated[:6].any()
    assert envs.make("Hopper-Rand-Params", horizon=3).horizon == 3
    assert envs.make("Ant-Goal", horizon=None).horizon == 200


def test_keyword_usage_still_works():
    env = envs.make("Point-Corner", n_tasks=3, rollouts_per_task=2, horizon=4, seed=1, reward_type="dense")
    assert env.batch_size == torch.Size([3, 2]) and env.horizon == 4 and env.reward_type == "dense"
    env = envs.make("HalfCheetah-Fwd-Bwd", n_tasks=2, rollouts_per_task=1, seed=2, action_scale=1.0, num_threads=1)
    assert env.batch_size == torch.Size([2, 1]) and env.horizon == 100 and env.action_scale == 1.0
    assert seeded_rollout(env, 3).batch_size == torch.Size([2, 1, 3])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_tasks": 0}, "n_tasks"),
        ({"rollouts_per_task": -1}, "rollouts_per_task"),
        ({"rollouts_per_task": "2"}, "rollouts_per_task"),
        ({"n_tasks": True}, "n_tasks"),
        ({"horizon": 0}, "horizon"),
        ({"horizon": 2.5}, "horizon"),
        ({"seed": "zero"}, "seed"),
        ({"reward_typ": "dense"}, "reward_typ"),
        ({"reward_type": "shaped"}, "reward_type"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        envs.make("Point-Corner", **kwargs)


def test_bad_arguments_of_mujoco_families_raise_config_error():
    with pytest.raises(ConfigError, match="Ant-Goal.*reward_type"):
        envs.make("Ant-Goal", reward_type="sparse")
    with pytest.raises(ConfigError, match="horizon"):
        envs.make("HalfCheetah-Vel", horizon=-3)
    with pytest.raises(UnknownTaskFamilyError, match="available"):
        envs.make("Point-Cornr")
