"""Whole-iteration benchmark: a few meta-iterations of the real training loop against the physics ceiling.

    python tools/bench.py conf/walker_rand.yaml
    python tools/bench.py conf/half_cheetah_fwd_bwd_promp.yaml --iterations 3 -- --model.init_args.meta_batch_size=20
    python tools/bench.py conf/walker_rand.yaml --accelerator gpu

Builds the config's module as ``fit`` does (its class, its ``init_args``, ``seed_everything``; extra
``--model.init_args.KEY=VALUE`` overrides after ``--``) and runs ``--warmup`` + ``--iterations``
meta-iterations through a Lightning ``Trainer`` (manual optimisation, logging to no logger) on one
device of ``--accelerator`` (``cpu``, or ``gpu``: the networks and the optimisation on the GPU,
the physics on the CPU, as ``fit --trainer.accelerator gpu``). For the timed iterations it
prints, all measured in the same run:

- env steps/s of the whole iteration, ``(tasks x rollouts x H x phases) / iteration time``,
  padding counted, and of collection alone (``perf/collect_s``);
- useful steps/s: the same with only the unmasked steps (before an early termination);
- the ceiling: steps/s of ONE open-loop ``mujoco.rollout`` call over the same copies, models and
  controls (the physics alone; :class:`bench_sampling.Ceiling`), run after every timed
  iteration with its actions (the median is reported), and the ratios to it (MuJoCo families
  only);
- the physics inside collection: env steps/s of the env's physics calls alone
  (``perf/physics_s``), their ratio to the ceiling, and their share of collection (the rest is
  the policy, the env's outputs and the collector; MuJoCo families only);
- the split of the iteration into collect / adapt / outer / other;
- the peak resident memory of the process;

and ends with one line of JSON (keys: :data:`JSON_KEYS`) for scripts.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: The keys of the JSON line, in order.
JSON_KEYS = (
    "config", "algorithm", "family", "accelerator", "iterations", "env_steps_per_iteration", "useful_steps_per_iteration",
    "iteration_s", "steps_per_s", "collect_steps_per_s", "useful_steps_per_s", "ceiling_steps_per_s",
    "iteration_over_ceiling", "collect_over_ceiling", "physics_steps_per_s", "physics_over_ceiling",
    "collect_physics_share", "split", "peak_rss_mb",
)


def build_module(config: Path, overrides: list[str]):
    """The config's ``LightningModule``, seeded as ``fit`` seeds it."""
    from lightning import seed_everything

    spec = yaml.safe_load(config.read_text())
    model = spec["model"]
    init_args = dict(model.get("init_args", {}))
    for item in overrides:
        key, _, value = item.removeprefix("--").partition("=")
        if not key.startswith("model.init_args.") or not value:
            raise SystemExit(f"bench.py: overrides are --model.init_args.KEY=VALUE, got {item!r}")
        init_args[key.removeprefix("model.init_args.")] = yaml.safe_load(value)
    module_name, _, class_name = model["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    seed_everything(spec.get("seed_everything", 0), verbose=False)
    return cls(**init_args)


class Recorder:
    """Keeps, per meta-iteration, the module's timings and step counts, and the ceiling measured right after it (wraps ``log_iteration``).

    The ceiling runs between two iterations (outside their timers) with the iteration's own
    post-update actions and tasks, so that it samples the machine's speed at the same moments
    as the iterations it is compared with (a shared machine's speed drifts by 10-20% within
    minutes).
    """

    def __init__(self, module) -> None:
        self.rows: list[dict[str, float]] = []
        original = module.log_iteration

        def log_iteration(meta_batch, metrics, iteration_s):
            row = {f"{name}_s": seconds for name, seconds in meta_batch.timings.items()}
            row["iteration_s"] = iteration_s
            row["env_steps"] = meta_batch.env_steps
            row["useful_steps"] = sum(int(b.get("mask").sum()) for b in meta_batch.batches)
            result = original(meta_batch, metrics, iteration_s)
            row["ceiling_steps_per_s"] = ceiling_steps_per_s(module, meta_batch.post_update.get("action").detach().cpu())
            self.rows.append(row)
            return result

        module.log_iteration = log_iteration


def ceiling_steps_per_s(module, actions: torch.Tensor, repeats: int = 1) -> float | None:
    """Best steps/s of the open-loop ``mujoco.rollout`` ceiling over the module's env (``repeats`` timed runs after one untimed); ``None`` off MuJoCo."""
    from lightning_metarl.envs import MujocoMetaEnv

    env = module.env
    if not isinstance(env, MujocoMetaEnv):
        return None
    from bench_sampling import Ceiling

    ceiling = Ceiling(env, actions, env.num_threads)
    ceiling()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        steps = ceiling()
        best = max(best, steps / (time.perf_counter() - start))
    return best


def run(config: Path, iterations: int, warmup: int, overrides: list[str], accelerator: str = "cpu") -> dict[str, Any]:
    """Train ``warmup + iterations`` meta-iterations on one ``accelerator`` device and measure the last ``iterations``."""
    from lightning import Trainer

    from lightning_metarl.allocator import retain_freed_memory

    retain_freed_memory()  # as python -m lightning_metarl does
    module = build_module(config, overrides)
    recorder = Recorder(module)
    module.hparams.iterations_per_epoch = warmup + iterations
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                      accelerator=accelerator, devices=1, inference_mode=False)
    trainer.fit(module)
    rows = recorder.rows[warmup:]
    mean = {key: sum(row[key] for row in rows) / len(rows) for key in rows[0] if key != "ceiling_steps_per_s"}
    ceilings = [row["ceiling_steps_per_s"] for row in rows]
    ceiling = None if None in ceilings else statistics.median(ceilings)
    steps, useful = mean["env_steps"], mean["useful_steps"]
    physics = mean.get("physics_s")  # the part of collection spent in the physics calls (MuJoCo)
    phases = {name: mean.get(f"{name}_s", 0.0) for name in ("collect", "adapt", "outer")}
    phases["other"] = max(mean["iteration_s"] - sum(phases.values()), 0.0)
    result = {
        "config": str(config),
        "algorithm": type(module).__name__,
        "family": module.env.family,
        "accelerator": accelerator,
        "iterations": len(rows),
        "env_steps_per_iteration": steps,
        "useful_steps_per_iteration": useful,
        "iteration_s": mean["iteration_s"],
        "steps_per_s": steps / mean["iteration_s"],
        "collect_steps_per_s": steps / max(mean["collect_s"], 1e-9),
        "useful_steps_per_s": useful / mean["iteration_s"],
        "ceiling_steps_per_s": ceiling,
        "iteration_over_ceiling": None if ceiling is None else steps / mean["iteration_s"] / ceiling,
        "collect_over_ceiling": None if ceiling is None else steps / max(mean["collect_s"], 1e-9) / ceiling,
        "physics_steps_per_s": None if physics is None else steps / max(physics, 1e-9),
        "physics_over_ceiling": None if physics is None or ceiling is None else steps / max(physics, 1e-9) / ceiling,
        "collect_physics_share": None if physics is None else physics / max(mean["collect_s"], 1e-9),
        "split": {name: seconds / mean["iteration_s"] for name, seconds in phases.items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    return {key: result[key] for key in JSON_KEYS}


def report(result: dict[str, Any]) -> str:
    """The human-readable lines of :func:`run`'s result."""

    def ratio(x: float | None) -> str:
        return "n/a (no MuJoCo ceiling)" if x is None else f"{x:.2f}"

    split = ", ".join(f"{name} {share:.0%}" for name, share in result["split"].items())
    ceiling = result["ceiling_steps_per_s"]
    return "\n".join([
        f"{result['algorithm']} on {result['family']} ({result['config']}), {result['iterations']} timed iterations "
        f"({result['accelerator']})",
        f"  iteration: {result['iteration_s']:.2f} s, {result['env_steps_per_iteration']:.0f} env steps "
        f"({result['useful_steps_per_iteration']:.0f} unmasked)",
        f"  whole iteration: {result['steps_per_s']:,.0f} steps/s; collection: {result['collect_steps_per_s']:,.0f} steps/s; "
        f"useful: {result['useful_steps_per_s']:,.0f} steps/s",
        "  ceiling (open-loop mujoco.rollout, same copies): "
        + ("n/a" if ceiling is None else f"{ceiling:,.0f} steps/s"),
        f"  iteration / ceiling: {ratio(result['iteration_over_ceiling'])}; "
        f"collection / ceiling: {ratio(result['collect_over_ceiling'])}",
        "  physics inside collection: " + ("n/a" if result["physics_steps_per_s"] is None else
            f"{result['physics_steps_per_s']:,.0f} steps/s (/ ceiling: {ratio(result['physics_over_ceiling'])}), "
            f"{result['collect_physics_share']:.0%} of collection; the rest (policy, env outputs, collector) "
            f"{1 - result['collect_physics_share']:.0%}"),
        f"  split: {split}",
        f"  peak resident memory: {result['peak_rss_mb']:.0f} MB",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     usage="bench.py CONFIG [--iterations N] [--warmup N] [--accelerator cpu|gpu] [-- --model.init_args.KEY=VALUE ...]")
    parser.add_argument("config", type=Path)
    parser.add_argument("--iterations", type=int, default=3, help="timed meta-iterations")
    parser.add_argument("--warmup", type=int, default=1, help="meta-iterations run before timing")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu",
                        help="where the networks and the optimisation run (physics: always the CPU)")
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be positive and --warmup non-negative")
    result = run(args.config, args.iterations, args.warmup, overrides, args.accelerator)
    print(report(result))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
