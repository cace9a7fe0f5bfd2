"""E-MAML (Stadie et al. 2018): MAML plus credit for the pre-update trajectories' exploration."""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase

from lightning_metarl.algorithms.maml import MAML
from lightning_metarl.algorithms.meta_batch import MetaBatch
from lightning_metarl.errors import ConfigError
from lightning_metarl.nn import DiagGaussian
from lightning_metarl.objectives import emaml_loss


class EMAML(MAML):
    """MAML whose outer loss adds E-MAML's exploration term for every pre-update batch.

    ``L = L_MAML + exploration_weight * sum_k mean_tasks[-mean_t(std. post-update r_t) *
    mean_t log pi_theta_k(pre-update a_t of batch k)]`` (Stadie et al. 2018, as
    implemented in the ProMP benchmark code): the pre-update policy is pushed towards
    trajectories that were followed by high post-update rewards, with rewards standardised over
    the meta-batch. ``theta_k`` is the policy that collected batch ``k`` as a function of theta
    (theta itself for the first batch).

    The inner objective and the outer optimizer are MAML's (``inner_objective`` ``"vpg"``,
    ``"lvc"`` or ``"dice"``; ``outer_optimizer`` ``"adam"`` or ``"trpo"``), so E-MAML-VPG,
    E-MAML-TRPO and the LVC and DiCE variants are configurations of this class.

    Args:
        exploration_weight: weight of the exploration term (reference: 1).
        **kwargs: see :class:`~lightning_metarl.algorithms.maml.MAML`.
    """

    def __init__(self, *args: Any, exploration_weight: float = 1.0, **kwargs: Any) -> None:
        if not exploration_weight >= 0:
            raise ConfigError(f"model.exploration_weight must be non-negative, got {exploration_weight}")
        super().__init__(*args, **kwargs)

    def outer_loss(self, meta_batch: MetaBatch, path: list[TensorDictBase],
                   post_distribution: DiagGaussian | None = None) -> torch.Tensor:
        """MAML's outer loss plus the exploration term."""
        loss = super().outer_loss(meta_batch, path, post_distribution)
        post = meta_batch.post_update
        post_rewards = post.get(("next", "reward")).squeeze(-1)
        for state, batch in zip(path[:-1], meta_batch.pre_update):
            term = emaml_loss(self.log_prob(state, batch, "explore"), batch.get("mask"), post_rewards, post.get("mask"))
            loss = loss + self.hparams.exploration_weight * term.mean()
        return loss
