"""Shared test fixtures: tiny configurations of the real entry points."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
POINT_CONFIG = REPO / "conf" / "point_corner_maml.yaml"

TINY = [
    "--model.init_args.meta_batch_size", "3",
    "--model.init_args.rollouts_per_task", "4",
    "--model.init_args.horizon", "12",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run the test inside an empty folder (the CLI writes ``runs/`` into the working directory)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def with_optimizers(module):
    """``module`` attached to a CPU ``Trainer`` with its ``configure_optimizers`` set up, outside ``fit``.

    For tests that call ``meta_update`` directly: an outer step that goes through
    ``self.optimizers()`` (Adam, PPO, TRPO's ``TrustRegion``) needs the trainer's strategy.
    """
    from lightning import Trainer

    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    module.trainer = trainer
    trainer.strategy.setup_optimizers(trainer)
    return module
