"""Policies, per-task functional evaluation and baselines."""

from lightning_metarl.nn.baseline import fit_linear_baseline, linear_baseline_features, linear_baseline_values
from lightning_metarl.nn.functional import call_per_task, module_params
from lightning_metarl.nn.policy import GaussianMLPPolicy, gaussian_kl, gaussian_log_prob, mlp

__all__ = [
    "GaussianMLPPolicy",
    "call_per_task",
    "fit_linear_baseline",
    "gaussian_kl",
    "gaussian_log_prob",
    "linear_baseline_features",
    "linear_baseline_values",
    "mlp",
    "module_params",
]
