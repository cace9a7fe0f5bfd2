"""Bad numbers in a config are refused at construction with a one-line error that names the key."""

from __future__ import annotations

import pytest

from lightning_metarl.algorithms import CAVIA, EMAML, MAESN, MAME, MAML, LatentSpace, ProMP
from lightning_metarl.errors import ConfigError

TINY = dict(meta_batch_size=2, rollouts_per_task=2, horizon=4)

BAD = [
    (MAML, "inner_lr", -0.1), (MAML, "inner_lr", 0.0), (MAML, "outer_lr", -1e-3), (MAML, "outer_lr", float("nan")),
    (MAML, "max_kl", 0.0), (MAML, "backtrack_ratio", 1.0), (MAML, "cg_iterations", 0), (MAML, "max_backtracks", 0),
    (MAML, "cg_damping", -1.0), (MAML, "cg_subsample", 0), (MAML, "cg_inner_subsample", 0), (MAML, "num_inner_steps", 0), (MAML, "discount", 1.5), (MAML, "gae_lambda", -0.1),
    (MAML, "init_std", 0.0), (MAML, "horizon", 0), (MAML, "meta_batch_size", 0), (MAML, "eval_batches", 0),
    (MAML, "exploration_rollouts_per_task", 0), (MAML, "max_nonfinite_updates", 0), (MAML, "inner_objective", "lvcc"), (MAML, "outer_optimizer", "sgd"),
    (EMAML, "exploration_weight", -1.0),
    (ProMP, "clip_epsilon", 0.0), (ProMP, "inner_kl_coeff", -1.0), (ProMP, "target_inner_kl", 0.0),
    (ProMP, "num_outer_steps", 0),
    (CAVIA, "context_size", 0),
    (MAME, "latent_size", 0), (MAME, "n_step", 0), (MAME, "clip_epsilon", -0.2), (MAME, "num_outer_steps", 0),
    (MAME, "target", "value"), (MAME, "exploration_update", "vpg"), (MAME, "num_inner_steps", 2),
    (MAME, "meta_test_iterations", 5),
    (MAML, "num_train_tasks", 0), (MAML, "meta_test_iterations", 0), (MAML, "meta_test_tasks", 0),
    (MAML, "meta_test_rollouts", 0), (MAML, "meta_test_halving_start", 0),
    (MAESN, "latent_size", 0), (MAESN, "num_train_tasks", -1), (MAESN, "kl_weight", -0.5), (MAESN, "inner_lr", 0.0),
    (LatentSpace, "learn_inner_lr", True),
]


@pytest.mark.parametrize("cls, key, value", BAD, ids=[f"{c.__name__}-{k}-{v}" for c, k, v in BAD])
def test_a_bad_value_is_refused_with_its_key_named(cls, key: str, value):
    with pytest.raises(ConfigError) as error:
        cls(**{**TINY, key: value})
    message = str(error.value)
    assert "\n" not in message
    assert key in message


def test_the_cli_refuses_a_negative_learning_rate_before_any_run_folder_exists(in_tmp, capsys):
    from conftest import POINT_CONFIG
    from conftest import TINY as TINY_CLI

    from lightning_metarl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(POINT_CONFIG), *TINY_CLI, "--model.init_args.outer_lr", "-0.001"])
    assert exit_info.value.code == 2
    assert "model.outer_lr must be positive" in capsys.readouterr().err
    assert not (in_tmp / "runs").exists()
