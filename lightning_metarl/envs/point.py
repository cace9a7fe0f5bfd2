"""2D point-robot task families, stepped in vectorized torch.

``Point-Corner`` is the sparse corner-goal point env of ProMP (Rothfuss et al. 2019): the state
is the 2D position, reset uniform in ``[-0.2, 0.2]^2``; the action is clipped to ``+-0.2`` per
axis and added to the position; an episode never terminates. A task is one of the four corners
``(+-2, +-2)``. Default horizon 100.

``Point-Semicircle`` is the sparse point robot of PEARL (Rakelly et al. 2019): start at the
centre, steps of at most ``0.1`` per axis, goal on the upper semicircle of radius 1, reward
``1 - distance`` within ``0.2`` of the goal, else 0 (dense variant: ``-distance``). Default
horizon 20 (PEARL's path length for this task).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from lightning_metarl.envs.base import BatchedMetaEnv
from lightning_metarl.envs.registry import register
from lightning_metarl.errors import ConfigError, TaskError

CORNERS = torch.tensor([[-2.0, -2.0], [2.0, -2.0], [-2.0, 2.0], [2.0, 2.0]])


def corner_reward(
    position: torch.Tensor,
    next_position: torch.Tensor,
    goal: torch.Tensor,
    reward_type: str = "sparse",
    sparse_radius: float = 0.5,
) -> torch.Tensor:
    """Reward of a step ``position -> next_position`` for corner ``goal`` (all ``[..., 2]``).

    Sparse: 0 while the L1 distance of ``next_position`` from the origin is below
    ``sparse_radius``; beyond it, if ``goal`` is the corner nearest to ``next_position``, the
    decrease of the Euclidean distance to the goal, ``|p - g| - |p' - g|``; else 0. Dense:
    ``-|p' - g|``. Both gates look at ``next_position`` only, as in the reference code.

    Along a path that stays in the goal's region the sparse rewards telescope to (distance at the
    last unrewarded step) minus (final distance), about 2.5 for the straight path. They do not
    telescope for paths that leave the region: a step out of it (across the L1 radius or into
    another corner's Voronoi cell) is free while the step back in is paid its progress, so a
    policy that zig-zags across the region's border is paid on every other step: diagonal
    steps across the L1 radius earn ``0.2 * sqrt(2)`` each way out, 14.1 over H = 100.
    Learners find this (MAML-VPG and ProMP reach about 9.8 post-update), so returns above 2.5
    on this task mean the border is being exploited, not that the goal was reached.
    """
    next_distance = (next_position - goal).norm(dim=-1)
    if reward_type == "dense":
        return -next_distance
    corners = CORNERS.to(next_position)
    nearest = (next_position.unsqueeze(-2) - corners).norm(dim=-1).argmin(dim=-1)
    goal_is_nearest = (corners[nearest] == goal).all(dim=-1)
    outside = next_position.abs().sum(dim=-1) >= sparse_radius
    progress = (position - goal).norm(dim=-1) - next_distance
    return torch.where(outside & goal_is_nearest, progress, torch.zeros_like(progress))


class PointGoalEnv(BatchedMetaEnv):
    """A batch of 2D point robots: state = position, action clipped to ``+-max_action`` per axis and
    added to the position, never terminates; a task is a ``"goal"`` position. Subclasses give
    the reward (:meth:`reward`), the reset state and the task distribution.
    """

    observation_dim = 2
    action_dim = 2
    REWARD_TYPES = ("sparse", "dense")

    def plot_xy(self, observation: torch.Tensor) -> torch.Tensor:
        """The position: the observation itself."""
        return observation

    def __init__(
        self,
        n_tasks: int,
        rollouts_per_task: int,
        horizon: int | None,
        reward_type: str,
        max_action: float,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if reward_type not in self.REWARD_TYPES:
            raise ConfigError(f"{self.family}: reward_type must be one of {self.REWARD_TYPES}, got {reward_type!r}")
        if not max_action > 0:
            raise ConfigError(f"{self.family}: max_action must be positive, got {max_action!r}")
        self.reward_type = reward_type
        self.max_action = float(max_action)
        super().__init__(n_tasks, rollouts_per_task, horizon, seed=seed, device=device)
        self.position = torch.zeros((*self.batch_size, 2), device=self.device)

    def action_bounds(self) -> tuple[float, float]:
        return -self.max_action, self.max_action

    @classmethod
    def task_goals(cls, tasks: TensorDictBase) -> torch.Tensor:
        """The ``"goal"`` entry of ``tasks``, checked to be ``[n, 2]``."""
        if "goal" not in tasks.keys():
            raise TaskError(f"{cls.family}: tasks need a 'goal' entry, got keys {sorted(tasks.keys())}")
        goal = tasks.get("goal")
        if goal.shape[-1:] != torch.Size([2]):
            raise TaskError(f"{cls.family}: goal must have shape [n, 2], got {list(goal.shape)}")
        return goal

    def reward(self, position: torch.Tensor, next_position: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Reward of the step ``position -> next_position`` for ``goal``."""
        raise NotImplementedError

    def _observation(self) -> torch.Tensor:
        return self.position.clone()

    def _advance(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        position = self.position
        self.position = position + action.clamp(-self.max_action, self.max_action)
        reward = self.reward(position, self.position, self.tasks.get("goal").unsqueeze(1))
        return reward, torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)


@register("Point-Corner")
class PointCorner(PointGoalEnv):
    """Batched 2D point robot whose task is to reach one of four corners (ProMP's sparse point env).

    Args:
        reward_type: ``"sparse"`` (default, the paper's setting) or ``"dense"`` (negative
            distance to the goal); see :func:`corner_reward`.
        sparse_radius: L1 radius around the origin inside which the sparse reward is 0.
        max_action: per-axis clip of the action (the step size).
        **kwargs: see :class:`~lightning_metarl.envs.base.BatchedMetaEnv`.

    Tasks: ``TensorDict({"goal": [n, 2]})`` with every goal one of ``(+-2, +-2)``.
    """

    default_horizon = 100

    def __init__(
        self,
        n_tasks: int = 1,
        rollouts_per_task: int = 1,
        horizon: int | None = None,
        reward_type: str = "sparse",
        sparse_radius: float = 0.5,
        max_action: float = 0.2,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.sparse_radius = float(sparse_radius)
        super().__init__(n_tasks, rollouts_per_task, horizon, reward_type, max_action, seed=seed, device=device)

    @classmethod
    def sample_tasks(cls, n: int, generator: torch.Generator, **family_kwargs: Any) -> TensorDict:
        """``n`` goals drawn uniformly from the four corners."""
        index = torch.randint(len(CORNERS), (n,), generator=generator)
        return TensorDict({"goal": CORNERS[index].clone()}, batch_size=[n])

    @classmethod
    def validate_tasks(cls, tasks: TensorDictBase, **family_kwargs: Any) -> None:
        goal = cls.task_goals(tasks)
        is_corner = (goal.unsqueeze(-2) == CORNERS.to(goal)).all(-1).any(-1)
        if not is_corner.all():
            raise TaskError(
                f"Point-Corner: every goal must be a corner (+-2, +-2); got {goal[~is_corner][:3].tolist()}"
            )

    def _reset_copies(self, reset_mask: torch.Tensor) -> None:
        noise = torch.rand((*self.batch_size, 2), generator=self.rng, device=self.device) * 0.4 - 0.2
        self.position = torch.where(reset_mask.unsqueeze(-1), noise, self.position)

    def reward(self, position: torch.Tensor, next_position: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return corner_reward(position, next_position, goal, self.reward_type, self.sparse_radius)


def semicircle_reward(
    next_position: torch.Tensor, goal: torch.Tensor, reward_type: str = "sparse", goal_radius: float = 0.2
) -> torch.Tensor:
    """Reward of reaching ``next_position`` for ``goal`` (both ``[..., 2]``), PEARL's sparse point robot.

    Dense: ``-|p' - g|``. Sparse: ``1 - |p' - g|`` when the distance is at most ``goal_radius``,
    else 0 (PEARL's ``sparsify_rewards`` plus the +1 that makes the sparse reward positive).
    """
    distance = (next_position - goal).norm(dim=-1)
    if reward_type == "dense":
        return -distance
    return torch.where(distance <= goal_radius, 1.0 - distance, torch.zeros_like(distance))


@register("Point-Semicircle")
class PointSemicircle(PointGoalEnv):
    """Batched 2D point robot with a goal on a semicircle (PEARL's sparse point robot, Rakelly et al. 2019).

    The state is the 2D position, starting at the centre ``(0, 0)`` (no reset noise); the action
    is clipped to ``+-max_action`` per axis and added to the position; an episode never
    terminates. Default horizon 20 (PEARL's path length for this task).

    Args:
        reward_type: ``"sparse"`` (default; ``1 - distance`` within ``goal_radius`` of the goal,
            else 0) or ``"dense"`` (``-distance``), see :func:`semicircle_reward`.
        radius: radius of the semicircle of goals.
        goal_radius: radius around the goal inside which the sparse reward is paid.
        max_action: per-axis clip of the action (the step size).
        **kwargs: see :class:`~lightning_metarl.envs.base.BatchedMetaEnv`.

    Tasks: ``TensorDict({"goal": [n, 2]})``, ``goal = radius * (cos a, sin a)`` with ``a ~ U(0, pi)``.
    """

    default_horizon = 20

    def __init__(
        self,
        n_tasks: int = 1,
        rollouts_per_task: int = 1,
        horizon: int | None = None,
        reward_type: str = "sparse",
        radius: float = 1.0,
        goal_radius: float = 0.2,
        max_action: float = 0.1,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        for name, value in (("radius", radius), ("goal_radius", goal_radius)):
            if not value > 0:
                raise ConfigError(f"Point-Semicircle: {name} must be positive, got {value!r}")
        self.radius = float(radius)
        self.goal_radius = float(goal_radius)
        super().__init__(n_tasks, rollouts_per_task, horizon, reward_type, max_action, seed=seed, device=device)

    def family_kwargs(self) -> dict[str, Any]:
        return {"radius": self.radius}

    @classmethod
    def sample_tasks(cls, n: int, generator: torch.Generator, radius: float = 1.0, **family_kwargs: Any) -> TensorDict:
        """``n`` goals ``radius * (cos a, sin a)`` with ``a ~ U(0, pi)``."""
        angle = torch.rand(n, generator=generator) * math.pi
        goal = radius * torch.stack((angle.cos(), angle.sin()), dim=-1)
        return TensorDict({"goal": goal}, batch_size=[n])

    @classmethod
    def validate_tasks(cls, tasks: TensorDictBase, radius: float = 1.0, **family_kwargs: Any) -> None:
        goal = cls.task_goals(tasks)
        on_arc = ((goal.norm(dim=-1) - radius).abs() <= 1e-4 * radius) & (goal[:, 1] >= -1e-4 * radius)
        if not on_arc.all():
            raise TaskError(
                f"Point-Semicircle: every goal must lie on the upper semicircle of radius {radius}; "
                f"got {goal[~on_arc][:3].tolist()}"
            )

    def _reset_copies(self, reset_mask: torch.Tensor) -> None:
        self.position = torch.where(reset_mask.unsqueeze(-1), torch.zeros_like(self.position), self.position)

    def reward(self, position: torch.Tensor, next_position: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return semicircle_reward(next_position, goal, self.reward_type, self.goal_radius)
