"""The natively batched meta-RL environment that every task family derives from.

One :class:`BatchedMetaEnv` holds ``n_tasks x rollouts_per_task`` copies of a task family's
MDP. Its TorchRL batch size is ``[n_tasks, rollouts_per_task]``; all copies advance in one
vectorized call per step (torch for the point envs, MuJoCo in C for the locomotion envs), so
the per-step Python overhead is paid once per batch and not once per copy.

A family subclass defines:

- the task distribution: :meth:`BatchedMetaEnv.sample_tasks` (a ``TensorDict`` of task
  parameters with batch size ``[n]`` drawn from a seeded ``torch.Generator``),
  :meth:`BatchedMetaEnv.validate_tasks`, and optionally :meth:`BatchedMetaEnv.fixed_tasks`
  (fixed task sets of a seed);
- the dynamics: :meth:`BatchedMetaEnv._reset_copies` and :meth:`BatchedMetaEnv._advance`.

Episodes last ``horizon`` steps (by default the family's :attr:`BatchedMetaEnv.default_horizon`,
the path length of the benchmark it comes from). A copy whose episode terminates early reports
``terminated=True`` at that step and is not reset inside the episode: the collector masks its
remaining steps (``mask=0``), which is how the reference samplers pad paths to the horizon.
"""

from __future__ import annotations

import contextlib
import operator
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from lightning_metarl.errors import ActionError, ConfigError, TaskError


class BatchedMetaEnv(EnvBase):
    """A batch of ``n_tasks x rollouts_per_task`` copies of one task family's MDP.

    Args:
        n_tasks: number of tasks evaluated together (the meta-batch).
        rollouts_per_task: copies (trajectories) per task.
        horizon: episode length H; ``truncated`` is set at step H. ``None``: the family's
            :attr:`default_horizon`.
        seed: seed of the generator that draws reset noise (and the tasks drawn when none are set).
        device: torch device of all tensors.

    Tasks are set with :meth:`set_tasks`; every copy of task ``i`` shares its parameters
    ``tasks[i]``. A :meth:`reset` with no tasks set first draws ``n_tasks`` tasks from the env's
    own generator :attr:`rng` (so ``env.rollout(env.horizon)`` works right after construction);
    tasks once set are kept until the next :meth:`set_tasks`.
    """

    #: Family name under which it is registered (set by :func:`lightning_metarl.envs.register`).
    family: str = ""
    #: Episode length H used when ``horizon`` is not given (set per family).
    default_horizon: ClassVar[int]
    observation_dim: int
    action_dim: int

    def __init__(
        self,
        n_tasks: int = 1,
        rollouts_per_task: int = 1,
        horizon: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        name = type(self).family or type(self).__name__
        if horizon is None:
            horizon = getattr(type(self), "default_horizon", None)
            if horizon is None:
                raise ConfigError(f"{name}: no horizon given and the family has no default_horizon")
        for arg, value in (("n_tasks", n_tasks), ("rollouts_per_task", rollouts_per_task), ("horizon", horizon)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: {arg} must be a positive integer, got {value!r}")
        try:
            seed = operator.index(seed)
        except TypeError:
            raise ConfigError(f"{name}: seed must be an integer, got {seed!r}") from None
        super().__init__(batch_size=torch.Size([n_tasks, rollouts_per_task]), device=device)
        self.n_tasks = n_tasks
        self.rollouts_per_task = rollouts_per_task
        self.horizon = horizon
        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(seed)
        self.tasks: TensorDictBase | None = None
        self.step_count = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        action_shape = (*self.batch_size, self.action_dim)
        low, high = (
            torch.as_tensor(bound, dtype=torch.float32, device=self.device).expand(action_shape).clone()
            for bound in self.action_bounds()
        )
        self.observation_spec = Composite(
            observation=Unbounded(shape=(*self.batch_size, self.observation_dim), device=self.device),
            shape=self.batch_size,
        )
        self.action_spec = Bounded(
            low=low, high=high, shape=action_shape, device=self.device
        )
        self.reward_spec = Unbounded(shape=(*self.batch_size, 1), device=self.device)
        flag = Categorical(2, shape=(*self.batch_size, 1), dtype=torch.bool, device=self.device)
        self.done_spec = Composite(
            done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=self.batch_size, device=self.device
        )

    # ------------------------------------------------------------------ family interface
    @classmethod
    @abstractmethod
    def sample_tasks(cls, n: int, generator: torch.Generator, **family_kwargs: Any) -> TensorDict:
        """Draw ``n`` tasks of this family from ``generator``; a ``TensorDict`` with batch size ``[n]``."""

    @classmethod
    def validate_tasks(cls, tasks: TensorDictBase, **family_kwargs: Any) -> None:
        """Raise :class:`~lightning_metarl.errors.TaskError` if ``tasks`` are out of the family's range."""

    def action_bounds(self) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """Bounds of the action space declared in the spec: scalars or ``[action_dim]`` tensors.

        The policy may exceed them: envs clip.
        """
        return -1.0, 1.0

    @abstractmethod
    def _reset_copies(self, reset_mask: torch.Tensor) -> None:
        """Re-initialise the state of the copies where ``reset_mask`` (``[n_tasks, rollouts]``) is True."""

    @abstractmethod
    def _observation(self) -> torch.Tensor:
        """The current observation of every copy, ``[n_tasks, rollouts, observation_dim]``."""

    @abstractmethod
    def _advance(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance every copy by one step; return ``(reward, terminated)``, each ``[n_tasks, rollouts]``."""

    # ------------------------------------------------------------------ tasks
    @classmethod
    def fixed_tasks(cls, n: int, seed: int, **family_kwargs: Any) -> TensorDict:
        """A fixed set of ``n`` tasks drawn once from a generator seeded with ``seed``.

        The same ``(n, seed)`` always gives the same tasks (such as MAESN's 100 training and 30
        validation tasks per seed). By default ``sample_tasks(n, torch.Generator().manual_seed(seed))``;
        a family whose fixed sets have a structure of their own overrides it.
        """
        return cls.sample_tasks(n, torch.Generator().manual_seed(int(seed)), **family_kwargs)

    def held_out_tasks(self, n: int, seed: int) -> TensorDict:
        """A fixed set of ``n`` meta-test tasks: :meth:`fixed_tasks` of ``seed`` with this env's family kwargs."""
        return type(self).fixed_tasks(n, seed, **self.family_kwargs())

    def family_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of this instance that shape its task distribution."""
        return {}

    @contextlib.contextmanager
    def padding_skipped(self) -> Iterator[None]:
        """Within the block, copies whose episode has ended are not simulated until the next full reset.

        Collection masks every step of a copy after its episode ends (padding to the horizon);
        a family whose steps are expensive (MuJoCo) freezes such copies instead of simulating them:
        they keep their state, report reward 0 and are never ``done`` again, and the live copies'
        trajectories are bit-identical. Here (cheap families) it changes nothing.
        """
        yield

    def plot_xy(self, observation: torch.Tensor) -> torch.Tensor | None:
        """The 2D position ``[..., 2]`` that trajectory figures draw against the task's ``"goal"``; ``None``: no figure."""
        return None

    def set_tasks(self, tasks: TensorDictBase) -> None:
        """Assign ``tasks`` (batch size ``[n_tasks]``) to the copies; copy ``[i, j]`` runs task ``i``."""
        if not isinstance(tasks, TensorDictBase):
            raise TaskError(f"{self.family}: tasks must be a TensorDict, got {type(tasks).__name__}")
        if tasks.batch_size != torch.Size([self.n_tasks]):
            raise TaskError(
                f"{self.family}: expected tasks with batch size [{self.n_tasks}], got {list(tasks.batch_size)}"
            )
        self.validate_tasks(tasks, **self.family_kwargs())
        self.tasks = tasks.to(self.device)

    def _sample_own_tasks(self) -> TensorDict:
        """``n_tasks`` tasks drawn from :attr:`rng` (the families draw tasks on the CPU)."""
        generator = self.rng
        if generator.device.type != "cpu":
            seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
            generator = torch.Generator().manual_seed(seed)
        return self.sample_tasks(self.n_tasks, generator, **self.family_kwargs())

    def _require_tasks(self) -> None:
        if self.tasks is None:
            raise TaskError(f"{self.family}: no tasks set; call set_tasks(tasks) or reset() before step()")

    # ------------------------------------------------------------------ EnvBase
    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self.rng.manual_seed(int(seed))

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        if self.tasks is None:
            self.set_tasks(self._sample_own_tasks())
        mask = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict.get("_reset").reshape(self.batch_size)
        self._reset_copies(mask)
        self.step_count = torch.where(mask, 0, self.step_count)
        false = torch.zeros((*self.batch_size, 1), dtype=torch.bool, device=self.device)
        return TensorDict(
            {"observation": self._observation(), "done": false, "terminated": false.clone(), "truncated": false.clone()},
            batch_size=self.batch_size,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        self._require_tasks()
        action = self.check_action(tensordict.get("action"))
        reward, terminated = self._advance(action)
        self.step_count = self.step_count + 1
        truncated = self.step_count >= self.horizon
        terminated = terminated.unsqueeze(-1)
        truncated = truncated.unsqueeze(-1) & ~terminated
        return TensorDict(
            {
                "observation": self._observation(),
                "reward": reward.unsqueeze(-1).to(torch.get_default_dtype()),
                "done": terminated | truncated,
                "terminated": terminated,
                "truncated": truncated,
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def check_action(self, action: torch.Tensor) -> torch.Tensor:
        """Return ``action`` if it is a finite float tensor of shape ``[n_tasks, rollouts, action_dim]``."""
        expected = (*self.batch_size, self.action_dim)
        if not isinstance(action, torch.Tensor):
            raise ActionError(f"{self.family}: action must be a tensor, got {type(action).__name__}")
        if tuple(action.shape) != expected:
            raise ActionError(f"{self.family}: action has shape {list(action.shape)}, expected {list(expected)}")
        if not action.is_floating_point():
            raise ActionError(f"{self.family}: action must be a floating-point tensor, got {action.dtype}")
        if not torch.isfinite(action).all():
            bad = (~torch.isfinite(action)).any(-1).nonzero()[:3].tolist()
            raise ActionError(f"{self.family}: action has non-finite entries (first copies [task, rollout]: {bad})")
        return action

    # ------------------------------------------------------------------ checkpointing
    def rng_state(self) -> dict[str, Any]:
        """Everything that shapes future trajectories besides the tasks: the reset-noise generator."""
        return {"rng": self.rng.get_state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`rng_state`."""
        self.rng.set_state(state["rng"])
