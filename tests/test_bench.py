"""tools/bench.py: the whole-iteration benchmark's JSON line has the documented keys and consistent numbers."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import bench  # noqa: E402

TINY = ["--", "--model.init_args.meta_batch_size=2", "--model.init_args.rollouts_per_task=2",
        "--model.init_args.horizon=6"]


@pytest.mark.parametrize("config, mujoco", [("point_corner_mame.yaml", False), ("half_cheetah_fwd_bwd_promp.yaml", True)])
def test_the_json_line_has_the_documented_keys(config: str, mujoco: bool, capsys, in_tmp):
    result = bench.main([str(REPO / "conf" / config), "--iterations", "2", "--warmup", "0", *TINY])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line) == json.loads(json.dumps(result))
    assert tuple(result) == bench.JSON_KEYS
    assert result["iterations"] == 2 and result["accelerator"] == "cpu"
    assert result["env_steps_per_iteration"] == 2 * 2 * 6 * 2  # tasks x rollouts x H x phases
    assert result["useful_steps_per_iteration"] <= result["env_steps_per_iteration"]
    assert set(result["split"]) == {"collect", "adapt", "outer", "other"}
    assert sum(result["split"].values()) == pytest.approx(1.0, abs=1e-6)
    assert result["collect_steps_per_s"] >= result["steps_per_s"] > 0
    if mujoco:
        assert result["ceiling_steps_per_s"] > 0
        assert result["iteration_over_ceiling"] == pytest.approx(result["steps_per_s"] / result["ceiling_steps_per_s"])
        # the physics calls are a part of collection
        assert 0 < result["collect_physics_share"] < 1
        assert result["physics_steps_per_s"] > result["collect_steps_per_s"]
        assert result["physics_steps_per_s"] == pytest.approx(result["collect_steps_per_s"] / result["collect_physics_share"])
    else:
        assert result["ceiling_steps_per_s"] is None and result["iteration_over_ceiling"] is None
        assert result["physics_steps_per_s"] is None and result["collect_physics_share"] is None
    assert result["peak_rss_mb"] > 0


def test_a_bad_override_is_refused(in_tmp):
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.main([str(REPO / "conf" / "point_corner_maml.yaml"), "--", "--trainer.max_epochs=3"])


def test_the_ddp_benchmark_json_line_has_the_documented_keys(capsys, in_tmp):
    import bench_ddp

    result = bench_ddp.main([str(REPO / "conf" / "point_corner_maml.yaml"), "--iterations", "1", "--warmup", "0",
                             "--", "--model.init_args.meta_batch_size=4", "--model.init_args.rollouts_per_task=2",
                             "--model.init_args.horizon=6"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line) == json.loads(json.dumps(result))
    assert tuple(result) == bench_ddp.JSON_KEYS
    assert result["tasks"] == 4 and result["processes"] == 2
    assert result["speedup"] == pytest.approx(result["one_process_iteration_s"] / result["processes_iteration_s"])
