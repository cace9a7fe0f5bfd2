"""Sampling benchmark: the batched MuJoCo task families against the physics ceiling and gymnasium.

    python tools/bench_sampling.py --families HalfCheetah-Fwd-Bwd Walker2D-Rand-Params

For each family, in one run (timings interleaved, best of ``--repeats`` after a warm-up):

(a) ``ours``: env steps/s of :func:`lightning_metarl.data.collect` (a TorchRL ``Collector``)
    driving the family's batched env with a 64x64 tanh Gaussian policy at the reference sizes
    (``--tasks`` 40 x ``--rollouts`` 20 copies, the family's horizon H unless ``--steps``),
    resets, observations, rewards and masking included;
(b) ``ceiling``: env steps/s of ONE open-loop ``mujoco.rollout`` call (a pool of ``--threads``
    threads) over the same copies for ``H * frame_skip`` substeps, from the same initial states,
    replaying the controls that (a) applied; the models are the family's plain model (no contact
    sensors: gymnasium's file, or MAESN's models as the family builds them) or its per-task
    random-physics models; no states are written back, no policy, no observations, no rewards:
    the physics alone;
(c) ``ours / ceiling``;
(d) ``ours / gym``: against gymnasium's ``SyncVectorEnv`` of the equivalent v5 envs (same model
    and frame skip; the random-physics families get the same per-task physics), driven by the
    same kind of policy, in env steps/s. It steps one env at a time in Python, so its steps/s
    barely depends on the number of envs; ``--gym-envs`` (default 40) envs are timed, not 800.
    MAESN's families (``Wheeled-Semicircle``, ``Ant-Semicircle``, ``Block-Push``) have no
    gymnasium equivalent (their own models; the ant's gear and frame skip differ from Ant-v5):
    their ``gym/s`` and ``ours/gym`` columns are ``nan``.

With ``--rollout`` it also times (a) through TorchRL's ``env.rollout`` (what collection used before
it moved to the ``Collector``) and prints ``ours / rollout``.

The policy runs with one torch thread (``torch.set_num_threads(1)``) so that it does not compete
with the physics pool for the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable

import mujoco
import numpy as np
import torch
from mujoco import rollout as mj_rollout

from lightning_metarl import envs
from lightning_metarl.data import collect
from lightning_metarl.envs.mujoco_env import PHYSICS_FIELDS, MujocoMetaEnv, load_model
from lightning_metarl.nn import GaussianMLPPolicy, PolicyActor, module_params

#: gymnasium v5 env id and keyword arguments with the family's model and frame skip.
GYM_EQUIVALENT: dict[str, tuple[str, dict]] = {
    "HalfCheetah-Fwd-Bwd": ("HalfCheetah-v5", {"frame_skip": 5}),
    "HalfCheetah-Vel": ("HalfCheetah-v5", {"frame_skip": 5}),
    "Ant-Fwd-Bwd": ("Ant-v5", {"frame_skip": 5}),
    "Ant-Goal": ("Ant-v5", {"frame_skip": 5}),
    "Walker2D-Fwd-Bwd": ("Walker2d-v5", {"frame_skip": 8}),
    "Walker2D-Rand-Params": ("Walker2d-v5", {"frame_skip": 4}),
    "Hopper-Rand-Params": ("Hopper-v5", {"frame_skip": 4}),
}
#: MAESN's task families (Gupta et al. 2018): no gymnasium equivalent, so no column (d).
MAESN_FAMILIES = ["Wheeled-Semicircle", "Ant-Semicircle", "Block-Push"]
MUJOCO_FAMILIES = list(GYM_EQUIVALENT) + MAESN_FAMILIES


def plain_model(env: MujocoMetaEnv) -> mujoco.MjModel:
    """The family's default model without contact sensors (a family that builds its model says how)."""
    build = getattr(type(env), "plain_model", None)
    return build() if build is not None else load_model(env.model_file)


@contextlib.contextmanager
def quiet_stderr():
    """Silence the process's file descriptor 2 (MuJoCo's C-level warnings) inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def timed(run: Callable[[], int]) -> float:
    """``steps / seconds`` of one call of ``run`` (which returns its step count)."""
    start = time.perf_counter()
    steps = run()
    return steps / (time.perf_counter() - start)


class Ours:
    """(a): one ``collect`` episode in every copy of ``env`` with a Gaussian MLP policy."""

    def __init__(self, env: MujocoMetaEnv, seed: int) -> None:
        self.env = env
        generator = torch.Generator().manual_seed(seed)
        env.set_tasks(env.sample_tasks(env.n_tasks, generator))
        policy = GaussianMLPPolicy(env.observation_dim, env.action_dim, (64, 64), "tanh")
        self.actor = PolicyActor(policy, module_params(policy), generator)
        self.last_actions: torch.Tensor | None = None

    def __call__(self) -> int:
        batch = collect(self.env, self.actor)
        self.last_actions = batch.get("action")
        return self.env.n_tasks * self.env.rollouts_per_task * self.env.horizon


class PlainRollout(Ours):
    """(a'): the same episode through TorchRL's ``env.rollout`` instead of a ``Collector`` (``--rollout``)."""

    def __call__(self) -> int:
        self.actor.begin_trial()
        self.actor.begin_episode(self.env.batch_size)
        with torch.no_grad():
            self.env.rollout(max_steps=self.env.horizon, policy=self.actor, auto_reset=True,
                             break_when_any_done=False, break_when_all_done=False)
        return self.env.n_tasks * self.env.rollouts_per_task * self.env.horizon


class Ceiling:
    """(b): one open-loop ``mujoco.rollout`` call over all copies and ``H * frame_skip`` substeps."""

    def __init__(self, env: MujocoMetaEnv, actions: torch.Tensor, threads: int) -> None:
        self.env = env
        plain = plain_model(env)  # the family's model, without our contact sensors
        if env.physics_tasks:
            self.models = [m for m in env.task_models for _ in range(env.rollouts_per_task)]
        else:
            self.models = [plain] * (env.n_tasks * env.rollouts_per_task)
        env.reset()
        state = env.physics_state()
        n = len(self.models)
        nstate = mujoco.mj_stateSize(plain, mujoco.mjtState.mjSTATE_FULLPHYSICS.value)
        if nstate != 1 + plain.nq + plain.nv:
            raise RuntimeError("the ceiling assumes states of time, qpos and qvel only")
        self.initial = np.ascontiguousarray(np.concatenate(
            [np.zeros((n, 1)), state.qpos.reshape(n, -1).numpy(), state.qvel.reshape(n, -1).numpy()], axis=1
        ))
        controls = env.control(actions).reshape(n, env.horizon, -1).numpy()
        self.controls = np.ascontiguousarray(np.repeat(controls, env.frame_skip, axis=1))
        self.datas = [mujoco.MjData(plain) for _ in range(threads)]
        self.pool = mj_rollout.Rollout(nthread=threads if threads > 1 else 0)

    def __call__(self) -> int:
        env = self.env
        self.pool.rollout(self.models, self.datas, self.initial, self.controls, skip_checks=True,
                          nstep=env.horizon * env.frame_skip, state=None, sensordata=None)
        return len(self.models) * env.horizon


class GymLoop:
    """(d): gymnasium's ``SyncVectorEnv`` of the family's v5 equivalent, driven by a Gaussian MLP policy."""

    def __init__(self, env: MujocoMetaEnv, n_envs: int, seed: int) -> None:
        import gymnasium as gym

        env_id, kwargs = GYM_EQUIVALENT[env.family]
        self.env, self.n_envs, self.seed = env, n_envs, seed
        with quiet_stderr():  # MuJoCo prints a deprecation warning per half_cheetah.xml it compiles
            self.vec = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, **kwargs) for _ in range(n_envs)])
        for i in range(n_envs if env.physics_tasks else 0):  # the same per-task physics as ours
            task_model = env.task_models[i % len(env.task_models)]
            model = self.vec.envs[i].unwrapped.model
            for name in PHYSICS_FIELDS:
                getattr(model, name)[...] = getattr(task_model, name)
            mujoco.mj_setConst(model, self.vec.envs[i].unwrapped.data)
        obs_dim = self.vec.single_observation_space.shape[0]
        self.policy = GaussianMLPPolicy(obs_dim, env.action_dim, (64, 64), "tanh")
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self) -> int:
        obs, _ = self.vec.reset(seed=self.seed)
        for _ in range(self.env.horizon):
            with torch.no_grad():
                mean, log_std = self.policy(torch.as_tensor(obs, dtype=torch.float32))
                action = mean + log_std.exp() * torch.randn(mean.shape, generator=self.generator)
            obs, *_ = self.vec.step(self.env.control(action).numpy())
        return self.n_envs * self.env.horizon

    def close(self) -> None:
        self.vec.close()


def bench_family(family: str, args: argparse.Namespace) -> dict[str, float]:
    """Steps/s of (a), (b) and (d) for ``family``, interleaved, best of ``args.repeats``."""
    kwargs = {} if args.steps is None else {"horizon": args.steps}
    env = envs.make(family, n_tasks=args.tasks, rollouts_per_task=args.rollouts, seed=args.seed,
                    num_threads=args.threads, **kwargs)
    ours = Ours(env, args.seed)
    ours()  # warm-up, and the controls the ceiling replays
    ceiling = Ceiling(env, ours.last_actions, args.threads)
    ceiling()
    runners: dict[str, Callable[[], int]] = {"ours": ours, "ceiling": ceiling}
    if args.rollout:
        runners["rollout"] = PlainRollout(env, args.seed)
    gym = None if args.no_gym or family not in GYM_EQUIVALENT else GymLoop(env, args.gym_envs, args.seed)
    if gym is not None:
        gym()
        runners["gym"] = gym
    best = dict.fromkeys(runners, 0.0)
    try:
        for _ in range(args.repeats):
            for name, run in runners.items():
                best[name] = max(best[name], timed(run))
    finally:
        if gym is not None:
            gym.close()
    best.setdefault("gym", float("nan"))
    best.setdefault("rollout", float("nan"))
    best["horizon"] = env.horizon
    return best


def main(argv: list[str] | None = None) -> None:
    """Parse the options, run every family, print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=MUJOCO_FAMILIES, choices=MUJOCO_FAMILIES)
    parser.add_argument("--tasks", type=int, default=40, help="tasks per batch (meta-batch size)")
    parser.add_argument("--rollouts", type=int, default=20, help="rollouts per task")
    parser.add_argument("--steps", type=int, default=None, help="horizon H (default: the family's)")
    parser.add_argument("--threads", type=int, default=2, help="physics threads (ours and the ceiling)")
    parser.add_argument("--repeats", type=int, default=3, help="timed episodes per measurement (best is kept)")
    parser.add_argument("--gym-envs", type=int, default=40, help="envs in gymnasium's SyncVectorEnv")
    parser.add_argument("--no-gym", action="store_true", help="skip the gymnasium comparison")
    parser.add_argument("--rollout", action="store_true",
                        help="also time the same episode through env.rollout (column ours/rollout)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    print(f"{args.tasks} tasks x {args.rollouts} rollouts, {args.threads} physics threads, "
          f"{args.gym_envs} gymnasium envs, torch {torch.__version__}, mujoco {mujoco.__version__}")
    print(f"{'family':22s} {'H':>4s} {'ours/s':>9s} {'ceiling/s':>10s} {'ours/ceil':>9s} {'gym/s':>8s} {'ours/gym':>8s}"
          f" {'ours/rollout':>12s}")
    for family in args.families:
        r = bench_family(family, args)
        print(f"{family:22s} {r['horizon']:4.0f} {r['ours']:9.0f} {r['ceiling']:10.0f} {r['ours'] / r['ceiling']:9.2f} "
              f"{r['gym']:8.0f} {r['ours'] / r['gym']:8.2f} {r['ours'] / r['rollout']:12.2f}", flush=True)


if __name__ == "__main__":
    main()
