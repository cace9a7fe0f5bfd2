"""``python -m lightning_metarl {fit,validate,test}``: the LightningCLI of the package.

Defaults on top of Lightning's:

- the model is any :class:`~lightning_metarl.algorithms.MetaRLModule` subclass, picked with
  ``model.class_path`` in the config (``--model MAML`` on the command line);
- TensorBoard logs go to ``runs/<config name>/version_<n>/`` with the resolved config beside
  them; checkpoints to its ``checkpoints/`` folder (``last.ckpt`` every epoch, every
  ``--iteration_checkpoint.every_n_iterations`` meta-iterations and on SIGTERM/SIGINT, see
  :class:`~lightning_metarl.callbacks.IterationCheckpoint`);
- ``fit --ckpt_path last`` resumes the run named by ``--trainer.logger.init_args.version``, or
  the newest run of that config name started with the same model settings, schedule and seed
  (never one started with others), in its own folder, says which, and TensorBoard drops whatever
  that run logged after its checkpoint; ``validate``/``test --ckpt_path last`` evaluate the newest run;
- a run from a checkpoint keeps the checkpoint's model settings, except that ``validate`` and
  ``test`` take the evaluation settings (:data:`EVALUATION_KEYS`) from the config and command line;
- ``--lr_scheduler`` schedules the algorithm's own outer optimizer, one step per meta-iteration;
  ``--optimizer`` is refused (:meth:`MetaRLCLI._add_configure_optimizers_method_to_model`);
- errors caused by bad input (unknown task family, corrupt checkpoint, ...) are printed on one
  screen without a traceback, with exit status 2.
"""

from __future__ import annotations

import pickle
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, instantiate_class
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_metarl.algorithms import MetaRLModule
from lightning_metarl.algorithms.base import check_same_lr_schedule
from lightning_metarl.allocator import retain_freed_memory
from lightning_metarl.callbacks import IterationCheckpoint
from lightning_metarl.distributed import meta_rl_strategy
from lightning_metarl.errors import CheckpointError, ConfigError, MetaRLError

DEFAULT_RUN_NAME = "default"
DEFAULT_SAVE_DIR = "runs"
CONFIG_NAME = "config.yaml"


def _silence_known_warnings() -> None:
    """Hide warnings that do not apply to on-policy meta-RL (no dataset, no workers)."""
    for pattern in (
        r".*does not have many workers.*",
        r".*isinstance\(treespec, LeafSpec\).*",
        r".*LeafSpec.*deprecated.*",
        r".*The number of training batches.*smaller than the logging interval.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


class MetaRLCLI(LightningCLI):
    """LightningCLI with the package's defaults (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault(
            "parser_kwargs",
            {cmd: {"usage": f"python -m lightning_metarl {cmd} [-c CONFIG] [--key value ...]  (--help lists the keys)"}
             for cmd in ("fit", "validate", "test")},
        )
        kwargs.setdefault("trainer_defaults", {})
        kwargs["trainer_defaults"] = {
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": DEFAULT_SAVE_DIR, "name": DEFAULT_RUN_NAME, "default_hp_metric": False},
            },
            "log_every_n_steps": 1,
            "inference_mode": False,  # meta-test adaptation differentiates the inner objective
            "num_sanity_val_steps": 0,
            # Physics runs on the CPU; --trainer.accelerator gpu moves the policy and the
            # inner/outer optimisation to the GPU (batches are moved after collection).
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 100,
            **kwargs["trainer_defaults"],
        }
        super().__init__(MetaRLModule, *args, **kwargs)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Lightning's, without the checkpoint callback when ``--trainer.enable_checkpointing false``, and with
        Lightning's DDP names (``--trainer.strategy ddp``) run by :class:`~lightning_metarl.distributed.MetaRLDDPStrategy`."""
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        trainer_config["strategy"] = meta_rl_strategy(trainer_config.get("strategy", "auto"))
        callbacks = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        if trainer_config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, (ModelCheckpoint, IterationCheckpoint))]
        return self._instantiate_trainer(trainer_config, callbacks)

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        """``--lr_scheduler`` wraps the algorithm's own outer optimizer; ``--optimizer`` is refused.

        Lightning's version replaces ``configure_optimizers`` only when ``--optimizer`` is given
        (and ignores a lone ``--lr_scheduler``). Here the outer optimizer stays the algorithm's
        (Adam with ``model.init_args.outer_lr``, or TRPO's trust region) and the scheduler, built
        on it, is stepped once per meta-iteration (:meth:`~lightning_metarl.algorithms.MetaRLModule.step_lr_scheduler`).
        """
        config = self.config_init[subcommand] if subcommand else self.config_init
        if config.get("optimizer"):
            raise ConfigError(
                "--optimizer is not supported: each algorithm builds its own outer optimizer (Adam with "
                "model.init_args.outer_lr, or TRPO's trust region); use --lr_scheduler to schedule its learning rate"
            )
        scheduler_init = config.get("lr_scheduler")
        if not scheduler_init:
            return
        name = scheduler_init["class_path"].rsplit(".", 1)[-1]
        if name == "ReduceLROnPlateau":
            raise ConfigError(
                "--lr_scheduler ReduceLROnPlateau is not supported: schedulers step once per meta-iteration "
                "without a monitored metric (use e.g. LinearLR, StepLR, CosineAnnealingLR)"
            )
        model = self.model
        build_optimizer = model.configure_optimizers

        def configure_optimizers() -> dict[str, Any]:
            optimizer = build_optimizer()
            if not all("lr" in group for group in optimizer.param_groups):
                raise ConfigError(
                    f"--lr_scheduler {name}: the outer optimizer "
                    f"{type(optimizer).__name__} has no learning rate to schedule"
                )
            scheduler = instantiate_class(optimizer, scheduler_init)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

        model.configure_optimizers = configure_optimizers

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit``, ``validate`` and ``test``: meta-RL has nothing for Lightning's ``predict`` to do."""
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name != "predict"}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": -1})
        parser.add_lightning_class_args(IterationCheckpoint, "iteration_checkpoint")

    def _parse_ckpt_path(self) -> None:
        """Lightning's (the model is rebuilt with the checkpoint's hyperparameters), except that ``validate``
        and ``test`` keep the evaluation settings of the config and command line (:data:`EVALUATION_KEYS`)."""
        subcommand = self.config.get("subcommand")
        if subcommand in (None, "fit"):
            return super()._parse_ckpt_path()
        init_args = _model_init_args(self.config[subcommand])
        chosen = {key: init_args[key] for key in EVALUATION_KEYS if init_args is not None and key in init_args}
        super()._parse_ckpt_path()
        init_args = _model_init_args(self.config[subcommand])
        if init_args is not None:
            for key, value in chosen.items():
                init_args[key] = value

    # ------------------------------------------------------------------ run naming and resuming
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then name the run after the config file and resolve/check ``--ckpt_path``."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is not None:
            config = self.config[subcommand]
            if config.get("weights_only") is None:
                # checkpoints hold tensors, numbers and strings only: never unpickle arbitrary objects
                config["weights_only"] = True
            self._resolve_run(config, subcommand)

    def _resolve_run(self, config: Any, subcommand: str) -> None:
        logger = config.trainer.get("logger")
        logger_args = _tensorboard_init_args(logger)
        root = config.trainer.get("default_root_dir")
        if logger_args is not None and root is not None and logger_args.get("save_dir") == DEFAULT_SAVE_DIR:
            logger_args["save_dir"] = str(root)  # --trainer.default_root_dir, when no logger folder is given
        if logger_args is not None and logger_args.get("name") == DEFAULT_RUN_NAME:
            config_files = config.get("config") or []
            if config_files:
                logger_args["name"] = Path(str(config_files[-1])).stem
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            if logger_args is None:
                raise CheckpointError("--ckpt_path last needs the TensorBoard logger to find the run folder")
            run_dir = Path(logger_args.get("save_dir", "runs")) / logger_args["name"]
            # fit continues a run of these settings; evaluation rebuilds the model from the checkpoint
            # anyway, so it takes the newest run
            version, last, checkpoint = _last_checkpoint_of_run(
                run_dir, logger_args.get("version"), config if subcommand == "fit" else None)
            print(f"--ckpt_path last: {last} (meta-iteration {_checkpoint_iteration(checkpoint)})", file=sys.stderr)
            config["ckpt_path"] = str(last)
            if subcommand == "fit":
                logger_args["version"] = version
                # TensorBoard drops what the stopped run logged after its checkpoint (no step twice)
                logger_args["purge_step"] = _checkpoint_iteration(checkpoint)
                # The run folder already holds config.yaml: save this run's config beside it.
                k = 1
                while (last.parent.parent / f"config_resume_{k}.yaml").exists():
                    k += 1
                self.save_config_kwargs["config_filename"] = f"config_resume_{k}.yaml"
        elif ckpt_path is not None:
            checkpoint = _check_checkpoint(Path(ckpt_path))
        else:
            checkpoint = None
        if subcommand != "fit" and logger_args is not None:
            # evaluation logs into a folder of its own, never into a training run's
            logger_args["name"] = f"{logger_args['name']}_{subcommand}"
        if checkpoint is None:
            return
        if subcommand == "fit":
            # before the logger starts, so that a refused resume leaves nothing in the run's folder
            check_same_lr_schedule(bool(checkpoint.get("lr_schedulers")), bool(config.get("lr_scheduler")))
        _check_same_algorithm(Path(config["ckpt_path"]), checkpoint, config.get("model"))
        _check_same_hyperparameters(Path(config["ckpt_path"]), checkpoint, config.get("model"),
                                    kept=() if subcommand == "fit" else EVALUATION_KEYS)


#: Model settings that only shape evaluation: ``validate`` and ``test`` take them from the config and
#: command line rather than from the checkpoint.
EVALUATION_KEYS = ("eval_batches", "eval_seed", "meta_test_iterations", "meta_test_tasks", "meta_test_rollouts",
                   "meta_test_env_kwargs", "meta_test_halving_start")


def _model_init_args(config: Any) -> Any:
    """The ``model.init_args`` namespace of a subcommand's config, if there is one."""
    model = config.get("model") if hasattr(config, "get") else None
    return model.get("init_args") if model is not None and hasattr(model, "get") else None


def _tensorboard_init_args(logger: Any) -> dict[str, Any] | None:
    if logger is None or logger is False or logger is True:
        return None
    class_path = logger.get("class_path", "") if hasattr(logger, "get") else ""
    if not class_path.endswith("TensorBoardLogger"):
        return None
    if logger.get("init_args") is None:
        logger["init_args"] = {}
    return logger["init_args"]


def _last_checkpoint_of_run(run_dir: Path, version: Any, config: Any) -> tuple[int | str, Path, dict[str, Any]]:
    """What ``--ckpt_path last`` resumes: ``(version, path of its last.ckpt, contents)``.

    With ``--trainer.logger.init_args.version`` given, that run; otherwise the newest run under
    ``run_dir`` that was started with the same model settings, ``lr_scheduler`` and seed as
    ``config`` (compared with the run's ``config.yaml``; ``config=None``: the newest run). A run of
    the same name started with other settings is never picked silently: the error names the
    differences.
    """
    if version is not None:
        folder = run_dir / (version if isinstance(version, str) else f"version_{version}")
        last = folder / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise CheckpointError(f"--ckpt_path last: {last} does not exist (nothing to resume in that run)")
        return version, last, _check_checkpoint(last)
    candidates = sorted(run_dir.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not candidates:
        raise CheckpointError(f"--ckpt_path last: no checkpoints/last.ckpt under {run_dir}/ (nothing to resume)")
    differences: dict[Path, list[str]] = {}
    for last in candidates:
        differences[last] = [] if config is None else _config_differences(last.parent.parent / CONFIG_NAME, config)
        if not differences[last]:
            name = last.parent.parent.name
            found: int | str = int(name.removeprefix("version_")) if name.removeprefix("version_").isdigit() else name
            return found, last, _check_checkpoint(last)
    newest = candidates[0]
    raise CheckpointError(
        f"--ckpt_path last: no run under {run_dir}/ was started with these settings; the newest, "
        f"{newest.parent.parent.name}, differs in " + "; ".join(differences[newest][:5])
        + ". Pick a run with --trainer.logger.init_args.version N (it keeps its own settings), "
          "or leave out --ckpt_path to start a new one"
    )


def _config_differences(saved_config: Path, config: Any) -> list[str]:
    """``key: saved (now: current)`` for every model setting and the seed that differ from a run's ``config.yaml``."""
    import yaml

    if not saved_config.is_file():
        return [f"{saved_config} is missing"]
    saved = yaml.safe_load(saved_config.read_text()) or {}
    current = _plain(config)
    differences = []
    if saved.get("seed_everything") != current.get("seed_everything"):
        differences.append(f"seed_everything: {saved.get('seed_everything')!r} (now: {current.get('seed_everything')!r})")
    saved_model, current_model = saved.get("model") or {}, current.get("model") or {}
    if saved_model.get("class_path") != current_model.get("class_path"):
        differences.append(f"model.class_path: {saved_model.get('class_path')!r} (now: {current_model.get('class_path')!r})")
    saved_args, current_args = saved_model.get("init_args") or {}, current_model.get("init_args") or {}
    for key in sorted(set(saved_args) | set(current_args)):
        if saved_args.get(key) != current_args.get(key):
            differences.append(f"model.init_args.{key}: {saved_args.get(key)!r} (now: {current_args.get(key)!r})")
    if (saved.get("lr_scheduler") or None) != (current.get("lr_scheduler") or None):
        differences.append(f"lr_scheduler: {saved.get('lr_scheduler')!r} (now: {current.get('lr_scheduler')!r})")
    return differences


def _checkpoint_iteration(checkpoint: dict[str, Any]) -> int:
    """The meta-iterations done when ``checkpoint`` was written (the TensorBoard step of the next one)."""
    iteration = checkpoint["state_dict"].get("iteration")
    return int(iteration) if iteration is not None else 0


def _check_checkpoint(path: Path) -> dict[str, Any]:
    """The contents of ``path``; :class:`CheckpointError` unless it is a readable checkpoint of this package."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors, numbers and strings; refused, "
                              f"since loading it could run arbitrary code") from None
    except Exception as err:  # noqa: BLE001 - any failure to read is a corrupt file for the user
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint ({type(err).__name__}: {err})") from None
    missing = [k for k in ("state_dict", "loops", "lightning_metarl_rng") if k not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {path} was not written by lightning_metarl (missing {', '.join(missing)})")
    return checkpoint


def _plain(value: Any) -> Any:
    """``value`` with namespaces as dicts and tuples as lists, for comparing configs."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_same_algorithm(path: Path, checkpoint: dict[str, Any], model: Any) -> None:
    """Refuse a checkpoint of another algorithm or task family than the config's, naming both sides."""
    saved = checkpoint.get("hyper_parameters") or {}
    if model is None or not hasattr(model, "get"):
        return
    init_args = _plain(model.get("init_args")) or {}
    mismatches = []
    saved_class, wanted_class = str(saved.get("_class_path", "")), str(model.get("class_path") or "")
    if saved_class and wanted_class and saved_class.rsplit(".", 1)[-1] != wanted_class.rsplit(".", 1)[-1]:
        mismatches.append(f"algorithm {saved_class.rsplit('.', 1)[-1]} (config: {wanted_class.rsplit('.', 1)[-1]})")
    if "env" in saved and "env" in init_args and saved["env"] != init_args["env"]:
        mismatches.append(f"task family {saved['env']} (config: {init_args['env']})")
    if mismatches:
        raise CheckpointError(f"checkpoint {path} is of another run: " + ", ".join(mismatches)
                              + "; pass a checkpoint of this config, or the config of that checkpoint")


def _check_same_hyperparameters(path: Path, checkpoint: dict[str, Any], model: Any, kept: tuple[str, ...] = ()) -> None:
    """Warn about model settings that differ from the checkpoint's hyperparameters (except the ``kept`` ones).

    Lightning rebuilds the model of a run started from a checkpoint with the checkpoint's
    hyperparameters, so a changed ``--model...`` value is ignored; say so, naming each one.
    """
    saved = checkpoint.get("hyper_parameters") or {}
    init_args = _plain(model.get("init_args")) if model is not None and hasattr(model, "get") else None
    if not saved or not isinstance(init_args, dict):
        return
    changed = [
        f"model.init_args.{key}: {init_args[key]!r} (checkpoint: {_plain(saved[key])!r})"
        for key in sorted(init_args)
        if key in saved and key not in kept and init_args[key] != _plain(saved[key])
    ]
    if changed:
        warnings.warn(
            f"checkpoint {path} keeps its own hyperparameters; ignored: " + "; ".join(changed)
            + ". Start a new run to change them.",
            UserWarning,
            stacklevel=2,
        )


def available_algorithms() -> list[str]:
    """Names of the algorithm classes in :mod:`lightning_metarl.algorithms` that ``--model`` accepts."""
    from lightning_metarl import algorithms

    return sorted(
        name for name in algorithms.__all__
        if isinstance(getattr(algorithms, name), type) and issubclass(getattr(algorithms, name), MetaRLModule)
        and name not in ("MetaRLModule", "GradientMetaRLModule")
    )


def _precheck(args: list[str]) -> None:
    """Errors that the parser would report badly: YAML that does not parse (name the file), an unknown ``--model``."""
    import yaml

    for flag, value in zip(args, args[1:]):
        if flag in ("--config", "-c") and Path(value).is_file():
            try:
                spec = yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
                raise ConfigError(f"config {value}{where}: {getattr(err, 'problem', None) or err}") from None
            model = spec.get("model") if isinstance(spec, dict) else None
            class_path = model.get("class_path") if isinstance(model, dict) else None
            if isinstance(class_path, str):
                _check_algorithm_name(class_path, f"config {value}: model.class_path")
        if flag == "--model" and not value.startswith("-") and not value.endswith((".yaml", ".yml")):
            _check_algorithm_name(value, "--model")


def _check_algorithm_name(name: str, where: str) -> None:
    short = name.rsplit(".", 1)[-1]
    if "." in name and not name.startswith("lightning_metarl."):
        return  # a user's own class: the parser imports it
    if short not in available_algorithms():
        raise ConfigError(f"{where}: unknown algorithm {name!r}; available: {', '.join(available_algorithms())}")


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m lightning_metarl``; exits with status 2 on bad input."""
    _silence_known_warnings()
    retain_freed_memory()
    try:
        _precheck(list(sys.argv[1:] if args is None else args))
        MetaRLCLI(args=args)
    except SIGTERMException:
        sys.exit(128 + signal.SIGTERM)  # stopped on request; IterationCheckpoint has written last.ckpt
    except Exception as err:
        cause = _user_error(err)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)


#: Errors of Lightning and the OS that bad input causes: an accelerator the machine lacks, a run
#: folder that cannot be written.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    MetaRLError, MisconfigurationException, PermissionError, NotADirectoryError, FileExistsError,
)


def _user_error(err: BaseException) -> BaseException | None:
    """The user error (:data:`_USER_ERRORS`) that ``err`` is or was raised from (parsers wrap them), if any."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, _USER_ERRORS):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    main()
