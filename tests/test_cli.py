"""The real entry point on tiny budgets: training, logging, reproducibility, resuming, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import POINT_CONFIG, REPO, TINY

from lightning_metarl.cli import main
from lightning_metarl.evaluation import read_scalars

REQUIRED_TAGS = {
    "return/pre_update", "return/post_update", "loss/outer", "policy/entropy",
    "perf/env_steps_per_s", "perf/iteration_s",
}
# Scalars that must agree bit for bit between runs (timings differ).
DETERMINISTIC_TAGS = ("return/pre_update", "return/post_update", "loss/outer", "policy/entropy")


def fit(*extra: str, epochs: int = 2, iterations_per_epoch: int = 1, seed: int = 5) -> None:
    main([
        "fit", "--config", str(POINT_CONFIG), *TINY,
        "--seed_everything", str(seed),
        "--trainer.max_epochs", str(epochs),
        "--model.init_args.iterations_per_epoch", str(iterations_per_epoch),
        *extra,
    ])


def deterministic(curves: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    return {tag: curves[tag] for tag in DETERMINISTIC_TAGS}


def test_fit_logs_scalars_config_and_checkpoints(in_tmp: Path):
    fit()
    run = in_tmp / "runs" / "point_corner_maml" / "version_0"
    curves = read_scalars(run)
    assert REQUIRED_TAGS <= set(curves)
    assert "hp_metric" not in curves  # Lightning's placeholder metric means nothing here
    assert sorted(curves["return/post_update"]) == [0, 1]
    assert all(v > 0 for v in curves["perf/env_steps_per_s"].values())
    assert (run / "config.yaml").is_file()
    assert "Point-Corner" in (run / "config.yaml").read_text()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["state_dict"]["iteration"].item() == 2


@pytest.mark.parametrize("outer", ["adam", "trpo"])
def test_every_epoch_writes_its_checkpoint_whatever_the_outer_step(in_tmp: Path, outer: str):
    """Lightning's checkpoints count optimizer steps: TRPO's step is one (``TrustRegion``), or no epoch would be saved."""
    fit("--model.init_args.outer_optimizer", outer, "--trainer.logger.init_args.name", outer, epochs=3)
    folder = in_tmp / "runs" / outer / "version_0" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch=0-step=1.ckpt", "epoch=1-step=2.ckpt", "epoch=2-step=3.ckpt", "last.ckpt"]
    assert torch.load(folder / "epoch=1-step=2.ckpt", weights_only=True)["state_dict"]["iteration"].item() == 2


def test_same_seed_same_metrics_other_seed_differs(in_tmp: Path):
    fit(seed=11)
    fit(seed=11)
    fit(seed=12)
    runs = [deterministic(read_scalars(in_tmp / "runs" / "point_corner_maml" / f"version_{k}")) for k in range(3)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_resume_equals_uninterrupted_run(in_tmp: Path):
    fit("--trainer.logger.init_args.name", "straight", epochs=4)
    fit("--trainer.logger.init_args.name", "resumed", epochs=2)
    fit("--trainer.logger.init_args.name", "resumed", "--ckpt_path", "last", epochs=4)
    straight = deterministic(read_scalars(in_tmp / "runs" / "straight" / "version_0"))
    resumed_dir = in_tmp / "runs" / "resumed" / "version_0"
    resumed = deterministic(read_scalars(resumed_dir))
    assert sorted(resumed["return/post_update"]) == [0, 1, 2, 3]
    assert resumed == straight
    assert (resumed_dir / "config.yaml").is_file() and (resumed_dir / "config_resume_1.yaml").is_file()
    assert not (in_tmp / "runs" / "resumed" / "version_1").exists()


def run_main_expecting_exit(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as excinfo:
        main(args)
    assert excinfo.value.code not in (0, None)
    err = capsys.readouterr().err
    assert len(err.splitlines()) <= 25, "error message must fit on one screen"
    return err


def test_bad_input_exits_with_a_short_message(in_tmp: Path, capsys):
    base = ["fit", "--config", str(POINT_CONFIG), *TINY]
    err = run_main_expecting_exit(capsys, [*base, "--model.init_args.env", "Point-Cornr"])
    assert "unknown task family 'Point-Cornr'" in err and "Point-Corner" in err
    err = run_main_expecting_exit(capsys, [*base, "--model.init_args.inner_lrr", "0.1"])
    assert "inner_lrr" in err
    err = run_main_expecting_exit(capsys, [*base, "--model.init_args.horizon", "ten"])
    assert "horizon" in err
    err = run_main_expecting_exit(capsys, ["fit", "--config", "conf/missing.yaml"])
    assert "missing.yaml" in err and "does not exist" in err
    err = run_main_expecting_exit(capsys, [*base, "--model.init_args.horizon", "-3"])
    assert "horizon" in err
    err = run_main_expecting_exit(capsys, [*base, "--ckpt_path", "last"])
    assert "nothing to resume" in err
    assert not (in_tmp / "runs").exists() or not any((in_tmp / "runs").rglob("*.ckpt"))


def test_corrupt_checkpoint_is_rejected_and_left_untouched(in_tmp: Path, capsys):
    fit(epochs=1)
    last = in_tmp / "runs" / "point_corner_maml" / "version_0" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    truncated = last.read_bytes()
    err = run_main_expecting_exit(capsys, ["fit", "--config", str(POINT_CONFIG), *TINY, "--seed_everything", "5",
                                           "--model.init_args.iterations_per_epoch", "1", "--ckpt_path", "last"])
    assert "corrupt" in err and "last.ckpt" in err
    assert last.read_bytes() == truncated
    assert sorted(p.name for p in (in_tmp / "runs" / "point_corner_maml").iterdir()) == ["version_0"]


def test_validate_and_test_adapt_on_held_out_tasks(in_tmp: Path):
    fit(epochs=1)
    run = in_tmp / "runs" / "point_corner_maml" / "version_0"
    assert {"val/return/pre_update", "val/return/post_update"} <= set(read_scalars(run))
    last = run / "checkpoints" / "last.ckpt"
    for command in ("validate", "test"):
        main([command, "--config", str(POINT_CONFIG), *TINY, "--ckpt_path", str(last)])
    evaluated = [read_scalars(in_tmp / "runs" / f"point_corner_maml_{command}" / "version_0")
                 for command in ("validate", "test")]
    assert "val/return/post_update" in evaluated[0] and "test/return/post_update" in evaluated[1]
    # the same checkpoint and held-out tasks give the same numbers as the end-of-epoch validation
    fit_value = read_scalars(run)["val/return/post_update"]
    assert list(evaluated[0]["val/return/post_update"].values()) == list(fit_value.values())


def test_model_settings_that_a_checkpoint_overrides_are_named(in_tmp: Path):
    fit(epochs=1)
    last = in_tmp / "runs" / "point_corner_maml" / "version_0" / "checkpoints" / "last.ckpt"
    with pytest.warns(UserWarning, match=r"ignored: model\.init_args\.inner_lr: 0\.5 \(checkpoint: 0\.1\)"):
        main(["validate", "--config", str(POINT_CONFIG), *TINY, "--ckpt_path", str(last),
              "--model.init_args.inner_lr", "0.5"])


def test_validate_and_test_use_different_held_out_tasks_and_test_writes_a_csv(in_tmp: Path):
    import csv

    fit("--model.init_args.eval_batches", "2", epochs=1)
    checkpoint = str(in_tmp / "runs" / "point_corner_maml" / "version_0" / "checkpoints" / "last.ckpt")
    common = ["--config", str(POINT_CONFIG), *TINY, "--model.init_args.eval_batches", "2", "--ckpt_path", checkpoint]
    main(["validate", *common])
    main(["test", *common])
    (path,) = list((in_tmp / "runs").rglob("test_returns.csv"))
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["batch", "task", "step", "return"]
    per_task: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        per_task.setdefault((row["batch"], row["task"]), []).append(row["step"])
    assert len(per_task) == 2 * 3  # eval_batches x meta_batch_size
    assert all(steps == ["0", "1"] for steps in per_task.values())  # k + 1 rows per task, k = 1 inner step

    from lightning_metarl.algorithms import MAML
    from lightning_metarl.algorithms.base import TEST_SEED_OFFSET

    module = MAML(meta_batch_size=3, rollouts_per_task=2, horizon=4)
    seed = module.hparams.eval_seed
    val_goals = module.env.held_out_tasks(3, seed=seed)["goal"]
    test_goals = module.env.held_out_tasks(3, seed=seed + TEST_SEED_OFFSET)["goal"]
    assert not torch.equal(val_goals, test_goals)


def test_predict_is_not_offered(in_tmp: Path, capsys):
    err = run_main_expecting_exit(capsys, ["predict", "--config", str(POINT_CONFIG)])
    assert "predict" in err and "invalid choice" in err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "predict" not in capsys.readouterr().out
    assert not (in_tmp / "runs").exists()


def test_lightning_switches_work_or_fail_on_one_screen(in_tmp: Path, capsys):
    fit("--trainer.enable_checkpointing", "false", "--trainer.logger.init_args.name", "no_ckpt", epochs=1)
    run = in_tmp / "runs" / "no_ckpt" / "version_0"
    assert "return/post_update" in read_scalars(run) and not (run / "checkpoints").exists()

    base = ["fit", "--config", str(POINT_CONFIG), *TINY, "--trainer.logger.init_args.name", "bad"]
    if not torch.cuda.is_available():
        err = run_main_expecting_exit(capsys, [*base, "--trainer.accelerator", "gpu"])
        assert "gpu" in err.lower() and "Traceback" not in err
    err = run_main_expecting_exit(capsys, [*base, "--trainer.strategy", "ddp_spawn", "--trainer.devices", "2"])
    assert "ddp_spawn" in err and "--trainer.strategy ddp" in err and "Traceback" not in err
    assert not (in_tmp / "runs" / "bad").exists()
    blocker = in_tmp / "a_file"
    blocker.write_text("not a folder")
    err = run_main_expecting_exit(capsys, [*base, "--trainer.logger.init_args.save_dir", str(blocker / "runs")])
    assert "a_file" in err and "Traceback" not in err
    assert blocker.read_text() == "not a folder"


def test_a_checkpoint_of_another_algorithm_or_family_is_refused(in_tmp: Path, capsys):
    fit(epochs=1)
    checkpoint = in_tmp / "runs" / "point_corner_maml" / "version_0" / "checkpoints" / "last.ckpt"
    before = checkpoint.read_bytes()
    promp = str(POINT_CONFIG.parent / "point_corner_promp.yaml")
    err = run_main_expecting_exit(capsys, ["fit", "--config", promp, *TINY, "--ckpt_path", str(checkpoint)])
    assert "algorithm MAML (config: ProMP)" in err
    err = run_main_expecting_exit(capsys, ["fit", "--config", str(POINT_CONFIG), *TINY, "--ckpt_path", str(checkpoint),
                                           "--model.init_args.env", "Point-Semicircle"])
    assert "task family Point-Corner (config: Point-Semicircle)" in err
    assert checkpoint.read_bytes() == before
    assert not (in_tmp / "runs" / "point_corner_promp").exists()


def test_yaml_errors_name_the_file_and_unknown_algorithms_list_the_known_ones(in_tmp: Path, capsys):
    bad = in_tmp / "broken.yaml"
    bad.write_text("model:\n  init_args: [unclosed\n")
    err = run_main_expecting_exit(capsys, ["fit", "--config", str(bad)])
    assert "broken.yaml" in err and "line 3" in err
    err = run_main_expecting_exit(capsys, ["fit", "--config", str(POINT_CONFIG), "--model", "MAMLX"])
    assert "unknown algorithm 'MAMLX'" in err and "MAME, MAML, ProMP" in err
    other = in_tmp / "other.yaml"
    other.write_text(POINT_CONFIG.read_text().replace("algorithms.MAML", "algorithms.MAMEE"))
    err = run_main_expecting_exit(capsys, ["fit", "--config", str(other)])
    assert "other.yaml: model.class_path: unknown algorithm" in err
    assert not (in_tmp / "runs").exists()


def test_default_root_dir_is_honoured_when_no_logger_folder_is_given(in_tmp: Path):
    fit("--trainer.default_root_dir", str(in_tmp / "elsewhere"), epochs=1)
    assert (in_tmp / "elsewhere" / "point_corner_maml" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert not (in_tmp / "runs").exists()


def test_checkpoints_load_without_unpickling_arbitrary_objects(in_tmp: Path, capsys):
    fit(epochs=1)
    checkpoint = torch.load(in_tmp / "runs" / "point_corner_maml" / "version_0" / "checkpoints" / "last.ckpt",
                            weights_only=True)  # our own checkpoints need nothing else
    checkpoint["hyper_parameters"]["payload"] = Path("an arbitrary object")
    torch.save(checkpoint, in_tmp / "odd.ckpt")
    err = run_main_expecting_exit(capsys, ["fit", "--config", str(POINT_CONFIG), *TINY, "--ckpt_path",
                                           str(in_tmp / "odd.ckpt")])
    assert "odd.ckpt holds objects other than tensors" in err


def test_evaluation_never_writes_into_a_training_run_folder(in_tmp: Path):
    fit(epochs=1)
    run = in_tmp / "runs" / "point_corner_maml" / "version_0"
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    sizes = {p: p.stat().st_size for p in run.rglob("*") if p.is_file()}
    for subcommand in ("validate", "test"):
        main([subcommand, "--config", str(POINT_CONFIG), *TINY, "--ckpt_path", "last"])
        assert (in_tmp / "runs" / f"point_corner_maml_{subcommand}" / "version_0").is_dir()
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert {p: p.stat().st_size for p in run.rglob("*") if p.is_file()} == sizes
    assert (in_tmp / "runs" / "point_corner_maml_test" / "version_0" / "test_returns.csv").is_file()


def test_ckpt_path_last_resumes_the_run_of_these_settings_or_the_named_one(in_tmp: Path, capsys):
    runs = in_tmp / "runs" / "point_corner_maml"
    fit(epochs=1)  # version_0: the config's settings
    fit("--model.init_args.inner_lr", "0.5", epochs=1)  # version_1, newer: a throw-away experiment
    capsys.readouterr()
    fit("--ckpt_path", "last", epochs=2)
    assert "version_0/checkpoints/last.ckpt (meta-iteration 1)" in capsys.readouterr().err
    assert sorted(read_scalars(runs / "version_0")["return/post_update"]) == [0, 1]
    assert sorted(read_scalars(runs / "version_1")["return/post_update"]) == [0]
    # other settings than every run's: refused, naming the difference
    err = run_main_expecting_exit(capsys, ["fit", "--config", str(POINT_CONFIG), *TINY, "--seed_everything", "5",
                                           "--model.init_args.inner_lr", "0.2", "--ckpt_path", "last"])
    assert "no run under" in err and "model.init_args.inner_lr: 0.1 (now: 0.2)" in err
    # a run named by its version is resumed whatever its settings
    fit("--trainer.logger.init_args.version", "1", "--ckpt_path", "last", epochs=2)
    assert sorted(read_scalars(runs / "version_1")["return/post_update"]) == [0, 1]
    assert not (runs / "version_2").exists()


def test_mujoco_runs_log_the_physics_part_of_collection(in_tmp: Path):
    """``perf/physics_s``: the seconds of the physics calls, a part of ``perf/collect_s`` (MuJoCo families only)."""
    main(["fit", "--config", str(REPO / "conf" / "half_cheetah_fwd_bwd_promp.yaml"), *TINY,
          "--model.init_args.horizon", "5", "--trainer.max_epochs", "1", "--model.init_args.iterations_per_epoch", "2",
          "--trainer.limit_val_batches", "0"])
    curves = read_scalars(in_tmp / "runs" / "half_cheetah_fwd_bwd_promp" / "version_0")
    assert sorted(curves["perf/physics_s"]) == [0, 1]
    for step, seconds in curves["perf/physics_s"].items():
        assert 0 < seconds < curves["perf/collect_s"][step]
    fit()  # the point env has no MuJoCo physics: no such tag
    assert "perf/physics_s" not in read_scalars(in_tmp / "runs" / "point_corner_maml" / "version_0")


LINEAR_LR = ["--lr_scheduler", "LinearLR", "--lr_scheduler.start_factor", "1.0", "--lr_scheduler.end_factor", "0.0",
             "--lr_scheduler.total_iters", "4"]


def test_lr_scheduler_steps_once_per_meta_iteration_and_resumes_exactly(in_tmp: Path):
    """``--lr_scheduler`` schedules the algorithm's own Adam (``outer_lr`` 1e-3 in the config), one step per meta-iteration."""
    fit(*LINEAR_LR, "--trainer.logger.init_args.name", "straight", epochs=2, iterations_per_epoch=2)
    fit(*LINEAR_LR, "--trainer.logger.init_args.name", "resumed", epochs=1, iterations_per_epoch=2)
    fit(*LINEAR_LR, "--trainer.logger.init_args.name", "resumed", "--ckpt_path", "last", epochs=2, iterations_per_epoch=2)
    fit("--trainer.logger.init_args.name", "constant", epochs=2, iterations_per_epoch=2)
    straight = read_scalars(in_tmp / "runs" / "straight" / "version_0")
    resumed = read_scalars(in_tmp / "runs" / "resumed" / "version_0")
    constant = read_scalars(in_tmp / "runs" / "constant" / "version_0")
    assert straight["optim/lr"] == pytest.approx({k: 1e-3 * (1 - k / 4) for k in range(4)}, rel=1e-6)
    assert resumed["optim/lr"] == straight["optim/lr"]
    assert deterministic(resumed) == deterministic(straight)
    assert "optim/lr" not in constant
    # the first update has the same learning rate either way, the later ones not
    assert constant["loss/outer"][0] == straight["loss/outer"][0]
    assert constant["return/post_update"][0] == straight["return/post_update"][0]
    assert constant["loss/outer"][2] != straight["loss/outer"][2]


def test_unsupported_optimizer_settings_fail_on_one_screen(in_tmp: Path, capsys):
    base = ["fit", "--config", str(POINT_CONFIG), *TINY, "--trainer.max_epochs", "1"]
    err = run_main_expecting_exit(capsys, [*base, "--optimizer", "SGD", "--optimizer.lr", "0.1"])
    assert "--optimizer is not supported" in err
    err = run_main_expecting_exit(capsys, [*base, "--lr_scheduler", "ReduceLROnPlateau",
                                                   "--lr_scheduler.monitor", "return/post_update"])
    assert "ReduceLROnPlateau is not supported" in err
    err = run_main_expecting_exit(capsys, [*base, *LINEAR_LR, "--model.init_args.outer_optimizer", "trpo"])
    assert "TrustRegion has no learning rate" in err
    assert not (in_tmp / "runs").exists() or not any((in_tmp / "runs").rglob("*.ckpt"))


def test_resuming_with_another_lr_schedule_than_the_checkpoint_is_refused(in_tmp: Path, capsys):
    """Refused before the logger starts: the run's folder is left as it was."""
    def resume(seed: int, *extra: str) -> list[str]:
        return ["fit", "--config", str(POINT_CONFIG), *TINY, "--seed_everything", str(seed), "--trainer.max_epochs", "2",
                "--model.init_args.iterations_per_epoch", "1", "--ckpt_path", "last", *extra]

    def contents(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    fit(*LINEAR_LR, epochs=1)
    run = in_tmp / "runs" / "point_corner_maml" / "version_0"
    assert "torch.optim.lr_scheduler.LinearLR" in (run / "config.yaml").read_text()  # what the message points to
    before = contents(run)
    # resuming by settings does not pick a run started with another schedule, and names the difference
    err = run_main_expecting_exit(capsys, resume(5))
    assert "no run under" in err and "lr_scheduler: {'class_path': 'torch.optim.lr_scheduler.LinearLR'" in err
    # a run named by its version is refused for its schedule
    err = run_main_expecting_exit(capsys, resume(5, "--trainer.logger.init_args.version", "0"))
    assert "written with a learning-rate scheduler and none is configured now" in err
    fit(epochs=1, seed=6)
    err = run_main_expecting_exit(capsys, resume(6, *LINEAR_LR, "--trainer.logger.init_args.version", "1"))
    assert "written without a learning-rate scheduler and one is configured now" in err
    # so is a checkpoint given by its path
    err = run_main_expecting_exit(capsys, [*resume(5)[:-2], "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert "written with a learning-rate scheduler and none is configured now" in err
    assert contents(run) == before
    assert sorted(p.name for p in (in_tmp / "runs" / "point_corner_maml").iterdir()) == ["version_0", "version_1"]


def test_the_module_refuses_a_resume_with_another_lr_schedule_outside_the_cli(in_tmp: Path):
    """``on_train_start`` checks the schedule for runs driven by a ``Trainer`` of one's own."""
    from lightning import Trainer

    from lightning_metarl.algorithms import MAML
    from lightning_metarl.errors import ConfigError

    fit(*LINEAR_LR, epochs=1)
    checkpoint = in_tmp / "runs" / "point_corner_maml" / "version_0" / "checkpoints" / "last.ckpt"
    settings = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    model = MAML(**{key: value for key, value in settings.items() if not key.startswith("_")})
    trainer = Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0)
    with pytest.raises(ConfigError, match="written with a learning-rate scheduler and none is configured now"):
        trainer.fit(model, ckpt_path=checkpoint)
