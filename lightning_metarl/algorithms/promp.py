"""ProMP (Rothfuss et al. 2019): LVC inner step, PPO-clip outer steps with an inner-KL penalty."""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from lightning_metarl.algorithms.base import MetaRLModule
from lightning_metarl.errors import ConfigError
from lightning_metarl.objectives import KLPenaltyCoefficient, ProMPLoss, likelihood_ratio_loss


class ProMP(MetaRLModule):
    """Proximal Meta-Policy Search.

    Inner step: the low-variance curvature surrogate (LVC; seed 000, §3.2), whose Hessian gives
    the pre-update sampling distribution credit for the adaptation, written as the likelihood
    ratio to the sampling policy so that it stays an importance-sampled policy gradient when
    the outer steps move theta away from it (:meth:`inner_loss`). Outer: ``num_outer_steps``
    Adam steps on the same post-update batch (no resampling), each on

    ``L(theta) = mean_tasks L_clip(theta'(theta)) + mean_k eta_k * mean_tasks KL(pi_theta_k,old || pi_theta_k)``,

    the PPO clipped surrogate (``clip_epsilon``) of the post-update samples plus the KL
    between the policy that collected pre-update batch ``k`` and its current value, on that
    batch's states. ``eta`` is fixed (``inner_kl_coeff``; reference 5e-4) or, with
    ``target_inner_kl`` set, adapted after each iteration (halve below target/1.5, double
    above 1.5 target; reference on Rand-Params: 1e-3 with target 0.01). The coefficients are
    in the checkpoint.

    Args:
        clip_epsilon: PPO clip range (reference 0.3).
        inner_kl_coeff: initial eta.
        target_inner_kl: target KL of the adaptive eta; ``None`` keeps eta fixed.
        num_outer_steps: Adam steps per meta-iteration (reference 5; 3 on Rand-Params).
        **kwargs: see :class:`~lightning_metarl.algorithms.base.MetaRLModule`.
    """

    def __init__(
        self,
        *args: Any,
        clip_epsilon: float = 0.3,
        inner_kl_coeff: float = 5e-4,
        target_inner_kl: float | None = None,
        num_outer_steps: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(num_outer_steps, int) or num_outer_steps < 1:
            raise ConfigError(f"model.num_outer_steps must be a positive integer, got {num_outer_steps!r}")
        if clip_epsilon <= 0 or inner_kl_coeff < 0 or (target_inner_kl is not None and target_inner_kl <= 0):
            raise ConfigError("model.clip_epsilon and model.target_inner_kl must be positive, model.inner_kl_coeff >= 0")
        coefficient = KLPenaltyCoefficient(inner_kl_coeff, num_steps=self.hparams.num_inner_steps, target=target_inner_kl)
        self.loss_module = ProMPLoss(clip_epsilon=clip_epsilon, kl_coefficient=coefficient)
        self.loss_module.set_keys(sample_log_prob="action_log_prob")

    def inner_loss(self, task_params: TensorDictBase, batch: TensorDictBase) -> torch.Tensor:
        """Per-task inner surrogate ``-mean pi_theta/pi_theta_old A`` on a pre-update batch.

        ``pi_theta_old`` is the policy that sampled the batch (its stored ``action_log_prob``). At
        the sampling parameters this is the LVC objective (seed 000, Eq. 10) in value, gradient
        and Hessian; at the later outer steps on the same batch (``theta != theta_old``) the
        importance weight keeps the inner step an off-policy estimate of the policy gradient at
        the current ``theta`` (as in the reference implementation), rather than the
        on-policy formula applied to another policy's samples.
        """
        return likelihood_ratio_loss(
            self.log_prob(task_params, batch), batch.get("action_log_prob"), batch.get("advantage"), batch.get("mask")
        )

    def loss_terms(
        self, inner_batches: list[TensorDictBase], post_batch: TensorDictBase, old_steps: list[TensorDictBase]
    ) -> TensorDictBase:
        """ProMP's loss terms at the current theta (``loss_objective``, ``loss_inner_kl`` and diagnostics)."""
        steps = self.adapt_steps(self.policy_params(), inner_batches, create_graph=True)
        inner_kl = torch.stack(
            [self.kl(old, new, batch) for old, new, batch in zip(old_steps, steps, inner_batches)], dim=-1
        )
        data = TensorDict(
            {
                "log_prob": self.log_prob(steps[-1], post_batch),
                "action_log_prob": post_batch.get("action_log_prob"),
                "advantage": post_batch.get("advantage"),
                "mask": post_batch.get("mask"),
                "inner_kl": inner_kl,
            },
            batch_size=[self.hparams.meta_batch_size],
        )
        return self.loss_module(data)

    def outer_update(self, inner_batches: list[TensorDictBase], post_batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """``num_outer_steps`` Adam steps on the ProMP loss, then the adaptive-eta update."""
        optimizer = self.optimizers()
        # clone: the first step is a view of the parameters that the optimizer updates in place
        old_steps = [p.detach().clone() for p in self.adapt_steps(self.policy_params(), inner_batches, create_graph=False)]
        history = []
        for _ in range(self.hparams.num_outer_steps):
            terms = self.loss_terms(inner_batches, post_batch, old_steps)
            loss = terms["loss_objective"] + terms["loss_inner_kl"]
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            history.append(terms.detach())
        adapted = self.adapt(self.policy_params(), inner_batches, create_graph=False)
        post_kl = self.kl(old_steps[-1], adapted, post_batch).mean().detach()
        coefficient = self.loss_module.kl_coefficient
        inner_kl = history[-1]["inner_kl"]
        metrics = {
            "loss/outer": history[-1]["loss_objective"] + history[-1]["loss_inner_kl"],
            "loss/surrogate_before": history[0]["loss_objective"],
            "loss/surrogate_after": history[-1]["loss_objective"],
            "loss/inner_kl_penalty": history[-1]["loss_inner_kl"],
            "ppo/clip_fraction": history[-1]["clip_fraction"],
            "kl/post_update": post_kl,
        }
        for k in range(len(inner_batches)):
            metrics[f"kl/inner_step_{k}"] = inner_kl[k]
            metrics[f"kl_coeff/step_{k}"] = coefficient.value[k].detach()
        coefficient.update(inner_kl)
        return metrics
