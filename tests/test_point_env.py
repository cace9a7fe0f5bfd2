"""Point-Corner: rewards against the definition, specs, seeding, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from lightning_metarl import envs
from lightning_metarl.errors import ActionError, ConfigError, TaskError, UnknownTaskFamilyError


def make_env(reward_type: str = "sparse", n_tasks: int = 1, rollouts: int = 1, horizon: int = 5, seed: int = 0):
    env = envs.make("Point-Corner", n_tasks=n_tasks, rollouts_per_task=rollouts, horizon=horizon,
                    reward_type=reward_type, seed=seed)
    return env


def step_from(env, position, action, goal):
    """Place the single copy at ``position``, take ``action`` towards task ``goal``; return (reward, next obs)."""
    env.set_tasks(TensorDict({"goal": torch.tensor([goal])}, batch_size=[1]))
    env.reset()
    env.position = torch.tensor([[position]])
    td = env.reset().set("action", torch.tensor([[action]]))
    env.position = torch.tensor([[position]])
    out = env.step(td)["next"]
    return out["reward"].item(), out["observation"][0, 0].tolist()


@pytest.mark.parametrize(
    "position, action, goal, expected_position, expected_reward",
    [
        # inside the L1 radius 0.5 around the origin: no reward
        ([0.0, 0.0], [0.1, 0.1], [2.0, 2.0], [0.1, 0.1], 0.0),
        # leaving the radius towards the goal corner: decrease of the Euclidean distance
        ([0.2, 0.2], [0.2, 0.2], [2.0, 2.0], [0.4, 0.4], math.hypot(1.8, 1.8) - math.hypot(1.6, 1.6)),
        # the action is clipped to +-0.2 per axis
        ([0.4, 0.4], [5.0, -7.0], [2.0, 2.0], [0.6, 0.2], math.hypot(1.6, 1.6) - math.hypot(1.4, 1.8)),
        # outside, but the goal is not the nearest corner: no reward
        ([1.0, 1.0], [0.1, 0.1], [-2.0, -2.0], [1.1, 1.1], 0.0),
        # moving away from the goal (still nearest) is penalised
        ([1.0, 1.0], [-0.1, 0.0], [2.0, 2.0], [0.9, 1.0], math.hypot(1.0, 1.0) - math.hypot(1.1, 1.0)),
    ],
)
def test_sparse_reward_matches_definition(position, action, goal, expected_position, expected_reward):
    reward, next_position = step_from(make_env("sparse"), position, action, goal)
    assert next_position == pytest.approx(expected_position, abs=1e-6)
    assert reward == pytest.approx(expected_reward, abs=1e-5)


def test_dense_reward_is_negative_distance():
    reward, _ = step_from(make_env("dense"), [0.5, -0.5], [0.2, 0.1], [2.0, -2.0])
    assert reward == pytest.approx(-math.hypot(2.0 - 0.7, -2.0 + 0.4), abs=1e-5)


def test_sparse_return_telescopes():
    env = make_env("sparse", n_tasks=4, rollouts=1, horizon=20)
    goals = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [2.0, -2.0], [-2.0, -2.0]])
    env.set_tasks(TensorDict({"goal": goals}, batch_size=[4]))
    td = env.reset()
    total = torch.zeros(4)
    last_unrewarded = env.position[:, 0].clone()
    for _ in range(20):
        step = (goals - env.position[:, 0]).clamp(-0.2, 0.2).unsqueeze(1)
        td = env.step(td.set("action", step))
        total += td["next", "reward"][:, 0, 0]
        inside = env.position[:, 0].abs().sum(-1) < 0.5
        last_unrewarded[inside] = env.position[inside, 0]
        td = td["next"]
    final = (env.position[:, 0] - goals).norm(dim=-1)
    expected = (last_unrewarded - goals).norm(dim=-1) - final
    assert torch.allclose(total, expected, atol=1e-5)
    # the straight path reaches the goal: about the task's optimum of 2.5
    assert torch.all(final < 1e-5) and torch.all((total - 2.5).abs() < 0.3)


def test_sparse_reward_pays_for_crossing_the_region_border():
    """The reference definition gates on the next position only: zig-zagging across x = 0 pays."""
    env = make_env("sparse", n_tasks=1, rollouts=1, horizon=40)
    env.set_tasks(TensorDict({"goal": torch.tensor([[2.0, 2.0]])}, batch_size=[1]))
    td = env.reset()
    env.position = torch.tensor([[[0.1, 1.9]]])
    rewards = []
    for t in range(40):
        action = torch.tensor([[[-0.2 if t % 2 == 0 else 0.2, 0.0]]])
        td = env.step(td.set("action", action))
        rewards.append(td["next", "reward"].item())
        td = td["next"]
    out_steps, in_steps = rewards[0::2], rewards[1::2]
    assert all(r == 0.0 for r in out_steps)
    gain = math.hypot(2.1, 0.1) - math.hypot(1.9, 0.1)
    assert in_steps == pytest.approx([gain] * 20, abs=1e-5)
    assert sum(rewards) > 3.9  # far above the 2.5 of the straight path, with no net progress


def test_diagonal_zig_zag_across_the_radius_earns_fourteen():
    """Out across the L1 radius (paid 0.2 * sqrt(2)), back in (free): 50 paid steps in H = 100."""
    env = make_env("sparse", n_tasks=1, rollouts=1, horizon=100)
    env.set_tasks(TensorDict({"goal": torch.tensor([[2.0, 2.0]])}, batch_size=[1]))
    td = env.reset()
    env.position = torch.zeros(1, 1, 2)
    total = 0.0
    for _ in range(100):
        outside = env.position.abs().sum(-1, keepdim=True) >= 0.5
        td = env.step(td.set("action", torch.where(outside, -0.2, 0.2).expand(1, 1, 2)))
        total += td["next", "reward"].item()
        td = td["next"]
    assert total == pytest.approx(50 * 0.2 * math.sqrt(2), abs=1e-4)


def test_check_env_specs_and_episode_end():
    env = make_env(n_tasks=3, rollouts=2, horizon=4)
    env.set_tasks(env.sample_tasks(3, torch.Generator().manual_seed(0)))
    check_env_specs(env)
    rollout = env.rollout(4)
    assert rollout.batch_size == torch.Size([3, 2, 4])
    assert not rollout["next", "terminated"].any()
    assert rollout["next", "truncated"][..., -1, 0].all() and not rollout["next", "truncated"][..., :-1, 0].any()


def test_reset_noise_range_and_seeding():
    a, b, c = (make_env(n_tasks=2, rollouts=50, seed=s) for s in (7, 7, 8))
    for env in (a, b, c):
        env.set_tasks(env.sample_tasks(2, torch.Generator().manual_seed(0)))
    obs_a, obs_b, obs_c = (env.reset()["observation"] for env in (a, b, c))
    assert obs_a.abs().max() <= 0.2
    assert torch.equal(obs_a, obs_b) and not torch.equal(obs_a, obs_c)


def test_task_sampling_is_seeded():
    family = envs.family("Point-Corner")
    same = [family.sample_tasks(64, torch.Generator().manual_seed(3))["goal"] for _ in range(2)]
    other = family.sample_tasks(64, torch.Generator().manual_seed(4))["goal"]
    assert torch.equal(same[0], same[1])
    assert not torch.equal(same[0], other)
    assert {tuple(g) for g in same[0].tolist()} == {(-2.0, -2.0), (2.0, -2.0), (-2.0, 2.0), (2.0, 2.0)}
    env = make_env()
    held_out = env.held_out_tasks(16, seed=123)
    assert torch.equal(held_out["goal"], env.held_out_tasks(16, seed=123)["goal"])


def test_bad_input_is_rejected_with_clear_errors():
    with pytest.raises(UnknownTaskFamilyError, match="available: .*Point-Corner"):
        envs.make("Point-Cornr", n_tasks=1, rollouts_per_task=1, horizon=1)
    with pytest.raises(ConfigError, match="reward_type"):
        make_env("shaped")
    with pytest.raises(ConfigError, match="horizon"):
        envs.make("Point-Corner", n_tasks=1, rollouts_per_task=1, horizon=0)
    env = make_env(n_tasks=2, rollouts=1)
    with pytest.raises(TaskError, match="set_tasks"):
        env.step(TensorDict({"action": torch.zeros(2, 1, 2)}, batch_size=[2, 1]))
    with pytest.raises(TaskError, match="corner"):
        env.set_tasks(TensorDict({"goal": torch.tensor([[2.0, 2.0], [1.0, 2.0]])}, batch_size=[2]))
    with pytest.raises(TaskError, match="batch size"):
        env.set_tasks(TensorDict({"goal": torch.tensor([[2.0, 2.0]])}, batch_size=[1]))
    env.set_tasks(env.sample_tasks(2, torch.Generator().manual_seed(0)))
    td = env.reset()
    with pytest.raises(ActionError, match="shape"):
        env.step(td.clone().set("action", torch.zeros(2, 1, 3)))
    with pytest.raises(ActionError, match="floating"):
        env.step(td.clone().set("action", torch.zeros(2, 1, 2, dtype=torch.long)))
    with pytest.raises(ActionError, match="non-finite"):
        env.step(td.clone().set("action", torch.full((2, 1, 2), float("nan"))))
