"""A run stopped in the middle of an epoch and resumed with ``--ckpt_path last`` equals an uninterrupted run, no step twice."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import POINT_CONFIG, TINY
from lightning import Callback

from lightning_metarl.callbacks import IterationCheckpoint
from lightning_metarl.cli import main
from lightning_metarl.errors import ConfigError
from lightning_metarl.evaluation import logged_twice, read_scalars


class SignalAfter(Callback):
    """Send this process ``signum`` at the end of meta-iteration ``iteration`` (``kill PID``: SIGTERM; Ctrl-C: SIGINT)."""

    def __init__(self, iteration: int, signum: int = signal.SIGTERM) -> None:
        self.iteration = iteration
        self.signum = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if int(pl_module.iteration) == self.iteration:
            os.kill(os.getpid(), self.signum)


class CrashAfter(Callback):
    """Fail after meta-iteration ``iteration``, its scalars on disk (a crash: nothing is written on the way out)."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if int(pl_module.iteration) == self.iteration:
            trainer.logger.experiment.flush()
            raise RuntimeError("simulated crash")


def fit(name: str, *extra: str) -> None:
    main(["fit", "--config", str(POINT_CONFIG), *TINY, "--seed_everything", "6", "--trainer.max_epochs", "2",
          "--model.init_args.iterations_per_epoch", "4", "--trainer.logger.init_args.name", name, *extra])


def callback(cls: type, iteration: int, **more: int) -> str:
    args = ", ".join(f'"{k}": {v}' for k, v in {"iteration": iteration, **more}.items())
    return f'--trainer.callbacks+={{"class_path": "test_kill_resume.{cls.__name__}", "init_args": {{{args}}}}}'


def ours(curves: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    """Every scalar but timings and Lightning's own ``epoch`` counter."""
    return {tag: curve for tag, curve in curves.items() if not tag.startswith("perf/") and tag != "epoch"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_mid_epoch_then_resume_equals_an_uninterrupted_run(in_tmp: Path, signum: int):
    fit("straight")
    with pytest.raises(SystemExit) as stopped:
        fit("killed", callback(SignalAfter, 3, signum=int(signum)))
    assert stopped.value.code == 128 + signal.SIGTERM
    last = in_tmp / "runs" / "killed" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["state_dict"]["iteration"].item() == 3  # only iteration 4 is lost
    fit("killed", "--ckpt_path", "last")
    straight = read_scalars(in_tmp / "runs" / "straight" / "version_0")
    killed_dir = in_tmp / "runs" / "killed" / "version_0"
    assert sorted(straight["return/post_update"]) == list(range(8))
    assert ours(read_scalars(killed_dir)) == ours(straight)
    assert [key for key in logged_twice(killed_dir) if key[0] != "epoch"] == []


def test_crash_after_a_periodic_checkpoint_then_resume_equals_an_uninterrupted_run(in_tmp: Path):
    fit("straight")
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit("crashed", "--iteration_checkpoint.every_n_iterations", "2", callback(CrashAfter, 3))
    last = in_tmp / "runs" / "crashed" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["state_dict"]["iteration"].item() == 2  # the crash wrote nothing
    crashed_dir = in_tmp / "runs" / "crashed" / "version_0"
    assert 2 in read_scalars(crashed_dir)["return/post_update"]  # iteration 3 was logged before the crash
    fit("crashed", "--ckpt_path", "last", "--iteration_checkpoint.every_n_iterations", "2")
    straight = read_scalars(in_tmp / "runs" / "straight" / "version_0")
    assert ours(read_scalars(crashed_dir)) == ours(straight)
    # the resumed run dropped the crashed run's step 2 and logged it once again
    assert [key for key in logged_twice(crashed_dir) if key[0] != "epoch"] == []
    assert not list(crashed_dir.glob("checkpoints/.*partial"))


def test_iteration_checkpoint_setting_is_checked():
    with pytest.raises(ConfigError, match="every_n_iterations"):
        IterationCheckpoint(every_n_iterations=0)
