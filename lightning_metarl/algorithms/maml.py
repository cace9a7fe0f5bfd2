"""MAML for RL (Finn et al. 2017) with vanilla policy-gradient inner and outer steps."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase

from lightning_metarl.algorithms.base import MetaRLModule
from lightning_metarl.objectives import vpg_loss


class MAML(MetaRLModule):
    """MAML-VPG: ``theta' = theta - alpha * grad L_VPG(theta, tau)``, outer Adam on ``L_VPG(theta', tau')``.

    The meta-gradient is taken through the inner step (``create_graph=True``), i.e. the
    ``grad J_post`` term of seed 000, §3.2; as in the original MAML, the pre-update sampling
    distribution's term ``grad J_pre`` is dropped (the inner objective is the plain
    log-likelihood surrogate, whose second derivative lacks the score-function term).
    """

    def inner_loss(self, task_params: TensorDictBase, batch: TensorDictBase) -> torch.Tensor:
        """Per-task ``-mean log pi_theta(a|s) A`` on the pre-update batch."""
        return vpg_loss(self.log_prob(task_params, batch), batch.get("advantage"), batch.get("mask"))

    def outer_loss(self, inner_batches: list[TensorDictBase], post_batch: TensorDictBase) -> torch.Tensor:
        """Mean over tasks of ``-mean log pi_theta'(a|s) A`` on the post-update batch, a function of theta."""
        adapted = self.adapt(self.policy_params(), inner_batches, create_graph=True)
        log_prob = self.log_prob(adapted, post_batch)
        return vpg_loss(log_prob, post_batch.get("advantage"), post_batch.get("mask")).mean()

    def outer_update(self, inner_batches: list[TensorDictBase], post_batch: TensorDictBase) -> dict[str, torch.Tensor]:
        """One Adam step on :meth:`outer_loss`."""
        optimizer = self.optimizers()
        loss = self.outer_loss(inner_batches, post_batch)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return {"loss/outer": loss.detach()}
