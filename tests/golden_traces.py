"""Golden traces: the TensorBoard scalars of short seeded runs, kept to prove that a refactor changed no number.

``python tests/golden_traces.py`` records every trace into ``tests/golden/<name>.json`` (run it
only when a change is *meant* to change the numbers, and say so in the commit);
``tests/test_golden_traces.py`` reruns them and compares bit for bit. Values are stored with
``float.hex`` so that the comparison is exact.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
ITERATIONS = 5
SIZES = [
    "--model.init_args.meta_batch_size", "3",
    "--model.init_args.rollouts_per_task", "4",
    "--model.init_args.horizon", "12",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]
#: name -> (config, extra command-line arguments)
TRACES: dict[str, tuple[str, list[str]]] = {
    "maml_vpg": ("point_corner_maml.yaml", []),
    "maml_trpo": ("point_corner_maml_trpo.yaml", []),
    "emaml": ("point_corner_emaml.yaml", []),
    "promp": ("point_corner_promp.yaml", []),
    "maml_learned_step_sizes": ("point_corner_maml.yaml", ["--model.init_args.learn_inner_lr", "true"]),
    "promp_half_cheetah": ("half_cheetah_fwd_bwd_promp.yaml", []),
    "maml_trpo_half_cheetah_vel": ("half_cheetah_vel_maml_trpo.yaml", []),
    "maml_trpo_walker_rand": ("walker2d_rand_params_maml_trpo.yaml", []),
    "cavia": ("point_corner_cavia.yaml", []),
    "mame": ("point_corner_mame.yaml", []),
    "mame_walker_rand": ("walker_rand.yaml", []),
    "maesn_wheeled": ("wheeled_semicircle_maesn.yaml", ["--model.init_args.num_train_tasks", "6"]),
    "latent_space_wheeled": ("wheeled_semicircle_latent_space.yaml", ["--model.init_args.num_train_tasks", "6"]),
}
#: Wall-clock measurements: not part of a trace.
TIMING_PREFIXES = ("perf/",)


def run_trace(name: str, workdir: Path) -> dict[str, dict[str, str]]:
    """Train trace ``name`` for :data:`ITERATIONS` meta-iterations in ``workdir``; ``{tag: {step: hex}}``."""
    import os

    import torch

    from lightning_metarl.cli import main
    from lightning_metarl.evaluation import read_scalars

    config, extra = TRACES[name]
    cwd = os.getcwd()
    os.chdir(workdir)
    # one intra-op thread: reductions then add in one order on every machine (bit-exact traces)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main([
            "fit", "--config", str(REPO / "conf" / config), *SIZES,
            "--seed_everything", "7",
            "--trainer.max_epochs", str(ITERATIONS),
            "--model.init_args.iterations_per_epoch", "1",
            "--trainer.logger.init_args.name", name,
            *extra,
        ])
    finally:
        torch.set_num_threads(threads)
        os.chdir(cwd)
    curves = read_scalars(workdir / "runs" / name / "version_0")
    return {
        tag: {str(step): float(value).hex() for step, value in sorted(points.items())}
        for tag, points in sorted(curves.items())
        if not tag.startswith(TIMING_PREFIXES)
    }


def load(name: str) -> dict[str, dict[str, str]]:
    """The recorded trace ``name``."""
    return json.loads((GOLDEN / f"{name}.json").read_text())


def record(names: list[str]) -> None:
    """Write the traces ``names`` (all if empty) into :data:`GOLDEN`."""
    GOLDEN.mkdir(exist_ok=True)
    for name in names or list(TRACES):
        with tempfile.TemporaryDirectory() as tmp:
            trace = run_trace(name, Path(tmp))
        (GOLDEN / f"{name}.json").write_text(json.dumps(trace, indent=1, sort_keys=True) + "\n")
        print(f"recorded {name}: {len(trace)} tags")


if __name__ == "__main__":
    record(sys.argv[1:])
