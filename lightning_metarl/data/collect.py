"""Batched trajectory collection through TorchRL's collector: all ``tasks x rollouts`` copies at once.

One call collects a *trial* of ``episodes`` consecutive episodes of ``env.horizon`` steps in
every copy of a :class:`~lightning_metarl.envs.BatchedMetaEnv`, with one batch of a
``torchrl.collectors.Collector`` per episode (the env is reset at the start of each).
The actor's own state (a per-episode latent, a recurrent state) is kept across the episodes of
a trial and forgotten at the start of the next trial (:meth:`PolicyActor.begin_trial`), which is
what RL²-style trials need; gradient-based methods collect trials of one episode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector

from lightning_metarl.envs.base import BatchedMetaEnv
from lightning_metarl.nn.actor import PolicyActor


def episode_mask(done: torch.Tensor) -> torch.Tensor:
    """``mask[..., t] = 1`` iff no step before ``t`` ended the episode; ``done`` is ``[..., T]``."""
    done = done.to(torch.int64)
    ended_before = torch.cumsum(done, dim=-1) - done
    return ended_before == 0


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op torch threads, then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def collect_episode(env: BatchedMetaEnv, actor: PolicyActor) -> TensorDictBase:
    """One episode of ``env.horizon`` steps in every copy of ``env``, ``[n_tasks, rollouts, H]``.

    TorchRL's rollout layout (``observation``, ``action``, ``action_log_prob``,
    ``("next", "reward")``, ``("next", "done")``, ...) plus ``"mask"``: 1 for the steps of each
    copy's episode, 0 for the padding after an early termination (whatever the copy does after it
    is masked out), as in the reference samplers' padded paths. The padding is not simulated
    (:meth:`~lightning_metarl.envs.BatchedMetaEnv.padding_skipped`): after its episode ends a
    copy keeps its last state with reward 0.
    """
    rng_state = env.rng_state()
    collector = Collector(
        env,
        policy=actor,
        frames_per_batch=env.batch_size.numel() * env.horizon,
        total_frames=-1,
        reset_at_each_iter=True,
        use_buffers=False,
        trust_policy=True,
        auto_register_policy_transforms=False,
    )
    # Building the collector resets the env; only the reset of its first batch draws noise that counts.
    env.set_rng_state(rng_state)
    # The policy's forward pass is small; torch threads would only compete with the physics pool.
    # Steps after a copy's episode ended are masked: the env need not simulate them.
    with torch.no_grad(), torch_threads(1), env.padding_skipped():
        batch = next(iter(collector))
    collector.shutdown(close_env=False)
    batch.set("mask", episode_mask(batch.get(("next", "done")).squeeze(-1)))
    return batch


def collect(env: BatchedMetaEnv, actor: PolicyActor, episodes: int = 1) -> TensorDictBase:
    """A trial of ``episodes`` consecutive episodes per copy, ``[n_tasks, rollouts, episodes * H]``.

    The episodes are concatenated on the time dimension, each padded to ``H`` steps with its
    own ``"mask"``; with ``episodes > 1`` the batch also holds ``"episode"`` (the index of the
    episode each step belongs to). The actor's state carries across the episodes of the trial.
    """
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    actor.begin_trial()
    parts = []
    for _ in range(episodes):
        actor.begin_episode(env.batch_size)
        parts.append(collect_episode(env, actor))
    if episodes == 1:
        return parts[0]
    for index, part in enumerate(parts):
        part.set("episode", torch.full(part.batch_size, index, dtype=torch.long, device=part.device))
    return torch.cat(parts, dim=-1)
