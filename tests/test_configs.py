"""Every config in conf/ parses and trains for one tiny meta-iteration through the real entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from lightning_metarl.cli import main
from lightning_metarl.evaluation import read_scalars

CONFIGS = sorted((REPO / "conf").glob("*.yaml"))

TINY_FIT = [
    "--trainer.max_epochs", "1",
    "--model.init_args.iterations_per_epoch", "1",
    "--model.init_args.meta_batch_size", "2",
    "--model.init_args.rollouts_per_task", "2",
    "--model.init_args.horizon", "5",
    "--trainer.limit_val_batches", "0",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]


def test_there_is_a_config_per_task_family():
    from lightning_metarl import envs

    text = "\n".join(path.read_text() for path in CONFIGS)
    assert all(f"env: {name}" in text for name in envs.available())


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_config_prints_and_fits_one_tiny_iteration(config: Path, in_tmp: Path, capsys):
    with pytest.raises(SystemExit) as printed:
        main(["fit", "--config", str(config), "--print_config"])
    assert printed.value.code in (0, None)
    assert "class_path: lightning_metarl.algorithms" in capsys.readouterr().out

    main(["fit", "--config", str(config), *TINY_FIT])
    runs = list((in_tmp / "runs").glob("*/version_0"))
    assert len(runs) == 1
    curves = read_scalars(runs[0])
    assert sorted(curves["return/post_update"]) == [0]
    assert (runs[0] / "checkpoints" / "last.ckpt").is_file()


def test_benchmark_configs_match_their_generator():
    """conf/<family>_<algorithm>.yaml are written from one table by tools/make_configs.py."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(REPO / "tools" / "make_configs.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
