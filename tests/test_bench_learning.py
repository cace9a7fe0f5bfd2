"""tools/bench_learning.py: the curve it writes is the run's TensorBoard record; --compare averages it."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from conftest import POINT_CONFIG, REPO, TINY

from lightning_metarl.evaluation import read_scalars

TOOL = REPO / "tools" / "bench_learning.py"


def bench(out: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), "--out", str(out), "--name", name, *extra], capture_output=True, text=True
    )


def test_curve_csv_holds_the_logged_returns_and_extra_tags_and_checkpoints(in_tmp: Path):
    args = ["--config", str(POINT_CONFIG), "--iterations", "3", "--checkpoint-every", "1",
            "--tags", "loss/outer", "policy/entropy", "--",
            *TINY, "--trainer.limit_val_batches", "0"]
    result = bench(in_tmp / "runs", "a", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = in_tmp / "runs" / "a" / "version_0"
    with open(run_dir / "curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    logged = read_scalars(run_dir)
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2]
    for row in rows:
        step = int(row["iteration"])
        for tag in ("return/pre_update", "return/post_update", "loss/outer", "policy/entropy"):
            assert float(row[tag]) == logged[tag][step]
    assert "3 iterations" in result.stdout
    # one checkpoint per K = 1 iterations, besides last.ckpt
    assert len([p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]) == 3

    bad = bench(in_tmp / "runs", "b", "--config", str(POINT_CONFIG), "--iterations", "3", "--checkpoint-every", "2")
    assert bad.returncode != 0
    assert "--checkpoint-every must divide --iterations" in bad.stderr
    assert not (in_tmp / "runs" / "b").exists()


def test_compare_prints_window_means_of_finished_runs(in_tmp: Path):
    runs = []
    for name, rows in {"x": [(0, 1.0, 2.0), (1, 3.0, 6.0), (2, 5.0, 10.0)], "y": [(0, 0.0, 1.0), (1, 0.0, 3.0)]}.items():
        run_dir = in_tmp / name / "version_0"
        run_dir.mkdir(parents=True)
        with open(run_dir / "curve.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["iteration", "return/pre_update", "return/post_update"])
            writer.writerows(rows)
        runs.append(str(run_dir))
    result = subprocess.run([sys.executable, str(TOOL), "--compare", *runs, "--window", "2", "--plot", "cmp.png"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    first = next(line for line in lines if line.strip().startswith("0-1"))
    second = next(line for line in lines if line.strip().startswith("2-3"))
    assert first.split() == ["0-1", "4.00", "(", "2.00)", "2.00", "(", "0.00)"]
    assert second.split() == ["2-3", "10.00", "(", "5.00)"]

    missing = subprocess.run([sys.executable, str(TOOL), "--compare", str(in_tmp / "nowhere")],
                             capture_output=True, text=True)
    assert missing.returncode != 0
    assert "curve.csv not found" in missing.stderr


def test_compare_seeds_gives_mean_and_std_over_the_seeds_of_each_group(in_tmp: Path):
    runs = []
    curves = {"a_s1": [1.0, 3.0], "a_s2": [3.0, 5.0], "b_s1": [0.0, 0.0, 4.0]}
    for name, values in curves.items():
        run_dir = in_tmp / name / "version_0"
        run_dir.mkdir(parents=True)
        with open(run_dir / "curve.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["iteration", "return/pre_update", "return/post_update"])
            writer.writerows((k, 0.0, v) for k, v in enumerate(values))
        runs.append(str(run_dir))
    result = subprocess.run([sys.executable, str(TOOL), "--compare", *runs, "--window", "2", "--seeds",
                             "--plot", "cmp.png"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stdout.split("mean +- std over seeds")[1].splitlines()
    assert table[1].split() == ["iterations", "a", "b"]
    # a: window means 2 and 4 -> 3 +- 1 over 2 seeds; b: 0 (1 seed)
    assert table[2].split() == ["0-1", "3.00", "+-", "1.00", "(2)", "0.00", "+-", "0.00", "(1)"]
    assert table[3].split() == ["2-3", "4.00", "+-", "0.00", "(1)"]
