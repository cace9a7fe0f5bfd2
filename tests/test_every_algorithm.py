"""Every algorithm the CLI offers, as a user runs it: seeded runs repeat exactly, a resumed run equals an uninterrupted one.

The list comes from :func:`lightning_metarl.cli.available_algorithms`, so an algorithm added
later is covered without editing this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY

from lightning_metarl.cli import available_algorithms, main
from lightning_metarl.evaluation import read_scalars

#: Tags whose values depend on time, not on the seed.
TIMING = ("perf/",)


def fit(algorithm: str, name: str, epochs: int, *extra: str) -> None:
    main([
        "fit", "--model", algorithm, "--model.init_args.env", "Point-Semicircle", *TINY,
        "--model.init_args.iterations_per_epoch", "1",
        "--seed_everything", "4", "--trainer.max_epochs", str(epochs), "--trainer.logger.init_args.name", name,
        *extra,
    ])


def scalars(run: Path) -> dict[str, dict[int, float]]:
    return {tag: curve for tag, curve in read_scalars(run).items() if not tag.startswith(TIMING)}


def test_every_algorithm_is_covered():
    assert {"CAVIA", "EMAML", "LatentSpace", "MAESN", "MAME", "MAML", "ProMP"} <= set(available_algorithms())


@pytest.mark.parametrize("algorithm", available_algorithms())
def test_resumed_run_equals_an_uninterrupted_one(in_tmp: Path, algorithm: str):
    fit(algorithm, "straight", 2)
    fit(algorithm, "resumed", 1)
    fit(algorithm, "resumed", 2, "--ckpt_path", "last")
    straight = scalars(in_tmp / "runs" / "straight" / "version_0")
    resumed = scalars(in_tmp / "runs" / "resumed" / "version_0")
    assert {"return/pre_update", "return/post_update", "val/return/post_update"} <= set(straight)
    assert sorted(straight["return/post_update"]) == [0, 1]
    # the first iteration of two separate runs agrees (seeded), and so does everything after the resume
    assert resumed == straight
