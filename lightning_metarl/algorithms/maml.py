"""MAML for RL (Finn et al. 2017): VPG, LVC or DiCE inner step; VPG (Adam) or TRPO outer step."""

from __future__ import annotations

from typing import Any, Literal

import torch
from tensordict import TensorDictBase

from lightning_metarl import distributed
from lightning_metarl.algorithms.gradient import GradientMetaRLModule, mean_kl
from lightning_metarl.algorithms.meta_batch import MetaBatch
from lightning_metarl.data.returns import discounted_rewards
from lightning_metarl.errors import ConfigError
from lightning_metarl.nn import DiagGaussian, linear_baseline_values
from lightning_metarl.objectives import dice_loss, likelihood_ratio_loss, vpg_loss
from lightning_metarl.optim import TrustRegion, TrustRegionObjective

InnerObjective = Literal["vpg", "lvc", "dice"]
OuterOptimizer = Literal["adam", "trpo"]


class MAML(GradientMetaRLModule):
    """MAML: ``theta' = theta - alpha * grad L_in(theta, tau)``, then an outer step on ``L_out(theta', tau')``.

    The fast state is all policy parameters. The meta-gradient is taken through the inner step
    (``create_graph=True``); what it contains depends on the inner objective (MAME, Gurumurthy
    et al. 2019, §3.2; ProMP, Rothfuss et al. 2019, §4):

    - ``"vpg"``: the log-likelihood surrogate of the original MAML. Its Hessian lacks the
      score-function term, so only ``grad J_post`` is estimated and the pre-update sampling
      distribution gets no credit (``grad J_pre`` is dropped).
    - ``"lvc"``: ProMP's low-variance curvature surrogate (Rothfuss et al. 2019, Eq. 10). Same
      adapted parameters as ``"vpg"``; its Hessian adds the per-step score outer products,
      giving the pre-update policy credit for the adaptation (low variance; biased where
      rewards depend on earlier actions). Written as the likelihood ratio to the sampling
      policy (``batch["action_log_prob"]``), so that where the parameters have moved away from
      the sampling ones (TRPO's line search) the inner step stays an importance-sampled gradient.
    - ``"dice"``: DiCE (Foerster et al. 2018) with a linear baseline fitted to the discounted
      per-step rewards; an unbiased Hessian estimate (high variance).

    With ``"lvc"`` and ``"dice"`` the pre-update term is recovered to first order in
    ``inner_lr`` only: the adapted parameters and the curvature estimate come from the same
    samples, so the expected meta-gradient differs from the exact one at order
    ``inner_lr^2`` (measured in ``tests/test_estimators*.py``).

    Outer step ``"adam"`` (MAML-VPG): one Adam step on ``-mean log pi_theta'(a|s) A`` of the
    post-update batch. ``"trpo"`` (MAML-TRPO): a trust-region step
    (:class:`~lightning_metarl.optim.TrustRegion`, the module's optimizer) on the likelihood-ratio surrogate with
    ``mean KL(pi_theta'_old || pi_theta') <= max_kl`` on post-update states, both computed
    through the inner step.

    Args:
        inner_objective: ``"vpg"``, ``"lvc"`` or ``"dice"``.
        outer_optimizer: ``"adam"`` or ``"trpo"``.
        max_kl: TRPO trust region delta (reference 0.01).
        cg_iterations: TRPO conjugate-gradient iterations (reference 10).
        cg_damping: TRPO damping of the KL Hessian.
        cg_subsample: TRPO computes the KL Hessian that conjugate gradient inverts on every
            ``cg_subsample``-th time step of the post-update trajectories only (1, the default:
            every step, as in MAML-TRPO and MAESN). The gradient and the line search's KL and
            surrogate always use every step, so the trust region is enforced on the whole batch;
            a subsample only makes the step's direction and length noisier. OpenAI Baselines'
            TRPO uses every 5th sample; on large batches the Hessian-vector products dominate
            the outer step's time (MAESN at its paper sizes: see the README's benchmarks).
        cg_inner_subsample: TRPO computes that KL Hessian through an inner step taken on every
            ``cg_inner_subsample``-th pre-update trajectory of each task only (1, the default:
            all of them). Every product of conjugate gradient differentiates the KL through the
            inner step, i.e. three times through the policy on every pre-update step: where the
            inner step adapts the policy weights on a large batch (MAML-TRPO and CAVIA at
            MAESN's sizes, 20 tasks x 50 trajectories x H = 200) that is most of the outer
            step's time. The Hessian is then the one of the KL to the policy adapted on the
            subsample, at the current meta-parameters (zero gradient there, as with every
            trajectory); the gradient, the adapted policy and the line search use every
            trajectory. MAESN's inner step on ``omega`` reads only the episode latents, so it
            gains only with ``adapt_policy``.
        backtrack_ratio: TRPO line-search shrink factor (reference 0.8).
        max_backtracks: TRPO line-search trials (reference 15).
        **kwargs: see :class:`~lightning_metarl.algorithms.gradient.GradientMetaRLModule`.
    """

    def __init__(
        self,
        *args: Any,
        inner_objective: InnerObjective = "vpg",
        outer_optimizer: OuterOptimizer = "adam",
        max_kl: float = 0.01,
        cg_iterations: int = 10,
        cg_damping: float = 1e-5,
        cg_subsample: int = 1,
        cg_inner_subsample: int = 1,
        backtrack_ratio: float = 0.8,
        max_backtracks: int = 15,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if inner_objective not in ("vpg", "lvc", "dice"):
            raise ConfigError(f"model.inner_objective must be 'vpg', 'lvc' or 'dice', got {inner_objective!r}")
        if outer_optimizer not in ("adam", "trpo"):
            raise ConfigError(f"model.outer_optimizer must be 'adam' or 'trpo', got {outer_optimizer!r}")
        if not max_kl > 0:
            raise ConfigError(f"model.max_kl must be positive, got {max_kl}")
        if not 0 < backtrack_ratio < 1:
            raise ConfigError(f"model.backtrack_ratio must be in (0, 1), got {backtrack_ratio}")
        for name, value in (("cg_iterations", cg_iterations), ("max_backtracks", max_backtracks),
                            ("cg_subsample", cg_subsample), ("cg_inner_subsample", cg_inner_subsample)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if not cg_damping >= 0:
            raise ConfigError(f"model.cg_damping must be non-negative, got {cg_damping}")

    # ------------------------------------------------------------------ inner step
    def inner_loss(self, fast_state: TensorDictBase, batch: TensorDictBase) -> torch.Tensor:
        """Per-task inner objective on a pre-update batch (see the class docstring)."""
        log_prob = self.log_prob(fast_state, batch, "explore")
        objective = self.hparams.inner_objective
        if objective == "vpg":
            return vpg_loss(log_prob, batch.get("advantage"), batch.get("mask"))
        if objective == "lvc":
            return likelihood_ratio_loss(log_prob, batch.get("action_log_prob"), batch.get("advantage"), batch.get("mask"))
        return dice_loss(log_prob, batch.get(("next", "reward")).squeeze(-1), batch.get("mask"),
                         self.hparams.discount, baseline=self.dice_baseline(batch))

    def dice_baseline(self, batch: TensorDictBase) -> torch.Tensor:
        """The linear feature baseline fitted per task to the discounted per-step rewards ``gamma^t r_t``."""
        if "dice_baseline" not in batch.keys():
            mask = batch.get("mask").to(batch.get("advantage").dtype)
            target = discounted_rewards(batch.get(("next", "reward")).squeeze(-1), mask, self.hparams.discount)
            batch.set("dice_baseline", linear_baseline_values(batch.get("observation"), target, mask))
        return batch.get("dice_baseline")

    # ------------------------------------------------------------------ outer step
    def outer_loss(self, meta_batch: MetaBatch, path: list[TensorDictBase],
                   post_distribution: DiagGaussian | None = None) -> torch.Tensor:
        """Mean over tasks of the post-update surrogate of the adapted state (a function of the meta-parameters).

        ``path`` is :meth:`adaptation_path` at the current meta-parameters: the state that
        collected each pre-update batch, then the adapted one (``path[-1]``).
        ``post_distribution``: ``path[-1]``'s :meth:`distribution` on the post-update batch, if
        the caller already evaluated it (TRPO's line search shares it with the KL).
        """
        post = meta_batch.post_update
        if post_distribution is None:
            post_distribution = self.distribution(path[-1], post)
        log_prob = post_distribution.log_prob(post.get("action"))
        advantage, mask = post.get("advantage"), post.get("mask")
        if self.hparams.outer_optimizer == "adam":
            return vpg_loss(log_prob, advantage, mask).mean()
        return likelihood_ratio_loss(log_prob, post.get("action_log_prob"), advantage, mask).mean()

    def meta_update(self, meta_batch: MetaBatch) -> dict[str, torch.Tensor]:
        """One Adam step, or one TRPO step, on :meth:`outer_loss`."""
        if self.hparams.outer_optimizer == "trpo":
            return self.trpo_update(meta_batch)
        optimizer = self.optimizers()
        loss = self.outer_loss(meta_batch, self.adaptation_path(meta_batch.pre_update))
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return {"loss/outer": loss.detach()}

    def trpo_update(self, meta_batch: MetaBatch) -> dict[str, torch.Tensor]:
        """A trust-region step on all meta-parameters, surrogate and KL computed through the inner step."""
        hp = self.hparams
        post = meta_batch.post_update
        # Re-evaluated, not read from the batch (behaviour_distribution): at the current parameters
        # KL(collecting || current) and its gradient are then exactly 0, so the Hessian whose
        # products conjugate gradient inverts is exactly the Fisher term; the stored copy differs
        # by rounding, which the small eigenvalues of that Hessian amplify.
        curvature_batch = post if hp.cg_subsample == 1 else post[..., :: hp.cg_subsample]
        collecting = self.fixed_distribution(meta_batch.fast_states[-1], post)
        inner_batches = (meta_batch.pre_update if hp.cg_inner_subsample == 1
                         else [batch[:, :: hp.cg_inner_subsample] for batch in meta_batch.pre_update])
        # the KL's minimum: the policy adapted on the inner subsample at the current meta-parameters
        curvature_state = (meta_batch.fast_states[-1] if hp.cg_inner_subsample == 1
                           else self.adaptation_path(inner_batches, create_graph=False)[-1])
        collecting_on_subsample = (collecting if hp.cg_subsample == hp.cg_inner_subsample == 1
                                   else self.fixed_distribution(curvature_state, curvature_batch))

        def evaluate() -> tuple[torch.Tensor, torch.Tensor]:
            # the line search's values: one inner step, without the graph a meta-gradient needs
            states = self.adaptation_path(meta_batch.pre_update, create_graph=False)
            with torch.no_grad():
                adapted = self.distribution(states[-1], post)
                return self.outer_loss(meta_batch, states, adapted), mean_kl(collecting, adapted, post).mean()

        objective = TrustRegionObjective(
            lambda: self.outer_loss(meta_batch, self.adaptation_path(meta_batch.pre_update)),
            lambda: self.kl(collecting_on_subsample, self.adaptation_path(inner_batches)[-1], curvature_batch).mean(),
            evaluate,
        )
        info = self.optimizers().step(closure=lambda: objective)
        return info.metrics()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam for the VPG outer step; :class:`~lightning_metarl.optim.TrustRegion` over all meta-parameters for TRPO."""
        hp = self.hparams
        if hp.outer_optimizer != "trpo":
            return super().configure_optimizers()
        return TrustRegion(self.parameters(), max_kl=hp.max_kl, cg_iterations=hp.cg_iterations, damping=hp.cg_damping,
                           backtrack_ratio=hp.backtrack_ratio, max_backtracks=hp.max_backtracks,
                           reduce=distributed.all_reduce_mean)
