"""Point-Semicircle (PEARL's sparse point robot): rewards against the definition, tasks, specs, errors."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from lightning_metarl import envs
from lightning_metarl.errors import ActionError, ConfigError, TaskError


def make_env(reward_type: str = "sparse", n_tasks: int = 1, rollouts: int = 1, horizon: int = 5, seed: int = 0):
    return envs.make("Point-Semicircle", n_tasks=n_tasks, rollouts_per_task=rollouts, horizon=horizon,
                     reward_type=reward_type, seed=seed)


def goal_at(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def step_from(env, position, action, goal):
    """Place the single copy at ``position``, take ``action`` for task ``goal``; return (reward, next obs)."""
    env.set_tasks(TensorDict({"goal": torch.tensor([goal])}, batch_size=[1]))
    td = env.reset()
    env.position = torch.tensor([[position]])
    out = env.step(td.set("action", torch.tensor([[action]])))["next"]
    return out["reward"].item(), out["observation"][0, 0].tolist()


@pytest.mark.parametrize(
    "position, action, goal, expected_position, expected_reward",
    [
        # far from the goal: no sparse reward
        ([0.0, 0.0], [0.1, 0.1], goal_at(0.0), [0.1, 0.1], 0.0),
        # within 0.2 of the goal: 1 - distance
        ([0.9, 0.0], [0.05, 0.1], goal_at(0.0), [0.95, 0.1], 1.0 - math.hypot(0.05, 0.1)),
        # the action is clipped to +-0.1 per axis; landing on the goal pays 1
        ([-0.1, 0.9], [5.0, 3.0], goal_at(math.pi / 2), [0.0, 1.0], 1.0),
        # just outside the goal radius: nothing
        ([0.0, 0.6], [0.0, 0.1], goal_at(math.pi / 2), [0.0, 0.7], 0.0),
    ],
)
def test_sparse_reward_matches_definition(position, action, goal, expected_position, expected_reward):
    reward, next_position = step_from(make_env("sparse"), position, action, goal)
    assert next_position == pytest.approx(expected_position, abs=1e-6)
    assert reward == pytest.approx(expected_reward, abs=1e-5)


def test_dense_reward_is_negative_distance():
    reward, _ = step_from(make_env("dense"), [0.2, 0.3], [0.1, -0.05], goal_at(math.pi / 3))
    goal = goal_at(math.pi / 3)
    assert reward == pytest.approx(-math.hypot(0.3 - goal[0], 0.25 - goal[1]), abs=1e-5)


def test_straight_path_collects_the_sparse_reward():
    env = make_env(n_tasks=3, rollouts=2, horizon=20)
    env.set_tasks(env.sample_tasks(3, torch.Generator().manual_seed(1)))
    td = env.reset()
    assert torch.equal(td["observation"], torch.zeros(3, 2, 2))
    goals = env.tasks["goal"].unsqueeze(1).expand(3, 2, 2)
    total = torch.zeros(3, 2)
    for _ in range(20):
        td = env.step(td.set("action", (goals - env.position).clamp(-0.1, 0.1)))
        total += td["next", "reward"][..., 0]
        td = td["next"]
    assert torch.allclose(env.position, goals, atol=1e-5)
    # rewarded from the first step within 0.2 of the goal; the last steps sit on it (reward 1 each)
    assert (total > 1.0).all() and (total < 20.0).all()


def test_tasks_lie_on_the_upper_semicircle_and_are_seeded():
    family = envs.family("Point-Semicircle")
    goals = family.sample_tasks(500, torch.Generator().manual_seed(3))["goal"]
    assert torch.allclose(goals.norm(dim=-1), torch.ones(500), atol=1e-6)
    assert (goals[:, 1] >= 0).all() and (goals[:, 0] < -0.9).any() and (goals[:, 0] > 0.9).any()
    again = family.sample_tasks(500, torch.Generator().manual_seed(3))["goal"]
    other = family.sample_tasks(500, torch.Generator().manual_seed(4))["goal"]
    assert torch.equal(goals, again) and not torch.equal(goals, other)
    env = make_env(reward_type="dense")
    assert torch.equal(env.held_out_tasks(8, seed=5)["goal"], env.held_out_tasks(8, seed=5)["goal"])
    wide = envs.make("Point-Semicircle", n_tasks=4, rollouts_per_task=1, horizon=3, radius=2.0)
    assert torch.allclose(wide.held_out_tasks(4, seed=0)["goal"].norm(dim=-1), torch.full((4,), 2.0))


def test_check_env_specs_and_episode_end():
    env = make_env(n_tasks=3, rollouts=2, horizon=4)
    env.set_tasks(env.sample_tasks(3, torch.Generator().manual_seed(0)))
    check_env_specs(env)
    rollout = env.rollout(4)
    assert rollout.batch_size == torch.Size([3, 2, 4])
    assert not rollout["next", "terminated"].any()
    assert rollout["next", "truncated"][..., -1, 0].all()
    assert rollout["action"].abs().max() <= 0.1


def test_bad_input_is_rejected_with_clear_errors():
    with pytest.raises(ConfigError, match="reward_type"):
        make_env("shaped")
    with pytest.raises(ConfigError, match="goal_radius"):
        envs.make("Point-Semicircle", n_tasks=1, rollouts_per_task=1, goal_radius=0.0)
    env = make_env(n_tasks=2)
    with pytest.raises(TaskError, match="semicircle"):
        env.set_tasks(TensorDict({"goal": torch.tensor([goal_at(0.5), [0.5, 0.5]])}, batch_size=[2]))
    with pytest.raises(TaskError, match="semicircle"):
        env.set_tasks(TensorDict({"goal": torch.tensor([goal_at(0.5), goal_at(-0.5)])}, batch_size=[2]))
    with pytest.raises(TaskError, match="'goal'"):
        env.set_tasks(TensorDict({"target": torch.zeros(2, 2)}, batch_size=[2]))
    env.set_tasks(env.sample_tasks(2, torch.Generator().manual_seed(0)))
    td = env.reset()
    with pytest.raises(ActionError, match="non-finite"):
        env.step(td.clone().set("action", torch.full((2, 1, 2), float("inf"))))
    with pytest.raises(ActionError, match="shape"):
        env.step(td.clone().set("action", torch.zeros(2, 1, 3)))
