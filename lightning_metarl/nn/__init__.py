"""Policies, their distributions, the kernels of their layers (batched matrix products, tanh, fused per-task layers), MAME's self-supervision network, per-task functional evaluation, the collecting actors and baselines."""

from lightning_metarl.nn.activation import Tanh, tanh, tanh_backward
from lightning_metarl.nn.actor import PolicyActor, behaviour_distribution
from lightning_metarl.nn.baseline import fit_linear_baseline, linear_baseline_features, linear_baseline_values
from lightning_metarl.nn.distributions import DiagGaussian, gaussian_kl, gaussian_log_prob
from lightning_metarl.nn.functional import (
    call_per_task,
    distribution_per_task,
    module_params,
    on_valid_steps,
    on_valid_steps_per_task,
)
from lightning_metarl.nn.layers import per_task_dense
from lightning_metarl.nn.matmul import batched_matmul
from lightning_metarl.nn.policy import GaussianMLPPolicy, concat_inputs, mlp
from lightning_metarl.nn.self_supervision import SelfSupervisionNetwork

__all__ = [
    "DiagGaussian",
    "GaussianMLPPolicy",
    "PolicyActor",
    "SelfSupervisionNetwork",
    "Tanh",
    "batched_matmul",
    "behaviour_distribution",
    "call_per_task",
    "concat_inputs",
    "distribution_per_task",
    "fit_linear_baseline",
    "gaussian_kl",
    "gaussian_log_prob",
    "linear_baseline_features",
    "linear_baseline_values",
    "mlp",
    "module_params",
    "on_valid_steps",
    "on_valid_steps_per_task",
    "per_task_dense",
    "tanh",
    "tanh_backward",
]
