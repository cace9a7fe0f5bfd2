"""The MuJoCo locomotion task families of ProMP (Rothfuss et al. 2019), as used by MAME.

Each family is a short definition on :class:`~lightning_metarl.envs.mujoco_env.MujocoMetaEnv`:
model file, frame skip, reset noise, observation, reward, termination, task distribution and
default horizon (:attr:`~lightning_metarl.envs.base.BatchedMetaEnv.default_horizon`), following
the reference definitions of the ProMP code base (Rothfuss et al. 2019) and its
``rand_param_envs`` dependency (Clavera et al.). ``vx`` is the root's x displacement over
``dt = timestep * frame_skip``; ``||a||^2`` is the squared norm of the clipped action; the task
is never part of the observation.

The models are gymnasium's v5 XML files (``half_cheetah.xml``, ``ant.xml``, ``walker2d_v5.xml``,
``hopper.xml``) rather than the MuJoCo 1.31/1.5-era files of the reference code; the reward
definitions are kept. Known differences are noted in each family's docstring.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import mujoco
import torch
from tensordict import TensorDict, TensorDictBase

from lightning_metarl.envs.mujoco_env import PHYSICS_FIELDS, MujocoMetaEnv, PhysicsState, load_model
from lightning_metarl.envs.registry import register
from lightning_metarl.errors import TaskError


def control_cost(action: torch.Tensor) -> torch.Tensor:
    """``||a||^2`` over the last dimension."""
    return action.square().sum(-1)


def contact_cost(cfrc_ext: torch.Tensor) -> torch.Tensor:
    """``sum clip(cfrc_ext, -1, 1)^2`` over all bodies and wrench components (``[..., nbody, 6]``)."""
    return cfrc_ext.clamp(-1.0, 1.0).square().sum((-2, -1))


def _require(tasks: TensorDictBase, family: str, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """``tasks[key]`` checked to be a finite tensor of per-task shape ``shape``."""
    if key not in tasks.keys():
        raise TaskError(f"{family}: tasks need a {key!r} entry, got keys {sorted(tasks.keys())}")
    value = tasks.get(key)
    expected = (*tasks.batch_size, *shape)
    if tuple(value.shape) != expected:
        raise TaskError(f"{family}: {key} must have shape {list(expected)}, got {list(value.shape)}")
    if not torch.isfinite(value).all():
        raise TaskError(f"{family}: {key} has non-finite entries")
    return value


# ---------------------------------------------------------------------------- task distributions
class DirectionTasks:
    """Tasks ``{"direction": d}`` with ``d`` uniform on ``{-1, +1}`` (forward / backward)."""

    @classmethod
    def sample_tasks(cls, n: int, generator: torch.Generator, **family_kwargs: Any) -> TensorDict:
        """``n`` directions, each -1 or +1 with probability 1/2."""
        direction = torch.randint(2, (n,), generator=generator).to(torch.get_default_dtype()) * 2.0 - 1.0
        return TensorDict({"direction": direction}, batch_size=[n])

    @classmethod
    def validate_tasks(cls, tasks: TensorDictBase, **family_kwargs: Any) -> None:
        """Every direction must be exactly -1 or +1."""
        direction = _require(tasks, cls.family, "direction", ())
        bad = (direction != 1.0) & (direction != -1.0)
        if bad.any():
            raise TaskError(f"{cls.family}: direction must be -1 or +1, got {direction[bad][:3].tolist()}")

    def direction(self) -> torch.Tensor:
        """The direction of every copy's task, ``[n_tasks, 1]`` float64."""
        return self.task_value("direction").unsqueeze(-1)


class PhysicsTasks:
    """Tasks of per-element multipliers of the model's physics (``rand_param_envs`` of Clavera et al. / ProMP).

    Every task draws an independent multiplier for every element of ``body_mass``,
    ``body_inertia`` and ``geom_friction`` (``1.5^U(-3, 3)``) and of ``dof_damping``
    (``1.3^U(-3, 3)``); the multipliers scale the model's defaults. Entries have the shapes of
    the model's arrays with a leading task dimension, float64.
    """

    LOG_SCALE_LIMIT: ClassVar[float] = 3.0
    BASES: ClassVar[dict[str, float]] = {
        "body_mass": 1.5, "body_inertia": 1.5, "geom_friction": 1.5, "dof_damping": 1.3,
    }

    @classmethod
    def _shapes(cls) -> dict[str, tuple[int, ...]]:
        model = load_model(cls.model_file)
        return {name: tuple(getattr(model, name).shape) for name in PHYSICS_FIELDS}

    @classmethod
    def multiplier_range(cls, name: str) -> tuple[float, float]:
        """``(base^-3, base^3)``: the range of the multipliers of field ``name``."""
        base = cls.BASES[name]
        return base ** -cls.LOG_SCALE_LIMIT, base ** cls.LOG_SCALE_LIMIT

    @classmethod
    def sample_tasks(cls, n: int, generator: torch.Generator, **family_kwargs: Any) -> TensorDict:
        """``n`` tasks of multipliers ``base^U(-3, 3)``, one per element of each field."""
        entries = {}
        for name, shape in cls._shapes().items():
            exponent = (torch.rand((n, *shape), generator=generator, dtype=torch.float64) * 2.0 - 1.0)
            entries[name] = cls.BASES[name] ** (exponent * cls.LOG_SCALE_LIMIT)
        return TensorDict(entries, batch_size=[n])

    @classmethod
    def validate_tasks(cls, tasks: TensorDictBase, **family_kwargs: Any) -> None:
        """Each field's multipliers must have the model's shape and lie within ``base^[-3, 3]``."""
        for name, shape in cls._shapes().items():
            value = _require(tasks, cls.family, name, shape)
            low, high = cls.multiplier_range(name)
            bad = (value < low * (1 - 1e-6)) | (value > high * (1 + 1e-6))
            if bad.any():
                raise TaskError(
                    f"{cls.family}: {name} multipliers must lie in [{low:.4g}, {high:.4g}] "
                    f"({cls.BASES[name]}^[-3, 3]); got {value[bad][:3].tolist()}"
                )


# ---------------------------------------------------------------------------- half-cheetah
class HalfCheetah(MujocoMetaEnv):
    """Planar half-cheetah, ``half_cheetah.xml``, frame skip 5 (``dt = 0.05``).

    Observation ``qpos[1:] || qvel`` (17). Reset noise ``U(+-0.1)`` on ``qpos`` (ProMP's definition)
    and ``N(0, 0.1^2)`` on ``qvel`` (the reference code's ``reset_model``, which is gym's
    half-cheetah's). Never terminates.
    """

    model_file = "half_cheetah.xml"
    frame_skip = 5
    qpos_noise = ("uniform", 0.1)
    qvel_noise = ("normal", 0.1)

    @classmethod
    def observation_size(cls, model: mujoco.MjModel) -> int:
        return model.nq - 1 + model.nv

    def observe(self, state: PhysicsState) -> torch.Tensor:
        """``qpos[1:] || qvel``."""
        return torch.cat((state.qpos[..., 1:], state.qvel), dim=-1)

    def _never(self, reward: torch.Tensor) -> torch.Tensor:
        return torch.zeros(reward.shape, dtype=torch.bool)


@register("HalfCheetah-Fwd-Bwd")
class HalfCheetahFwdBwd(DirectionTasks, HalfCheetah):
    """Half-cheetah running forward or backward: reward ``d * vx - 0.05 ||a||^2``, H = 100.

    Tasks: ``{"direction": d}``, ``d in {-1, +1}``.
    """

    default_horizon = 100

    def reward_and_termination(self, qpos_before, state, action):
        reward = self.direction() * self.forward_velocity(qpos_before, state) - 0.05 * control_cost(action)
        return reward, self._never(reward)


@register("HalfCheetah-Vel")
class HalfCheetahVel(HalfCheetah):
    """Half-cheetah running at a target velocity: reward ``-|vx - v*| - 0.05 ||a||^2``, H = 200.

    Tasks: ``{"velocity": v*}``, ``v* ~ U(0, 3)``.
    """

    MAX_VELOCITY: ClassVar[float] = 3.0
    default_horizon = 200

    @classmethod
    def sample_tasks(cls, n: int, generator: torch.Generator, **family_kwargs: Any) -> TensorDict:
        """``n`` target velocities ``U(0, 3)``."""
        velocity = torch.rand(n, generator=generator, dtype=torch.float64) * cls.MAX_VELOCITY
        return TensorDict({"velocity": velocity}, batch_size=[n])

    @classmethod
    def validate_tasks(cls, tasks: TensorDictBase, **family_kwargs: Any) -> None:
        """Target velocities must lie in ``[0, 3]``."""
        velocity = _require(tasks, cls.family, "velocity", ())
        bad = (velocity < 0) | (velocity > cls.MAX_VELOCITY)
        if bad.any():
            raise TaskError(f"{cls.family}: velocity must lie in [0, {cls.MAX_VELOCITY}], got {velocity[bad][:3].tolist()}")

    def reward_and_termination(self, qpos_before, state, action):
        target = self.task_value("velocity").unsqueeze(-1)
        vx = self.forward_velocity(qpos_before, state)
        reward = -(vx - target).abs() - 0.05 * control_cost(action)
        return reward, self._never(reward)


# ---------------------------------------------------------------------------- ant
class Ant(MujocoMetaEnv):
    """Quadruped ant, ``ant.xml``, frame skip 5 (``dt = 0.05``), with contact forces.

    Reset noise ``U(+-0.1)`` on ``qpos`` (all 15 entries, quaternion included, as in the
    reference) and ``N(0, 0.1^2)`` on ``qvel``.

    Contact forces: ``cfrc_ext`` (``[nbody, 6]``, the world body included, so 14 x 6 = 84
    numbers, as in the reference's MuJoCo 1.5 model). MuJoCo >= 2 computes ``cfrc_ext`` only in
    ``mj_rnePostConstraint`` (never inside a plain ``mj_step``), and the rollout API returns only
    states, so the model gets contact sensors (net contact wrench per body, and the tree's
    centre of mass) that MuJoCo evaluates inside the batched physics call; the wrench is rebuilt
    from them exactly (:func:`~lightning_metarl.envs.mujoco_env.contact_wrenches`). The value is
    the one MuJoCo computes in the forward pass at the start of the last substep of the env step
    (for the reset observation: at the reset state with zero control). Gymnasium v5 instead calls
    ``mj_rnePostConstraint`` after ``mj_step``, which with the ant's RK4 integrator sees the
    contacts of the last Runge-Kutta stage.
    """

    model_file = "ant.xml"
    frame_skip = 5
    contact_forces = True
    qpos_noise = ("uniform", 0.1)
    qvel_noise = ("normal", 0.1)
    #: Coefficient of the contact cost ``sum clip(cfrc_ext, +-1)^2``.
    CONTACT_COST: ClassVar[float] = 0.5 * 1e-3
    #: Number of leading ``qpos`` entries left out of the observation (the torso's x, y).
    SKIPPED_QPOS: ClassVar[int] = 2

    @classmethod
    def observation_size(cls, model: mujoco.MjModel) -> int:
        return model.nq - cls.SKIPPED_QPOS + model.nv + 6 * model.nbody

    def observe(self, state: PhysicsState) -> torch.Tensor:
        """``qpos[2:] || qvel || clip(cfrc_ext, -1, 1)`` (the goal variant keeps all of ``qpos``)."""
        cfrc = state.cfrc_ext.clamp(-1.0, 1.0).flatten(-2)
        return torch.cat((state.qpos[..., self.SKIPPED_QPOS:], state.qvel, cfrc), dim=-1)


@register("Ant-Fwd-Bwd")
class AntFwdBwd(DirectionTasks, Ant):
    """Ant running forward or backward along x, H = 100.

    Reward ``d * vx - 0.5 ||a||^2 - 5e-4 sum clip(cfrc_ext, +-1)^2 + 1``; terminates when the
    state is not finite or the torso height ``qpos[2]`` leaves ``[0, 1]``. Tasks:
    ``{"direction": d}``, ``d in {-1, +1}``.
    """

    default_horizon = 100

    def reward_and_termination(self, qpos_before, state, action):
        vx = self.forward_velocity(qpos_before, state)
        reward = (
            self.direction() * vx - 0.5 * control_cost(action) - self.CONTACT_COST * contact_cost(state.cfrc_ext) + 1.0
        )
        finite = torch.isfinite(state.qpos).all(-1) & torch.isfinite(state.qvel).all(-1)
        z = state.qpos[..., 2]
        terminated = ~finite | (z < 0.0) | (z > 1.0)
        return reward, terminated


@register("Ant-Goal")
class AntGoal(Ant):
    """Ant walking to a goal position, H = 200 (ProMP uses 2 inner steps here).

    Reward ``-|torso_xy - goal|_1 - 0.1 ||a||^2 - 5e-4 sum clip(cfrc_ext, +-1)^2``, never
    terminates. ``torso_xy`` is ``qpos[:2]`` after the step (the reference reads the torso's
    ``xpos``, which MuJoCo >= 2 leaves one substep behind ``qpos`` after ``mj_step``).
    Observation ``qpos || qvel || clip(cfrc_ext, +-1)`` (113). Tasks: ``{"goal": [2]}`` uniform
    on the disk of radius 3 (``r = 3 sqrt(U)``, angle ``U(0, 2 pi)``).
    """

    SKIPPED_QPOS = 0
    GOAL_RADIUS: ClassVar[float] = 3.0
    default_horizon = 200

    @classmethod
    def sample_tasks(cls, n: int, generator: torch.Generator, **family_kwargs: Any) -> TensorDict:
        """``n`` goals uniform on the disk of radius 3."""
        u = torch.rand((n, 2), generator=generator, dtype=torch.float64)
        radius = cls.GOAL_RADIUS * u[:, 0].sqrt()
        angle = 2 * math.pi * u[:, 1]
        goal = torch.stack((radius * angle.cos(), radius * angle.sin()), dim=-1)
        return TensorDict({"goal": goal}, batch_size=[n])

    @classmethod
    def validate_tasks(cls, tasks: TensorDictBase, **family_kwargs: Any) -> None:
        """Goals must lie in the disk of radius 3."""
        goal = _require(tasks, cls.family, "goal", (2,))
        bad = goal.norm(dim=-1) > cls.GOAL_RADIUS * (1 + 1e-6)
        if bad.any():
            raise TaskError(f"{cls.family}: goal must lie within radius {cls.GOAL_RADIUS}, got {goal[bad][:3].tolist()}")

    def reward_and_termination(self, qpos_before, state, action):
        goal = self.task_value("goal").unsqueeze(1)
        distance = (state.qpos[..., :2] - goal).abs().sum(-1)
        reward = -distance - 0.1 * control_cost(action) - self.CONTACT_COST * contact_cost(state.cfrc_ext)
        return reward, torch.zeros(reward.shape, dtype=torch.bool)


# ---------------------------------------------------------------------------- walker and hopper
class PlanarWalker(MujocoMetaEnv):
    """Common part of the planar walkers: ``qpos[1:] || clip(qvel, +-10)``, reset noise ``U(+-0.005)``.

    Reward ``vx + 1 - 1e-3 ||a||^2`` (times the task's direction where there is one).
    """

    qpos_noise = ("uniform", 0.005)
    qvel_noise = ("uniform", 0.005)

    @classmethod
    def observation_size(cls, model: mujoco.MjModel) -> int:
        return model.nq - 1 + model.nv

    def observe(self, state: PhysicsState) -> torch.Tensor:
        """``qpos[1:] || clip(qvel, -10, 10)``."""
        return torch.cat((state.qpos[..., 1:], state.qvel.clamp(-10.0, 10.0)), dim=-1)

    def running_reward(self, qpos_before: torch.Tensor, state: PhysicsState, action: torch.Tensor,
                       direction: torch.Tensor | float = 1.0) -> torch.Tensor:
        """``direction * vx + 1 - 1e-3 ||a||^2``."""
        return direction * self.forward_velocity(qpos_before, state) + 1.0 - 1e-3 * control_cost(action)

    @staticmethod
    def walker_fell(state: PhysicsState) -> torch.Tensor:
        """Walker termination: height ``qpos[1]`` not in ``(0.8, 2)`` or ``|angle| = |qpos[2]| >= 1``."""
        height, angle = state.qpos[..., 1], state.qpos[..., 2]
        return ~((height > 0.8) & (height < 2.0) & (angle > -1.0) & (angle < 1.0))


@register("Walker2D-Fwd-Bwd")
class Walker2DFwdBwd(DirectionTasks, PlanarWalker):
    """Walker2d walking forward or backward, ``walker2d_v5.xml``, frame skip 8, H = 200.

    Reward ``d * vx + 1 - 1e-3 ||a||^2``; terminates when the height leaves ``(0.8, 2)`` or
    ``|angle| >= 1``. Tasks: ``{"direction": d}``. (gymnasium's v5 file fixes the left foot's
    friction of the older model.)
    """

    model_file = "walker2d_v5.xml"
    frame_skip = 8
    default_horizon = 200

    def reward_and_termination(self, qpos_before, state, action):
        return self.running_reward(qpos_before, state, action, self.direction()), self.walker_fell(state)


@register("Walker2D-Rand-Params")
class Walker2DRandParams(PhysicsTasks, PlanarWalker):
    """Walker2d with random physics per task, ``walker2d_v5.xml``, frame skip 4, H = 200.

    Reward ``vx + 1 - 1e-3 ||a||^2``; terminates when the height leaves ``(0.8, 2)`` or
    ``|angle| >= 1``. Tasks: multipliers of ``body_mass``, ``body_inertia``, ``geom_friction``
    (``1.5^U(-3, 3)``) and ``dof_damping`` (``1.3^U(-3, 3)``); each task runs on its own
    ``MjModel`` (after ``mj_setConst``).
    """

    model_file = "walker2d_v5.xml"
    frame_skip = 4
    physics_tasks = True
    default_horizon = 200

    def reward_and_termination(self, qpos_before, state, action):
        return self.running_reward(qpos_before, state, action), self.walker_fell(state)


@register("Hopper-Rand-Params")
class HopperRandParams(PhysicsTasks, PlanarWalker):
    """Hopper with random physics per task, ``hopper.xml``, frame skip 4, H = 200.

    Reward ``vx + 1 - 1e-3 ||a||^2``; terminates when the state ``s = qpos || qvel`` is not
    finite, any ``|s[2:]| >= 100``, the height ``qpos[1] <= 0.7`` or ``|angle| = |qpos[2]| >= 0.2``.
    Observation ``qpos[1:] || clip(qvel, +-10)`` (11). Tasks as for ``Walker2D-Rand-Params``.
    """

    model_file = "hopper.xml"
    frame_skip = 4
    physics_tasks = True
    default_horizon = 200

    def reward_and_termination(self, qpos_before, state, action):
        s = torch.cat((state.qpos, state.qvel), dim=-1)
        height, angle = state.qpos[..., 1], state.qpos[..., 2]
        healthy = torch.isfinite(s).all(-1) & (s[..., 2:].abs() < 100).all(-1) & (height > 0.7) & (angle.abs() < 0.2)
        return self.running_reward(qpos_before, state, action), ~healthy
