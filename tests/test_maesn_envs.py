"""MAESN's task families (Gupta et al. 2018): Wheeled-Semicircle, Ant-Semicircle, Block-Push.

Rewards (dense and sparse), observations and terminations against their definitions computed from
raw MuJoCo states of independent copies stepped with ``mj_step``; models, action scaling, reset
noise, specs, task sampling, fixed task sets and bad tasks."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium
import mujoco
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from test_mujoco_envs import reference_copies as shared_reference_copies
from torchrl.envs.utils import check_env_specs

from lightning_metarl import envs
from lightning_metarl.envs.maesn import TreeKinematics
from lightning_metarl.errors import ConfigError, TaskError

GYM_ASSETS = Path(gymnasium.__file__).resolve().parent / "envs" / "mujoco" / "assets"
OUR_ASSETS = Path(envs.__file__).resolve().parent / "assets"
FAMILIES = ("Wheeled-Semicircle", "Ant-Semicircle", "Block-Push")
HORIZONS = {"Wheeled-Semicircle": 200, "Ant-Semicircle": 200, "Block-Push": 100}
OBSERVATION_DIMS = {"Wheeled-Semicircle": 12, "Ant-Semicircle": 125, "Block-Push": 26}


def semicircle(*angles: float) -> torch.Tensor:
    return torch.tensor([[2 * math.cos(a), 2 * math.sin(a)] for a in angles], dtype=torch.float64)


#: two hand-made tasks per family; the pusher's blocks start far (>= 0.3) from their goals
LAYOUT = torch.tensor([[0.4, -0.4], [0.45, -0.2], [0.5, 0.0], [0.55, 0.2], [0.6, 0.4]], dtype=torch.float64)
HAND_MADE_TASKS = {
    "Wheeled-Semicircle": {"goal": semicircle(0.3, 2.5)},
    "Ant-Semicircle": {"goal": semicircle(1.2, 2.9)},
    "Block-Push": {
        "block": torch.tensor([1, 4]),
        "goal": torch.tensor([[0.9, -0.2], [0.8, 0.45]], dtype=torch.float64),
        "starts": torch.stack([LAYOUT, LAYOUT + torch.tensor([-0.05, 0.02], dtype=torch.float64)]),
    },
}


def make(family: str, n_tasks: int = 2, rollouts: int = 1, horizon: int | None = 8, seed: int = 0, **kwargs):
    return envs.make(family, n_tasks=n_tasks, rollouts_per_task=rollouts, horizon=horizon, seed=seed, **kwargs)


def hand_made_tasks(family: str) -> TensorDict:
    return TensorDict({k: v.clone() for k, v in HAND_MADE_TASKS[family].items()}, batch_size=[2])


# ---------------------------------------------------------------------------- the reference
def reference_model(family: str) -> mujoco.MjModel:
    """The model per the definition, built without the package: our MJCF files, gymnasium's ant at gear 30."""
    if family == "Ant-Semicircle":
        text = (GYM_ASSETS / "ant.xml").read_text()
        assert text.count('gear="150"') == 8
        return mujoco.MjModel.from_xml_string(text.replace('gear="150"', 'gear="30"'))
    return mujoco.MjModel.from_xml_path(str(OUR_ASSETS / ("wheeled.xml" if family.startswith("Wheeled") else "pusher.xml")))


class ReferenceCopy:
    """One copy stepped with ``mj_step`` on its own ``MjData``; observation, rewards and termination per MAESN."""

    def __init__(self, family: str, task: TensorDict, qpos: np.ndarray, qvel: np.ndarray) -> None:
        self.family = family
        self.task = {key: value.numpy() for key, value in task.items()}
        self.model = reference_model(family)
        self.data = mujoco.MjData(self.model)
        self.data.qpos[:], self.data.qvel[:] = qpos, qvel
        self.cfrc_ext = self.contact_forces()

    def contact_forces(self) -> np.ndarray:
        """cfrc_ext at the current state: the forward pass plus mj_rnePostConstraint."""
        mujoco.mj_forward(self.model, self.data)
        mujoco.mj_rnePostConstraint(self.model, self.data)
        return self.data.cfrc_ext.copy()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, float, bool]:
        """(observation, dense reward, sparse reward, terminated) of one step with policy action ``action``."""
        low, high = self.model.actuator_ctrlrange.T
        a = np.clip(low + (action + 1.0) * 0.5 * (high - low), low, high)  # [-1, 1] -> ctrlrange, clipped
        self.data.ctrl[:] = a
        self.cfrc_ext = self.contact_forces()  # the wrench of the forward pass at the start of the step
        self.data.qacc_warmstart[:] = 0  # the rollout starts each step's solver from zero
        mujoco.mj_step(self.model, self.data)
        mujoco.mj_forward(self.model, self.data)  # derived quantities of the state after the step
        data, m = self.data, self.model
        qpos, qvel = data.qpos.copy(), data.qvel.copy()
        ctrl_cost = float(np.sum(a**2))
        goal = self.task["goal"]
        done = False
        if self.family == "Wheeled-Semicircle":
            xy = data.xpos[m.body("chassis").id][:2]
            distance = np.linalg.norm(xy - goal)
            dense = -distance - 0.05 * ctrl_cost
            sparse = dense if distance <= 0.8 else -np.linalg.norm(goal) - 0.05 * ctrl_cost
            obs = np.concatenate([qpos, qvel])
        elif self.family == "Ant-Semicircle":
            com = data.subtree_com[m.body("torso").id]
            rest = -0.005 * ctrl_cost - 5e-4 * np.sum(np.clip(self.cfrc_ext, -1, 1) ** 2) + 0.05
            dense = 4 - np.abs(com[:2] - goal).sum() + rest
            near = np.linalg.norm(com[:2] - goal) <= 0.8
            sparse = dense if near else 4 - np.abs(goal).sum() + rest
            obs = np.concatenate([
                qpos, qvel, np.clip(self.cfrc_ext, -1, 1).ravel(), data.xmat[m.body("torso").id], com,
            ])
            done = not (np.isfinite(np.concatenate([qpos, qvel])).all() and 0.2 <= qpos[2] <= 1.0)
        else:
            blocks = np.stack([data.xpos[m.body(f"block{i}").id][:2] for i in range(5)])
            distance = np.linalg.norm(blocks[int(self.task["block"])] - goal)
            dense = -5 * distance
            sparse = dense if distance <= 0.2 else -5 * np.linalg.norm(goal)
            obs = np.concatenate([qpos[:3], blocks.ravel(), qvel])
        return obs, float(dense), float(sparse), done


def reference_copies(env) -> list[ReferenceCopy]:
    """A reference copy per env copy, from the env's current state (row-major over [task, rollout])."""
    return shared_reference_copies(env, ReferenceCopy)


def hand_made_state(env) -> tuple[torch.Tensor, torch.Tensor]:
    """States [2, R, nq] / [2, R, nv]: rollout 0 of each task near its goal, the others at the start.

    The ant stands on its legs (ankles at +-1 rad, torso at 0.5: the feet touch the floor)."""
    state = env.physics_state()
    qpos, qvel = state.qpos.clone(), state.qvel.clone()
    goal = env.tasks["goal"].double()
    if env.family == "Ant-Semicircle":
        qpos[..., 2] = 0.5
        qpos[..., 7:] = torch.tensor([0.0, 1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0], dtype=torch.float64)
    if env.family == "Block-Push":
        block = env.tasks["block"]
        for t in range(2):  # the target block 0.1 short of its goal
            b = int(block[t])
            qpos[t, 0, 3 + 2 * b : 5 + 2 * b] = goal[t] - torch.tensor([0.1, 0.0], dtype=torch.float64) - env.block_origin[b]
    else:
        qpos[:, 0, :2] = goal + torch.tensor([0.3, -0.2], dtype=torch.float64)
    return qpos, qvel


def step_actions(env, n_steps: int) -> torch.Tensor:
    """[n_steps, T, R, nu]: zero, full, out-of-range (clipped) and random actions."""
    shape = (*env.batch_size, env.action_dim)
    signs = torch.tensor([(-1.0) ** i for i in range(env.action_dim)])
    random = torch.rand((n_steps, *shape), generator=torch.Generator().manual_seed(0)) * 3 - 1.5
    actions = [torch.zeros(shape), torch.ones(shape), (4.0 * signs).expand(shape)] + list(random)
    return torch.stack(actions[:n_steps])


# ---------------------------------------------------------------------------- definitions
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_env_equals_independent_mj_step_copies(family):
    """Dense and sparse rewards, observations and terminations of a batch (2 tasks x 2 rollouts, two
    physics threads) against independent copies stepped with mj_step from the same states."""
    dense, sparse = (make(family, rollouts=2, reward_type=r, num_threads=2) for r in ("dense", "sparse"))
    for env in (dense, sparse):
        env.set_tasks(hand_made_tasks(family))
        env.reset()
    qpos, qvel = hand_made_state(dense)
    for env in (dense, sparse):
        env.set_physics_state(qpos, qvel)
    copies = reference_copies(dense)
    inside = outside = 0
    for action in step_actions(dense, 5):
        td = TensorDict({"action": action}, batch_size=dense.batch_size)
        out_dense, out_sparse = dense.step(td.clone())["next"], sparse.step(td.clone())["next"]
        results = [c.step(a) for c, a in zip(copies, action.reshape(4, -1).double().numpy())]
        expected_obs = torch.tensor(np.stack([r[0] for r in results]), dtype=torch.float32)
        for out in (out_dense, out_sparse):
            torch.testing.assert_close(out["observation"].reshape(4, -1), expected_obs, rtol=2e-6, atol=2e-6)
            assert torch.equal(out["terminated"].reshape(-1), torch.tensor([r[3] for r in results]))
        torch.testing.assert_close(out_dense["reward"].reshape(-1), torch.tensor([r[1] for r in results]).float(),
                                   rtol=2e-6, atol=1e-5)
        torch.testing.assert_close(out_sparse["reward"].reshape(-1), torch.tensor([r[2] for r in results]).float(),
                                   rtol=2e-6, atol=1e-5)
        inside += sum(r[1] == r[2] for r in results)
        outside += sum(r[1] != r[2] for r in results)
    assert inside >= 5 and outside >= 5  # both branches of the sparse reward were compared
    assert torch.equal(dense.physics_state().qpos, sparse.physics_state().qpos)


def test_ant_contact_forces_are_compared_while_standing():
    env = make("Ant-Semicircle", rollouts=1)
    env.set_tasks(hand_made_tasks("Ant-Semicircle"))
    env.reset()
    env.set_physics_state(*hand_made_state(env))
    assert env.physics_state().cfrc_ext.abs().max() > 0.1  # the feet touch the floor
    copies = reference_copies(env)
    for action in step_actions(env, 4):
        env.step(TensorDict({"action": action}, batch_size=env.batch_size))
        for i, (copy, a) in enumerate(zip(copies, action.reshape(2, -1).double().numpy())):
            copy.step(a)
            np.testing.assert_allclose(env.physics_state().cfrc_ext[i, 0].numpy(), copy.cfrc_ext, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_rewards_on_hand_made_states(family):
    """One zero-action step from hand-made states; the rewards by hand from the MuJoCo state after it."""
    env = {r: make(family, rollouts=2, reward_type=r, num_threads=1) for r in ("dense", "sparse")}
    for e in env.values():
        e.set_tasks(hand_made_tasks(family))
        e.reset()
        e.set_physics_state(*hand_made_state(env["dense"]))
    zero = TensorDict({"action": torch.zeros(2, 2, env["dense"].action_dim)}, batch_size=[2, 2])
    before = env["dense"].physics_state()
    reward = {r: e.step(zero.clone())["next", "reward"][..., 0].double() for r, e in env.items()}
    state = env["dense"].physics_state()
    goal = env["dense"].tasks["goal"].double()
    if family == "Wheeled-Semicircle":
        distance = (state.qpos[..., :2] - goal[:, None]).norm(dim=-1)
        expected_dense = -distance
        expected_sparse = torch.stack([-distance[:, 0], -goal.norm(dim=-1)], dim=1)  # rollout 1 is at the start
        assert (distance[:, 0] < 0.8).all() and (distance[:, 1] > 0.8).all()
    elif family == "Ant-Semicircle":
        model = reference_model(family)
        data = mujoco.MjData(model)
        com = torch.zeros(2, 2, 2, dtype=torch.float64)
        for t in range(2):
            for r in range(2):
                data.qpos[:], data.qvel[:] = state.qpos[t, r].numpy(), state.qvel[t, r].numpy()
                mujoco.mj_forward(model, data)
                com[t, r] = torch.tensor(data.subtree_com[1, :2])
        contact = 5e-4 * before.cfrc_ext.clamp(-1, 1).square().sum((-2, -1))  # of the state before the step
        assert (contact > 0).all()
        rest = -contact + 0.05
        l1 = (com - goal[:, None]).abs().sum(-1)
        expected_dense = 4 - l1 + rest
        expected_sparse = torch.stack([4 - l1[:, 0], 4 - goal.abs().sum(-1)], dim=1) + rest
        assert ((com - goal[:, None]).norm(dim=-1)[:, 0] < 0.8).all()
    else:
        block = env["dense"].tasks["block"]
        model = reference_model(family)
        data = mujoco.MjData(model)
        target = torch.zeros(2, 2, 2, dtype=torch.float64)
        for t in range(2):
            for r in range(2):
                data.qpos[:] = state.qpos[t, r].numpy()
                mujoco.mj_kinematics(model, data)
                target[t, r] = torch.tensor(data.xpos[model.body(f"block{int(block[t])}").id, :2])
        distance = (target - goal[:, None]).norm(dim=-1)
        expected_dense = -5 * distance
        expected_sparse = torch.stack([-5 * distance[:, 0], -5 * goal.norm(dim=-1)], dim=1)
        assert (distance[:, 0] < 0.2).all() and (distance[:, 1] > 0.2).all()
    torch.testing.assert_close(reward["dense"], expected_dense, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(reward["sparse"], expected_sparse, rtol=1e-6, atol=1e-5)


def test_control_cost_uses_the_scaled_clipped_control():
    env = make("Wheeled-Semicircle", n_tasks=1, rollouts=1, num_threads=1)
    env.set_tasks(TensorDict({"goal": semicircle(1.0)}, batch_size=[1]))
    env.reset()
    start = env.physics_state()
    rewards = []
    for action in (torch.zeros(1, 1, 2), torch.tensor([[[0.5, -3.0]]])):
        env.set_physics_state(start.qpos, start.qvel)
        out = env.step(TensorDict({"action": action}, batch_size=[1, 1]))["next"]
        distance = (env.physics_state().qpos[0, 0, :2] - env.tasks["goal"][0]).norm()
        rewards.append(out["reward"].item() + distance.item())
    assert rewards[0] == pytest.approx(0.0, abs=1e-6)
    assert rewards[1] == pytest.approx(-0.05 * (1.0**2 + 2.0**2), abs=1e-6)  # controls 1 and -2 (clipped)


# ---------------------------------------------------------------------------- observations
def test_observation_layout():
    wheeled = make("Wheeled-Semicircle", num_threads=1)
    obs = wheeled.reset()["observation"].double()
    state = wheeled.physics_state()
    torch.testing.assert_close(obs, torch.cat((state.qpos, state.qvel), -1), rtol=1e-6, atol=1e-7)

    ant = make("Ant-Semicircle", num_threads=1)
    obs = ant.reset()["observation"].double()
    state = ant.physics_state()
    model = reference_model("Ant-Semicircle")
    data = mujoco.MjData(model)
    data.qpos[:], data.qvel[:] = state.qpos[0, 0].numpy(), state.qvel[0, 0].numpy()
    mujoco.mj_forward(model, data)
    mujoco.mj_rnePostConstraint(model, data)
    parts = obs[0, 0].split([15, 14, 84, 9, 3])
    expected = (data.qpos, data.qvel, np.clip(data.cfrc_ext, -1, 1).ravel(), data.xmat[1], data.subtree_com[1])
    for part, value in zip(parts, expected):
        torch.testing.assert_close(part, torch.tensor(value), rtol=1e-6, atol=1e-6)

    pusher = make("Block-Push", num_threads=1)
    obs = pusher.reset()["observation"].double()
    state = pusher.physics_state()
    wrist, blocks, qvel = obs[0, 0].split([3, 10, 13])
    torch.testing.assert_close(wrist, state.qpos[0, 0, :3], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(qvel, state.qvel[0, 0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(blocks.view(5, 2), pusher.tasks["starts"][0], rtol=0, atol=0.05)  # starts + noise
    model = reference_model("Block-Push")
    data = mujoco.MjData(model)
    data.qpos[:] = state.qpos[0, 0].numpy()
    mujoco.mj_kinematics(model, data)
    world = np.stack([data.xpos[model.body(f"block{i}").id, :2] for i in range(5)])
    torch.testing.assert_close(blocks.view(5, 2), torch.tensor(world), rtol=1e-6, atol=1e-7)

    dims = {f: make(f).observation_dim for f in FAMILIES}
    assert dims == OBSERVATION_DIMS


def assert_kinematics_match_mujoco(kinematics: TreeKinematics, model: mujoco.MjModel, qpos: np.ndarray,
                                   bodies: list[int]) -> mujoco.MjData:
    """Frames of every body, and frame and subtree centre of mass of ``bodies``, equal MuJoCo's for each row of ``qpos``."""
    data = mujoco.MjData(model)
    xpos, xmat = kinematics.frames(torch.tensor(qpos))
    for i, q in enumerate(qpos):
        data.qpos[:] = q
        mujoco.mj_kinematics(model, data)
        mujoco.mj_comPos(model, data)
        np.testing.assert_allclose(xpos[i].numpy(), data.xpos, atol=1e-12)
        np.testing.assert_allclose(xmat[i].reshape(-1, 9).numpy(), data.xmat, atol=1e-12)
        for body in bodies:
            rot, com = kinematics.frame_and_subtree_com(torch.tensor(q), body)
            np.testing.assert_allclose(com.numpy(), data.subtree_com[body], atol=1e-12)
            np.testing.assert_allclose(rot.reshape(9).numpy(), data.xmat[body], atol=1e-12)
    return data


def test_tree_kinematics_match_mujoco():
    env = make("Ant-Semicircle", num_threads=1)
    model = reference_model("Ant-Semicircle")
    generator = np.random.default_rng(0)
    qpos = np.stack([model.qpos0 + generator.normal(0, 0.5, model.nq) for _ in range(3)])
    qpos[:, 3:7] *= 1.3  # an unnormalised quaternion
    data = assert_kinematics_match_mujoco(env.kinematics, model, qpos, bodies=[1])
    non_free = env.kinematics.frame_and_subtree_com(torch.tensor(qpos), 2)  # a leg: the walk from the world
    np.testing.assert_allclose(non_free[1][-1].numpy(), data.subtree_com[2], atol=1e-12)
    np.testing.assert_allclose(non_free[0][-1].reshape(9).numpy(), data.xmat[2], atol=1e-12)
    with pytest.raises(ConfigError, match="mocap"):
        TreeKinematics(reference_model("Block-Push"))


TREE = """<mujoco><worldbody>
  <body pos="0.1 0.2 0.3" quat="0.9 0.1 0.3 -0.2"><joint type="slide" axis="0 1 1"/><joint type="hinge" axis="1 0 0" pos="0.1 0 0"/>
    <geom size="0.1" pos="0.05 0 0"/>
    <body pos="0 0.3 0" euler="0.3 0.2 0.1"><joint type="hinge" axis="0 1 0" pos="0 0.1 0.2" ref="0.4"/>
      <joint type="slide" axis="1 0 0"/><geom type="capsule" fromto="0 0 0 0.2 0 0.1" size="0.05"/></body>
  </body>
  <body pos="1 0 0"><freejoint/><geom type="box" size="0.1 0.2 0.3" pos="0.1 0 0"/>
    <body pos="0.2 0 0" euler="0 0.5 0"><joint type="hinge" axis="0 0 1" pos="0.1 0 0"/><geom size="0.1" pos="0 0.1 0"/></body>
  </body>
</worldbody></mujoco>"""


def test_tree_kinematics_with_rotated_bodies_offset_hinges_and_slides():
    model = mujoco.MjModel.from_xml_string(TREE)
    qpos = np.stack([model.qpos0 + np.random.default_rng(i).normal(0, 0.7, model.nq) for i in range(2)])
    assert_kinematics_match_mujoco(TreeKinematics(model), model, qpos, bodies=list(range(1, model.nbody)))


# ---------------------------------------------------------------------------- termination
def test_ant_terminates_outside_the_height_range_and_on_non_finite_states():
    cases = [(0.15, True), (1.3, True), (0.6, False), (0.9, False)]  # torso height qpos[2] -> terminated
    env = make("Ant-Semicircle", n_tasks=len(cases), rollouts=1, num_threads=1)
    env.set_tasks(env.sample_tasks(len(cases), torch.Generator().manual_seed(0)))
    env.reset()
    qpos = torch.tensor(env.model.qpos0).expand(len(cases), 1, -1).clone()
    for i, (z, _) in enumerate(cases):
        qpos[i, 0, 2] = z
    env.set_physics_state(qpos, torch.zeros(len(cases), 1, env.model.nv))
    copies = reference_copies(env)
    out = env.step(TensorDict({"action": torch.zeros(len(cases), 1, 8)}, batch_size=[len(cases), 1]))["next"]
    expected = torch.tensor([done for _, done in cases])
    assert torch.equal(out["terminated"].reshape(-1), expected) and torch.equal(out["done"].reshape(-1), expected)
    assert torch.equal(torch.tensor([c.step(np.zeros(8))[3] for c in copies]), expected)
    # the definition itself, on non-finite states
    state = env.physics_state()
    state.qpos[1, 0, 2] = 0.6
    state.qpos[0, 0, 5] = float("nan")
    state.qvel[1, 0, 3] = float("inf")
    _, terminated = env.reward_and_termination(state.qpos, state, torch.zeros(len(cases), 1, 8, dtype=torch.float64))
    assert terminated[:2, 0].all()
    # a diverging copy in the env is terminated (and reset)
    qpos[2, 0, 2] = 0.6
    qvel = torch.zeros(len(cases), 1, env.model.nv)
    qvel[2, 0, 6] = float("nan")
    env.set_physics_state(qpos, qvel)
    out = env.step(TensorDict({"action": torch.zeros(len(cases), 1, 8)}, batch_size=[len(cases), 1]))["next"]
    assert out["terminated"][2, 0, 0] and out["reward"][2, 0, 0] == 0 and torch.isfinite(out["observation"]).all()


@pytest.mark.parametrize("family", ["Wheeled-Semicircle", "Block-Push"])
def test_never_terminates_and_truncates_at_the_horizon(family):
    env = make(family, n_tasks=1, rollouts=2, horizon=4, num_threads=1)
    batch = env.rollout(4, policy=lambda td: td.set("action", torch.ones(1, 2, env.action_dim)))
    assert not batch["next", "terminated"].any()
    assert batch["next", "truncated"][..., -1, 0].all() and not batch["next", "truncated"][..., :-1, 0].any()


# ---------------------------------------------------------------------------- models and actions
def test_models_follow_the_definitions():
    wheeled = make("Wheeled-Semicircle").model
    assert wheeled.opt.timestep == 0.01 and wheeled.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER
    assert wheeled.body_subtreemass[1] == pytest.approx(14.0)
    types = [mujoco.mjtJoint(t).name for t in wheeled.jnt_type]
    assert types == ["mjJNT_SLIDE"] * 3 + ["mjJNT_HINGE"] * 3
    np.testing.assert_array_equal(wheeled.jnt_axis[:4], [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]])
    np.testing.assert_allclose(wheeled.jnt_range[2], [-1, 0.03])
    assert wheeled.jnt_limited[2] and not wheeled.jnt_limited[[0, 1, 3]].any()
    np.testing.assert_array_equal(wheeled.jnt_axis[4:], [[0, 1, 0], [0, 1, 0]])
    np.testing.assert_allclose(wheeled.body_pos[2:, 1], [-0.2, 0.2])
    np.testing.assert_allclose(wheeled.geom_size[1], [0.15, 0.1, 0.046])
    np.testing.assert_allclose(wheeled.geom_size[2:, :2], [[0.1, 0.046], [0.1, 0.046]])
    assert (wheeled.geom_friction[:, 0] == 0.4).all()
    np.testing.assert_array_equal(wheeled.actuator_ctrlrange, [[-2, 2], [-2, 2]])
    assert (wheeled.actuator_gear[:, 0] == 1).all()

    ant = make("Ant-Semicircle").model
    assert (ant.actuator_gear[:, 0] == 30).all() and (ant.actuator_ctrlrange == [-1, 1]).all()
    assert ant.opt.timestep == 0.01 and ant.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    reference = reference_model("Ant-Semicircle")
    for name in ("body_mass", "body_pos", "geom_size", "jnt_range", "qpos0", "actuator_gear", "dof_damping"):
        np.testing.assert_array_equal(getattr(ant, name), getattr(reference, name))

    pusher = make("Block-Push").model
    assert (pusher.opt.gravity == 0).all() and pusher.opt.timestep == 0.01
    assert pusher.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER
    assert (pusher.nq, pusher.nv, pusher.nu) == (13, 13, 3)
    np.testing.assert_array_equal(pusher.dof_damping, [0.5] * 3 + [1.5] * 10)
    np.testing.assert_array_equal(pusher.actuator_ctrlrange, [[-2, 2]] * 3)
    for i in range(5):
        block = pusher.body(f"block{i}")
        np.testing.assert_allclose(pusher.geom_size[pusher.body_geomadr[block.id]], [0.03, 0.03, 0.05])
        assert pusher.body_mass[block.id] < 0.1 * pusher.body_subtreemass[pusher.body("wrist").id]
    target = pusher.geom("target")
    assert target.contype == 0 and target.conaffinity == 0
    assert (pusher.geom_size[pusher.body_geomadr[pusher.body("wrist").id] + np.arange(3), 0] == 0.02).all()


def test_actions_in_the_unit_box_are_scaled_to_the_control_range_and_clipped():
    wheeled = make("Wheeled-Semicircle", n_tasks=1)
    assert torch.equal(wheeled.action_spec.space.low[0, 0], -torch.ones(2))
    assert torch.equal(wheeled.action_spec.space.high[0, 0], torch.ones(2))
    torch.testing.assert_close(wheeled.control(torch.tensor([[[-1.0, 0.25]], [[3.0, -7.0]]]).view(1, 2, 2)),
                               torch.tensor([[[-2.0, 0.5], [2.0, -2.0]]], dtype=torch.float64))
    pusher = make("Block-Push", n_tasks=1)
    torch.testing.assert_close(pusher.control(torch.tensor([[[0.5, -1.5, 1.0]]])),
                               torch.tensor([[[1.0, -2.0, 2.0]]], dtype=torch.float64))
    ant = make("Ant-Semicircle", n_tasks=1)
    assert torch.equal(ant.action_spec.space.high[0, 0], torch.ones(8))
    action = torch.tensor([[[0.3, -0.7, 1.5, -2.0, 0.0, 1.0, -1.0, 0.9]]])
    torch.testing.assert_close(ant.control(action), action.double().clamp(-1, 1))
    with pytest.raises(ConfigError, match="action_scale"):
        make("Ant-Semicircle", action_scale=10.0)
    with pytest.raises(ConfigError, match="reward_type"):
        make("Block-Push", reward_type="shaped")


@pytest.mark.parametrize("family", FAMILIES)
def test_reset_noise_follows_the_definition(family):
    env = make(family, n_tasks=2, rollouts=60, num_threads=1)
    env.set_tasks(env.sample_tasks(2, torch.Generator().manual_seed(4)))
    env.reset()
    state = env.physics_state()
    start = torch.tensor(env.model.qpos0).expand_as(state.qpos).clone()
    if family == "Block-Push":  # the blocks start at the task's layout
        start[..., 3:] = (env.tasks["starts"] - env.block_origin).flatten(-2).unsqueeze(1)
    dq, dv = state.qpos - start, state.qvel
    assert abs(dq.mean()) < 0.002 and 0.009 < dq.std() < 0.011  # N(0, 0.01^2)
    assert abs(dv.mean()) < 0.02 and 0.09 < dv.std() < 0.11  # N(0, 0.1^2)
    assert torch.equal(env.step_count, torch.zeros(2, 60, dtype=torch.long))


def test_block_push_partial_reset_keeps_the_other_copies():
    env = make("Block-Push", n_tasks=2, rollouts=2, num_threads=1)
    env.set_tasks(hand_made_tasks("Block-Push"))
    td = env.reset()
    for _ in range(3):
        td = env.step(td.set("action", torch.ones(2, 2, 3)))["next"]
    before = env.physics_state().qpos.clone()
    mask = torch.tensor([[True, False], [False, True]])
    env.reset(TensorDict({"_reset": mask.unsqueeze(-1)}, batch_size=[2, 2]))
    after = env.physics_state().qpos
    assert torch.equal(after[~mask], before[~mask])
    blocks = env.block_xy(env.physics_state())
    starts = env.tasks["starts"].unsqueeze(1).expand(2, 2, 5, 2)
    assert (blocks[mask] - starts[mask]).abs().max() < 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_check_env_specs(family):
    env = make(family, n_tasks=2, rollouts=2, horizon=3, num_threads=1)
    env.set_tasks(hand_made_tasks(family))
    check_env_specs(env)
    assert env.observation_spec["observation"].shape == (2, 2, OBSERVATION_DIMS[family])
    assert type(env).default_horizon == HORIZONS[family]
    assert make(family, horizon=None).horizon == HORIZONS[family]


def test_available_lists_the_families():
    assert set(FAMILIES) <= set(envs.available())


# ---------------------------------------------------------------------------- tasks
@pytest.mark.parametrize("family", FAMILIES)
def test_task_sampling_is_seeded_and_in_range(family):
    cls = envs.family(family)
    a, b, c = (cls.sample_tasks(200, torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a.keys())
    assert not any(torch.equal(a[k], c[k]) for k in a.keys())
    cls.validate_tasks(a)
    if family == "Block-Push":
        assert a["block"].dtype == torch.long and set(a["block"].tolist()) == set(range(5))
        lane_low = -0.5 + 0.2 * torch.arange(5, dtype=torch.float64)
        y = a["starts"][..., 1]
        assert ((y >= lane_low) & (y <= lane_low + 0.2)).all()
        assert a["starts"][..., 0].min() >= 0.35 and a["starts"][..., 0].max() <= 0.65
        assert a["goal"][:, 0].min() >= 0.75 and a["goal"][:, 0].max() <= 0.95
        goal_low = lane_low[a["block"]]
        assert ((a["goal"][:, 1] >= goal_low) & (a["goal"][:, 1] <= goal_low + 0.2)).all()
    else:
        goal = a["goal"]
        torch.testing.assert_close(goal.norm(dim=-1), torch.full((200,), 2.0, dtype=torch.float64))
        angle = torch.atan2(goal[:, 1], goal[:, 0])
        assert angle.min() >= 0 and angle.max() <= math.pi and angle.min() < 0.2 and angle.max() > math.pi - 0.2


@pytest.mark.parametrize("family", ["Wheeled-Semicircle", "Ant-Semicircle", "Point-Semicircle", "HalfCheetah-Vel"])
def test_default_fixed_tasks_are_sample_tasks_of_a_seeded_generator(family):
    cls = envs.family(family)
    fixed = cls.fixed_tasks(12, seed=7)
    drawn = cls.sample_tasks(12, torch.Generator().manual_seed(7))
    assert all(torch.equal(fixed[k], drawn[k]) for k in drawn.keys())
    held_out = envs.make(family, n_tasks=12).held_out_tasks(12, seed=7)
    assert all(torch.equal(held_out[k], drawn[k]) for k in drawn.keys())


@pytest.mark.parametrize("family", FAMILIES)
def test_fixed_tasks_are_deterministic_sized_and_disjoint_across_seeds(family):
    cls = envs.family(family)
    train, again, other = cls.fixed_tasks(100, seed=0), cls.fixed_tasks(100, seed=0), cls.fixed_tasks(30, seed=1)
    assert train.batch_size == torch.Size([100]) and other.batch_size == torch.Size([30])
    assert all(torch.equal(train[k], again[k]) for k in train.keys())
    cls.validate_tasks(train)
    cls.validate_tasks(other)
    # no goal of one set is a goal of the other
    assert (torch.cdist(train["goal"], other["goal"]) > 1e-9).all()
    assert len({tuple(g) for g in train["goal"].tolist()}) == 100
    env = make(family, n_tasks=30)
    held_out = env.held_out_tasks(30, seed=1)
    assert all(torch.equal(held_out[k], other[k]) for k in other.keys())
    env.set_tasks(held_out)


def test_block_push_fixed_tasks_are_layouts_times_target_blocks():
    tasks = envs.family("Block-Push").fixed_tasks(100, seed=3)
    assert torch.equal(tasks["block"], torch.arange(5).repeat(20))
    starts = tasks["starts"].view(20, 5, 5, 2)
    assert torch.equal(starts, starts[:, :1].expand_as(starts))  # one layout per group of five tasks
    assert len({tuple(s.flatten().tolist()) for s in starts[:, 0]}) == 20
    other = envs.family("Block-Push").fixed_tasks(30, seed=4)
    assert (torch.cdist(tasks["starts"].flatten(1), other["starts"].flatten(1)) > 1e-9).all()
    # other sizes: whole layouts, then the first n tasks
    seven = envs.family("Block-Push").fixed_tasks(7, seed=3)
    assert torch.equal(seven["block"], torch.tensor([0, 1, 2, 3, 4, 0, 1]))
    assert torch.equal(seven["starts"][:5], seven["starts"][:1].expand(5, 5, 2))
    make("Block-Push", n_tasks=3).set_tasks(make("Block-Push", n_tasks=3).held_out_tasks(3, seed=0))
    for n in (0, -5, 2.5):
        with pytest.raises(ConfigError, match="positive integer"):
            envs.family("Block-Push").fixed_tasks(n, seed=0)


@pytest.mark.parametrize(
    "family, change, message",
    [
        ("Wheeled-Semicircle", {"goal": semicircle(0.3, 2.5) * 0.5}, "semicircle of radius 2"),
        ("Wheeled-Semicircle", {"goal": semicircle(0.3, -0.5)}, "semicircle of radius 2"),
        ("Wheeled-Semicircle", {"goal": torch.zeros(2, 3)}, "goal must have shape"),
        ("Ant-Semicircle", {"goal": semicircle(0.3, 2.5) * 1.5}, "semicircle of radius 2"),
        ("Ant-Semicircle", {"goal": torch.tensor([[float("nan"), 2.0], [0.0, 2.0]])}, "non-finite"),
        ("Block-Push", {"block": torch.tensor([1, 5])}, "block must lie in 0..4"),
        ("Block-Push", {"block": torch.tensor([1.0, 4.0])}, "block must be an integer"),
        ("Block-Push", {"goal": torch.tensor([[0.7, -0.2], [0.8, 0.45]])}, "goal x must lie in"),
        ("Block-Push", {"goal": torch.tensor([[0.9, 0.0], [0.8, 0.45]])}, "goal y must lie in the target block's lane"),
        ("Block-Push", {"starts": torch.stack([LAYOUT, LAYOUT + torch.tensor([0.2, 0.0])])}, "starts x"),
        ("Block-Push", {"starts": torch.stack([LAYOUT, LAYOUT.flip(0)])}, "starts y of block i"),
        ("Block-Push", {"starts": torch.zeros(2, 4, 2)}, "starts must have shape"),
    ],
)
def test_out_of_range_tasks_are_rejected(family, change, message):
    env = make(family)
    tasks = hand_made_tasks(family)
    env.set_tasks(tasks)  # the hand-made tasks are valid
    for key, value in change.items():
        tasks[key] = value
    with pytest.raises(TaskError, match=message):
        env.set_tasks(tasks)
    with pytest.raises(TaskError, match="'goal'"):
        env.set_tasks(hand_made_tasks(family).exclude("goal"))
