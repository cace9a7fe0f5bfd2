"""The task families of MAESN (Gupta et al. 2018): ``Wheeled-Semicircle``, ``Ant-Semicircle``, ``Block-Push``.

MAESN meta-trains on a dense (shaped) reward and meta-tests on a sparse one; every family here
takes ``reward_type`` (``"dense"``, the default, or ``"sparse"``). Conventions shared by the
three families (MAESN's definitions, on
:class:`~lightning_metarl.envs.mujoco_env.MujocoMetaEnv`):

- **Actions.** The policy acts in ``[-1, 1]`` per actuator; an action ``a`` becomes the control
  ``clip(mid + a * half, low, high)`` of the actuator's ``ctrlrange = [low, high]``
  (``mid = (low + high) / 2``, ``half = (high - low) / 2``): rescaled to the control range, then
  clipped. Every actuator of these models has a range ``[-c, c]`` with the same ``c``, so this is
  :class:`~lightning_metarl.envs.mujoco_env.MujocoMetaEnv`'s scheme with ``action_scale = 1 / c``
  (``0.5`` for the wheeled car and the pusher, ``1`` for the ant); the families fix it and take
  no ``action_scale`` option. ``||a||^2`` in the rewards is the squared norm of the clipped
  control, i.e. of the action after scaling.
- **Frame skip 1**: one env step is one physics step of the model's timestep (0.01).
- **Reset**: ``qpos0 + N(0, 0.01^2)`` on every position (for ``Block-Push``, ``qpos0`` is the
  task's block layout) and ``N(0, 0.1^2)`` on every velocity.
- **Tasks**: the semicircle families draw goals ``2 (cos t, sin t)``, ``t ~ U(0, pi)``;
  ``Block-Push`` draws a block layout, a target block and its goal. MAESN's fixed sets of 100
  training and 30 validation tasks are
  :meth:`~lightning_metarl.envs.base.BatchedMetaEnv.fixed_tasks` of a seed.
- The task is never part of the observation.

The wheeled car and the pusher are MJCF models written for this package
(``assets/wheeled.xml``, ``assets/pusher.xml``); the ant is gymnasium's ``ant.xml`` with the
low gear ratio, changed through :class:`mujoco.MjSpec` when the model is compiled.
"""

from __future__ import annotations

import functools
import math
import operator
from pathlib import Path
from typing import Any, ClassVar

import mujoco
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from lightning_metarl.envs.locomotion import _require, contact_cost, control_cost
from lightning_metarl.envs.mujoco_env import (
    ASSETS,
    MujocoMetaEnv,
    PhysicsState,
    add_contact_sensors,
    load_model,
)
from lightning_metarl.envs.registry import register
from lightning_metarl.errors import ConfigError, TaskError

#: Folder of the MJCF models written for this package.
MAESN_ASSETS = Path(__file__).resolve().parent / "assets"


# ---------------------------------------------------------------------------- kinematics
def quat_to_mat(quat: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` of quaternions ``[..., 4]`` (``w, x, y, z``; normalised first)."""
    w, x, y, z = (quat / quat.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def _rotate(rot: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``rot @ vector`` for one ``[3, 3]`` or a batch ``[B, 3, 3]``, and one ``[3]``."""
    return rot @ vector


def _times(rot: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``rot @ matrix`` for one ``[3, 3]`` or a batch ``[B, 3, 3]``, and one ``[3, k]``; a batch goes
    through one ``[3B, 3] x [3, k]`` product (much faster than torch's batched tiny products)."""
    if rot.dim() == 2:
        return rot @ matrix
    return (rot.reshape(-1, 3) @ matrix).view(rot.shape[0], 3, -1)


class TreeKinematics:
    """Body frames and subtree centres of mass of a batch of ``qpos``, in torch, as MuJoCo computes them.

    The same recursion as MuJoCo's ``mj_kinematics`` (free, hinge and slide joints; hinge and
    slide displacements are taken from ``qpos0``) and ``mj_comPos`` (``subtree_com``), vectorised
    over any leading batch dimensions, in ``float64``. The rollout API returns only states, and
    the quantities MuJoCo derives from them belong to the *start* of the step; this gives them
    at the state *after* the step without another physics call.
    """

    def __init__(self, model: mujoco.MjModel) -> None:
        if model.nmocap:
            raise ConfigError("TreeKinematics: mocap bodies are not supported")
        free, hinge, slide = (int(k) for k in (mujoco.mjtJoint.mjJNT_FREE, mujoco.mjtJoint.mjJNT_HINGE,
                                                mujoco.mjtJoint.mjJNT_SLIDE))
        self.nbody = model.nbody
        self.parent = [int(p) for p in model.body_parentid]
        self.body_pos = torch.tensor(model.body_pos, dtype=torch.float64)
        #: rotation of each body in its parent's frame; None where it is the identity
        self.body_rot: list[torch.Tensor | None] = [
            None if np.array_equal(q, [1.0, 0.0, 0.0, 0.0]) else quat_to_mat(torch.tensor(q, dtype=torch.float64))
            for q in model.body_quat
        ]
        self.body_ipos = torch.tensor(model.body_ipos, dtype=torch.float64)
        self.body_mass = torch.tensor(model.body_mass, dtype=torch.float64)
        self.qpos0 = torch.tensor(model.qpos0, dtype=torch.float64)
        hinges = [j for j in range(model.njnt) if int(model.jnt_type[j]) == hinge]
        self.hinge_adr = torch.tensor([int(model.jnt_qposadr[j]) for j in hinges], dtype=torch.long)
        #: per hinge, [K | K^2] (3 x 6) of the cross-product matrix K of its axis: a hinge turned by q
        #: rotates by I + sin(q) K + (1 - cos(q)) K^2 (Rodrigues)
        self.hinge_kk: list[torch.Tensor] = []
        for j in hinges:
            x, y, z = (float(v) for v in model.jnt_axis[j])
            k = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=torch.float64)
            self.hinge_kk.append(torch.cat((k, k @ k), dim=1))
        #: per body, its joints in order: (kind, qpos address, index among hinges or slide axis, joint pos or None)
        self.joints: list[list[tuple[int, int, int | torch.Tensor, torch.Tensor | None]]] = [
            [] for _ in range(model.nbody)
        ]
        for j in range(model.njnt):
            kind = int(model.jnt_type[j])
            if kind not in (free, hinge, slide):
                raise ConfigError(f"TreeKinematics: joint {j} has an unsupported type {kind}")
            adr = int(model.jnt_qposadr[j])
            pos = None if not model.jnt_pos[j].any() else torch.tensor(model.jnt_pos[j], dtype=torch.float64)
            ref: int | torch.Tensor = hinges.index(j) if kind == hinge else torch.tensor(model.jnt_axis[j])
            self.joints[int(model.jnt_bodyid[j])].append((kind, adr, ref, pos))
        self._free, self._hinge = free, hinge
        self._subtree: dict[int, list[int]] = {}

    def _walk(
        self, qpos: torch.Tensor, root: int, root_pos: torch.Tensor, root_rot: torch.Tensor
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Frames ``(position, rotation)`` of ``root``'s subtree for a flat batch ``qpos`` ``[B, nq]``,
        given ``root``'s frame.

        Frames that no joint moves stay unbatched (``[3]``, ``[3, 3]``): only the joints' motion is
        computed per copy, and a hinge below an unbatched frame costs elementwise operations only.
        """
        displacement = qpos - self.qpos0
        angle = displacement[:, self.hinge_adr]
        sin, one_minus_cos = angle.sin().unsqueeze(-1).unsqueeze(-1), (1 - angle.cos()).unsqueeze(-1).unsqueeze(-1)
        frames = {root: (root_pos, root_rot)}
        for body in self.subtree(root)[1:]:
            joints = self.joints[body]
            if joints and joints[0][0] == self._free:
                adr = joints[0][1]
                frames[body] = (qpos[:, adr : adr + 3], quat_to_mat(qpos[:, adr + 3 : adr + 7]))
                continue
            pos, rot = frames[self.parent[body]]
            pos = pos + _rotate(rot, self.body_pos[body])
            if self.body_rot[body] is not None:
                rot = _times(rot, self.body_rot[body])
            for kind, adr, ref, jnt_pos in joints:
                if kind == self._hinge:
                    anchor = None if jnt_pos is None else pos + _rotate(rot, jnt_pos)
                    # rot (I + sin K + (1 - cos) K^2), with rot K and rot K^2 in one product
                    rot_k, rot_k2 = _times(rot, self.hinge_kk[ref]).split(3, dim=-1)
                    rot = rot + sin[:, ref] * rot_k + one_minus_cos[:, ref] * rot_k2
                    if anchor is not None:
                        pos = anchor - _rotate(rot, jnt_pos)
                else:  # slide along the axis in the current frame
                    pos = pos + _rotate(rot, ref) * displacement[:, adr : adr + 1]
            frames[body] = (pos, rot)
        return frames

    def frames(self, qpos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World positions ``[..., nbody, 3]`` and rotation matrices ``[..., nbody, 3, 3]`` of every body frame."""
        batch = qpos.shape[:-1]
        flat = qpos.to(torch.float64).reshape(-1, qpos.shape[-1])
        n = flat.shape[0]
        frames = self._walk(flat, 0, torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
        xpos = torch.stack([frames[b][0].expand(n, 3) for b in range(self.nbody)], dim=-2)
        xmat = torch.stack([frames[b][1].expand(n, 3, 3) for b in range(self.nbody)], dim=-3)
        return xpos.view(*batch, -1, 3), xmat.view(*batch, -1, 3, 3)

    def subtree(self, body: int) -> list[int]:
        """``body`` and all its descendants (parents before children)."""
        if body not in self._subtree:
            members = [body]
            for b in range(body + 1, self.nbody):  # MuJoCo orders parents before children
                if self.parent[b] in members:
                    members.append(b)
            self._subtree[body] = members
        return self._subtree[body]

    def frame_and_subtree_com(self, qpos: torch.Tensor, body: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``body``'s rotation matrix ``[..., 3, 3]`` and the centre of mass ``[..., 3]`` of its subtree.

        For a ``body`` on a free joint the subtree is walked in ``body``'s own frame and moved to
        the world at the end (one rotation per copy instead of one per body and copy).
        """
        batch = qpos.shape[:-1]
        flat = qpos.to(torch.float64).reshape(-1, qpos.shape[-1])
        joints = self.joints[body]
        if joints and joints[0][0] == self._free:
            adr = joints[0][1]
            origin, rot = flat[:, adr : adr + 3], quat_to_mat(flat[:, adr + 3 : adr + 7])
            local = self._walk(flat, body, torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
        else:
            origin = rot = None
            everything = self._walk(flat, 0, torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
            local = {b: everything[b] for b in self.subtree(body)}
        members = self.subtree(body)
        weight = self.body_mass[members] / self.body_mass[members].sum()
        com = sum(float(w) * (local[b][0] + _rotate(local[b][1], self.body_ipos[b])) for w, b in zip(weight, members))
        n = flat.shape[0]
        if origin is None:
            rot = local[body][1].expand(n, 3, 3)
        elif com.dim() == 1:
            com = origin + _rotate(rot, com)
        else:
            com = origin + (rot @ com.unsqueeze(-1)).squeeze(-1)
        return rot.reshape(*batch, 3, 3), com.expand(n, 3).reshape(*batch, 3)


# ---------------------------------------------------------------------------- common part
class MaesnEnv(MujocoMetaEnv):
    """Common part of MAESN's families: ``reward_type``, actions in ``[-1, 1]``, frame skip 1, reset noise.

    Args:
        n_tasks: number of tasks evaluated together (the meta-batch).
        rollouts_per_task: copies per task.
        horizon: episode length H (``None``: the family's :attr:`default_horizon`).
        reward_type: ``"dense"`` (default, meta-training) or ``"sparse"`` (meta-testing).
        num_threads: threads of the physics pool (default: the CPUs available to this process).
        seed: seed of the reset-noise generator.
        device: torch device of the returned tensors (the physics runs on the CPU).
    """

    REWARD_TYPES: ClassVar[tuple[str, ...]] = ("dense", "sparse")
    frame_skip = 1
    qpos_noise = ("normal", 0.01)
    qvel_noise = ("normal", 0.1)

    def __init__(
        self,
        n_tasks: int = 1,
        rollouts_per_task: int = 1,
        horizon: int | None = None,
        reward_type: str = "dense",
        num_threads: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        family = type(self).family or type(self).__name__
        if reward_type not in self.REWARD_TYPES:
            raise ConfigError(f"{family}: reward_type must be one of {self.REWARD_TYPES}, got {reward_type!r}")
        self.reward_type = reward_type
        super().__init__(
            n_tasks, rollouts_per_task, horizon, action_scale=self.unit_action_scale(), num_threads=num_threads,
            seed=seed, device=device,
        )

    @classmethod
    def unit_action_scale(cls) -> float:
        """The ``action_scale`` that maps the action box ``[-1, 1]`` onto the control range: ``1 / c``.

        Requires every actuator's range to be ``[-c, c]`` with the same ``c``.
        """
        low, high = cls.base_model().actuator_ctrlrange.T
        half = (high - low) / 2
        if not (np.all(low + high == 0) and np.all(half == half[0]) and half[0] > 0):
            raise ConfigError(f"{cls.family}: every actuator needs the same symmetric ctrlrange, got {low}, {high}")
        return 1.0 / float(half[0])

    @classmethod
    def plain_model(cls) -> mujoco.MjModel:
        """The family's model without the contact sensors (cached; do not modify)."""
        return load_model(cls.model_file)

    def sparse(self) -> bool:
        """Whether this env pays the sparse reward."""
        return self.reward_type == "sparse"

    def never(self, reward: torch.Tensor) -> torch.Tensor:
        """No termination: ``False`` everywhere, shaped like ``reward``."""
        return torch.zeros(reward.shape, dtype=torch.bool)


class SemicircleGoals:
    """Tasks ``{"goal": [n, 2]}`` on the upper semicircle of radius 2: ``2 (cos t, sin t)``, ``t ~ U(0, pi)``."""

    family: ClassVar[str]
    #: Radius of the semicircle of goals.
    RADIUS: ClassVar[float] = 2.0

    @classmethod
    def sample_tasks(cls, n: int, generator: torch.Generator, **family_kwargs: Any) -> TensorDict:
        """``n`` goals ``2 (cos t, sin t)`` with ``t ~ U(0, pi)`` (float64)."""
        angle = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
        goal = cls.RADIUS * torch.stack((angle.cos(), angle.sin()), dim=-1)
        return TensorDict({"goal": goal}, batch_size=[n])

    @classmethod
    def validate_tasks(cls, tasks: TensorDictBase, **family_kwargs: Any) -> None:
        """Every goal must lie on the upper semicircle of radius 2."""
        goal = _require(tasks, cls.family, "goal", (2,)).to(torch.float64)
        tolerance = 1e-5 * cls.RADIUS
        on_arc = ((goal.norm(dim=-1) - cls.RADIUS).abs() <= tolerance) & (goal[:, 1] >= -tolerance)
        if not on_arc.all():
            raise TaskError(
                f"{cls.family}: every goal must lie on the upper semicircle of radius {cls.RADIUS}; "
                f"got {goal[~on_arc][:3].tolist()}"
            )

    def goal(self) -> torch.Tensor:
        """The goal of every copy's task, ``[n_tasks, 1, 2]`` float64 (broadcasts over rollouts)."""
        return self.task_value("goal").unsqueeze(1)


# ---------------------------------------------------------------------------- wheeled car
@register("Wheeled-Semicircle")
class WheeledSemicircle(SemicircleGoals, MaesnEnv):
    """Two-wheeled car driving to a goal on a semicircle: MAESN's wheeled locomotion (Gupta et al. 2018).

    Model (``assets/wheeled.xml``, written for this package): a box chassis (half-sizes 0.15,
    0.1, 0.046) on slide-x, slide-y, slide-z (range -1..0.03) and yaw-hinge joints (no pitch, no
    roll); two wheels (cylinders of radius 0.1, half-length 0.046) at ``y = -0.2`` (right, first
    motor) and ``y = +0.2`` (left) on y-axis hinges; two wheel motors, ctrlrange ``+-2``, gear 1;
    geom friction 0.4; timestep 0.01, Euler; total mass 14. Frame skip 1; actions in
    ``[-1, 1]`` scaled to ``+-2`` (module docstring).

    Observation: ``qpos || qvel`` (12): chassis x, y, z, yaw, right and left wheel angles, and
    their velocities. Reset: ``qpos0 + N(0, 0.01^2)``, ``qvel ~ N(0, 0.1^2)``.

    Reward, with ``xy = qpos[:2]`` after the step and ``g`` the goal:

    - dense: ``-||xy - g|| - 0.05 ||a||^2``;
    - sparse: the dense reward within distance 0.8 of the goal, else ``-||g|| - 0.05 ||a||^2``
      (the distance term of the car at its start, the origin).

    Never terminates; H = 200. Tasks: ``{"goal": [n, 2]}``, ``2 (cos t, sin t)``, ``t ~ U(0, pi)``.
    """

    model_file = str(MAESN_ASSETS / "wheeled.xml")
    default_horizon = 200
    #: Distance to the goal within which the sparse reward equals the dense one.
    SPARSE_RADIUS: ClassVar[float] = 0.8
    #: Coefficient of the control cost ``||a||^2``.
    CONTROL_COST: ClassVar[float] = 0.05

    @classmethod
    def observation_size(cls, model: mujoco.MjModel) -> int:
        return model.nq + model.nv

    def plot_xy(self, observation: torch.Tensor) -> torch.Tensor:
        """The chassis position, the first two entries of ``qpos``."""
        return observation[..., :2]

    def observe(self, state: PhysicsState) -> torch.Tensor:
        """``qpos || qvel``."""
        return torch.cat((state.qpos, state.qvel), dim=-1)

    def reward_and_termination(
        self, qpos_before: torch.Tensor, state: PhysicsState, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        goal = self.goal()
        distance = (state.qpos[..., :2] - goal).norm(dim=-1)
        if self.sparse():
            distance = torch.where(distance <= self.SPARSE_RADIUS, distance, goal.norm(dim=-1))
        reward = -distance - self.CONTROL_COST * control_cost(action)
        return reward, self.never(reward)


# ---------------------------------------------------------------------------- ant
@functools.cache
def ant_model(contact_forces: bool = False) -> mujoco.MjModel:
    """Gymnasium's ``ant.xml`` with MAESN's low gear: motors gear 30, ctrlrange ``+-1``, timestep 0.01, RK4.

    Changed through :class:`mujoco.MjSpec` when compiled (cached; do not modify). With
    ``contact_forces``, the sensors of :func:`~lightning_metarl.envs.mujoco_env.add_contact_sensors`.
    """
    spec = mujoco.MjSpec.from_file(str(ASSETS / "ant.xml"))
    spec.option.timestep = AntSemicircle.TIMESTEP
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_RK4
    for actuator in spec.actuators:
        actuator.gear = [AntSemicircle.GEAR, 0.0, 0.0, 0.0, 0.0, 0.0]
        actuator.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
        actuator.ctrlrange = [-1.0, 1.0]
    if contact_forces:
        add_contact_sensors(spec)
    return spec.compile()


@register("Ant-Semicircle")
class AntSemicircle(SemicircleGoals, MaesnEnv):
    """Low-gear ant walking to a goal on a semicircle: MAESN's legged locomotion (Gupta et al. 2018).

    Model: gymnasium's ``ant.xml`` modified when it is compiled (:func:`ant_model`, through
    :class:`mujoco.MjSpec`; the file itself is not changed): motors gear 30 (instead of 150),
    ctrlrange ``+-1``, timestep 0.01, RK4. Frame skip 1; actions in ``[-1, 1]`` (module docstring).

    Observation (125): ``qpos`` (15) ``|| qvel`` (14) ``|| clip(cfrc_ext, -1, 1)`` (14 bodies x 6,
    the world body included) ``||`` the torso's orientation matrix (9, row-major, MuJoCo's
    ``xmat``) ``||`` the centre of mass of the torso's subtree (3, MuJoCo's ``subtree_com``, i.e.
    the whole ant's). Orientation and centre of mass are those of the state after the step
    (:class:`TreeKinematics`, the same recursion as MuJoCo's); ``cfrc_ext`` is rebuilt from
    contact sensors and, as in the other ant families, is the value of the forward pass at the
    start of the step (for the reset observation: at the reset state, with zero control).
    Reset: ``qpos0 + N(0, 0.01^2)`` on all 15 positions (quaternion included), ``qvel ~ N(0, 0.1^2)``.

    Reward, with ``c`` the subtree centre of mass's xy after the step and ``g`` the goal:

    - dense: ``(4 - |c - g|_1) - 0.005 ||a||^2 - 5e-4 sum clip(cfrc_ext, +-1)^2 + 0.05``;
    - sparse: the goal term ``4 - |c - g|_1`` becomes ``4 - |g|_1`` (the ant at its start)
      where the Euclidean distance ``||c - g||`` exceeds 0.8; the other terms are kept.

    Terminates when the state is not finite or the torso height ``qpos[2]`` leaves
    ``[0.2, 1.0]``. H = 200. Tasks: ``{"goal": [n, 2]}``, ``2 (cos t, sin t)``, ``t ~ U(0, pi)``.
    """

    model_file = "ant.xml"
    contact_forces = True
    default_horizon = 200
    #: Motor gear of MAESN's ant (gymnasium's is 150).
    GEAR: ClassVar[float] = 30.0
    TIMESTEP: ClassVar[float] = 0.01
    SPARSE_RADIUS: ClassVar[float] = 0.8
    #: Constant of the goal term ``GOAL_OFFSET - |c - g|_1``.
    GOAL_OFFSET: ClassVar[float] = 4.0
    CONTROL_COST: ClassVar[float] = 0.005
    CONTACT_COST: ClassVar[float] = 5e-4
    SURVIVE_BONUS: ClassVar[float] = 0.05
    #: Healthy range of the torso height ``qpos[2]``.
    HEIGHT_RANGE: ClassVar[tuple[float, float]] = (0.2, 1.0)
    #: Body index of the torso.
    TORSO: ClassVar[int] = 1

    @functools.cached_property
    def kinematics(self) -> TreeKinematics:
        """Forward kinematics of the model in torch (the torso's frame and subtree centre of mass after a step)."""
        return TreeKinematics(self.base_model())

    @classmethod
    def base_model(cls) -> mujoco.MjModel:
        return ant_model(contact_forces=cls.contact_forces)

    @classmethod
    def plain_model(cls) -> mujoco.MjModel:
        return ant_model(contact_forces=False)

    @classmethod
    def observation_size(cls, model: mujoco.MjModel) -> int:
        return model.nq + model.nv + 6 * model.nbody + 9 + 3

    def torso(self, qpos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The torso's rotation matrix ``[..., 3, 3]`` and its subtree's centre of mass ``[..., 3]`` at ``qpos``."""
        return self.kinematics.frame_and_subtree_com(qpos, self.TORSO)

    def _update_derived(self, view: PhysicsState) -> None:
        # the env's own state buffers: computed once per new state, read by the reward and the observation
        super()._update_derived(view)
        view.torso = self.torso(view.qpos)

    def _torso_of(self, state: PhysicsState) -> tuple[torch.Tensor, torch.Tensor]:
        cached = getattr(state, "torso", None)
        return cached if cached is not None else self.torso(state.qpos)

    def plot_xy(self, observation: torch.Tensor) -> torch.Tensor:
        """The torso's subtree centre of mass (the last three observation entries), x and y."""
        return observation[..., -3:-1]

    def observe(self, state: PhysicsState) -> torch.Tensor:
        """``qpos || qvel || clip(cfrc_ext, -1, 1) || torso xmat || torso subtree_com``."""
        xmat, com = self._torso_of(state)
        cfrc = state.cfrc_ext.clamp(-1.0, 1.0).flatten(-2)
        return torch.cat((state.qpos, state.qvel, cfrc, xmat.flatten(-2), com), dim=-1)

    def reward_and_termination(
        self, qpos_before: torch.Tensor, state: PhysicsState, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        goal = self.goal()
        _, com = self._torso_of(state)
        offset = com[..., :2] - goal
        goal_term = self.GOAL_OFFSET - offset.abs().sum(-1)
        if self.sparse():
            at_start = (self.GOAL_OFFSET - goal.abs().sum(-1)).expand_as(goal_term)
            goal_term = torch.where(offset.norm(dim=-1) <= self.SPARSE_RADIUS, goal_term, at_start)
        reward = (
            goal_term - self.CONTROL_COST * control_cost(action) - self.CONTACT_COST * contact_cost(state.cfrc_ext)
            + self.SURVIVE_BONUS
        )
        finite = torch.isfinite(state.qpos).all(-1) & torch.isfinite(state.qvel).all(-1)
        low, high = self.HEIGHT_RANGE
        z = state.qpos[..., 2]
        terminated = ~(finite & (z >= low) & (z <= high))
        return reward, terminated


# ---------------------------------------------------------------------------- block pushing
@register("Block-Push")
class BlockPush(MaesnEnv):
    """Planar pusher moving one of five blocks to its goal: MAESN's block pushing (Gupta et al. 2018).

    Model (``assets/pusher.xml``, written for this package): gravity 0, timestep 0.01, Euler; a
    wrist on slide-x, slide-y and yaw-hinge joints (damping 0.5) carrying a U of three capsules
    (radius 0.02) with fingertip spheres, opening towards +x; three wrist motors (x, y, yaw),
    ctrlrange ``+-2``, gear 1. Five blocks (boxes of half-sizes 0.03, 0.03, 0.05, mass 0.05) on
    slide-x/y joints (damping 1.5), block ``i`` in lane ``i``; a mocap target marker that collides
    with nothing (the physics ignores it). Frame skip 1; actions in ``[-1, 1]`` scaled to ``+-2``
    (module docstring).

    Observation (26): the wrist's ``qpos`` (x, y, yaw; 3) ``||`` the five blocks' world xy (10,
    block 0 first) ``|| qvel`` (13: wrist, then the blocks' x/y velocities). Reset: the task's
    layout (each block at its start) ``+ N(0, 0.01^2)`` on every position, the wrist at
    ``qpos0 = 0`` plus the same noise; ``qvel ~ N(0, 0.1^2)``.

    Reward, with ``p`` the target block's xy after the step and ``g`` its goal:

    - dense: ``-5 ||p - g||``;
    - sparse: the dense reward within distance 0.2 of the goal, else ``-5 ||g||`` (the constant
      ``-5 ||g||`` of MAESN's definition, measured from the origin, not from the block's start;
      it keeps the paper's scale of returns).

    No control cost, never terminates, H = 100.

    Tasks: ``{"block": long [n], "goal": [n, 2], "starts": [n, 5, 2]}``: the target block
    (0..4), its goal, and the layout (every block's start). Lane ``i`` is the band
    ``y in [-0.5 + 0.2 i, -0.3 + 0.2 i]``; block ``i`` starts at ``x ~ U(0.35, 0.65)``,
    ``y ~ U(lane i)``; the goal is ``x ~ U(0.75, 0.95)``, ``y ~ U(lane of the target block)``.
    :meth:`sample_tasks` draws independent tasks (layout, block, goal);
    :meth:`fixed_tasks` draws ``n / 5`` layouts and makes each of the five blocks the target
    once (MAESN's 100 training tasks: 20 layouts x 5 target blocks).
    """

    model_file = str(MAESN_ASSETS / "pusher.xml")
    default_horizon = 100
    #: Number of blocks (and lanes).
    N_BLOCKS: ClassVar[int] = 5
    #: Lower edge of lane 0 and the width of every lane.
    LANE_LOW: ClassVar[float] = -0.5
    LANE_WIDTH: ClassVar[float] = 0.2
    START_X: ClassVar[tuple[float, float]] = (0.35, 0.65)
    GOAL_X: ClassVar[tuple[float, float]] = (0.75, 0.95)
    SPARSE_RADIUS: ClassVar[float] = 0.2
    DISTANCE_SCALE: ClassVar[float] = 5.0
    #: Number of leading ``qpos`` / ``qvel`` entries of the wrist.
    WRIST_DOFS: ClassVar[int] = 3
    #: Tolerance of :meth:`validate_tasks` at the range edges (tasks stored as float32).
    TOLERANCE: ClassVar[float] = 1e-6

    @functools.cached_property
    def block_origin(self) -> torch.Tensor:
        """World xy of every block at ``qpos = 0`` (the lane centres), ``[5, 2]``."""
        model = self.base_model()
        return torch.tensor(np.stack([model.body(f"block{i}").pos[:2] for i in range(self.N_BLOCKS)]), dtype=torch.float64)

    # ------------------------------------------------------------------ tasks
    @classmethod
    def lane(cls, index: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """The y band ``(low, high)`` of lane ``index`` (float64 tensors)."""
        low = cls.LANE_LOW + cls.LANE_WIDTH * torch.as_tensor(index, dtype=torch.float64)
        return low, low + cls.LANE_WIDTH

    @classmethod
    def _draw_starts(cls, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` layouts ``[n, 5, 2]``: block ``i`` at ``x ~ U(START_X)``, ``y ~ U(lane i)``."""
        u = torch.rand((n, cls.N_BLOCKS, 2), generator=generator, dtype=torch.float64)
        low, _ = cls.lane(torch.arange(cls.N_BLOCKS))
        x = cls.START_X[0] + (cls.START_X[1] - cls.START_X[0]) * u[..., 0]
        y = low + cls.LANE_WIDTH * u[..., 1]
        return torch.stack((x, y), dim=-1)

    @classmethod
    def _draw_goals(cls, block: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A goal ``[n, 2]`` for every target ``block`` ``[n]``: ``x ~ U(GOAL_X)``, ``y ~ U(the block's lane)``."""
        u = torch.rand((len(block), 2), generator=generator, dtype=torch.float64)
        low, _ = cls.lane(block)
        x = cls.GOAL_X[0] + (cls.GOAL_X[1] - cls.GOAL_X[0]) * u[:, 0]
        return torch.stack((x, low + cls.LANE_WIDTH * u[:, 1]), dim=-1)

    @classmethod
    def sample_tasks(cls, n: int, generator: torch.Generator, **family_kwargs: Any) -> TensorDict:
        """``n`` independent tasks: a layout, a target block uniform on 0..4, and its goal."""
        starts = cls._draw_starts(n, generator)
        block = torch.randint(cls.N_BLOCKS, (n,), generator=generator)
        goal = cls._draw_goals(block, generator)
        return TensorDict({"block": block, "goal": goal, "starts": starts}, batch_size=[n])

    @classmethod
    def fixed_tasks(cls, n: int, seed: int, **family_kwargs: Any) -> TensorDict:
        """``ceil(n / 5)`` layouts x the 5 target blocks (the first ``n``), drawn once from a generator seeded with ``seed``.

        Task ``k`` is layout ``k // 5`` with target block ``k % 5`` and a goal of its own in that
        block's lane (MAESN: 100 = 20 layouts x 5 blocks; 30 held-out tasks = 6 layouts).
        """
        try:
            size = -1 if isinstance(n, bool) else operator.index(n)
        except TypeError:
            size = -1
        if size < 1:
            raise ConfigError(f"{cls.family}: the size of a fixed task set must be a positive integer, got {n!r}")
        n = size
        generator = torch.Generator().manual_seed(int(seed))
        layouts = -(-n // cls.N_BLOCKS)
        starts = cls._draw_starts(layouts, generator).repeat_interleave(cls.N_BLOCKS, dim=0)[:n]
        block = torch.arange(cls.N_BLOCKS).repeat(layouts)[:n]
        goal = cls._draw_goals(block, generator)
        return TensorDict({"block": block, "goal": goal, "starts": starts}, batch_size=[n])

    @classmethod
    def validate_tasks(cls, tasks: TensorDictBase, **family_kwargs: Any) -> None:
        """The target block must be an integer in 0..4, each block's start and the goal in their ranges."""
        family, tol = cls.family, cls.TOLERANCE
        block = _require(tasks, family, "block", ())
        if block.is_floating_point() or block.is_complex() or block.dtype == torch.bool:
            raise TaskError(f"{family}: block must be an integer tensor (0..{cls.N_BLOCKS - 1}), got {block.dtype}")
        bad = (block < 0) | (block >= cls.N_BLOCKS)
        if bad.any():
            raise TaskError(f"{family}: block must lie in 0..{cls.N_BLOCKS - 1}, got {block[bad][:3].tolist()}")
        starts = _require(tasks, family, "starts", (cls.N_BLOCKS, 2)).to(torch.float64)
        low, high = cls.lane(torch.arange(cls.N_BLOCKS))
        x, y = starts[..., 0], starts[..., 1]
        bad = (x < cls.START_X[0] - tol) | (x > cls.START_X[1] + tol)
        if bad.any():
            raise TaskError(f"{family}: starts x must lie in {list(cls.START_X)}, got {x[bad][:3].tolist()}")
        bad = (y < low - tol) | (y > high + tol)
        if bad.any():
            raise TaskError(
                f"{family}: starts y of block i must lie in its lane [-0.5 + 0.2 i, -0.3 + 0.2 i]; "
                f"got {y[bad][:3].tolist()} (blocks {bad.nonzero()[:3, 1].tolist()})"
            )
        goal = _require(tasks, family, "goal", (2,)).to(torch.float64)
        low, high = cls.lane(block.to("cpu"))
        bad = (goal[:, 0] < cls.GOAL_X[0] - tol) | (goal[:, 0] > cls.GOAL_X[1] + tol)
        if bad.any():
            raise TaskError(f"{family}: goal x must lie in {list(cls.GOAL_X)}, got {goal[bad][:3].tolist()}")
        bad = (goal[:, 1] < low - tol) | (goal[:, 1] > high + tol)
        if bad.any():
            raise TaskError(
                f"{family}: goal y must lie in the target block's lane [-0.5 + 0.2 i, -0.3 + 0.2 i]; "
                f"got {goal[bad][:3].tolist()} for blocks {block[bad][:3].tolist()}"
            )

    # ------------------------------------------------------------------ dynamics
    @classmethod
    def observation_size(cls, model: mujoco.MjModel) -> int:
        return cls.WRIST_DOFS + 2 * cls.N_BLOCKS + model.nv

    def block_xy(self, state: PhysicsState) -> torch.Tensor:
        """World xy of the five blocks, ``[n_tasks, rollouts, 5, 2]``."""
        displacement = state.qpos[..., self.WRIST_DOFS : self.WRIST_DOFS + 2 * self.N_BLOCKS]
        return displacement.unflatten(-1, (self.N_BLOCKS, 2)) + self.block_origin

    def plot_xy(self, observation: torch.Tensor) -> torch.Tensor:
        """The wrist position."""
        return observation[..., :2]

    def observe(self, state: PhysicsState) -> torch.Tensor:
        """``wrist qpos || blocks' xy || qvel``."""
        blocks = self.block_xy(state).flatten(-2)
        return torch.cat((state.qpos[..., : self.WRIST_DOFS], blocks, state.qvel), dim=-1)

    def reward_and_termination(
        self, qpos_before: torch.Tensor, state: PhysicsState, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        goal = self.task_value("goal").unsqueeze(1)
        block = self.tasks.get("block").to("cpu")
        blocks = self.block_xy(state)
        index = block.view(-1, 1, 1, 1).expand(-1, blocks.shape[1], 1, 2)
        target = blocks.gather(-2, index).squeeze(-2)
        distance = (target - goal).norm(dim=-1)
        if self.sparse():
            distance = torch.where(distance <= self.SPARSE_RADIUS, distance, goal.norm(dim=-1))
        reward = -self.DISTANCE_SCALE * distance
        return reward, self.never(reward)

    def _reset_copies(self, reset_mask: torch.Tensor) -> None:
        """``qpos0 + noise`` (the parent's reset), then the blocks moved to the task's layout."""
        super()._reset_copies(reset_mask)
        rows = reset_mask.reshape(-1).cpu().numpy().nonzero()[0]
        if len(rows) == 0:
            return
        layout = (self.task_value("starts") - self.block_origin).flatten(-2)
        layout = layout.unsqueeze(1).expand(-1, self.rollouts_per_task, -1).reshape(-1, 2 * self.N_BLOCKS)
        first = 1 + self.WRIST_DOFS  # the state is (time, qpos, qvel)
        self._current.state[rows, first : first + 2 * self.N_BLOCKS] += layout.numpy()[rows]
        self._refresh(rows)
