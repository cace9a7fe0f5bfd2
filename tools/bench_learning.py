"""Learning benchmark: train a config for N meta-iterations, print and save the return curve.

    python tools/bench_learning.py --config conf/point_corner_maml.yaml --iterations 200

Runs ``python -m lightning_metarl fit`` in-process with ``iterations`` meta-iterations (one
epoch), then reads the TensorBoard scalars back and prints one line per iteration (pre- and
post-update return, env steps/s), writes ``curve.csv`` and, if matplotlib is installed,
``curve.png`` into the run folder.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from lightning_metarl.cli import main as cli_main
from lightning_metarl.evaluation import read_scalars

COLUMNS = ("return/pre_update", "return/post_update", "perf/env_steps_per_s", "env_steps")


def run(config: Path, iterations: int, out: Path, name: str, extra: list[str]) -> Path:
    """Train ``config`` for ``iterations`` meta-iterations; return the run folder."""
    cli_main([
        "fit", "--config", str(config),
        "--trainer.max_epochs", "1",
        "--model.init_args.iterations_per_epoch", str(iterations),
        "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.logger.init_args.name", name,
        *extra,
    ])
    return max((out / name).glob("version_*"), key=lambda p: p.stat().st_mtime)


def write_curve(run_dir: Path) -> list[dict[str, float]]:
    """Read the run's scalars; write ``curve.csv`` (and ``curve.png``); return the rows."""
    curves = read_scalars(run_dir)
    rows = [
        {"iteration": step, **{col: curves.get(col, {}).get(step, float("nan")) for col in COLUMNS}}
        for step in sorted(curves["return/post_update"])
    ]
    with open(run_dir / "curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["iteration", *COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return rows
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r["iteration"] for r in rows]
    ax.plot(steps, [r["return/pre_update"] for r in rows], label="pre-update")
    ax.plot(steps, [r["return/post_update"] for r in rows], label="post-update")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("average return")
    ax.set_title(run_dir.parent.name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "curve.png", dpi=120)
    plt.close(fig)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("conf/point_corner_maml.yaml"))
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_learning"))
    parser.add_argument("--name", default=None, help="run name (default: the config's stem)")
    parser.add_argument("extra", nargs="*", help="more CLI overrides, e.g. --model.init_args.inner_lr=0.05")
    args = parser.parse_args()
    start = time.perf_counter()
    run_dir = run(args.config, args.iterations, args.out, args.name or args.config.stem,
                  [*args.extra, "--trainer.enable_progress_bar", "false"])
    wall = time.perf_counter() - start
    rows = write_curve(run_dir)
    print(f"{'iter':>5} {'pre-update':>11} {'post-update':>12} {'env steps/s':>12}")
    for r in rows:
        print(f"{r['iteration']:>5} {r['return/pre_update']:>11.3f} {r['return/post_update']:>12.3f} "
              f"{r['perf/env_steps_per_s']:>12.0f}")
    total_steps = rows[-1]["env_steps"] if rows else 0
    print(f"{len(rows)} iterations, {total_steps:.3g} env steps, {wall:.0f} s wall; curve in {run_dir}/curve.csv")


if __name__ == "__main__":
    main()
