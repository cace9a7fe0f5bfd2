"""Task families as natively batched TorchRL environments.

>>> from lightning_metarl import envs
>>> env = envs.make("Point-Corner", n_tasks=4, rollouts_per_task=2, horizon=10)
>>> env.batch_size
torch.Size([4, 2])
>>> env = envs.make("Point-Semicircle")  # one task, one copy, the family's default horizon
>>> env.rollout(env.horizon).batch_size  # with no tasks set, reset draws them
torch.Size([1, 1, 20])
"""

from lightning_metarl.envs import locomotion, maesn, point  # noqa: F401  (register the task families)
from lightning_metarl.envs.base import BatchedMetaEnv
from lightning_metarl.envs.mujoco_env import MujocoMetaEnv
from lightning_metarl.envs.registry import available, family, make, register

__all__ = ["BatchedMetaEnv", "MujocoMetaEnv", "available", "family", "make", "register"]
