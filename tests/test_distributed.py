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
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_metarl import distributed

WORKER = Path(__file__).with_name("ddp_worker.py")


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
