"""Speed-up of several processes: the same meta-batch on N DDP processes against one process, measured in one run.

    python tools/bench_ddp.py conf/half_cheetah_fwd_bwd_promp.yaml --processes 2 --iterations 3

Runs ``python -m lightning_metarl fit --config CONFIG`` twice, as a user would: once in one
process with the config's ``meta_batch_size`` M, once with ``--trainer.strategy ddp
--trainer.devices N --trainer.accelerator cpu`` and ``meta_batch_size`` M/N per process, so both
meta-train on M tasks per meta-iteration. Each does ``--warmup`` + ``--iterations``
meta-iterations (no validation, no checkpoints, logs to a temporary folder); the timed
iterations' mean ``perf/iteration_s`` (rank 0's, which waits for every rank at each update) gives
the speed-up ``one-process time / N-process time``. Extra CLI overrides go after ``--``. Ends
with one line of JSON (keys: :data:`JSON_KEYS`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from lightning_metarl.envs.mujoco_env import available_cpus
from lightning_metarl.evaluation import read_scalars

#: The keys of the JSON line, in order.
JSON_KEYS = ("config", "tasks", "processes", "iterations", "one_process_iteration_s", "processes_iteration_s", "speedup")


def meta_batch_size(config: Path, overrides: list[str]) -> int:
    """The config's ``meta_batch_size`` (after ``--model.init_args.meta_batch_size`` overrides)."""
    size = yaml.safe_load(config.read_text())["model"]["init_args"].get("meta_batch_size", 40)
    for i, item in enumerate(overrides):
        key, _, value = item.partition("=")
        if key == "--model.init_args.meta_batch_size":
            size = int(value if value else overrides[i + 1])
    return int(size)


def timed_fit(config: Path, out: Path, name: str, iterations: int, warmup: int, extra: list[str]) -> float:
    """Mean ``perf/iteration_s`` of the last ``iterations`` of a ``fit`` of ``warmup + iterations`` meta-iterations."""
    command = [
        sys.executable, "-m", "lightning_metarl", "fit", "--config", str(config),
        "--trainer.max_epochs", "1", "--model.init_args.iterations_per_epoch", str(warmup + iterations),
        "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.logger.init_args.name", name, *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench_ddp.py: {' '.join(command)} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    times = read_scalars(out / name / "version_0")["perf/iteration_s"]
    timed = [times[step] for step in sorted(times)][warmup:]
    return sum(timed) / len(timed)


def run(config: Path, processes: int, iterations: int, warmup: int, overrides: list[str]) -> dict[str, Any]:
    tasks = meta_batch_size(config, overrides)
    if tasks % processes:
        raise SystemExit(f"bench_ddp.py: meta_batch_size {tasks} is not divisible by --processes {processes}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        one = timed_fit(config, out, "one", iterations, warmup, overrides)
        ddp = ["--trainer.strategy", "ddp", "--trainer.devices", str(processes), "--trainer.accelerator", "cpu",
               "--model.init_args.meta_batch_size", str(tasks // processes)]
        many = timed_fit(config, out, "many", iterations, warmup, [*overrides, *ddp])
    return dict(zip(JSON_KEYS, (str(config), tasks, processes, iterations, one, many, one / many)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     usage="bench_ddp.py CONFIG [--processes N] [--iterations N] [--warmup N] [-- OVERRIDES]")
    parser.add_argument("config", type=Path)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=3, help="timed meta-iterations")
    parser.add_argument("--warmup", type=int, default=1, help="meta-iterations run before timing")
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.processes < 2 or args.iterations < 1 or args.warmup < 0:
        parser.error("--processes must be at least 2, --iterations positive and --warmup non-negative")
    result = run(args.config, args.processes, args.iterations, args.warmup, overrides)
    print(f"{result['tasks']} tasks per meta-iteration, CPUs available: {available_cpus()}")
    print(f"  1 process:             {result['one_process_iteration_s']:8.2f} s/iteration")
    print(f"  {args.processes} processes (DDP, gloo): {result['processes_iteration_s']:8.2f} s/iteration")
    print(f"  speed-up:              {result['speedup']:8.2f}x")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
