"""Several processes (DDP): N processes with M/N tasks each take the update of one process with M tasks.

Each algorithm runs one real meta-iteration through a Lightning ``Trainer`` fed a fixed
meta-batch (``tests/ddp_worker.py``): once in one process with all the tasks, once in two
processes started as torchrun or SLURM would start them, each with half of the tasks. The
updated parameters must agree to float tolerance (the sums run in another order), for Adam
(MAML-VPG, ProMP, MAME), TRPO (MAML-TRPO, MAESN: gradient, Fisher-vector products, line search)
and the adaptive penalty coefficients of ProMP.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY
from lightning import Callback

from lightning_metarl import distributed
from lightning_metarl.evaluation import logged_twice, read_scalars

WORKER = Path(__file__).with_name("ddp_worker.py")
#: Tags whose values depend on time, not on the seed.
TIMING = ("perf/",)


def scalars(run: Path) -> dict[str, dict[int, float]]:
    return {tag: curve for tag, curve in read_scalars(run).items() if not tag.startswith(TIMING)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(algorithm: str, out: Path, size: int) -> dict:
    out.mkdir(parents=True)
    port = str(free_port())
    procs = []
    for local_rank in range(size):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if size > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, LOCAL_RANK=str(local_rank), NODE_RANK="0",
                       WORLD_SIZE=str(size))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), algorithm, str(out), str(size)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, output in zip(procs, outputs):
        assert p.returncode == 0, output[-3000:]
    return torch.load(out / "result.pt")


@pytest.mark.parametrize("algorithm", ["maml_vpg", "maml_trpo", "promp", "mame", "mame_emaml", "maesn"])
def test_two_processes_with_half_the_tasks_each_take_the_one_process_update(tmp_path: Path, algorithm: str):
    one = run_worker(algorithm, tmp_path / "one", 1)
    two = run_worker(algorithm, tmp_path / "two", 2)
    moved = [k for k, v in one["params"].items() if v.is_floating_point() and not torch.equal(v, one["initial"][k])]
    assert moved, "the update changed nothing: the comparison would be empty"
    for key, value in one["params"].items():
        if not value.is_floating_point():
            assert torch.equal(two["params"][key], value), key
            continue
        # float32 sums in another order, amplified by conjugate gradient: compare the updates to 0.2% of their size
        update_one, update_two = value - one["initial"][key], two["params"][key] - one["initial"][key]
        scale = update_one.abs().max().item()
        torch.testing.assert_close(update_two, update_one, rtol=0, atol=2e-3 * scale + 1e-7, msg=f"{algorithm}: {key}")
    for name, value in one["logged"].items():
        assert two["logged"][name] == pytest.approx(value, rel=2e-3, abs=1e-6), name


def test_without_a_process_group_every_collective_is_the_identity():
    x = torch.randn(5)
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.all_reduce_mean(x) is x
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.average_scalars({"a": 2.0})["a"].item() == 2.0
    state = torch.Generator().manual_seed(3).get_state()
    assert torch.equal(distributed.rank_offset_generator_state(state, 0), state)
    other = distributed.rank_offset_generator_state(state, 1)
    assert not torch.equal(other, state)
    assert torch.equal(other, distributed.rank_offset_generator_state(state, 1))  # reproducible


class SigtermRank0After(Callback):
    """``kill`` the main process (rank 0) at the end of meta-iteration ``iteration``; the launcher passes SIGTERM on."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero and int(pl_module.iteration) == self.iteration:
            os.kill(os.getpid(), signal.SIGTERM)


def cli(*args: str, cwd: Path, returncode: int = 0) -> None:
    """``python -m lightning_metarl ARGS`` in ``cwd`` (Lightning's DDP launcher re-runs this command for rank 1)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    result = subprocess.run([sys.executable, "-m", "lightning_metarl", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == returncode, (result.stdout + result.stderr)[-3000:]


def test_ddp_through_the_cli_killed_mid_epoch_resumes_exactly_and_logs_each_step_once(tmp_path: Path):
    """With a learning-rate schedule (one step per meta-iteration on every rank), resumed with the rest."""
    config = Path(__file__).resolve().parents[1] / "conf" / "point_corner_promp.yaml"
    schedule = ["--lr_scheduler", "LinearLR", "--lr_scheduler.start_factor", "1.0", "--lr_scheduler.end_factor", "0.0",
                "--lr_scheduler.total_iters", "4"]
    common = ["--config", str(config), *TINY, "--model.init_args.iterations_per_epoch", "2", "--seed_everything", "5",
              "--trainer.max_epochs", "2", *schedule]
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    kill = '--trainer.callbacks+={"class_path": "test_distributed.SigtermRank0After", "init_args": {"iteration": 3}}'
    cli("fit", *common, *ddp, "--trainer.logger.init_args.name", "straight", cwd=tmp_path)
    cli("fit", *common, *ddp, "--trainer.logger.init_args.name", "killed", kill, cwd=tmp_path, returncode=143)
    last = tmp_path / "runs" / "killed" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["state_dict"]["iteration"].item() == 3  # only iteration 4 is lost
    cli("fit", *common, *ddp, "--trainer.logger.init_args.name", "killed", "--ckpt_path", "last", cwd=tmp_path)
    cli("fit", *common, "--trainer.max_epochs", "1", "--trainer.logger.init_args.name", "single", cwd=tmp_path)
    runs = tmp_path / "runs"
    straight, killed, single = (scalars(runs / name / "version_0") for name in ("straight", "killed", "single"))
    assert sorted(straight["return/post_update"]) == [0, 1, 2, 3]
    assert straight["optim/lr"] == pytest.approx({k: 1e-3 * (1 - k / 4) for k in range(4)}, rel=1e-6)  # outer_lr 1e-3
    assert killed == straight
    # (Lightning writes "epoch" beside the training and the validation scalars of an epoch's last step)
    assert [key for key in logged_twice(runs / "killed" / "version_0") if key[0] != "epoch"] == []
    # rank 1 drew tasks of its own: the mean over both ranks is not the single process's
    assert straight["return/pre_update"][0] != single["return/pre_update"][0]
    assert not (runs / "killed" / "version_1").exists()  # one run folder, written by rank 0


def test_ddp_test_subcommand_evaluates_every_held_out_batch_once_as_one_process_does(tmp_path: Path):
    config = Path(__file__).resolve().parents[1] / "conf" / "point_corner_maml.yaml"
    common = ["--config", str(config), *TINY, "--model.init_args.eval_batches", "3"]
    cli("fit", *common, "--trainer.max_epochs", "1", "--model.init_args.iterations_per_epoch", "1",
        "--trainer.limit_val_batches", "0", cwd=tmp_path)
    checkpoint = tmp_path / "runs" / "point_corner_maml" / "version_0" / "checkpoints" / "last.ckpt"
    cli("test", *common, "--ckpt_path", str(checkpoint), "--trainer.logger.init_args.name", "one", cwd=tmp_path)
    cli("test", *common, "--ckpt_path", str(checkpoint), "--trainer.logger.init_args.name", "two",
        "--trainer.strategy", "ddp", "--trainer.devices", "2", cwd=tmp_path)
    one, two = ((tmp_path / "runs" / f"{name}_test" / "version_0" / "test_returns.csv").read_text().splitlines()
                for name in ("one", "two"))
    assert len(one) == 1 + 3 * 3 * 2  # header, 3 batches x 3 tasks x (pre, post)
    # each rank evaluated its share of the batches (rank 1 also batch 0 again, as padding): the same rows
    assert sorted(two) == sorted(one)
