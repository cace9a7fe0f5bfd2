"""ProMP (Rothfuss et al. 2019): LVC inner step, PPO-clip outer steps with an inner-KL penalty."""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase

from lightning_metarl import distributed
from lightning_metarl.algorithms.gradient import GradientMetaRLModule, mean_kl
from lightning_metarl.algorithms.meta_batch import MetaBatch
from lightning_metarl.errors import ConfigError
from lightning_metarl.nn import DiagGaussian, behaviour_distribution
from lightning_metarl.objectives import (
    KLPenaltyCoefficient,
    clip_fraction,
    clipped_surrogate_loss,
    likelihood_ratio_loss,
)


class ProMP(GradientMetaRLModule):
    """Proximal Meta-Policy Search.

    Inner step: the low-variance curvature surrogate (LVC; Rothfuss et al. 2019, Eq. 10), whose
    Hessian gives the pre-update sampling distribution credit for the adaptation, written as the
    likelihood ratio to the sampling policy so that it stays an importance-sampled policy
    gradient when the outer steps move theta away from it (:meth:`inner_loss`). Outer:
    ``num_outer_steps`` Adam steps on the same post-update batch (no resampling), each on

    ``L(theta) = mean_tasks L_clip(theta'(theta)) + mean_k eta_k * mean_tasks KL(pi_theta_k,old || pi_theta_k)``

    (Rothfuss et al. 2019, Eq. 15), the PPO clipped surrogate (``clip_epsilon``) of the
    post-update samples plus the KL between the policy that collected pre-update batch ``k``
    and its current value, on that batch's states. ``eta`` is fixed (``inner_kl_coeff``;
    reference 5e-4) or, with ``target_inner_kl`` set, adapted after each iteration (halve below
    target/1.5, double above 1.5 target; reference on Rand-Params: 1e-3 with target 0.01). The
    coefficients are in the checkpoint.

    Args:
        clip_epsilon: PPO clip range (reference 0.3).
        inner_kl_coeff: initial eta.
        target_inner_kl: target KL of the adaptive eta; ``None`` keeps eta fixed.
        num_outer_steps: Adam steps per meta-iteration (reference 5; 3 on Rand-Params).
        **kwargs: see :class:`~lightning_metarl.algorithms.gradient.GradientMetaRLModule`.
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
        if not clip_epsilon > 0:
            raise ConfigError(f"model.clip_epsilon must be positive, got {clip_epsilon}")
        if not inner_kl_coeff >= 0:
            raise ConfigError(f"model.inner_kl_coeff must be non-negative, got {inner_kl_coeff}")
        if target_inner_kl is not None and not target_inner_kl > 0:
            raise ConfigError(f"model.target_inner_kl must be positive, got {target_inner_kl}")
        self.kl_coefficient = KLPenaltyCoefficient(inner_kl_coeff, num_steps=self.hparams.num_inner_steps, target=target_inner_kl)

    def inner_loss(self, fast_state: TensorDictBase, batch: TensorDictBase) -> torch.Tensor:
        """Per-task inner surrogate ``-mean pi_theta/pi_theta_old A`` on a pre-update batch.

        ``pi_theta_old`` is the policy that sampled the batch (its stored ``action_log_prob``). At
        the sampling parameters this is the LVC objective (Rothfuss et al. 2019, Eq. 10) in
        value, gradient and Hessian; at the later outer steps on the same batch
        (``theta != theta_old``) the importance weight keeps the inner step an off-policy
        estimate of the policy gradient at the current ``theta`` (as in the reference
        implementation), rather than the on-policy formula applied to another policy's samples.
        """
        return self.inner_loss_of(self.distribution(fast_state, batch, "explore"), batch)

    @staticmethod
    def inner_loss_of(distribution: DiagGaussian, batch: TensorDictBase) -> torch.Tensor:
        """:meth:`inner_loss` from the policy's distribution on the batch's states, ``[n_tasks]``."""
        return likelihood_ratio_loss(
            distribution.log_prob(batch.get("action")), batch.get("action_log_prob"), batch.get("advantage"), batch.get("mask")
        )

    def loss_terms(self, meta_batch: MetaBatch, sampling: list[DiagGaussian] | None = None) -> dict[str, torch.Tensor]:
        """ProMP's loss terms at the current theta: ``loss_objective``, ``loss_inner_kl`` and diagnostics.

        ``sampling`` holds the distributions of the policies that collected the pre-update
        batches (:meth:`sampling_distributions`, taken before the outer steps; computed here if
        not given). ``inner_kl`` (``[n_steps]``, detached) is what
        :meth:`KLPenaltyCoefficient.update` takes; ``clip_fraction`` the share of post-update
        samples outside the clip range.
        """
        sampling = self.sampling_distributions(meta_batch) if sampling is None else sampling
        # The adaptation path (adaptation_path's states), with one evaluation of the policy under
        # state k on pre-update batch k serving both inner step k and the KL of step k.
        path, kls = [self.initial_fast_state()], []
        for old, batch in zip(sampling, meta_batch.pre_update):
            current = self.distribution(path[-1], batch, "explore")
            kls.append(mean_kl(old, current, batch))
            path.append(self.inner_step(path[-1], batch, create_graph=True, inner_loss=self.inner_loss_of(current, batch)))
        inner_kl = torch.stack(kls, dim=-1)
        post = meta_batch.post_update
        log_prob, old_log_prob, mask = self.log_prob(path[-1], post), post.get("action_log_prob"), post.get("mask")
        epsilon = self.hparams.clip_epsilon
        return {
            "loss_objective": clipped_surrogate_loss(log_prob, old_log_prob, post.get("advantage"), mask, epsilon).mean(),
            "loss_inner_kl": self.kl_coefficient(inner_kl),
            "inner_kl": inner_kl.detach().mean(0),
            "clip_fraction": clip_fraction(log_prob, old_log_prob, mask, epsilon).mean(),
        }

    @staticmethod
    def sampling_distributions(meta_batch: MetaBatch) -> list[DiagGaussian]:
        """The distributions of the policies that collected each pre-update batch, on its states (as collection stored them)."""
        return [behaviour_distribution(batch) for batch in meta_batch.pre_update]

    def meta_update(self, meta_batch: MetaBatch) -> dict[str, torch.Tensor]:
        """``num_outer_steps`` Adam steps on the ProMP loss, then the adaptive-eta update."""
        optimizer = self.optimizers()
        history = []
        sampling = self.sampling_distributions(meta_batch)
        collecting = behaviour_distribution(meta_batch.post_update)
        for _ in range(self.hparams.num_outer_steps):
            terms = self.loss_terms(meta_batch, sampling)
            loss = terms["loss_objective"] + terms["loss_inner_kl"]
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            history.append({name: value.detach() for name, value in terms.items()})
        adapted = self.adapt(meta_batch.pre_update, create_graph=False)
        post_kl = self.kl(collecting, adapted, meta_batch.post_update).mean().detach()
        coefficient = self.kl_coefficient
        inner_kl = history[-1]["inner_kl"]
        metrics = {
            "loss/outer": history[-1]["loss_objective"] + history[-1]["loss_inner_kl"],
            "loss/surrogate_before": history[0]["loss_objective"],
            "loss/surrogate_after": history[-1]["loss_objective"],
            "loss/inner_kl_penalty": history[-1]["loss_inner_kl"],
            "ppo/clip_fraction": history[-1]["clip_fraction"],
            "kl/post_update": post_kl,
        }
        for k in range(len(meta_batch.pre_update)):
            metrics[f"kl/inner_step_{k}"] = inner_kl[k]
            metrics[f"kl_coeff/step_{k}"] = coefficient.value[k].detach()
        coefficient.update(distributed.all_reduce_mean(inner_kl))  # the same coefficients on every rank
        return metrics
