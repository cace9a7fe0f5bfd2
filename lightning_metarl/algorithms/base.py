"""The meta-iteration skeleton shared by every gradient-based meta-RL algorithm.

One ``training_step`` is one meta-iteration (seed 000, Eq. 1)::

    tasks   = sample_tasks()                       # T_i ~ rho(T), i = 1..meta_batch_size
    batches = []
    for k in range(num_inner_steps):
        batches.append(collect(adapted params))    # pre-update trajectories tau
        adapted = inner_step(adapted, batches[-1]) # theta' = U(theta, T_i), all tasks at once
    post = collect(adapted)                        # post-update trajectories tau'
    outer_update(batches, post)                    # VPG / PPO / TRPO on J(theta)
    log(...)

A subclass overrides :meth:`MetaRLModule.inner_loss` and :meth:`MetaRLModule.outer_update`
(and, for other policy structures, :meth:`MetaRLModule.build_policy`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from lightning import LightningModule
from tensordict import TensorDictBase
from tensordict.nn import TensorDictParams
from torch.utils.data import DataLoader

from lightning_metarl import envs
from lightning_metarl.data import GaussianActor, add_advantages, collect, episode_returns
from lightning_metarl.envs.base import BatchedMetaEnv
from lightning_metarl.errors import CheckpointError, ConfigError
from lightning_metarl.nn import (
    GaussianMLPPolicy,
    call_per_task,
    gaussian_kl,
    gaussian_log_prob,
    module_params,
)
from lightning_metarl.objectives import per_task_mean

_RNG_KEY = "lightning_metarl_rng"


def _seed_from_global() -> int:
    return int(torch.randint(0, 2**62, (1,)).item())


class MetaRLModule(LightningModule):
    """Base ``LightningModule`` of gradient-based meta-RL: one ``training_step`` = one meta-iteration.

    Args:
        env: task family name (see :func:`lightning_metarl.envs.available`).
        env_kwargs: family options, e.g. ``{"reward_type": "dense"}``.
        meta_batch_size: tasks per meta-iteration.
        rollouts_per_task: trajectories per task and per sampling phase.
        horizon: maximum path length H.
        num_inner_steps: adaptation steps (each on freshly sampled trajectories).
        inner_lr: step size alpha of the inner update ``theta' = theta - alpha * grad L_in``.
        outer_lr: learning rate of the outer optimizer.
        discount: gamma.
        gae_lambda: GAE lambda (reference: 1.0, i.e. returns minus the linear baseline).
        normalize_advantages: standardise advantages per task (reference: True).
        hidden_sizes: policy MLP widths (reference: 64 x 64).
        activation: policy nonlinearity (reference: tanh).
        init_std: initial policy standard deviation (reference: 1.0).
        learn_inner_lr: meta-learn a step size per policy parameter entry (Meta-SGD style,
            initialised to ``inner_lr``) with the outer update; otherwise alpha is the constant
            ``inner_lr``.
        iterations_per_epoch: meta-iterations per Lightning epoch (checkpoints are written at
            epoch ends, so this is also the checkpoint period); train for
            ``trainer.max_epochs * iterations_per_epoch`` meta-iterations.
        eval_batches: held-out meta-batches (of ``meta_batch_size`` tasks) evaluated by
            ``validate``/``test`` and after every epoch of ``fit`` (``--trainer.limit_val_batches 0``
            turns that off).
        eval_seed: seed of the held-out tasks (a set of its own, never used for training).
    """

    def __init__(
        self,
        env: str = "Point-Corner",
        env_kwargs: dict[str, Any] | None = None,
        meta_batch_size: int = 40,
        rollouts_per_task: int = 20,
        horizon: int = 100,
        num_inner_steps: int = 1,
        inner_lr: float = 0.1,
        outer_lr: float = 1e-3,
        discount: float = 0.99,
        gae_lambda: float = 1.0,
        normalize_advantages: bool = True,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        init_std: float = 1.0,
        learn_inner_lr: bool = False,
        iterations_per_epoch: int = 10,
        eval_batches: int = 1,
        eval_seed: int = 1_000_003,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self._check_hparams()
        env_seed, task_seed, action_seed = (_seed_from_global() for _ in range(3))
        # The env is not a submodule: it holds no parameters and must not move with .to(device).
        self.__dict__["env"] = envs.make(
            env,
            n_tasks=meta_batch_size,
            rollouts_per_task=rollouts_per_task,
            horizon=horizon,
            seed=env_seed,
            **(env_kwargs or {}),
        )
        self.task_rng = torch.Generator().manual_seed(task_seed)
        self.action_rng = torch.Generator().manual_seed(action_seed)
        self.policy = self.build_policy()
        self.inner_step_sizes: TensorDictParams | None = None
        if learn_inner_lr:
            sizes = self.policy_params().detach().apply(lambda p: torch.full_like(p, float(inner_lr)))
            self.inner_step_sizes = TensorDictParams(sizes)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    env: BatchedMetaEnv

    def _check_hparams(self) -> None:
        hp = self.hparams
        for name in ("meta_batch_size", "rollouts_per_task", "horizon", "num_inner_steps", "iterations_per_epoch",
                     "eval_batches"):
            if not isinstance(hp[name], int) or hp[name] < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {hp[name]!r}")
        if not 0.0 <= hp.discount <= 1.0:
            raise ConfigError(f"model.discount must be in [0, 1], got {hp.discount}")
        if not 0.0 <= hp.gae_lambda <= 1.0:
            raise ConfigError(f"model.gae_lambda must be in [0, 1], got {hp.gae_lambda}")
        if hp.init_std <= 0:
            raise ConfigError(f"model.init_std must be positive, got {hp.init_std}")

    # ------------------------------------------------------------------ model pieces
    def build_policy(self) -> torch.nn.Module:
        """The meta-learned policy (a :class:`GaussianMLPPolicy` by default)."""
        hp = self.hparams
        return GaussianMLPPolicy(
            self.env.observation_dim,
            self.env.action_dim,
            hidden_sizes=tuple(hp.hidden_sizes),
            activation=hp.activation,
            init_std=hp.init_std,
        )

    def policy_params(self) -> TensorDictBase:
        """The shared (pre-update) policy parameters theta as a TensorDict, batch size ``[]``."""
        return module_params(self.policy)

    def log_prob(self, task_params: TensorDictBase, batch: TensorDictBase) -> torch.Tensor:
        """``log pi_params(a|s)`` of the batch's actions, ``[n_tasks, rollouts, T]``, differentiable."""
        mean, log_std = call_per_task(self.policy, task_params, batch.get("observation"))
        return gaussian_log_prob(mean, log_std, batch.get("action"))

    # ------------------------------------------------------------------ sampling
    def sample_tasks(self) -> TensorDictBase:
        """Draw this iteration's meta-batch of tasks from the seeded task generator."""
        return self.env.sample_tasks(self.hparams.meta_batch_size, self.task_rng, **self.env.family_kwargs())

    def collect(self, task_params: TensorDictBase, generator: torch.Generator | None = None) -> TensorDictBase:
        """Trajectories ``[n_tasks, rollouts, T]`` of the policy with per-task parameters, with advantages.

        Action noise comes from ``generator`` (default: the training action generator).
        """
        actor = GaussianActor(self.policy, task_params, self.action_rng if generator is None else generator)
        batch = collect(self.env, actor).to(self.device)
        hp = self.hparams
        return add_advantages(batch, hp.discount, hp.gae_lambda, hp.normalize_advantages)

    # ------------------------------------------------------------------ adaptation
    def inner_loss(self, task_params: TensorDictBase, batch: TensorDictBase) -> torch.Tensor:
        """Per-task inner objective ``[n_tasks]`` whose gradient adapts the parameters."""
        raise NotImplementedError

    def inner_step(self, task_params: TensorDictBase, batch: TensorDictBase, create_graph: bool) -> TensorDictBase:
        """One batched adaptation step ``theta'_i = theta_i - alpha * grad L_in(theta_i, tau_i)`` for all tasks.

        ``task_params`` has batch size ``[n_tasks]``; the sum of the per-task losses is
        differentiated once, giving each task its own gradient. With ``create_graph`` the result
        stays a differentiable function of theta (the meta-gradient of seed 000, Eq. 1).
        """
        if not create_graph:
            task_params = task_params.detach().requires_grad_(True)
        loss = self.inner_loss(task_params, batch).sum()
        keys = list(task_params.keys(True, True))
        grads = torch.autograd.grad(loss, [task_params.get(k) for k in keys], create_graph=create_graph)
        adapted = task_params.clone(recurse=False)
        for key, grad in zip(keys, grads):
            adapted.set(key, task_params.get(key) - self.inner_step_size(key) * grad)
        return adapted if create_graph else adapted.detach()

    def inner_step_size(self, key: tuple[str, ...] | str) -> torch.Tensor | float:
        """alpha for the parameter ``key``: a learned tensor of its shape, or the constant ``inner_lr``."""
        if self.inner_step_sizes is None:
            return self.hparams.inner_lr
        return self.inner_step_sizes.get(key)

    def adapt_steps(
        self, params: TensorDictBase, batches: Sequence[TensorDictBase], create_graph: bool = True
    ) -> list[TensorDictBase]:
        """The per-task parameters before each inner step and after the last: ``len(batches) + 1`` items.

        Item ``k`` is the policy that collected ``batches[k]`` (item 0 is ``params`` expanded to
        the task dimension); the last item is the adapted policy that collected the post-update batch.
        """
        steps = [params.expand(self.hparams.meta_batch_size)]
        for batch in batches:
            steps.append(self.inner_step(steps[-1], batch, create_graph))
        return steps

    def adapt(self, params: TensorDictBase, batches: Sequence[TensorDictBase], create_graph: bool = True) -> TensorDictBase:
        """The adapted per-task parameters after one inner step on each of ``batches`` in turn."""
        return self.adapt_steps(params, batches, create_graph)[-1]

    def kl(self, old_params: TensorDictBase, new_params: TensorDictBase, batch: TensorDictBase) -> torch.Tensor:
        """Per-task mean ``KL(pi_old(.|s) || pi_new(.|s))`` over the batch's valid states, ``[n_tasks]``."""
        observation = batch.get("observation")
        with torch.no_grad():
            old_mean, old_log_std = call_per_task(self.policy, old_params.detach(), observation)
        new_mean, new_log_std = call_per_task(self.policy, new_params, observation)
        return per_task_mean(gaussian_kl(old_mean, old_log_std, new_mean, new_log_std), batch.get("mask"))

    # ------------------------------------------------------------------ outer loop
    def outer_update(self, inner_batches: list[TensorDictBase], post_batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """Update theta from the pre-update ``inner_batches`` and the post-update batch; return metrics."""
        raise NotImplementedError

    def sample_and_adapt(
        self, tasks: TensorDictBase, generator: torch.Generator | None = None
    ) -> tuple[list[TensorDictBase], TensorDictBase, dict[str, float]]:
        """Collect and adapt on ``tasks``: ``num_inner_steps`` x (collect, inner step), then collect post-update.

        Returns the pre-update batches (one per inner step), the post-update batch and the
        seconds spent collecting and adapting.
        """
        timings = {"collect": 0.0, "adapt": 0.0}
        self.env.set_tasks(tasks)
        task_params = self.policy_params().expand(self.hparams.meta_batch_size)
        inner_batches: list[TensorDictBase] = []
        for _ in range(self.hparams.num_inner_steps):
            t0 = time.perf_counter()
            inner_batches.append(self.collect(task_params, generator))
            t1 = time.perf_counter()
            task_params = self.inner_step(task_params, inner_batches[-1], create_graph=False)
            timings["collect"] += t1 - t0
            timings["adapt"] += time.perf_counter() - t1
        t0 = time.perf_counter()
        post_batch = self.collect(task_params, generator)
        timings["collect"] += time.perf_counter() - t0
        return inner_batches, post_batch, timings

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One meta-iteration: sample tasks, collect, adapt, collect, outer update, log."""
        start = time.perf_counter()
        inner_batches, post_batch, timings = self.sample_and_adapt(self.sample_tasks())
        t0 = time.perf_counter()
        metrics = self.outer_update(inner_batches, post_batch)
        timings["outer"] = time.perf_counter() - t0
        self.iteration += 1
        self.log_iteration(inner_batches, post_batch, metrics, timings, time.perf_counter() - start)

    # ------------------------------------------------------------------ meta-test
    def validation_step(self, batch: int, batch_idx: int) -> None:
        """Meta-test on held-out tasks: adapt (no outer update) and log ``val/return/*``."""
        self.evaluate("val", batch_idx)

    def test_step(self, batch: int, batch_idx: int) -> None:
        """As :meth:`validation_step`, logged under ``test/``."""
        self.evaluate("test", batch_idx)

    def evaluate(self, stage: str, index: int) -> dict[str, float]:
        """Adapt to the ``index``-th fixed meta-batch of held-out tasks and log its returns.

        The held-out tasks and the evaluation noise come from generators seeded with
        ``eval_seed + index``; the training generators are left untouched, so evaluating does
        not change the course of training.
        """
        seed = self.hparams.eval_seed + index
        tasks = self.env.held_out_tasks(self.hparams.meta_batch_size, seed=seed)
        env_state = self.env.rng_state()
        self.env.set_rng_state({"rng": torch.Generator().manual_seed(seed).get_state()})
        try:
            with torch.inference_mode(False), torch.enable_grad():
                inner_batches, post_batch, _ = self.sample_and_adapt(tasks, torch.Generator().manual_seed(seed))
        finally:
            self.env.set_rng_state(env_state)
        returns = {f"{stage}/return/step_{k}": episode_returns(b).mean().item()
                   for k, b in enumerate([*inner_batches, post_batch])}
        returns[f"{stage}/return/pre_update"] = returns[f"{stage}/return/step_0"]
        returns[f"{stage}/return/post_update"] = returns[f"{stage}/return/step_{len(inner_batches)}"]
        for name, value in returns.items():
            self.log(name, value, on_step=False, on_epoch=True, batch_size=1,
                     prog_bar=name == f"{stage}/return/post_update")
        return returns

    def log_iteration(
        self,
        inner_batches: list[TensorDictBase],
        post_batch: TensorDictBase,
        metrics: dict[str, torch.Tensor],
        timings: dict[str, float],
        iteration_s: float,
    ) -> None:
        """Log the iteration's returns, losses and timings under namespaced TensorBoard tags."""
        batches = [*inner_batches, post_batch]
        env_steps = sum(b.get("mask").numel() for b in batches)
        scalars: dict[str, Any] = {f"return/step_{k}": episode_returns(b).mean() for k, b in enumerate(batches)}
        scalars["return/pre_update"] = scalars["return/step_0"]
        scalars["return/post_update"] = scalars[f"return/step_{len(inner_batches)}"]
        scalars["policy/entropy"] = self.policy.entropy().detach()
        scalars["perf/env_steps_per_s"] = env_steps / max(timings["collect"], 1e-9)
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
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the meta-parameters: the policy and, if learned, the inner step sizes."""
        return torch.optim.Adam(self.parameters(), lr=self.hparams.outer_lr)

    def train_dataloader(self) -> DataLoader:
        """``iterations_per_epoch`` meta-iteration indices: the data come from the env, not a dataset."""
        return DataLoader(range(self.hparams.iterations_per_epoch), batch_size=None, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        """``eval_batches`` indices of held-out meta-batches."""
        return DataLoader(range(self.hparams.eval_batches), batch_size=None, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """As :meth:`val_dataloader`."""
        return self.val_dataloader()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the generators that shape future iterations (tasks, actions, env resets)."""
        checkpoint[_RNG_KEY] = {
            "task": self.task_rng.get_state(),
            "action": self.action_rng.get_state(),
            "env": self.env.rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the generators saved by :meth:`on_save_checkpoint`."""
        state = checkpoint.get(_RNG_KEY)
        if state is None:
            raise CheckpointError(f"checkpoint was not written by {type(self).__name__} (no generator states)")
        self.task_rng.set_state(state["task"])
        self.action_rng.set_state(state["action"])
        self.env.set_rng_state(state["env"])
