"""MuJoCo task families: rewards, terminations and observations against their definitions computed
from raw MuJoCo states, random physics, batched == independent copies, specs, seeding, bad input."""

from __future__ import annotations

from pathlib import Path

import gymnasium
import mujoco
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from lightning_metarl import envs
from lightning_metarl.data import episode_mask
from lightning_metarl.errors import ActionError, ConfigError, TaskError

ASSETS = Path(gymnasium.__file__).resolve().parent / "envs" / "mujoco" / "assets"

#: family -> (model file, frame skip), as in ProMP's definitions (Rothfuss et al. 2019)
DEFINITIONS = {
    "HalfCheetah-Fwd-Bwd": ("half_cheetah.xml", 5),
    "HalfCheetah-Vel": ("half_cheetah.xml", 5),
    "Ant-Fwd-Bwd": ("ant.xml", 5),
    "Ant-Goal": ("ant.xml", 5),
    "Walker2D-Fwd-Bwd": ("walker2d_v5.xml", 8),
    "Walker2D-Rand-Params": ("walker2d_v5.xml", 4),
    "Hopper-Rand-Params": ("hopper.xml", 4),
}
FAMILIES = list(DEFINITIONS)
PHYSICS = ("body_mass", "body_inertia", "geom_friction", "dof_damping")
#: the policy acts in the control box scaled by 10 (the reference's [-10, 10] wrapper)
ACTION_SCALE = 10.0

#: hand-made tasks for two tasks per family (random physics tasks are drawn)
HAND_MADE_TASKS = {
    "HalfCheetah-Fwd-Bwd": {"direction": torch.tensor([1.0, -1.0])},
    "HalfCheetah-Vel": {"velocity": torch.tensor([0.5, 2.5], dtype=torch.float64)},
    "Ant-Fwd-Bwd": {"direction": torch.tensor([-1.0, 1.0])},
    "Ant-Goal": {"goal": torch.tensor([[1.0, 2.0], [-2.0, 0.5]], dtype=torch.float64)},
    "Walker2D-Fwd-Bwd": {"direction": torch.tensor([1.0, -1.0])},
}


def make(family: str, n_tasks: int = 2, rollouts: int = 1, horizon: int = 8, seed: int = 0, **kwargs):
    env = envs.make(family, n_tasks=n_tasks, rollouts_per_task=rollouts, horizon=horizon, seed=seed, **kwargs)
    return env


def tasks_for(env, seed: int = 0) -> TensorDict:
    if env.family in HAND_MADE_TASKS and env.n_tasks == 2:
        return TensorDict(HAND_MADE_TASKS[env.family], batch_size=[2])
    return env.sample_tasks(env.n_tasks, torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- the reference
class ReferenceCopy:
    """One copy simulated with ``mujoco.mj_step`` on its own ``MjData``, reward per ProMP's definition."""

    def __init__(self, family: str, task: TensorDict, qpos: np.ndarray, qvel: np.ndarray) -> None:
        self.family = family
        self.task = {key: value.numpy() for key, value in task.items()}
        xml, self.frame_skip = DEFINITIONS[family]
        self.model = mujoco.MjModel.from_xml_path(str(ASSETS / xml))
        if family.endswith("Rand-Params"):
            for name in PHYSICS:
                getattr(self.model, name)[...] *= self.task[name]
            mujoco.mj_setConst(self.model, mujoco.MjData(self.model))
        self.data = mujoco.MjData(self.model)
        self.data.qpos[:], self.data.qvel[:] = qpos, qvel
        self.dt = self.model.opt.timestep * self.frame_skip
        self.cfrc_ext = np.zeros((self.model.nbody, 6))
        if family.startswith("Ant"):
            self.cfrc_ext = self.contact_forces()

    def contact_forces(self) -> np.ndarray:
        """cfrc_ext at the current state: the forward pass plus mj_rnePostConstraint."""
        mujoco.mj_forward(self.model, self.data)
        mujoco.mj_rnePostConstraint(self.model, self.data)
        return self.data.cfrc_ext.copy()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        low, high = self.model.actuator_ctrlrange.T
        mid = (low + high) / 2
        a = np.clip(mid + (action - mid) / ACTION_SCALE, low, high)
        self.data.ctrl[:] = a
        x_before = self.data.qpos[0]
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip - 1)
        if self.family.startswith("Ant"):  # the wrench at the start of the last substep
            self.cfrc_ext = self.contact_forces()
        mujoco.mj_step(self.model, self.data)
        qpos, qvel = self.data.qpos.copy(), self.data.qvel.copy()
        vx = (qpos[0] - x_before) / self.dt
        ctrl_cost = float(np.sum(a**2))
        contact_cost = float(np.sum(np.clip(self.cfrc_ext, -1, 1) ** 2))
        f = self.family
        if f == "HalfCheetah-Fwd-Bwd":
            reward, done = self.task["direction"] * vx - 0.05 * ctrl_cost, False
        elif f == "HalfCheetah-Vel":
            reward, done = -abs(vx - self.task["velocity"]) - 0.05 * ctrl_cost, False
        elif f == "Ant-Fwd-Bwd":
            reward = self.task["direction"] * vx - 0.5 * ctrl_cost - 5e-4 * contact_cost + 1.0
            state = np.concatenate([qpos, qvel])
            done = not (np.isfinite(state).all() and 0.0 <= qpos[2] <= 1.0)
        elif f == "Ant-Goal":
            reward = -np.abs(qpos[:2] - self.task["goal"]).sum() - 0.1 * ctrl_cost - 5e-4 * contact_cost
            done = False
        elif f.startswith("Walker2D"):
            direction = self.task.get("direction", 1.0)
            reward = direction * vx + 1.0 - 1e-3 * ctrl_cost
            height, angle = qpos[1], qpos[2]
            done = not (0.8 < height < 2.0 and -1.0 < angle < 1.0)
        else:  # Hopper-Rand-Params
            reward = vx + 1.0 - 1e-3 * ctrl_cost
            s = np.concatenate([qpos, qvel])
            height, angle = qpos[1], qpos[2]
            done = not (np.isfinite(s).all() and (np.abs(s[2:]) < 100).all() and height > 0.7 and abs(angle) < 0.2)
        return self.observation(), float(reward), bool(done)

    def observation(self) -> np.ndarray:
        qpos, qvel = self.data.qpos, self.data.qvel
        if self.family.startswith("HalfCheetah"):
            return np.concatenate([qpos[1:], qvel])
        if self.family.startswith("Ant"):
            position = qpos if self.family == "Ant-Goal" else qpos[2:]
            return np.concatenate([position, qvel, np.clip(self.cfrc_ext, -1, 1).ravel()])
        return np.concatenate([qpos[1:], np.clip(qvel, -10, 10)])


def reference_copies(env, reference: type = ReferenceCopy) -> list:
    """A ``reference`` copy per env copy, from the env's current state (row-major over [task, rollout])."""
    state = env.physics_state()
    return [
        reference(env.family, env.tasks[t], state.qpos[t, r].numpy(), state.qvel[t, r].numpy())
        for t in range(env.n_tasks)
        for r in range(env.rollouts_per_task)
    ]


def assert_matches_reference(env, copies: list[ReferenceCopy], actions: torch.Tensor) -> tuple[int, int]:
    """Step ``env`` and ``copies`` through ``actions`` ([T, n_tasks, rollouts, nu]); return (#steps, #done)."""
    n_done = 0
    for action in actions:
        td = TensorDict({"action": action.float()}, batch_size=env.batch_size)
        out = env.step(td)["next"]
        flat = action.reshape(len(copies), -1).double().numpy()
        results = [c.step(a) for c, a in zip(copies, flat)]
        expected_obs = torch.tensor(np.stack([r[0] for r in results]), dtype=torch.float32)
        expected_reward = torch.tensor([r[1] for r in results], dtype=torch.float32)
        expected_done = torch.tensor([r[2] for r in results])
        torch.testing.assert_close(out["observation"].reshape(len(copies), -1), expected_obs, rtol=2e-6, atol=1e-6)
        torch.testing.assert_close(out["reward"].reshape(-1), expected_reward, rtol=2e-6, atol=1e-5)
        assert torch.equal(out["terminated"].reshape(-1), expected_done)
        n_done += int(expected_done.sum())
    return len(actions), n_done


def hand_made_actions(env, n_steps: int = 5) -> torch.Tensor:
    """Zero, constant, alternating, out-of-range (clipped) and random actions, [n_steps, T, R, nu]."""
    shape = (*env.batch_size, env.action_dim)
    signs = torch.tensor([(-1.0) ** i for i in range(env.action_dim)])
    random = (torch.rand((n_steps, *shape), generator=torch.Generator().manual_seed(0)) * 2 - 1) * ACTION_SCALE
    actions = [torch.zeros(shape), torch.full(shape, 5.0), (8.0 * signs).expand(shape), (25.0 * signs).expand(shape)]
    actions += list(random[: max(0, n_steps - 4)])
    return torch.stack(actions[:n_steps])


# ---------------------------------------------------------------------------- definitions
@pytest.mark.parametrize("family", FAMILIES)
def test_reward_observation_termination_match_definition(family):
    env = make(family, n_tasks=2, rollouts=1)
    env.set_tasks(tasks_for(env))
    env.reset()
    assert_matches_reference(env, reference_copies(env), hand_made_actions(env, 6))


def test_rewards_read_the_tasks_set_last():
    """The rewards' per-step copy of the tasks (``task_value``) follows every ``set_tasks``."""
    env = make("HalfCheetah-Fwd-Bwd", n_tasks=2, rollouts=3)
    actions = torch.zeros(2, 3, env.action_dim)
    rewards = []
    for direction in ([1.0, -1.0], [-1.0, 1.0]):
        env.set_tasks(TensorDict({"direction": torch.tensor(direction)}, batch_size=[2]))
        env.set_rng_state({"rng": torch.Generator().manual_seed(0).get_state()})
        env.reset()
        rewards.append(env.step(TensorDict({"action": actions}, batch_size=[2, 3]))["next", "reward"])
    assert not torch.equal(rewards[0], rewards[1])
    torch.testing.assert_close(rewards[1], -rewards[0])  # zero actions: no control cost, the sign of vx flips


TERMINATING_STATES = {
    # family: [(qpos entries to set, qvel entries to set, expected termination)]
    "Ant-Fwd-Bwd": [({2: 1.5}, {}, True), ({2: 0.6}, {}, False)],
    "Walker2D-Fwd-Bwd": [({1: 0.5}, {}, True), ({2: 1.3}, {}, True), ({}, {}, False)],
    "Walker2D-Rand-Params": [({1: 2.5}, {}, True), ({2: -1.2}, {}, True), ({}, {}, False)],
    "Hopper-Rand-Params": [({1: 0.5}, {}, True), ({2: 0.3}, {}, True), ({}, {5: 400.0}, True), ({}, {}, False)],
}


@pytest.mark.parametrize("family", list(TERMINATING_STATES))
def test_termination_matches_definition(family):
    cases = TERMINATING_STATES[family]
    env = make(family, n_tasks=len(cases), rollouts=1)
    env.set_tasks(tasks_for(env))
    qpos = env.model.qpos0.copy()
    qpos = torch.tensor(np.stack([qpos] * len(cases))).unsqueeze(1)
    qvel = torch.zeros(len(cases), 1, env.model.nv, dtype=torch.float64)
    for i, (pos, vel, _) in enumerate(cases):
        for k, v in pos.items():
            qpos[i, 0, k] = v
        for k, v in vel.items():
            qvel[i, 0, k] = v
    env.reset()
    env.set_physics_state(qpos, qvel)
    copies = reference_copies(env)
    action = torch.zeros(1, *env.batch_size, env.action_dim)
    td = env.step(TensorDict({"action": action[0]}, batch_size=env.batch_size))["next"]
    expected = torch.tensor([case[2] for case in cases])
    assert torch.equal(td["terminated"].reshape(-1), expected)
    assert torch.equal(td["done"].reshape(-1), expected)
    assert torch.equal(torch.tensor([c.step(np.zeros(env.action_dim))[2] for c in copies]), expected)


@pytest.mark.parametrize("family", ["HalfCheetah-Fwd-Bwd", "Ant-Goal", "Walker2D-Fwd-Bwd", "Hopper-Rand-Params"])
def test_reset_noise_follows_the_definition(family):
    env = make(family, n_tasks=2, rollouts=50)
    env.set_tasks(tasks_for(env))
    env.reset()
    state = env.physics_state()
    qpos0 = torch.tensor(env.model.qpos0)
    dq, dv = state.qpos - qpos0, state.qvel
    if family.startswith(("HalfCheetah", "Ant")):
        assert dq.abs().max() <= 0.1 and dq.abs().max() > 0.09  # U(+-0.1)
        assert 0.08 < dv.std() < 0.12  # N(0, 0.1^2)
    else:
        assert dq.abs().max() <= 0.005 and dv.abs().max() <= 0.005  # U(+-0.005)
        assert dq.abs().max() > 0.004 and dv.abs().max() > 0.004


# ---------------------------------------------------------------------------- random physics
@pytest.mark.parametrize("family", ["Walker2D-Rand-Params", "Hopper-Rand-Params"])
def test_random_physics_tasks(family):
    env = make(family, n_tasks=3, rollouts=2, horizon=10)
    tasks = env.sample_tasks(3, torch.Generator().manual_seed(1))
    limits = {"body_mass": 1.5**3, "body_inertia": 1.5**3, "geom_friction": 1.5**3, "dof_damping": 1.3**3}
    for name, limit in limits.items():
        multiplier = tasks[name]
        assert multiplier.shape == (3, *getattr(env.model, name).shape)
        assert (multiplier >= 1 / limit).all() and (multiplier <= limit).all()
        assert multiplier.log().std() > 0.3  # independent per element and per task
    env.set_tasks(tasks)
    for t in range(3):
        model = env.task_model(t)
        for name in limits:
            expected = getattr(env.model, name) * tasks[name][t].numpy()
            np.testing.assert_allclose(getattr(model, name), expected, rtol=1e-12)
    # the same start and actions: the tasks' dynamics differ, the copies of one task agree
    env.reset()
    start_qpos = torch.tensor(env.model.qpos0).expand(3, 2, -1).clone()
    start_qpos[:, :, 1] -= 0.05  # let the feet touch the ground
    env.set_physics_state(start_qpos, torch.zeros(3, 2, env.model.nv))
    action = torch.full((3, 2, env.action_dim), 5.0)
    for _ in range(5):
        env.step(TensorDict({"action": action}, batch_size=[3, 2]))
    qpos = env.physics_state().qpos
    assert torch.equal(qpos[:, 0], qpos[:, 1])
    assert not torch.allclose(qpos[0, 0], qpos[1, 0]) and not torch.allclose(qpos[1, 0], qpos[2, 0])


def test_unit_multipliers_give_the_default_model():
    env = make("Hopper-Rand-Params", n_tasks=1, rollouts=1)
    tasks = env.sample_tasks(1, torch.Generator().manual_seed(0)).apply(torch.ones_like)
    env.set_tasks(tasks)
    model = env.task_model(0)
    default = mujoco.MjModel.from_xml_path(str(ASSETS / "hopper.xml"))
    for name in (*PHYSICS, "body_subtreemass", "dof_invweight0"):
        np.testing.assert_array_equal(getattr(model, name), getattr(default, name))


# ---------------------------------------------------------------------------- batching
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_env_equals_independent_copies(family):
    batched = make(family, n_tasks=2, rollouts=2, horizon=6, num_threads=2)
    batched.set_tasks(tasks_for(batched))
    batched.reset()
    singles = []
    state = batched.physics_state()
    for t in range(2):
        for r in range(2):
            single = make(family, n_tasks=1, rollouts=1, horizon=6, seed=100 + 2 * t + r, num_threads=1)
            single.set_tasks(batched.tasks[t : t + 1])
            single.reset()
            single.set_physics_state(state.qpos[t : t + 1, r : r + 1], state.qvel[t : t + 1, r : r + 1])
            singles.append(single)
    actions = 15.0 * (torch.rand(6, 2, 2, batched.action_dim, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    for action in actions:
        out = batched.step(TensorDict({"action": action}, batch_size=[2, 2]))["next"]
        for i, single in enumerate(singles):
            t, r = divmod(i, 2)
            single_out = single.step(TensorDict({"action": action[t : t + 1, r : r + 1]}, batch_size=[1, 1]))["next"]
            for key in ("observation", "reward", "terminated", "truncated"):
                assert torch.equal(out[key][t, r], single_out[key][0, 0]), key


@pytest.mark.parametrize("family", FAMILIES)
def test_check_env_specs(family):
    env = make(family, n_tasks=2, rollouts=2, horizon=4)
    env.set_tasks(tasks_for(env))
    check_env_specs(env)
    assert env.observation_spec["observation"].shape == (2, 2, env.observation_dim)
    low, high = env.model.actuator_ctrlrange.T  # [-1, 1] for every model here
    assert torch.equal(env.action_spec.space.low[0, 0], torch.tensor(low * ACTION_SCALE, dtype=torch.float32))
    assert torch.equal(env.action_spec.space.high[0, 0], torch.tensor(high * ACTION_SCALE, dtype=torch.float32))


def test_available_lists_every_family():
    assert set(FAMILIES) | {"Point-Corner", "Point-Semicircle"} <= set(envs.available())
    dims = {f: make(f).observation_dim for f in FAMILIES}
    assert dims == {
        "HalfCheetah-Fwd-Bwd": 17, "HalfCheetah-Vel": 17, "Ant-Fwd-Bwd": 111, "Ant-Goal": 113,
        "Walker2D-Fwd-Bwd": 17, "Walker2D-Rand-Params": 17, "Hopper-Rand-Params": 11,
    }


def test_partial_reset_resets_only_the_masked_copies():
    env = make("HalfCheetah-Fwd-Bwd", n_tasks=2, rollouts=2)
    env.set_tasks(tasks_for(env))
    td = env.reset()
    for _ in range(3):
        td = env.step(td.set("action", torch.full((2, 2, 6), 7.0)))["next"]
    before = env.physics_state().qpos.clone()
    mask = torch.tensor([[True, False], [False, True]])
    out = env.reset(TensorDict({"_reset": mask.unsqueeze(-1)}, batch_size=[2, 2]))
    after = env.physics_state().qpos
    assert torch.equal(after[~mask], before[~mask])
    assert (after[mask] - torch.tensor(env.model.qpos0)).abs().max() <= 0.1
    assert not torch.equal(after[mask], before[mask])
    assert torch.equal(env.step_count, torch.tensor([[0, 3], [3, 0]]))
    assert torch.equal(out["observation"][mask], env.observe(env.physics_state())[mask].float())


def test_rollout_masks_steps_after_termination():
    env = make("Walker2D-Fwd-Bwd", n_tasks=2, rollouts=3, horizon=40)
    env.set_tasks(tasks_for(env))
    alternating = torch.tensor([10.0, -10.0, 10.0, -10.0, 10.0, -10.0]).expand(2, 3, 6)
    batch = env.rollout(40, policy=lambda td: td.set("action", alternating.clone()), break_when_any_done=False)
    assert batch.batch_size == (2, 3, 40)
    terminated = batch["next", "terminated"].squeeze(-1)
    assert terminated.any(-1).all()  # full alternating torques topple every walker early
    first = terminated.float().argmax(-1)
    assert (first < 39).all()
    assert torch.equal(episode_mask(batch["next", "done"].squeeze(-1)).sum(-1), first + 1)


# ---------------------------------------------------------------------------- seeding
def test_same_seed_same_trajectories_different_seed_different():
    def run(seed: int) -> TensorDict:
        env = make("Ant-Fwd-Bwd", n_tasks=2, rollouts=2, horizon=6, seed=seed)
        env.set_tasks(tasks_for(env))
        generator = torch.Generator().manual_seed(0)
        return env.rollout(6, policy=lambda td: td.set("action", torch.rand(2, 2, 8, generator=generator) * 20 - 10),
                           break_when_any_done=False)

    a, b, c = run(5), run(5), run(6)
    for key in ("observation", ("next", "observation"), ("next", "reward"), ("next", "done")):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["observation"], c["observation"])


def test_the_physics_pool_size_changes_no_number():
    def run(threads: int | None) -> TensorDict:
        env = make("Ant-Fwd-Bwd", n_tasks=2, rollouts=2, horizon=6, seed=5, num_threads=2)
        if threads is not None:
            env.set_num_threads(threads)  # what each process of a multi-process run does
            assert env.num_threads == threads
        env.set_tasks(tasks_for(env))
        generator = torch.Generator().manual_seed(0)
        return env.rollout(6, policy=lambda td: td.set("action", torch.rand(2, 2, 8, generator=generator) * 20 - 10),
                           break_when_any_done=False)

    one, two = run(1), run(None)
    for key in ("observation", ("next", "observation"), ("next", "reward"), ("next", "done")):
        assert torch.equal(one[key], two[key])


def test_set_seed_and_rng_state_restore_the_reset_noise():
    env = make("HalfCheetah-Vel", n_tasks=2, rollouts=2)
    env.set_tasks(tasks_for(env))
    env.set_seed(11)
    first = env.reset()["observation"]
    state = env.rng_state()
    second = env.reset()["observation"]
    env.set_rng_state(state)
    assert torch.equal(env.reset()["observation"], second)
    env.set_seed(11)
    assert torch.equal(env.reset()["observation"], first)


@pytest.mark.parametrize("family", FAMILIES)
def test_task_sampling_is_seeded(family):
    cls = envs.family(family)
    a, b, c = (cls.sample_tasks(8, torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a.keys())
    assert not all(torch.equal(a[k], c[k]) for k in a.keys())
    cls.validate_tasks(a)
    env = make(family, n_tasks=8)
    held_out = env.held_out_tasks(8, seed=3)
    assert all(torch.equal(held_out[k], env.held_out_tasks(8, seed=3)[k]) for k in held_out.keys())
    env.set_tasks(held_out)


def test_task_distributions():
    n = 2000
    generator = torch.Generator().manual_seed(0)
    direction = envs.family("HalfCheetah-Fwd-Bwd").sample_tasks(n, generator)["direction"]
    assert set(direction.tolist()) == {-1.0, 1.0} and abs(direction.mean()) < 0.1
    velocity = envs.family("HalfCheetah-Vel").sample_tasks(n, generator)["velocity"]
    assert velocity.min() >= 0 and velocity.max() <= 3 and abs(velocity.mean() - 1.5) < 0.1
    goal = envs.family("Ant-Goal").sample_tasks(n, generator)["goal"]
    radius = goal.norm(dim=-1)
    assert radius.max() <= 3 and abs((radius < 1.5).float().mean() - 0.25) < 0.04  # uniform on the disk


# ---------------------------------------------------------------------------- robustness and errors
def test_unstable_copy_is_reset_and_counted():
    env = make("HalfCheetah-Fwd-Bwd", n_tasks=2, rollouts=2)
    env.set_tasks(tasks_for(env))
    env.reset()
    state = env.physics_state()
    qpos, qvel = state.qpos.clone(), state.qvel.clone()
    qvel[0, 1, 3] = float("nan")
    qpos[1, 0, 2] = 1e12
    env.set_physics_state(qpos, qvel)
    healthy = reference_copies(env)[3]
    out = env.step(TensorDict({"action": torch.zeros(2, 2, 6)}, batch_size=[2, 2]))["next"]
    assert env.unstable_resets == 2
    assert torch.isfinite(out["observation"]).all() and torch.isfinite(out["reward"]).all()
    assert torch.equal(out["terminated"][..., 0], torch.tensor([[False, True], [True, False]]))
    assert out["reward"][0, 1, 0] == 0 and out["reward"][1, 0, 0] == 0
    obs, reward, _ = healthy.step(np.zeros(6))
    torch.testing.assert_close(out["observation"][1, 1], torch.tensor(obs, dtype=torch.float32))
    assert (env.physics_state().qpos[0, 1] - torch.tensor(env.model.qpos0)).abs().max() <= 0.1
    env.step(TensorDict({"action": torch.zeros(2, 2, 6)}, batch_size=[2, 2]))
    assert env.unstable_resets == 2


@pytest.mark.parametrize(
    "family, entries, message",
    [
        ("HalfCheetah-Fwd-Bwd", {"direction": torch.tensor([1.0, 0.5])}, "direction must be -1 or \\+1"),
        ("HalfCheetah-Fwd-Bwd", {"velocity": torch.tensor([1.0, 0.5])}, "'direction'"),
        ("HalfCheetah-Vel", {"velocity": torch.tensor([1.0, 3.5])}, "velocity must lie in \\[0, 3"),
        ("HalfCheetah-Vel", {"velocity": torch.tensor([1.0, float("nan")])}, "non-finite"),
        ("Ant-Goal", {"goal": torch.tensor([[1.0, 0.0], [3.0, 2.0]])}, "within radius 3"),
        ("Ant-Goal", {"goal": torch.tensor([1.0, 0.0])}, "shape"),
        ("Walker2D-Fwd-Bwd", {"direction": torch.tensor([[1.0], [-1.0]])}, "shape"),
    ],
)
def test_out_of_range_tasks_are_rejected(family, entries, message):
    env = make(family)
    with pytest.raises(TaskError, match=message):
        env.set_tasks(TensorDict(entries, batch_size=[2]))


@pytest.mark.parametrize("family", ["Walker2D-Rand-Params", "Hopper-Rand-Params"])
def test_out_of_range_physics_is_rejected(family):
    env = make(family)
    tasks = env.sample_tasks(2, torch.Generator().manual_seed(0))
    too_heavy = tasks.clone()
    too_heavy["body_mass"][1, 2] = 4.0
    with pytest.raises(TaskError, match="body_mass multipliers must lie in \\[0.2963, 3.375\\]"):
        env.set_tasks(too_heavy)
    damped = tasks.clone()
    damped["dof_damping"][0, 0] = 2.5  # within 1.5^3 but beyond 1.3^3
    with pytest.raises(TaskError, match="dof_damping"):
        env.set_tasks(damped)
    with pytest.raises(TaskError, match="geom_friction must have shape"):
        env.set_tasks(tasks.set("geom_friction", torch.ones(2, 3)))
    with pytest.raises(TaskError, match="'body_inertia'"):
        env.set_tasks(tasks.exclude("body_inertia"))


def test_bad_actions_and_config_are_rejected():
    env = make("Ant-Goal")
    env.set_tasks(tasks_for(env))
    td = env.reset()
    with pytest.raises(ActionError, match="non-finite"):
        env.step(td.clone().set("action", torch.full((2, 1, 8), float("nan"))))
    with pytest.raises(ActionError, match="shape"):
        env.step(td.clone().set("action", torch.zeros(2, 1, 6)))
    with pytest.raises(ActionError, match="floating"):
        env.step(td.clone().set("action", torch.zeros(2, 1, 8, dtype=torch.long)))
    with pytest.raises(ConfigError, match="num_threads"):
        make("Ant-Goal", num_threads=0)
    with pytest.raises(ConfigError, match="Ant-Goal"):
        make("Ant-Goal", reward_type="sparse")
    with pytest.raises(TaskError, match="set_tasks"):
        make("Hopper-Rand-Params").step(TensorDict({"action": torch.zeros(2, 1, 3)}, batch_size=[2, 1]))


# ---------------------------------------------------------------------------- actions and contact forces
def test_actions_are_rescaled_from_the_reference_box_and_clipped():
    env = make("Hopper-Rand-Params", n_tasks=1, rollouts=1)
    action = torch.tensor([[[-25.0, 4.0, 10.0]]])
    torch.testing.assert_close(env.control(action), torch.tensor([[[-1.0, 0.4, 1.0]]], dtype=torch.float64))
    clipped = make("Hopper-Rand-Params", n_tasks=1, rollouts=1, action_scale=1.0)
    torch.testing.assert_close(clipped.control(action), torch.tensor([[[-1.0, 1.0, 1.0]]], dtype=torch.float64))
    assert torch.equal(clipped.action_spec.space.high[0, 0], torch.ones(3))
    with pytest.raises(ConfigError, match="action_scale"):
        make("Hopper-Rand-Params", action_scale=0.0)


def test_ant_contact_forces_match_mujoco_while_touching_the_ground():
    env = make("Ant-Goal", n_tasks=2, rollouts=2)
    env.set_tasks(tasks_for(env))
    td = env.reset()
    for _ in range(15):  # fall from the start height and land on the legs
        td = env.step(td.set("action", torch.zeros(2, 2, 8)))["next"]
    copies = reference_copies(env)
    generator = torch.Generator().manual_seed(3)
    touching = 0
    for _ in range(12):
        action = torch.rand(2, 2, 8, generator=generator) * 20 - 10
        env.step(TensorDict({"action": action}, batch_size=[2, 2]))
        flat = action.reshape(4, -1).double().numpy()
        for i, (copy, a) in enumerate(zip(copies, flat)):
            copy.step(a)
            measured = env.physics_state().cfrc_ext.reshape(4, env.model.nbody, 6)[i]
            np.testing.assert_allclose(measured.numpy(), copy.cfrc_ext, rtol=1e-6, atol=1e-6)
            touching += int(np.abs(copy.cfrc_ext).max() > 0.1)
    assert touching >= 4  # the comparison saw real contact wrenches
