"""Learning benchmark: train a config for N meta-iterations, print and save the return curve.

    python tools/bench_learning.py --config conf/point_corner_maml.yaml --iterations 200

Runs ``python -m lightning_metarl fit`` in-process with ``iterations`` meta-iterations (one
epoch), then reads the TensorBoard scalars back and prints one line per iteration (pre- and
post-update return, env steps/s), writes ``curve.csv`` and, if matplotlib is installed,
``curve.png`` into the run folder. ``--tags`` adds more TensorBoard scalars to the table and
the CSV.

    python tools/bench_learning.py --compare runs/bench_learning/point_corner_promp/version_0 \
        runs/bench_learning/point_corner_maml/version_0 --window 25 --plot promp_vs_maml.png

compares finished runs: mean pre- and post-update return per window of iterations, side by side,
and one plot of all curves; with ``--seeds``, runs named ``<name>_s<seed>`` are also grouped and
their window means given as mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from pathlib import Path

from lightning_metarl.cli import main as cli_main
from lightning_metarl.evaluation import read_scalars

COLUMNS = ("return/pre_update", "return/post_update", "perf/env_steps_per_s", "env_steps")


def run(config: Path, iterations: int, out: Path, name: str, extra: list[str], checkpoint_every: int | None = None) -> Path:
    """Train ``config`` for ``iterations`` meta-iterations; return the run folder.

    With ``checkpoint_every`` the run is split into epochs of that many iterations, so a
    checkpoint (and the held-out evaluation) is written after each, from which any stretch of the
    curve can be replayed exactly (``--ckpt_path``); otherwise it is one epoch.
    """
    every = iterations if checkpoint_every is None else checkpoint_every
    if every < 1 or iterations % every:
        raise SystemExit(f"error: --checkpoint-every must divide --iterations ({iterations}), got {every}")
    cli_main([
        "fit", "--config", str(config),
        "--trainer.max_epochs", str(iterations // every),
        "--model.init_args.iterations_per_epoch", str(every),
        "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.logger.init_args.name", name,
        *extra,
    ])
    return max((out / name).glob("version_*"), key=lambda p: p.stat().st_mtime)


def write_curve(run_dir: Path, tags: tuple[str, ...] = ()) -> list[dict[str, float]]:
    """Read the run's scalars; write ``curve.csv`` (returns, speed and ``tags``) and ``curve.png``; return the rows."""
    curves = read_scalars(run_dir)
    columns = (*COLUMNS, *tags)
    rows = [
        {"iteration": step, **{col: curves.get(col, {}).get(step, float("nan")) for col in columns}}
        for step in sorted(curves["return/post_update"])
    ]
    with open(run_dir / "curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["iteration", *columns])
        writer.writeheader()
        writer.writerows(rows)
    plot_curves({run_dir.parent.name: rows}, run_dir / "curve.png", run_dir.parent.name)
    return rows


def plot_curves(series: dict[str, list[dict[str, float]]], path: Path, title: str) -> bool:
    """Plot pre-update (dashed) and post-update (solid) return against meta-iteration, one colour per run.

    Returns False (and writes nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for index, (label, rows) in enumerate(series.items()):
        steps = [r["iteration"] for r in rows]
        color = f"C{index}"
        ax.plot(steps, [r["return/post_update"] for r in rows], color=color, label=f"{label} post-update")
        ax.plot(steps, [r["return/pre_update"] for r in rows], color=color, linestyle="--", alpha=0.7,
                label=f"{label} pre-update")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("average return")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def read_curve(run_dir: Path) -> list[dict[str, float]]:
    """The rows of a run folder's ``curve.csv`` (written by an earlier benchmark run)."""
    path = run_dir / "curve.csv"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (run the benchmark on that config first)")
    with open(path, newline="") as f:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]


def window_means(rows: list[dict[str, float]], column: str, window: int) -> list[tuple[int, float]]:
    """``(first iteration, mean of column)`` over consecutive windows of ``window`` iterations."""
    return [
        (int(rows[i]["iteration"]), sum(r[column] for r in rows[i:i + window]) / len(rows[i:i + window]))
        for i in range(0, len(rows), window)
    ]


def compare(run_dirs: list[Path], window: int, out: Path) -> None:
    """Print windowed mean returns of several finished runs side by side and plot them together."""
    series = {f"{d.parent.name}/{d.name}": read_curve(d) for d in run_dirs}
    print(f"mean post-update (pre-update) return per {window} iterations")
    print(f"{'iterations':>11}" + "".join(f" {label[-28:]:>28}" for label in series))
    tables = {label: (window_means(rows, "return/post_update", window), window_means(rows, "return/pre_update", window))
              for label, rows in series.items()}
    for k in range(max(len(post) for post, _ in tables.values())):
        cells = []
        for post, pre in tables.values():
            cells.append(f"{post[k][1]:>19.2f} ({pre[k][1]:6.2f})" if k < len(post) else " " * 28)
        start = k * window
        print(f"{f'{start}-{start + window - 1}':>11}" + "".join(f" {c}" for c in cells))
    if plot_curves(series, out, " vs ".join(d.parent.name for d in run_dirs)):
        print(f"plot in {out}")


def seed_group(run_dir: Path) -> str:
    """The name of a run without its seed suffix: ``runs/point_corner_mame_s2/version_0`` -> ``point_corner_mame``."""
    return re.sub(r"_s\d+$", "", run_dir.parent.name)


def compare_seeds(run_dirs: list[Path], window: int, column: str = "return/post_update") -> dict[str, list[tuple[int, float, float, int]]]:
    """Group runs that differ only in their ``_s<seed>`` suffix; print and return mean and std over seeds per window.

    Each group's rows are ``(first iteration, mean over seeds, std over seeds, seeds)`` of the
    per-seed window means of ``column`` (population std; windows that not every seed reached
    average the seeds that did).
    """
    groups: dict[str, list[list[tuple[int, float]]]] = {}
    for run_dir in run_dirs:
        groups.setdefault(seed_group(run_dir), []).append(window_means(read_curve(run_dir), column, window))
    table: dict[str, list[tuple[int, float, float, int]]] = {}
    for name, per_seed in groups.items():
        rows = []
        for k in range(max(len(means) for means in per_seed)):
            values = [means[k][1] for means in per_seed if k < len(means)]
            mean = sum(values) / len(values)
            std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
            rows.append((k * window, mean, std, len(values)))
        table[name] = rows
    print(f"mean +- std over seeds of the mean {column} per {window} iterations")
    print(f"{'iterations':>11}" + "".join(f" {name[-30:]:>30}" for name in table))
    for k in range(max(len(rows) for rows in table.values())):
        cells = [f"{rows[k][1]:>17.2f} +- {rows[k][2]:5.2f} ({rows[k][3]})" if k < len(rows) else " " * 30
                 for rows in table.values()]
        print(f"{f'{k * window}-{k * window + window - 1}':>11}" + "".join(f" {c}" for c in cells))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("conf/point_corner_maml.yaml"))
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_learning"))
    parser.add_argument("--name", default=None, help="run name (default: the config's stem)")
    parser.add_argument("--checkpoint-every", type=int, default=None, metavar="K",
                        help="write a checkpoint every K iterations (default: only at the end)")
    parser.add_argument("--tags", nargs="*", default=[],
                        help="more TensorBoard tags to print and write to curve.csv, e.g. kl/inner_step_0")
    parser.add_argument("extra", nargs="*", help="more CLI overrides, e.g. --model.init_args.inner_lr=0.05")
    parser.add_argument("--compare", type=Path, nargs="+", default=None, metavar="RUN_DIR",
                        help="instead of training, compare finished runs (folders holding curve.csv)")
    parser.add_argument("--window", type=int, default=25, help="iterations per row of the --compare table")
    parser.add_argument("--plot", type=Path, default=Path("compare.png"), help="where --compare writes its plot")
    parser.add_argument("--seeds", action="store_true",
                        help="with --compare: group runs named <name>_s<seed> and print mean +- std over seeds")
    args = parser.parse_args()
    if args.compare:
        compare(args.compare, args.window, args.plot)
        if args.seeds:
            compare_seeds(args.compare, args.window)
        return
    sys.argv = sys.argv[:1]  # the CLI gets its arguments from ``run``, not from this command line
    start = time.perf_counter()
    run_dir = run(args.config, args.iterations, args.out, args.name or args.config.stem,
                  [*args.extra, "--trainer.enable_progress_bar", "false"], args.checkpoint_every)
    wall = time.perf_counter() - start
    rows = write_curve(run_dir, tuple(args.tags))
    print(f"{'iter':>5} {'pre-update':>11} {'post-update':>12} {'env steps/s':>12}"
          + "".join(f" {tag:>22}" for tag in args.tags))
    for r in rows:
        print(f"{r['iteration']:>5} {r['return/pre_update']:>11.3f} {r['return/post_update']:>12.3f} "
              f"{r['perf/env_steps_per_s']:>12.0f}" + "".join(f" {r[tag]:>22.4g}" for tag in args.tags))
    total_steps = rows[-1]["env_steps"] if rows else 0
    print(f"{len(rows)} iterations, {total_steps:.3g} env steps, {wall:.0f} s wall; curve in {run_dir}/curve.csv")


if __name__ == "__main__":
    main()
