"""Losing little when a run stops: ``last.ckpt`` every N meta-iterations and when the run is told to stop.

:class:`IterationCheckpoint` is a Lightning callback (the CLI adds it as ``--iteration_checkpoint.*``).
Together with the resumable meta-iteration loader of
:class:`~lightning_metarl.algorithms.base.MetaRLModule` and the TensorBoard purge of the CLI, a
run stopped between two checkpoints and resumed with ``--ckpt_path last`` logs the same numbers at
the same steps as an uninterrupted run, none of them twice.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_metarl import distributed
from lightning_metarl.errors import ConfigError


class IterationCheckpoint(Callback):
    """Write the run's ``last.ckpt`` every ``every_n_iterations`` meta-iterations and on SIGTERM/SIGINT.

    On SIGTERM (or a first Ctrl-C, which is turned into one) the meta-iteration in progress
    finishes, ``last.ckpt`` is written and the run stops: a kill loses at most that iteration.
    A second Ctrl-C interrupts at once, writing nothing. Checkpoints are written to a temporary
    file and renamed, so a kill during the write never leaves a truncated ``last.ckpt``; a run
    that fails for any other reason writes nothing.

    Args:
        every_n_iterations: period of the mid-epoch checkpoints (``None``: only at epoch ends,
            where the ``checkpoint`` callback writes them, and on SIGTERM/SIGINT).
    """

    def __init__(self, every_n_iterations: int | None = None) -> None:
        if every_n_iterations is not None and (
            isinstance(every_n_iterations, bool) or not isinstance(every_n_iterations, int) or every_n_iterations < 1
        ):
            raise ConfigError(f"iteration_checkpoint.every_n_iterations must be a positive integer or null, "
                              f"got {every_n_iterations!r}")
        self.every_n_iterations = every_n_iterations
        self._previous_sigint: Any = None
        self._stop_requested = False

    @staticmethod
    def last_path(trainer: Trainer) -> Path | None:
        """Where ``last.ckpt`` goes: the checkpoint callback's folder (``None`` without checkpointing)."""
        callback = trainer.checkpoint_callback
        if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
            return None
        return Path(callback.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"

    def save(self, trainer: Trainer) -> Path | None:
        """Write ``last.ckpt`` atomically (temporary file, then rename); return its path."""
        path = self.last_path(trainer)
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, path)
        return path

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Turn the first Ctrl-C into a graceful stop (Lightning finishes the iteration on SIGTERM)."""
        self._previous_sigint = signal.getsignal(signal.SIGINT)

        def graceful(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGINT, self._previous_sigint)  # a second Ctrl-C interrupts at once
            os.kill(os.getpid(), signal.SIGTERM)

        try:
            signal.signal(signal.SIGINT, graceful)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous_sigint = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """With several processes, make SIGTERM only raise a flag that all ranks act on together.

        Lightning's own handler broadcasts from inside the signal handler, and its loops check
        the flag on each rank separately, so ranks that learn of the signal at different times
        end up in different collectives and wait forever. Here the handler records the signal
        (and passes it on to the processes the launcher started); at the end of every
        meta-iteration :meth:`on_train_batch_end` combines the ranks' flags, and if any is set
        it sets Lightning's on all ranks at the same point, so they stop together after that
        iteration and :meth:`on_exception` writes ``last.ckpt`` from all of them.
        """
        self._stop_requested = False
        if trainer.world_size == 1:
            return

        def record(signum: int, frame: Any) -> None:
            launcher = trainer.strategy.launcher
            if not self._stop_requested and launcher is not None:
                launcher.kill(signum)
            self._stop_requested = True

        try:
            signal.signal(signal.SIGTERM, record)
        except ValueError:  # not the main thread
            pass

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_sigint()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Every ``every_n_iterations`` meta-iterations (except at an epoch's end, which has its own checkpoint)."""
        if trainer.world_size > 1:
            requested = torch.tensor(1.0 if self._stop_requested else 0.0)
            if float(distributed.all_reduce_mean(requested)) > 0:  # every rank, at the same point
                trainer._signal_connector.received_sigterm = True
                return  # Lightning stops after this iteration; on_exception writes last.ckpt
        every = self.every_n_iterations
        iteration = int(pl_module.iteration)
        end_of_epoch = iteration % pl_module.hparams.iterations_per_epoch == 0
        if every is not None and iteration % every == 0 and not end_of_epoch:
            self.save(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """On SIGTERM/SIGINT (raised by Lightning after the iteration in progress), write ``last.ckpt``."""
        self._restore_sigint()
        if isinstance(exception, SIGTERMException):
            path = self.save(trainer)
            if path is not None and trainer.is_global_zero:
                print(f"stopped after meta-iteration {int(pl_module.iteration)}; {path} written "
                      f"(resume with --ckpt_path last)")

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None
