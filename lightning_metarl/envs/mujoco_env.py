"""The natively batched MuJoCo environment behind every locomotion task family.

:class:`MujocoMetaEnv` keeps the physics state of all ``n_tasks x rollouts_per_task`` copies in
one ``float64`` array (MuJoCo's ``mjSTATE_FULLPHYSICS`` layout: time, qpos, qvel) and advances
all of them in ONE call per env step to :class:`mujoco.rollout.Rollout` (a persistent C++ thread
pool) with ``nstep = frame_skip``. Observations, rewards and terminations are computed
vectorized in torch from the returned states; contact forces (``cfrc_ext``) come from MuJoCo
contact sensors evaluated inside the same call. No per-copy Python code runs on the step path.

Conventions shared by all families (the reference definitions of the ProMP code base,
Rothfuss et al. 2019, and its ``rand_param_envs`` of Clavera et al.):

- **Actions.** The policy acts in the actuators' control box scaled by ``action_scale`` about its
  centre (reference: ``[-10, 10]`` for the ``[-1, 1]`` controls of every model here). An action
  ``a`` becomes the control ``ctrl = clip(mid + (a - mid) / action_scale, low, high)``: the
  reference's normalising wrapper (rescale, then clip). ``action_scale=1`` clips the action to
  the control range. ``||a||^2`` in the rewards is the squared norm of this clipped control.
- **Velocity.** ``vx = (x_after - x_before) / dt`` with ``dt = timestep * frame_skip``.
- **Episodes.** A copy that terminates reports ``terminated=True`` and keeps its state; the
  collector masks its later steps (TorchRL may also reset it, which the mask hides).
- **Unstable physics.** A copy whose physics diverges (MuJoCo's own check fires and resets its
  data, which the rollout reports as a broken clock, or the state is not finite) is reset to a
  fresh initial state inside the same step, reports ``terminated=True`` with reward 0, and is
  counted in :attr:`MujocoMetaEnv.unstable_resets`; the other copies are unaffected.
- **Warm start.** Each env step starts MuJoCo's constraint solver from a zero warm start (the
  rollout API returns no ``qacc_warmstart``). A step therefore equals ``frame_skip`` calls of
  ``mj_step`` on an ``MjData`` holding the same state with ``qacc_warmstart = 0``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import mujoco
import numpy as np
import torch
from mujoco import rollout as mj_rollout
from tensordict import TensorDict, TensorDictBase

from lightning_metarl.envs.base import BatchedMetaEnv
from lightning_metarl.errors import ConfigError

#: Folder of gymnasium's MuJoCo model files (the v5 models).
ASSETS = Path(__import__("gymnasium").__file__).resolve().parent / "envs" / "mujoco" / "assets"
#: Model arrays that the random-physics tasks scale (``rand_param_envs``).
PHYSICS_FIELDS = ("body_mass", "body_inertia", "geom_friction", "dof_damping")

_FULLPHYSICS = mujoco.mjtState.mjSTATE_FULLPHYSICS.value
# Clock written into every initial state: a copy whose data MuJoCo resets after a divergence
# comes back with a time near 0, far from START_TIME + frame_skip * timestep.
_START_TIME = 1000.0
# Contact sensor fields, in MuJoCo's output order: force, torque, position, normal, tangent
# (each 3 numbers), of the net contact wrench on one body (reduce="netforce", one slot).
_CONTACT_DATA = sum(
    1 << int(field)
    for field in (
        mujoco.mjtConDataField.mjCONDATA_FORCE,
        mujoco.mjtConDataField.mjCONDATA_TORQUE,
        mujoco.mjtConDataField.mjCONDATA_POS,
        mujoco.mjtConDataField.mjCONDATA_NORMAL,
        mujoco.mjtConDataField.mjCONDATA_TANGENT,
    )
)
_CONTACT_NETFORCE = 3
_CONTACT_DIM = 15


def available_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS tells it): the default size of the physics pool."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def add_contact_sensors(spec: mujoco.MjSpec) -> None:
    """Add the sensors from which :func:`contact_wrenches` rebuilds ``cfrc_ext``.

    One contact sensor per non-world body (the net contact wrench on that body: force, torque,
    point, normal and tangent of the contact frame) and one ``subtreecom`` sensor per kinematic
    tree root (``cfrc_ext`` is expressed about the centre of mass of the body's tree).
    Unnamed bodies get the name ``body<id>``.
    """
    bodies = list(spec.bodies)
    for index, body in enumerate(bodies):
        if not body.name:
            body.name = f"body{index}"
    for body in bodies[1:]:
        spec.add_sensor(
            name=f"contact_{body.name}",
            type=mujoco.mjtSensor.mjSENS_CONTACT,
            objtype=mujoco.mjtObj.mjOBJ_BODY,
            objname=body.name,
            intprm=[_CONTACT_DATA, _CONTACT_NETFORCE, 1],
        )
    for root in spec.worldbody.bodies:
        spec.add_sensor(
            name=f"subtreecom_{root.name}",
            type=mujoco.mjtSensor.mjSENS_SUBTREECOM,
            objtype=mujoco.mjtObj.mjOBJ_BODY,
            objname=root.name,
        )


def contact_wrenches(sensordata: torch.Tensor, model: mujoco.MjModel) -> torch.Tensor:
    """``cfrc_ext`` (``[..., nbody, 6]``: torque, force) from the sensors of :func:`add_contact_sensors`.

    MuJoCo's ``mj_rnePostConstraint`` accumulates, for every body, minus the contact wrench on it
    about the centre of mass of its kinematic tree, in world axes; the world body's entry is 0.
    With the net contact force ``f`` and torque ``t`` at point ``p`` (contact frame ``R``), that
    is ``-(R^T t + (p - com) x R^T f, R^T f)``.
    """
    nbody = model.nbody
    contacts = sensordata[..., : (nbody - 1) * _CONTACT_DIM].unflatten(-1, (nbody - 1, _CONTACT_DIM))
    roots = sensordata[..., (nbody - 1) * _CONTACT_DIM :].unflatten(-1, (-1, 3))
    com = roots[..., _root_slot(model)[1:], :]
    force, torque, point, normal, tangent = contacts.split(3, dim=-1)
    binormal = torch.linalg.cross(normal, tangent, dim=-1)

    def to_world(v: torch.Tensor) -> torch.Tensor:
        return v[..., :1] * normal + v[..., 1:2] * tangent + v[..., 2:] * binormal

    force_w = to_world(force)
    torque_w = to_world(torque) + torch.linalg.cross(point - com, force_w, dim=-1)
    wrench = torch.cat((-torque_w, -force_w), dim=-1)
    return torch.cat((torch.zeros_like(wrench[..., :1, :]), wrench), dim=-2)


def _root_slot(model: mujoco.MjModel) -> list[int]:
    """For every body, the index of its tree root among the roots (world: 0)."""
    roots = sorted({int(r) for r in model.body_rootid[1:]})
    return [0] + [roots.index(int(r)) for r in model.body_rootid[1:]]


@functools.cache
def _compile(path: str, contact_forces: bool) -> mujoco.MjModel:
    spec = mujoco.MjSpec.from_file(path)
    if contact_forces:
        add_contact_sensors(spec)
    with warnings.catch_warnings():  # half_cheetah.xml uses the deprecated (still honoured) settotalmass
        warnings.filterwarnings("ignore", message=".*settotalmass.*")
        return spec.compile()


def load_model(model_file: str, contact_forces: bool = False) -> mujoco.MjModel:
    """The compiled model of ``model_file`` (a file in gymnasium's asset folder, or a path); cached, do not modify.

    With ``contact_forces`` the model gets the sensors of :func:`add_contact_sensors`.
    """
    path = Path(model_file)
    if not path.is_absolute():
        path = ASSETS / model_file
    if not path.is_file():
        raise ConfigError(f"MuJoCo model file not found: {path}")
    return _compile(str(path), bool(contact_forces))


def scaled_model(model: mujoco.MjModel, multipliers: dict[str, np.ndarray]) -> mujoco.MjModel:
    """A copy of ``model`` with each array ``name`` multiplied elementwise by ``multipliers[name]``.

    The derived constants (subtree masses, inverse weights, ...) are recomputed with
    ``mj_setConst``, so the copy is a consistent model of the changed physics.
    """
    scaled = copy.copy(model)
    for name, factor in multipliers.items():
        getattr(scaled, name)[...] = getattr(model, name) * np.asarray(factor, dtype=np.float64)
    mujoco.mj_setConst(scaled, mujoco.MjData(scaled))
    return scaled


class PhysicsState:
    """Torch views ``[n_tasks, rollouts, ...]`` (``float64``) of a batch of MuJoCo states.

    Attributes:
        qpos: joint positions ``[n_tasks, rollouts, nq]``.
        qvel: joint velocities ``[n_tasks, rollouts, nv]``.
        sensordata: sensor values of the last physics substep, ``[n_tasks, rollouts, nsensordata]``.
        cfrc_ext: contact wrenches ``[n_tasks, rollouts, nbody, 6]`` (families with contact
            forces; see :func:`contact_wrenches`), else None.
    """

    def __init__(self, qpos: torch.Tensor, qvel: torch.Tensor, sensordata: torch.Tensor,
                 cfrc_ext: torch.Tensor | None = None) -> None:
        self.qpos = qpos
        self.qvel = qvel
        self.sensordata = sensordata
        self.cfrc_ext = cfrc_ext


class _Buffer:
    """One batch of physics states as contiguous numpy arrays, with torch views of them."""

    def __init__(self, model: mujoco.MjModel, batch_size: torch.Size) -> None:
        n = int(np.prod(batch_size))
        self.state = np.zeros((n, mujoco.mj_stateSize(model, _FULLPHYSICS)), dtype=np.float64)
        self.sensors = np.zeros((n, model.nsensordata), dtype=np.float64)
        view = torch.from_numpy(self.state).view(*batch_size, -1)
        self.time = view[..., 0]
        self.view = PhysicsState(
            view[..., 1 : 1 + model.nq],
            view[..., 1 + model.nq : 1 + model.nq + model.nv],
            torch.from_numpy(self.sensors).view(*batch_size, -1),
        )


class MujocoMetaEnv(BatchedMetaEnv):
    """Batched MuJoCo task family: ``n_tasks x rollouts_per_task`` copies stepped in one C call per step.

    A family sets :attr:`model_file`, :attr:`frame_skip`, the reset noise (:attr:`qpos_noise`,
    :attr:`qvel_noise`), :attr:`contact_forces` if it observes ``cfrc_ext`` and
    :attr:`physics_tasks` if its tasks scale the model's :data:`PHYSICS_FIELDS` (one ``MjModel``
    per task); it implements :meth:`observation_size`, :meth:`observe`,
    :meth:`reward_and_termination` and the task distribution (:meth:`sample_tasks`,
    :meth:`validate_tasks`).

    Args:
        n_tasks: number of tasks evaluated together (the meta-batch).
        rollouts_per_task: copies per task.
        horizon: episode length H (``None``: the family's :attr:`default_horizon`).
        action_scale: the policy's action box is the control box scaled by this factor about its
            centre (reference: 10); see the module docstring.
        num_threads: threads of the physics pool (default: the CPUs available to this process).
        seed: seed of the reset-noise generator.
        device: torch device of the returned tensors (the physics runs on the CPU).
    """

    #: Model file in gymnasium's asset folder (or an absolute path).
    model_file: ClassVar[str]
    #: Physics steps per env step.
    frame_skip: ClassVar[int]
    #: Reset noise added to ``qpos0``: ``("uniform", a)`` for ``U(-a, a)``, ``("normal", s)`` for ``N(0, s^2)``.
    qpos_noise: ClassVar[tuple[str, float]] = ("uniform", 0.0)
    #: Reset noise of the joint velocities (same format).
    qvel_noise: ClassVar[tuple[str, float]] = ("uniform", 0.0)
    #: Whether the family reads the contact wrenches ``cfrc_ext`` (adds contact sensors to the model).
    contact_forces: ClassVar[bool] = False
    #: Whether tasks carry multipliers of :data:`PHYSICS_FIELDS` (one model per task).
    physics_tasks: ClassVar[bool] = False

    def __init__(
        self,
        n_tasks: int = 1,
        rollouts_per_task: int = 1,
        horizon: int | None = None,
        action_scale: float = 10.0,
        num_threads: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        family = type(self).family or type(self).__name__
        if isinstance(action_scale, bool) or not isinstance(action_scale, (int, float)) or not action_scale > 0:
            raise ConfigError(f"{family}: action_scale must be a positive number, got {action_scale!r}")
        if num_threads is None:
            num_threads = available_cpus()
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ConfigError(f"{family}: num_threads must be a positive integer, got {num_threads!r}")
        self.model = self.base_model()
        self.action_dim = self.model.nu
        self.observation_dim = self.observation_size(self.model)
        self.action_scale = float(action_scale)
        self.dt = float(self.model.opt.timestep) * self.frame_skip
        low, high = (torch.as_tensor(b, dtype=torch.float64) for b in self.model.actuator_ctrlrange.T.copy())
        self._ctrl_low, self._ctrl_high, self._ctrl_mid = low, high, (low + high) / 2
        super().__init__(n_tasks, rollouts_per_task, horizon, seed=seed, device=device)
        n_copies = n_tasks * rollouts_per_task
        self.set_num_threads(num_threads)
        #: The model of every task (the shared default model unless the tasks change the physics).
        self.task_models: list[mujoco.MjModel] = [self.model] * n_tasks
        self._models: list[mujoco.MjModel] = [self.model] * n_copies
        self._current, self._next = _Buffer(self.model, self.batch_size), _Buffer(self.model, self.batch_size)
        nstate = self._current.state.shape[1]
        self._out_state = np.zeros((n_copies, self.frame_skip, nstate), dtype=np.float64)
        self._out_sensors = np.zeros((n_copies, self.frame_skip, self.model.nsensordata), dtype=np.float64)
        self._control = np.zeros((n_copies, self.frame_skip, self.model.nu), dtype=np.float64)
        self._control_view = torch.from_numpy(self._control).view(*self.batch_size, self.frame_skip, -1)
        self._end_time = _START_TIME
        for _ in range(self.frame_skip):  # the same additions as mj_step's
            self._end_time += float(self.model.opt.timestep)
        data = mujoco.MjData(self.model)
        data.time = _START_TIME
        self._initial = np.zeros(nstate, dtype=np.float64)
        mujoco.mj_getState(self.model, data, self._initial, _FULLPHYSICS)
        self._obs = torch.zeros((*self.batch_size, self.observation_dim), device=self.device)
        #: Copies reset because their physics diverged (cumulative).
        self.unstable_resets = 0
        #: Seconds spent in the physics calls of env steps (cumulative; what collection spends in MuJoCo).
        self.physics_seconds = 0.0
        self._skip_padding = False
        self._task_values: dict[str, torch.Tensor] = {}
        #: Copies whose episode ended since the last full reset (frozen while padding is skipped).
        self._finished = np.zeros(n_copies, dtype=bool)

    def set_num_threads(self, num_threads: int) -> None:
        """Rebuild the physics pool with ``num_threads`` threads (at most one per copy; 1: the calling thread alone)."""
        self.num_threads = min(num_threads, self.batch_size.numel())
        self._pool = mj_rollout.Rollout(nthread=self.num_threads if self.num_threads > 1 else 0)
        self._datas = [mujoco.MjData(self.model) for _ in range(self.num_threads)]

    # ------------------------------------------------------------------ family interface
    @classmethod
    def base_model(cls) -> mujoco.MjModel:
        """The family's compiled model with the default physics (cached; do not modify)."""
        return load_model(cls.model_file, cls.contact_forces)

    @classmethod
    def observation_size(cls, model: mujoco.MjModel) -> int:
        """Size of the observation vector for ``model``."""
        raise NotImplementedError

    def observe(self, state: PhysicsState) -> torch.Tensor:
        """Observation ``[n_tasks, rollouts, observation_dim]`` (``float64``) of the states in ``state``."""
        raise NotImplementedError

    def reward_and_termination(
        self, qpos_before: torch.Tensor, state: PhysicsState, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reward and termination flag ``[n_tasks, rollouts]`` of the step from ``qpos_before`` to ``state``.

        ``action`` is the clipped control ``[n_tasks, rollouts, nu]`` that was applied.
        """
        raise NotImplementedError

    def forward_velocity(self, qpos_before: torch.Tensor, state: PhysicsState) -> torch.Tensor:
        """``vx = (x_after - x_before) / dt`` of the root's x coordinate ``qpos[0]``."""
        return (state.qpos[..., 0] - qpos_before[..., 0]) / self.dt

    def action_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The control box scaled by ``action_scale`` about its centre."""
        half = (self._ctrl_high - self._ctrl_low) / 2 * self.action_scale
        return self._ctrl_mid - half, self._ctrl_mid + half

    # ------------------------------------------------------------------ tasks and models
    def set_tasks(self, tasks: TensorDictBase) -> None:
        """Assign ``tasks`` (batch size ``[n_tasks]``); with random physics, build one model per task."""
        super().set_tasks(tasks)
        self._task_values = {}
        if self.physics_tasks:
            fields = {name: self.tasks.get(name).to("cpu", torch.float64).numpy() for name in PHYSICS_FIELDS}
            self.task_models = [
                scaled_model(self.model, {name: value[i] for name, value in fields.items()})
                for i in range(self.n_tasks)
            ]
            self._models = tile_models(self.task_models, self.rollouts_per_task)

    def task_value(self, key: str) -> torch.Tensor:
        """The tasks' entry ``key`` as a CPU ``float64`` tensor ``[n_tasks, ...]`` (converted once per :meth:`set_tasks`).

        What the rewards read at every step, so that a step does not convert the tasks again.
        """
        value = self._task_values.get(key)
        if value is None:
            value = self._task_values[key] = self.tasks.get(key).to("cpu", torch.float64)
        return value

    def task_model(self, index: int) -> mujoco.MjModel:
        """The ``MjModel`` that runs task ``index`` of the current tasks."""
        return self.task_models[index]

    # ------------------------------------------------------------------ physics state
    def physics_state(self) -> PhysicsState:
        """A copy of the current state of every copy (``qpos``, ``qvel``, sensor values, ``cfrc_ext``)."""
        view = self._current.view
        cfrc = None if view.cfrc_ext is None else view.cfrc_ext.clone()
        return PhysicsState(view.qpos.clone(), view.qvel.clone(), view.sensordata.clone(), cfrc)

    def set_physics_state(self, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Overwrite the state of every copy (``qpos`` ``[n_tasks, rollouts, nq]``, ``qvel`` ``[..., nv]``).

        Sensor values (contact forces) are recomputed for the new states with zero control, and
        the observation is refreshed.
        """
        view = self._current.view
        view.qpos.copy_(torch.as_tensor(qpos, dtype=torch.float64).expand_as(view.qpos))
        view.qvel.copy_(torch.as_tensor(qvel, dtype=torch.float64).expand_as(view.qvel))
        self._current.time.fill_(_START_TIME)
        self._refresh(np.arange(self._current.state.shape[0]))

    def _noise(self, spec: tuple[str, float], size: int) -> torch.Tensor:
        kind, scale = spec
        shape = (*self.batch_size, size)
        if kind == "uniform":
            return (torch.rand(shape, generator=self.rng, dtype=torch.float64) * 2 - 1) * scale
        if kind == "normal":
            return torch.randn(shape, generator=self.rng, dtype=torch.float64) * scale
        raise ValueError(f"unknown reset noise kind {kind!r}")

    @contextlib.contextmanager
    def padding_skipped(self) -> Iterator[None]:
        """Within the block, copies whose episode ended are frozen until the next full reset (see the base class).

        The physics call then takes only the live copies; each copy's physics is independent
        of the others', so the live copies' states are bit-identical to simulating every copy.
        """
        previous, self._skip_padding = self._skip_padding, True
        try:
            yield
        finally:
            self._skip_padding = previous

    def _reset_copies(self, reset_mask: torch.Tensor) -> None:
        if bool(reset_mask.all()):
            self._finished[:] = False  # a full reset starts new episodes everywhere
        nq, nv = self.model.nq, self.model.nv
        qpos = self._noise(self.qpos_noise, nq).reshape(-1, nq).numpy()
        qvel = self._noise(self.qvel_noise, nv).reshape(-1, nv).numpy()
        rows = reset_mask.reshape(-1).cpu().numpy().nonzero()[0]
        if len(rows) == 0:
            return
        state = self._current.state
        state[rows] = self._initial
        state[rows, 1 : 1 + nq] += qpos[rows]
        state[rows, 1 + nq : 1 + nq + nv] += qvel[rows]
        self._refresh(rows)

    def _refresh(self, rows: np.ndarray) -> None:
        """Recompute the sensors of the states ``rows`` (zero control), then every copy's observation."""
        buffer = self._current
        if self.model.nsensordata and len(rows):
            n = len(rows)
            sensors = np.zeros((n, 1, self.model.nsensordata), dtype=np.float64)
            # the sensors of a step are those of its first forward pass: the state it starts from
            self._pool.rollout(
                [self._models[r] for r in rows], self._datas, np.ascontiguousarray(buffer.state[rows]),
                np.zeros((n, 1, self.model.nu), dtype=np.float64), skip_checks=True, nstep=1,
                state=np.zeros((n, 1, buffer.state.shape[1]), dtype=np.float64), sensordata=sensors,
            )
            buffer.sensors[rows] = sensors[:, 0]
        self._update_derived(buffer.view)
        self._obs = self._observation_of(buffer.view)

    def _update_derived(self, view: PhysicsState) -> None:
        if self.contact_forces:
            view.cfrc_ext = contact_wrenches(view.sensordata, self.model)

    def _observation_of(self, view: PhysicsState) -> torch.Tensor:
        return self.observe(view).to(device=self.device, dtype=torch.get_default_dtype())

    def _observation(self) -> torch.Tensor:
        return self._obs

    # ------------------------------------------------------------------ stepping
    def control(self, action: torch.Tensor) -> torch.Tensor:
        """Clipped controls ``[n_tasks, rollouts, nu]`` (``float64``) of policy actions (module docstring)."""
        ctrl = (action.to("cpu", torch.float64) - self._ctrl_mid) / self.action_scale + self._ctrl_mid
        return torch.clamp(ctrl, self._ctrl_low, self._ctrl_high)

    def _simulate(self, before: _Buffer, after: _Buffer, frozen: np.ndarray | None) -> None:
        """One env step of every copy from ``before`` into ``after``; ``frozen`` copies (if any) keep their state."""
        if frozen is None or not frozen.any():
            self._pool.rollout(
                self._models, self._datas, before.state, self._control, skip_checks=True, nstep=self.frame_skip,
                state=self._out_state, sensordata=self._out_sensors,
            )
            np.copyto(after.state, self._out_state[:, -1])
            if self.model.nsensordata:
                np.copyto(after.sensors, self._out_sensors[:, -1])
            return
        live = np.flatnonzero(~frozen)
        after.state[frozen] = before.state[frozen]
        after.sensors[frozen] = before.sensors[frozen]
        if len(live) == 0:
            return
        n = len(live)
        self._pool.rollout(
            [self._models[r] for r in live], self._datas, np.ascontiguousarray(before.state[live]),
            np.ascontiguousarray(self._control[live]), skip_checks=True, nstep=self.frame_skip,
            state=self._out_state[:n], sensordata=self._out_sensors[:n],
        )
        after.state[live] = self._out_state[:n, -1]
        if self.model.nsensordata:
            after.sensors[live] = self._out_sensors[:n, -1]

    def _advance(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctrl = self.control(action)
        self._control_view.copy_(ctrl.unsqueeze(-2).expand_as(self._control_view))
        before, after = self._current, self._next
        frozen = self._finished.copy() if self._skip_padding else None
        start = time.perf_counter()
        self._simulate(before, after, frozen)
        self.physics_seconds += time.perf_counter() - start
        self._current, self._next = after, before
        state = after.view
        # MuJoCo resets diverging data (its clock restarts); a non-finite state is caught here too
        any_frozen = frozen is not None and bool(frozen.any())
        broken = np.abs(after.state[:, 0] - self._end_time) > 0.5 * self.dt
        broken |= ~np.isfinite(after.state).all(axis=1)
        if any_frozen:
            broken &= ~frozen
        unstable = torch.from_numpy(broken).view(self.batch_size)
        after.state[:, 0] = _START_TIME
        self._update_derived(state)
        reward, terminated = self.reward_and_termination(before.view.qpos, state, ctrl)
        if any_frozen:
            frozen_view = torch.from_numpy(frozen).view(self.batch_size)
            reward = reward.masked_fill(frozen_view, 0.0)
            terminated = terminated & ~frozen_view
        if frozen is not None:
            self._finished |= (terminated | unstable).reshape(-1).numpy()
        if bool(unstable.any()):
            self.unstable_resets += int(unstable.sum())
            reward = reward.masked_fill(unstable, 0.0)
            terminated = terminated | unstable
            self._reset_copies(unstable)  # refreshes every observation
        else:
            self._obs = self._observation_of(state)
        return reward, terminated

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        self._require_tasks()
        action = self.check_action(tensordict.get("action"))
        reward, terminated = self._advance(action)
        self.step_count += 1
        terminated = terminated.unsqueeze(-1).to(self.device)
        truncated = (self.step_count >= self.horizon).unsqueeze(-1) & ~terminated
        return TensorDict(
            {
                "observation": self._obs,
                "reward": reward.unsqueeze(-1).to(device=self.device, dtype=torch.get_default_dtype()),
                "done": terminated | truncated,
                "terminated": terminated,
                "truncated": truncated,
            },
            batch_size=self.batch_size,
            device=self.device,
        )


def tile_models(models: Sequence[mujoco.MjModel], repeats: int) -> list[mujoco.MjModel]:
    """``[m0] * repeats + [m1] * repeats + ...``: the model of every copy, row-major over ``[task, rollout]``."""
    return [m for m in models for _ in range(repeats)]
