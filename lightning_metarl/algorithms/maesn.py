"""MAESN (Gupta et al. 2018): a latent exploration space adapted by policy gradient on per-task latent distributions.

The policy ``pi_theta(a | s, z)`` reads a latent ``z ~ q_omega_i = N(mu_i, diag(sigma_i^2))`` drawn
once per episode. Every training task ``i`` of a fixed set (100 in the paper) has its own
variational parameters ``omega_i = (mu_i, log sigma_i)``, rows of two tables that are
parameters of the module (and so in the checkpoint). A meta-iteration (Algorithm 1):

1. draw ``meta_batch_size`` task indices with replacement; collect with ``omega_i``;
2. inner step on ``omega_i`` only (Eq. 3, likelihood-ratio gradient of Eq. 5):
   ``omega'_i = omega_i - alpha (.) grad_omega [-mean_k log q_omega_i(z_k) A_k]`` with
   ``A_k`` the advantage of trajectory ``k`` at ``t = 0`` and per-dimension step sizes ``alpha``
   for ``mu`` and ``log sigma`` that are meta-learned; optionally also a policy-gradient step on
   ``theta`` (Eq. 4, ``adapt_policy``);
3. collect with ``omega'_i``;
4. outer step (TRPO by default) on the post-update surrogate plus
   ``kl_weight * mean_i KL(q_omega_i || N(0, I))`` on the *pre-update* ``omega_i`` (Eq. 2).

The meta-gradient reaches ``theta``, the tables and ``alpha`` through ``omega'_i``: the
post-update batch stores each episode's standard-normal draw ``eps``, and its actions'
likelihood is evaluated at ``z = mu'_i + eps * sigma'_i`` (the latent reparameterised, the
actions scored), an unbiased estimate of the gradient of the post-update return.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from lightning_metarl.algorithms.base import TASK_INDEX
from lightning_metarl.algorithms.gradient import PARAMS
from lightning_metarl.algorithms.maml import MAML, InnerObjective, OuterOptimizer
from lightning_metarl.algorithms.meta_batch import MetaBatch
from lightning_metarl.envs.base import BatchedMetaEnv
from lightning_metarl.errors import ConfigError
from lightning_metarl.evaluation import latent_ellipse_image
from lightning_metarl.masking import standardize
from lightning_metarl.nn import DiagGaussian, PolicyActor
from lightning_metarl.nn.latent import (
    LATENT,
    LATENT_LOG_STD,
    LATENT_MEAN,
    LATENT_NOISE,
    LatentPolicy,
    latent_sample,
    standard_normal_sampler,
)
from lightning_metarl.objectives.latent import kl_to_standard_normal, latent_score_loss

#: Key of the per-trajectory advantage at ``t = 0`` that the inner step on ``omega`` weighs.
LATENT_ADVANTAGE = "latent_advantage"


class TaskLatents(nn.Module):
    """The per-task variational parameters ``omega_i = (mu_i, log sigma_i)`` of a fixed set of training tasks.

    ``mu`` starts ``N(0, 1)`` and ``log sigma`` at 0 (the initialisation of the MAESN authors' code).
    """

    def __init__(self, num_tasks: int, latent_size: int) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.randn(num_tasks, latent_size))
        self.log_std = nn.Parameter(torch.zeros(num_tasks, latent_size))

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log sigma)`` of the tasks ``index`` (``[n]`` -> ``[n, d]`` each), differentiable."""
        return self.mean[index], self.log_std[index]


class MAESN(MAML):
    """Model-Agnostic Exploration with Structured Noise (Gupta et al. 2018, Eq. 2-5, Algorithm 1).

    See the module docstring for the meta-iteration. The fast state of task ``i`` is
    ``{"latent_mean": mu_i, "latent_log_std": log sigma_i}`` (plus ``"params"`` with
    ``adapt_policy``). Held-out tasks (validation, test, the meta-test protocol) have no row
    in the tables: they start from the prior ``omega = (0, 0)`` (§3.4).

    Args:
        latent_size: dimension of ``z`` (paper: 2).
        num_train_tasks: size of the fixed training-task set (paper: 100; see
            :class:`~lightning_metarl.algorithms.base.MetaRLModule`), one row of the tables each.
        train_task_seed: seed of the training-task set (stored with the run's hyperparameters).
        kl_weight: weight of ``KL(q_omega_i || N(0, I))`` (paper: 0.5 wheeled, 0.1 ant).
        adapt_policy: also take the inner step on ``theta`` (Eq. 4; off in the paper's results),
            with ``inner_objective`` as its estimator.
        learn_inner_lr: meta-learn the step sizes, one per latent dimension for ``mu`` and for
            ``log sigma`` (and per weight of ``theta`` with ``adapt_policy``), initialised to
            ``inner_lr`` (paper: 1.0). Default True.
        outer_optimizer: ``"trpo"`` (paper, the default) or ``"adam"``.
        **kwargs: see :class:`~lightning_metarl.algorithms.maml.MAML`.
    """

    def __init__(
        self,
        *args: Any,
        latent_size: int = 2,
        num_train_tasks: int = 100,
        train_task_seed: int = 0,
        kl_weight: float = 0.5,
        adapt_policy: bool = False,
        inner_lr: float = 1.0,
        learn_inner_lr: bool = True,
        inner_objective: InnerObjective = "vpg",
        outer_optimizer: OuterOptimizer = "trpo",
        **kwargs: Any,
    ) -> None:
        for name, value in (("latent_size", latent_size), ("num_train_tasks", num_train_tasks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if not kl_weight >= 0:
            raise ConfigError(f"model.kl_weight must be non-negative, got {kl_weight}")
        super().__init__(*args, inner_lr=inner_lr, learn_inner_lr=learn_inner_lr, inner_objective=inner_objective,
                         outer_optimizer=outer_optimizer, num_train_tasks=num_train_tasks,
                         train_task_seed=train_task_seed, **kwargs)

    _task_index: torch.Tensor | None = None

    # ------------------------------------------------------------------ model pieces
    def build_policy(self) -> nn.Module:
        """``pi_theta(a | s, z)`` (:class:`LatentPolicy`), and the tables of the training tasks' ``omega``.

        The tables are built here, with the policy, because the base class shapes the learned
        step sizes like the fast state right after building the policy.
        """
        hp = self.hparams
        self.task_latents = TaskLatents(hp.num_train_tasks, hp.latent_size)
        return LatentPolicy(self.env.observation_dim, self.env.action_dim, hp.latent_size,
                            hidden_sizes=tuple(hp.hidden_sizes), activation=hp.activation, init_std=hp.init_std)

    # ------------------------------------------------------------------ tasks
    def set_tasks(self, tasks: TensorDictBase) -> None:
        """Give the tasks to the envs; remember their table rows (none for held-out tasks)."""
        self._task_index = tasks.get(TASK_INDEX) if TASK_INDEX in tasks.keys() else None
        super().set_tasks(tasks)

    # ------------------------------------------------------------------ hooks
    def initial_fast_state(self, n_tasks: int | None = None) -> TensorDictBase:
        """``omega_i`` of the current training tasks (table rows), or the prior ``(0, 0)`` for held-out tasks."""
        n_tasks = self.hparams.meta_batch_size if n_tasks is None else n_tasks
        index = self._task_index
        if index is not None and len(index) == n_tasks:
            mean, log_std = self.task_latents.rows(index.to(self.task_latents.mean.device))
        else:
            like = self.task_latents.mean
            mean = torch.zeros(n_tasks, self.hparams.latent_size, dtype=like.dtype, device=like.device, requires_grad=True)
            log_std = torch.zeros_like(mean, requires_grad=True)
        state = TensorDict({LATENT_MEAN: mean, LATENT_LOG_STD: log_std}, batch_size=[n_tasks])
        if self.hparams.adapt_policy:
            state.set(PARAMS, self.policy_params().expand(n_tasks))
        return state

    def actor(self, fast_state: TensorDictBase, phase: str, generator: torch.Generator) -> PolicyActor:
        """The latent policy under ``fast_state``; it draws ``eps ~ N(0, I)`` once per episode (``"latent_noise"``)."""
        policy = self.phase_policy(phase)
        return PolicyActor(policy, self.phase_params(fast_state, policy), generator, inputs=fast_state.exclude(PARAMS),
                           episode_latent=(LATENT_NOISE, standard_normal_sampler(self.hparams.latent_size)))

    def collect(self, actor: PolicyActor, phase: str = "exploit", env: BatchedMetaEnv | None = None) -> TensorDictBase:
        """Collect and process; also store each step's ``z = mu + eps * sigma`` under ``"latent"`` (the sample the inner step scores)."""
        batch = super().collect(actor, phase, env)
        inputs = actor.inputs
        batch.set(LATENT, latent_sample(batch.get(LATENT_NOISE), inputs.get(LATENT_MEAN), inputs.get(LATENT_LOG_STD)))
        return batch

    def process(self, batch: TensorDictBase, phase: str) -> TensorDictBase:
        """Advantages, and each trajectory's advantage at ``t = 0`` (``"latent_advantage"``, repeated over the trajectory's steps).

        That is the discounted return from the first state minus the linear baseline there,
        standardised over the task's trajectories when ``normalize_advantages``.
        """
        batch = super().process(batch, phase)
        advantage = batch.get("return")[..., 0] - batch.get("value")[..., 0]
        if self.hparams.normalize_advantages:
            advantage = standardize(advantage, batch.get("mask")[..., 0], dim=(-1,))
        batch.set(LATENT_ADVANTAGE, advantage.unsqueeze(-1).expand(batch.batch_size).clone())
        return batch

    def inner_loss(self, fast_state: TensorDictBase, batch: TensorDictBase) -> torch.Tensor:
        """``-mean_k log q_omega(z_k) A_k`` per task (Eq. 3/5); with ``adapt_policy`` plus MAML's inner loss on ``theta`` (Eq. 4)."""
        loss = latent_score_loss(batch.get(LATENT)[:, :, 0], fast_state.get(LATENT_MEAN), fast_state.get(LATENT_LOG_STD),
                                 batch.get(LATENT_ADVANTAGE)[:, :, 0])
        if self.hparams.adapt_policy:
            # theta's step (Eq. 4) sees omega as a constant: omega's step stays the score function of Eq. 5.
            theta_state = fast_state.clone(recurse=False)
            for key in (LATENT_MEAN, LATENT_LOG_STD):
                theta_state.set(key, fast_state.get(key).detach())
            loss = loss + super().inner_loss(theta_state, batch)
        return loss

    # ------------------------------------------------------------------ outer step
    def prior_kl(self, fast_state: TensorDictBase) -> torch.Tensor:
        """``KL(q_omega_i || N(0, I))`` of every task's ``omega_i`` in ``fast_state``, ``[n_tasks]`` (Eq. 2)."""
        return kl_to_standard_normal(fast_state.get(LATENT_MEAN), fast_state.get(LATENT_LOG_STD))

    def outer_loss(self, meta_batch: MetaBatch, path: list[TensorDictBase],
                   post_distribution: DiagGaussian | None = None) -> torch.Tensor:
        """MAML's post-update surrogate plus ``kl_weight * mean_i KL(q_omega_i || N(0, I))`` on the pre-update ``omega_i`` (Eq. 2)."""
        return super().outer_loss(meta_batch, path, post_distribution) + self.hparams.kl_weight * self.prior_kl(path[0]).mean()

    def meta_update(self, meta_batch: MetaBatch) -> dict[str, torch.Tensor]:
        """The outer step, plus the latent statistics: prior KL, ``|mu|``, ``sigma`` before and after the inner step."""
        before, after = meta_batch.fast_states[0], meta_batch.fast_states[-1]
        metrics = super().meta_update(meta_batch)
        metrics["latent/prior_kl"] = self.prior_kl(before).mean()
        for name, state in (("pre_update", before), ("post_update", after)):
            metrics[f"latent/{name}_mean_norm"] = state.get(LATENT_MEAN).norm(dim=-1).mean()
            metrics[f"latent/{name}_std"] = state.get(LATENT_LOG_STD).exp().mean()
        if self.inner_step_sizes is not None:
            metrics["latent/step_size_mean"] = self.inner_step_sizes.get(LATENT_MEAN).mean().detach()
            metrics["latent/step_size_log_std"] = self.inner_step_sizes.get(LATENT_LOG_STD).mean().detach()
        self._last_latents = (before, after)
        return metrics

    _last_latents: tuple[TensorDictBase, TensorDictBase] | None = None

    def on_train_epoch_end(self) -> None:
        """With a 2D latent, draw the last meta-batch's latent distributions before and after the inner step (``train/latents``).

        The picture of MAESN's Figure 5a: one-standard-deviation ellipses of ``q_omega_i``
        (blue) and ``q_omega'_i`` (orange) over the prior (grey), when the logger is TensorBoard's.
        """
        add_image = getattr(getattr(self.logger, "experiment", None), "add_image", None)
        if add_image is None or self._last_latents is None or self.hparams.latent_size != 2:
            return
        before, after = self._last_latents
        image = latent_ellipse_image(before.get(LATENT_MEAN), before.get(LATENT_LOG_STD).exp(),
                                     after.get(LATENT_MEAN), after.get(LATENT_LOG_STD).exp())
        add_image("train/latents", image, int(self.iteration.item()))


class LatentSpace(MAESN):
    """The LatentSpace baseline of MAESN (Gupta et al. 2018, §4; Hausman et al. 2018's latent space without meta-learning).

    The same latent policy and per-task ``omega`` tables, trained jointly with ``theta`` by the
    same outer step with the prior KL term, but without an inner update (``num_inner_steps: 0``):
    each meta-iteration collects once with ``omega_i`` and the outer step maximises that return. Held-out tasks
    start from the prior; the meta-test protocol adapts ``omega`` with the constant step
    ``inner_lr`` (no learned step sizes).

    Args:
        kl_weight: weight of the prior KL (the authors' setting: 0.01).
        **kwargs: see :class:`MAESN`.
    """

    min_inner_steps = 0

    def __init__(self, *args: Any, kl_weight: float = 0.01, learn_inner_lr: bool = False, num_inner_steps: int = 0,
                 **kwargs: Any) -> None:
        if learn_inner_lr:
            raise ConfigError("model.learn_inner_lr: LatentSpace has no inner update whose step sizes could be learned")
        if num_inner_steps != 0:
            raise ConfigError(f"model.num_inner_steps: LatentSpace has no inner update (0), got {num_inner_steps!r}")
        super().__init__(*args, kl_weight=kl_weight, learn_inner_lr=False, num_inner_steps=0, **kwargs)
