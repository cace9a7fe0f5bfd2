"""Lightning plumbing shared by every meta-RL algorithm: one ``training_step`` = one meta-iteration.

:class:`MetaRLModule` owns the batched env, the seeded generators, evaluation on held-out tasks,
logging and checkpointing. Its meta-iteration has two steps that a subclass fills::

    tasks      = sample_tasks()                  # T_i ~ rho(T), i = 1..meta_batch_size
    meta_batch = collect_and_adapt(tasks)        # trajectories and whatever adaptation they drive
    metrics    = meta_update(meta_batch)         # the outer update
    log(meta_batch, metrics)

Gradient-based methods (MAML, E-MAML, ProMP, CAVIA, ...) fill them through the hooks of
:class:`~lightning_metarl.algorithms.gradient.GradientMetaRLModule`; a method that adapts
nothing by gradient (RL², a recurrent policy over trials of episodes) overrides the two steps
directly.
"""

from __future__ import annotations

import copy
import csv
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule
from tensordict import TensorDictBase
from torch.utils.data import DataLoader

from lightning_metarl import distributed, envs
from lightning_metarl.algorithms.meta_batch import MetaBatch
from lightning_metarl.data import add_advantages, collect
from lightning_metarl.envs.base import BatchedMetaEnv
from lightning_metarl.envs.mujoco_env import available_cpus
from lightning_metarl.errors import CheckpointError, ConfigError, NonFiniteUpdateError
from lightning_metarl.evaluation.figures import trajectory_image
from lightning_metarl.nn import GaussianMLPPolicy, PolicyActor

_RNG_KEY = "lightning_metarl_rng"
#: Added to ``eval_seed`` for the test set, which is then disjoint from the validation set.
TEST_SEED_OFFSET = 500_000_003
#: Key of a training task's index in the fixed training set (``num_train_tasks``).
TASK_INDEX = "task_index"
#: The file ``test`` writes into its run folder.
TEST_CSV = "test_returns.csv"


def check_same_lr_schedule(saved: bool, configured: bool) -> None:
    """Raise :class:`ConfigError` if a checkpoint written with (``saved``) or without a learning-rate scheduler is resumed without (with) one."""
    if saved != configured:
        had = "with a learning-rate scheduler" if saved else "without a learning-rate scheduler"
        now = "one is configured now" if configured else "none is configured now"
        raise ConfigError(f"the checkpoint was written {had} and {now}: resume with the run's own --lr_scheduler "
                          f"settings (its config.yaml holds them)")


def seed_from_global() -> int:
    """A seed for a generator of the module, drawn from torch's global generator (set by ``seed_everything``)."""
    return int(torch.randint(0, 2**62, (1,)).item())


class MetaIterations:
    """The meta-iteration indices of one epoch, ``iteration % iterations_per_epoch`` up to the epoch's end.

    An epoch of ``iterations_per_epoch`` meta-iterations starts where the module's
    ``iteration`` counter stands, so a run resumed from a checkpoint written in the middle of an
    epoch does only the epoch's remaining iterations. Lightning treats it as a resumable loader
    (its position is the module's counter, which the checkpoint holds).
    """

    def __init__(self, module: MetaRLModule) -> None:
        self.module = module

    def __len__(self) -> int:
        return self.module.hparams.iterations_per_epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(int(self.module.iteration) % len(self), len(self)))

    def state_dict(self) -> dict[str, Any]:
        """Nothing of its own: the position is the module's ``iteration`` (in the checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """See :meth:`state_dict`."""


class MetaRLModule(LightningModule):
    """Base ``LightningModule`` of meta-RL: env, generators, evaluation, logging, checkpoints.

    Args:
        env: task family name (see :func:`lightning_metarl.envs.available`).
        env_kwargs: family options, e.g. ``{"reward_type": "dense"}``.
        meta_batch_size: tasks per meta-iteration.
        rollouts_per_task: trajectories per task and per sampling phase.
        horizon: maximum path length H.
        outer_lr: learning rate of the outer optimizer.
        discount: gamma.
        gae_lambda: GAE lambda (reference: 1.0, i.e. returns minus the linear baseline).
        normalize_advantages: standardise advantages per task (reference: True).
        hidden_sizes: policy MLP widths (reference: 64 x 64).
        activation: policy nonlinearity (reference: tanh).
        init_std: initial policy standard deviation (reference: 1.0).
        iterations_per_epoch: meta-iterations per Lightning epoch (checkpoints are written at
            epoch ends, so this is also the checkpoint period); train for
            ``trainer.max_epochs * iterations_per_epoch`` meta-iterations.
        eval_batches: held-out meta-batches (of ``meta_batch_size`` tasks) evaluated by
            ``validate``/``test`` and after every epoch of ``fit`` (``--trainer.limit_val_batches 0``
            turns that off).
        eval_seed: seed of the held-out tasks (a set of its own, never used for training).
        num_train_tasks: if set, meta-train on a fixed set of this many tasks (the family's
            ``fixed_tasks`` drawn with ``train_task_seed``), each meta-batch drawn from it with
            replacement and carrying each task's index in the set under ``"task_index"``
            (MAESN's 100 training tasks, Gupta et al. 2018); ``None``: fresh tasks every iteration.
        train_task_seed: seed of the fixed training set.
        max_nonfinite_updates: a meta-iteration whose loss or updated parameters are not finite
            is undone (parameters, buffers and optimizer state restored) and counted in
            ``health/skipped_updates``; after this many in a row the run stops with an error.
    """

    def __init__(
        self,
        env: str = "Point-Corner",
        env_kwargs: dict[str, Any] | None = None,
        meta_batch_size: int = 40,
        rollouts_per_task: int = 20,
        horizon: int = 100,
        outer_lr: float = 1e-3,
        discount: float = 0.99,
        gae_lambda: float = 1.0,
        normalize_advantages: bool = True,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        init_std: float = 1.0,
        iterations_per_epoch: int = 10,
        eval_batches: int = 1,
        eval_seed: int = 1_000_003,
        max_nonfinite_updates: int = 3,
        num_train_tasks: int | None = None,
        train_task_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self._checkpoint_lr_schedulers: int | None = None  # the schedulers of the checkpoint resumed from, if any
        self._check_hparams()
        env_seed, task_seed, action_seed = (seed_from_global() for _ in range(3))
        # The env is not a submodule: it holds no parameters and must not move with .to(device).
        self.__dict__["env"] = envs.make(
            env,
            n_tasks=meta_batch_size,
            rollouts_per_task=rollouts_per_task,
            horizon=horizon,
            seed=env_seed,
            **(env_kwargs or {}),
        )
        self.train_tasks: TensorDictBase | None = None
        if num_train_tasks is not None:
            self.train_tasks = self.env.fixed_tasks(num_train_tasks, seed=train_task_seed, **self.env.family_kwargs())
        self.task_rng = torch.Generator().manual_seed(task_seed)
        self.action_rng = torch.Generator().manual_seed(action_seed)
        self.policy = self.build_policy()
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.register_buffer("skipped_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("consecutive_skips", torch.zeros((), dtype=torch.long))

    env: BatchedMetaEnv

    def _check_hparams(self) -> None:
        hp = self.hparams
        for name in ("meta_batch_size", "rollouts_per_task", "horizon", "iterations_per_epoch", "eval_batches",
                     "max_nonfinite_updates", "num_train_tasks"):
            if name == "num_train_tasks" and hp[name] is None:
                continue
            if isinstance(hp[name], bool) or not isinstance(hp[name], int) or hp[name] < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {hp[name]!r}")
        if not 0.0 <= hp.discount <= 1.0:
            raise ConfigError(f"model.discount must be in [0, 1], got {hp.discount}")
        if not 0.0 <= hp.gae_lambda <= 1.0:
            raise ConfigError(f"model.gae_lambda must be in [0, 1], got {hp.gae_lambda}")
        if not hp.init_std > 0:
            raise ConfigError(f"model.init_std must be positive, got {hp.init_std}")
        if not hp.outer_lr > 0:
            raise ConfigError(f"model.outer_lr must be positive, got {hp.outer_lr}")

    # ------------------------------------------------------------------ model pieces
    def build_policy(self) -> torch.nn.Module:
        """The meta-learned policy: a :class:`GaussianMLPPolicy` over the observation and :meth:`policy_inputs`."""
        hp = self.hparams
        return GaussianMLPPolicy(
            self.env.observation_dim,
            self.env.action_dim,
            hidden_sizes=tuple(hp.hidden_sizes),
            activation=hp.activation,
            init_std=hp.init_std,
            extra_inputs=self.policy_inputs(),
        )

    def policy_inputs(self) -> dict[str, int]:
        """``{key: size}`` of the policy's inputs besides the observation (none by default; CAVIA: the context)."""
        return {}

    # ------------------------------------------------------------------ sampling
    def sample_tasks(self) -> TensorDictBase:
        """Draw this iteration's meta-batch of tasks from the seeded task generator.

        With a fixed training set (``num_train_tasks``), ``meta_batch_size`` of its tasks drawn
        with replacement, with their indices in the set under ``"task_index"``.
        """
        if self.train_tasks is None:
            return self.env.sample_tasks(self.hparams.meta_batch_size, self.task_rng, **self.env.family_kwargs())
        index = torch.randint(len(self.train_tasks), (self.hparams.meta_batch_size,), generator=self.task_rng)
        tasks = self.train_tasks[index].clone()
        tasks.set(TASK_INDEX, index)
        return tasks

    def physics_envs(self) -> dict[str, BatchedMetaEnv]:
        """Every batched env of the module by name (``"env"``; more where phases differ in size)."""
        return {"env": self.env}

    def env_for(self, phase: str) -> BatchedMetaEnv:
        """The batched env that ``phase`` collects in (``self.env`` here)."""
        return self.env

    def set_tasks(self, tasks: TensorDictBase) -> None:
        """Give ``tasks`` (without their ``"task_index"``, which is the module's business) to every env of the module."""
        tasks = tasks.exclude(TASK_INDEX)
        for env in self.physics_envs().values():
            env.set_tasks(tasks)

    def collect(self, actor: PolicyActor, phase: str = "exploit", env: BatchedMetaEnv | None = None) -> TensorDictBase:
        """Trajectories ``[n_tasks, rollouts, T]`` of ``actor`` on the tasks of ``env`` (default: the phase's), processed by :meth:`process`."""
        batch = collect(self.env_for(phase) if env is None else env, actor).to(self.device)
        return self.process(batch, phase)

    def process(self, batch: TensorDictBase, phase: str) -> TensorDictBase:
        """Per-phase post-processing of a collected batch: returns, linear-baseline values and GAE advantages."""
        hp = self.hparams
        return add_advantages(batch, hp.discount, hp.gae_lambda, hp.normalize_advantages)

    # ------------------------------------------------------------------ the meta-iteration
    def collect_and_adapt(self, tasks: TensorDictBase, generator: torch.Generator | None = None) -> MetaBatch:
        """Collect on ``tasks`` (and adapt to them); action noise from ``generator`` (default: training's)."""
        raise NotImplementedError

    def meta_update(self, meta_batch: MetaBatch) -> dict[str, torch.Tensor]:
        """The outer update from one :class:`MetaBatch`; returns scalars to log (``loss/...``, ``kl/...``)."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One meta-iteration: sample tasks, collect and adapt, meta-update (undone if not finite), log."""
        start = time.perf_counter()
        resets_before, physics_before = self.env_resets(), self.physics_seconds()
        meta_batch = self.collect_and_adapt(self.sample_tasks())
        if physics_before is not None:
            meta_batch.timings["physics"] = self.physics_seconds() - physics_before
        t0 = time.perf_counter()
        snapshot = self._snapshot()
        metrics = distributed.average_scalars(self.meta_update(meta_batch))
        self._undo_if_not_finite(snapshot, metrics)
        self.step_lr_scheduler(metrics)
        meta_batch.timings["outer"] = time.perf_counter() - t0
        self.iteration += 1
        metrics["health/skipped_updates"] = self.skipped_updates.float()
        resets = torch.tensor(float(self.env_resets() - resets_before))
        metrics["health/env_resets_nonfinite"] = distributed.all_reduce_sum(resets)  # all ranks'
        self.log_iteration(meta_batch, metrics, time.perf_counter() - start)

    def step_lr_scheduler(self, metrics: dict[str, Any]) -> None:
        """Step the outer optimizer's learning-rate scheduler, if one is configured, once per meta-iteration.

        Schedulers count meta-iterations (``--lr_scheduler LinearLR --lr_scheduler.total_iters
        300`` anneals over 300 of them); the learning rate this iteration's update used is logged
        as ``optim/lr`` (that of the first parameter group).
        """
        scheduler = self.lr_schedulers() if self._trainer is not None else None
        if scheduler is None:
            return
        metrics["optim/lr"] = torch.tensor(float(scheduler.optimizer.param_groups[0]["lr"]))
        scheduler.step()

    def physics_seconds(self) -> float | None:
        """Seconds spent in the physics calls of all envs so far (MuJoCo families), ``None`` if no env counts them."""
        counts = [env.physics_seconds for env in self.physics_envs().values() if hasattr(env, "physics_seconds")]
        return sum(counts) if counts else None

    def env_resets(self) -> int:
        """Env copies reset so far because their physics became unstable or non-finite (all envs)."""
        return sum(getattr(env, "unstable_resets", 0) for env in self.physics_envs().values())

    def _snapshot(self) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        state = {name: value.detach().clone() for name, value in self.state_dict().items()}
        return state, [copy.deepcopy(optimizer.state_dict()) for optimizer in optimizers]

    def _undo_if_not_finite(self, snapshot: tuple[dict[str, torch.Tensor], list[dict[str, Any]]],
                            metrics: dict[str, Any]) -> None:
        """Restore ``snapshot`` if the update left a non-finite parameter, buffer or loss; count it."""
        finite = all(bool(torch.isfinite(t).all()) for t in self.state_dict().values() if t.is_floating_point())
        finite &= all(bool(torch.isfinite(torch.as_tensor(v)).all()) for k, v in metrics.items() if k.startswith("loss/"))
        if finite:
            self.consecutive_skips.zero_()
            return
        state, optimizer_states = snapshot
        self.load_state_dict(state)
        for optimizer, saved in zip(self.trainer.optimizers, optimizer_states):
            optimizer.load_state_dict(saved)
        self.skipped_updates += 1
        self.consecutive_skips += 1
        if int(self.consecutive_skips) >= self.hparams.max_nonfinite_updates:
            raise NonFiniteUpdateError(
                f"{int(self.consecutive_skips)} meta-iterations in a row (the last: {int(self.iteration) + 1}) gave a "
                f"non-finite loss or update and were undone; the run is diverging (lower the learning rates, "
                f"or raise model.max_nonfinite_updates)"
            )

    # ------------------------------------------------------------------ meta-test
    def validation_step(self, batch: int, batch_idx: int) -> None:
        """Meta-test on held-out tasks: adapt (no outer update) and log ``val/return/*``."""
        self.evaluate("val", int(batch))

    def test_step(self, batch: int, batch_idx: int) -> None:
        """As :meth:`validation_step` on a held-out set of its own, logged under ``test/`` and into ``test_returns.csv``."""
        self.evaluate("test", int(batch))

    def on_test_epoch_start(self) -> None:
        self._test_rows: list[tuple[int, int, int, float]] = []

    def on_test_epoch_end(self) -> None:
        """Write ``test_returns.csv`` (columns ``batch, task, step, return``) into the logger's run folder."""
        # with several processes each rank evaluated its share of the held-out batches (padded by repeats)
        rows = list({row[:3]: row for rows in distributed.gather_objects(self._test_rows) for row in rows}.values())
        log_dir = getattr(self.logger, "log_dir", None)
        if log_dir is None or not rows or not self.trainer.is_global_zero:
            return
        path = Path(log_dir) / TEST_CSV
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["batch", "task", "step", "return"])
            writer.writerows(rows)

    def evaluate(self, stage: str, index: int) -> dict[str, float]:
        """Adapt to the ``index``-th fixed meta-batch of held-out tasks and log its returns.

        The held-out tasks and the evaluation noise come from generators seeded with
        ``eval_seed + index`` for validation and ``eval_seed + TEST_SEED_OFFSET + index`` for
        test, so the two evaluate different tasks with different noise; the training generators
        are left untouched, so evaluating does not change the course of training. Besides the
        mean return after each adaptation step it logs its standard deviation over tasks
        (``<stage>/return/step_k_std``).
        """
        seed = self.hparams.eval_seed + index + (TEST_SEED_OFFSET if stage == "test" else 0)
        tasks = self.env.held_out_tasks(self.hparams.meta_batch_size, seed=seed)
        envs = self.physics_envs()
        env_states = {name: env.rng_state() for name, env in envs.items()}
        for k, env in enumerate(envs.values()):
            env.set_rng_state({"rng": torch.Generator().manual_seed(seed + 7919 * k).get_state()})
        try:
            with torch.inference_mode(False), torch.enable_grad():
                meta_batch = self.collect_and_adapt(tasks, torch.Generator().manual_seed(seed))
        finally:
            for name, env in envs.items():
                env.set_rng_state(env_states[name])
        returns = {f"{stage}/{name}": value.item() for name, value in meta_batch.returns().items()}
        per_task = meta_batch.task_returns()
        returns.update({f"{stage}/return/step_{k}_std": per_task[k].std(unbiased=False).item()
                        for k in range(per_task.shape[0])})
        if stage == "test":
            self._test_rows += [(index, task, k, per_task[k, task].item())
                                for task in range(per_task.shape[1]) for k in range(per_task.shape[0])]
        for name, value in returns.items():
            self.log(name, value, on_step=False, on_epoch=True, batch_size=1,
                     prog_bar=name == f"{stage}/return/post_update", sync_dist=distributed.world_size() > 1)
        if index == 0:
            self.log_trajectory_figure(stage, meta_batch)
        return returns

    def log_trajectory_figure(self, stage: str, meta_batch: MetaBatch) -> None:
        """An image of the first task's pre- and post-update trajectories with its goal, for families that draw positions.

        Logged as ``<stage>/trajectories`` (blue: exploration, orange: exploitation, green: goal;
        the shape of MAME's Figures 5-6 and MAESN's Figure 4) when the logger is TensorBoard's
        and the family has a 2D position (:meth:`~lightning_metarl.envs.BatchedMetaEnv.plot_xy`)
        and goals.
        """
        add_image = getattr(getattr(self.logger, "experiment", None), "add_image", None)
        if add_image is None or "goal" not in meta_batch.tasks.keys():
            return
        explore, exploit = (self._valid_positions(batch[0]) for batch in (meta_batch.batches[0], meta_batch.post_update))
        if explore is None or exploit is None:
            return
        goal = meta_batch.tasks.get("goal")[0]
        extent = 1.1 * max(explore.abs().max().item(), exploit.abs().max().item(), goal.abs().max().item(), 1e-3)
        add_image(f"{stage}/trajectories", trajectory_image(explore, exploit, goal, extent), int(self.iteration.item()))

    def _valid_positions(self, batch: TensorDictBase) -> torch.Tensor | None:
        """The plotted positions of one task's trajectories, ``[rollouts, T, 2]``, held at the last valid step after an early end."""
        xy = self.env.plot_xy(batch.get(("next", "observation")))
        if xy is None:
            return None
        mask = batch.get("mask")
        last = (mask.sum(-1, keepdim=True) - 1).clamp_min(0)
        held = xy.gather(-2, last.unsqueeze(-1).expand(*last.shape, 2))
        return torch.where(mask.unsqueeze(-1), xy, held)

    def log_iteration(self, meta_batch: MetaBatch, metrics: dict[str, torch.Tensor], iteration_s: float) -> None:
        """Log the iteration's returns, losses and timings under namespaced TensorBoard tags."""
        timings = distributed.average_scalars(meta_batch.timings)
        env_steps = meta_batch.env_steps * distributed.world_size()
        scalars: dict[str, Any] = distributed.average_scalars(meta_batch.returns())
        if hasattr(self.policy, "entropy"):
            scalars["policy/entropy"] = self.policy.entropy().detach()
        scalars["perf/env_steps_per_s"] = env_steps / max(timings.get("collect", 0.0), 1e-9)
        scalars["perf/iteration_s"] = iteration_s
        scalars.update({f"perf/{name}_s": seconds for name, seconds in timings.items()})
        scalars["env_steps"] = float(self.iteration.item() * env_steps)
        scalars.update(metrics)
        progress = {"iteration", "return/post_update", "perf/env_steps_per_s"}
        scalars["iteration"] = float(self.iteration.item())
        for name, value in scalars.items():
            value = torch.as_tensor(value, dtype=torch.float32).detach()
            self.log(name, value, on_step=True, on_epoch=False, prog_bar=name in progress, batch_size=1)

    # ------------------------------------------------------------------ Lightning plumbing
    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Lightning's backward, then every gradient averaged over the ranks of a multi-process run."""
        super().manual_backward(loss, *args, **kwargs)
        distributed.average_gradients(self.parameters())

    def setup(self, stage: str) -> None:
        """With several processes: check the strategy, offset the generators by rank, share the CPUs.

        Each rank meta-trains on ``meta_batch_size`` tasks of its own: its task, action-noise
        and env generators are derived from rank 0's (:func:`~lightning_metarl.distributed.rank_offset_generator_state`),
        and each physics pool gets its share of the node's CPUs unless ``env_kwargs`` sets
        ``num_threads``.
        """
        size = distributed.world_size()
        if size == 1:
            return
        strategy = self.trainer.strategy
        if not isinstance(strategy, distributed.MetaRLDDPStrategy):
            raise ConfigError(
                f"{type(self).__name__} runs on several processes with lightning_metarl.distributed.MetaRLDDPStrategy "
                f"(the CLI's --trainer.strategy ddp), not {type(strategy).__name__}: its updates average gradients "
                f"themselves, which the DistributedDataParallel wrapper cannot do for TRPO's products"
            )
        self._offset_generators(distributed.rank())
        if "num_threads" not in (self.hparams.env_kwargs or {}):
            for env in self.physics_envs().values():
                if hasattr(env, "set_num_threads"):
                    env.set_num_threads(max(1, available_cpus() // max(1, self.trainer.num_devices)))
        if stage == "fit" and distributed.rank() == 0:
            print(f"{size} processes x meta_batch_size {self.hparams.meta_batch_size} = "
                  f"{size * self.hparams.meta_batch_size} tasks per meta-iteration; gradients averaged over processes")

    def _generator_states(self) -> dict[str, Any]:
        return {
            "task": self.task_rng.get_state(),
            "action": self.action_rng.get_state(),
            **{name: env.rng_state() for name, env in self.physics_envs().items()},
        }

    def _set_generator_states(self, state: dict[str, Any]) -> None:
        self.task_rng.set_state(state["task"])
        self.action_rng.set_state(state["action"])
        for name, env in self.physics_envs().items():
            if name not in state:
                raise CheckpointError(f"checkpoint has no generator state of the {name!r} env of {type(self).__name__}")
            env.set_rng_state(state[name])

    def _offset_generators(self, rank: int) -> None:
        """Move every training generator to ``rank``'s stream (rank 0's are left as they are)."""
        offset = distributed.rank_offset_generator_state
        state = self._generator_states()
        self._set_generator_states({
            name: offset(value, rank) if isinstance(value, torch.Tensor) else {k: offset(v, rank) for k, v in value.items()}
            for name, value in state.items()
        })

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over all meta-parameters (``self.parameters()``) with ``outer_lr``."""
        return torch.optim.Adam(self.parameters(), lr=self.hparams.outer_lr)

    def train_dataloader(self) -> MetaIterations:
        """The epoch's meta-iteration indices (the data come from the env, not a dataset); resumable mid-epoch."""
        return MetaIterations(self)

    def val_dataloader(self) -> DataLoader:
        """``eval_batches`` indices of held-out meta-batches."""
        return DataLoader(range(self.hparams.eval_batches), batch_size=None, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """As :meth:`val_dataloader`."""
        return self.val_dataloader()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the generators that shape future iterations (tasks, actions, env resets): every rank's, in rank order, with several processes."""
        state = self._generator_states()
        size = distributed.world_size()
        checkpoint[_RNG_KEY] = state if size == 1 else {"ranks": distributed.gather_objects(state)}

    def on_train_start(self) -> None:
        """Refuse to resume training without the learning-rate scheduler the checkpoint was written with, or with one it lacks.

        Lightning would silently run on at the last learning rate, or restart the new schedule
        from its first value. (The CLI checks the same before its logger starts; this catches
        runs driven by a ``Trainer`` of one's own.)
        """
        if self._checkpoint_lr_schedulers is not None:
            check_same_lr_schedule(bool(self._checkpoint_lr_schedulers), bool(self.trainer.lr_scheduler_configs))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the generators saved by :meth:`on_save_checkpoint` (this rank's).

        A checkpoint written by another number of processes resumes every rank from rank 0's
        generators, offset by rank as at the start of a run; the run then goes on as a fresh
        run on that many processes would, not as the original would have.
        """
        state = checkpoint.get(_RNG_KEY)
        if state is None:
            raise CheckpointError(f"checkpoint was not written by {type(self).__name__} (no generator states)")
        self._checkpoint_lr_schedulers = len(checkpoint.get("lr_schedulers") or [])
        ranks = state["ranks"] if "ranks" in state else [state]
        rank, size = distributed.rank(), distributed.world_size()
        if len(ranks) == size:
            self._set_generator_states(ranks[rank])
            return
        self._set_generator_states(ranks[0])
        self._offset_generators(rank)
