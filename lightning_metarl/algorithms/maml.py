"""MAML for RL (Finn et al. 2017): VPG, LVC or DiCE inner step; VPG (Adam) or TRPO outer step."""

from __future__ import annotations

from typing import Any, Literal

import torch
from tensordict import TensorDictBase

from lightning_metarl.algorithms.base import MetaRLModule
from lightning_metarl.data.returns import discounted_rewards
from lightning_metarl.errors import ConfigError
from lightning_metarl.nn import linear_baseline_values
from lightning_metarl.objectives import dice_loss, likelihood_ratio_loss, trpo_step, vpg_loss

InnerObjective = Literal["vpg", "lvc", "dice"]
OuterOptimizer = Literal["adam", "trpo"]


class MAML(MetaRLModule):
    """MAML: ``theta' = theta - alpha * grad L_in(theta, tau)``, then an outer step on ``L_out(theta', tau')``.

    The meta-gradient is taken through the inner step (``create_graph=True``); what it
    contains depends on the inner objective (seed 000, §3.2):

    - ``"vpg"``: the log-likelihood surrogate of the original MAML. Its Hessian lacks the
      score-function term, so only ``grad J_post`` is estimated and the pre-update sampling
      distribution gets no credit (``grad J_pre`` is dropped).
    - ``"lvc"``: ProMP's low-variance curvature surrogate. Same adapted parameters as
      ``"vpg"``; its Hessian adds the per-step score outer products, giving the pre-update
      policy credit for the adaptation (low variance; biased where rewards depend on earlier
      actions). Written as the likelihood ratio to the sampling policy
      (``batch["action_log_prob"]``), so that where the parameters have moved away from the
      sampling ones (TRPO's line search) the inner step stays an importance-sampled gradient.
    - ``"dice"``: DiCE with a linear baseline fitted to the discounted per-step rewards; an
      unbiased Hessian estimate (high variance).

    With ``"lvc"`` and ``"dice"`` the pre-update term is recovered to first order in
    ``inner_lr`` only: the adapted parameters and the curvature estimate come from the same
    samples, so the expected meta-gradient differs from the exact one at order
    ``inner_lr^2`` (measured in ``tests/test_estimators*.py``).

    Outer step ``"adam"`` (MAML-VPG): one Adam step on ``-mean log pi_theta'(a|s) A`` of the
    post-update batch. ``"trpo"`` (MAML-TRPO): a trust-region step on the likelihood-ratio
    surrogate with ``mean KL(pi_theta'_old || pi_theta') <= max_kl`` on post-update states,
    both computed through the inner step (conjugate gradient on KL Hessian-vector products,
    backtracking line search; the step is rejected if no step size satisfies both conditions).

    Args:
        inner_objective: ``"vpg"``, ``"lvc"`` or ``"dice"``.
        outer_optimizer: ``"adam"`` or ``"trpo"``.
        max_kl: TRPO trust region delta (reference 0.01).
        cg_iterations: TRPO conjugate-gradient iterations (reference 10).
        cg_damping: TRPO damping of the KL Hessian.
        backtrack_ratio: TRPO line-search shrink factor (reference 0.8).
        max_backtracks: TRPO line-search trials (reference 15).
        **kwargs: see :class:`~lightning_metarl.algorithms.base.MetaRLModule`.
    """

    def __init__(
        self,
        *args: Any,
        inner_objective: InnerObjective = "vpg",
        outer_optimizer: OuterOptimizer = "adam",
        max_kl: float = 0.01,
        cg_iterations: int = 10,
        cg_damping: float = 1e-5,
        backtrack_ratio: float = 0.8,
        max_backtracks: int = 15,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if inner_objective not in ("vpg", "lvc", "dice"):
            raise ConfigError(f"model.inner_objective must be 'vpg', 'lvc' or 'dice', got {inner_objective!r}")
        if outer_optimizer not in ("adam", "trpo"):
            raise ConfigError(f"model.outer_optimizer must be 'adam' or 'trpo', got {outer_optimizer!r}")
        if max_kl <= 0 or not 0 < backtrack_ratio < 1:
            raise ConfigError("model.max_kl must be positive and model.backtrack_ratio in (0, 1)")

    # ------------------------------------------------------------------ inner step
    def inner_loss(self, task_params: TensorDictBase, batch: TensorDictBase) -> torch.Tensor:
        """Per-task inner objective on a pre-update batch (see the class docstring)."""
        log_prob = self.log_prob(task_params, batch)
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
    def outer_loss(
        self, inner_batches: list[TensorDictBase], post_batch: TensorDictBase, steps: list[TensorDictBase]
    ) -> torch.Tensor:
        """Mean over tasks of the post-update surrogate of the adapted parameters (a function of theta).

        ``steps`` is :meth:`adapt_steps` of the current parameters: the policy that collected each
        pre-update batch, then the adapted one (``steps[-1]``), differentiable w.r.t. theta.
        """
        log_prob = self.log_prob(steps[-1], post_batch)
        advantage, mask = post_batch.get("advantage"), post_batch.get("mask")
        if self.hparams.outer_optimizer == "adam":
            return vpg_loss(log_prob, advantage, mask).mean()
        return likelihood_ratio_loss(log_prob, post_batch.get("action_log_prob"), advantage, mask).mean()

    def outer_update(self, inner_batches: list[TensorDictBase], post_batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """One Adam step, or one TRPO step, on :meth:`outer_loss`."""
        if self.hparams.outer_optimizer == "trpo":
            return self.trpo_update(inner_batches, post_batch)
        optimizer = self.optimizers()
        steps = self.adapt_steps(self.policy_params(), inner_batches, create_graph=True)
        loss = self.outer_loss(inner_batches, post_batch, steps)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return {"loss/outer": loss.detach()}

    def trpo_update(self, inner_batches: list[TensorDictBase], post_batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """A trust-region step on all meta-parameters, surrogate and KL computed through the inner step."""
        hp = self.hparams
        old_adapted = self.adapt(self.policy_params(), inner_batches, create_graph=False).detach().clone()

        def steps() -> list[TensorDictBase]:
            return self.adapt_steps(self.policy_params(), inner_batches, create_graph=True)

        info = trpo_step(
            list(self.parameters()),
            lambda: self.outer_loss(inner_batches, post_batch, steps()),
            lambda: self.kl(old_adapted, steps()[-1], post_batch).mean(),
            max_kl=hp.max_kl,
            cg_iterations=hp.cg_iterations,
            damping=hp.cg_damping,
            backtrack_ratio=hp.backtrack_ratio,
            max_backtracks=hp.max_backtracks,
        )
        return {
            "loss/outer": torch.tensor(info.loss_after),
            "loss/surrogate_before": torch.tensor(info.loss_before),
            "loss/surrogate_after": torch.tensor(info.loss_after),
            "kl/post_update": torch.tensor(info.kl),
            "trpo/accepted": torch.tensor(float(info.accepted)),
            "trpo/step_fraction": torch.tensor(info.step_fraction),
            "trpo/line_search_trials": torch.tensor(float(info.evaluations)),
        }

    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        """Adam for the VPG outer step; none for TRPO (the step is computed in :meth:`trpo_update`)."""
        return None if self.hparams.outer_optimizer == "trpo" else super().configure_optimizers()
