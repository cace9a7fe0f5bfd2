"""One process of the DDP equivalence test: one meta-iteration of an algorithm fed a fixed meta-batch.

    python tests/ddp_worker.py ALGORITHM OUT_DIR WORLD_SIZE

Every process builds the same full meta-batch of ``TASKS`` tasks (same seed, same collection),
keeps its rank's equal share of the tasks and runs one real ``training_step`` through a
Lightning ``Trainer`` (:class:`~lightning_metarl.distributed.MetaRLDDPStrategy` when
``WORLD_SIZE`` > 1, its processes started by the caller with ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` set, as torchrun or SLURM would). Rank 0 saves the updated parameters and the
logged scalars (and the initial ones) to ``OUT_DIR/result.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from lightning import Trainer

from lightning_metarl import distributed
from lightning_metarl.algorithms import MAESN, MAME, MAML, MetaBatch, MetaRLModule, ProMP

TASKS = 4
SIZES = dict(env="Point-Corner", env_kwargs={"reward_type": "dense"}, rollouts_per_task=3, horizon=10, iterations_per_epoch=1, eval_batches=1)
# TRPO with damping 0.1: 4 x 3 trajectories of 10 steps leave the KL Hessian of some
# thousand weights nearly singular, and with the default damping (1e-5) conjugate gradient
# amplifies the float32 rounding of the per-task matrix products, which differs with the number
# of tasks per process, to percents of the step.
ALGORITHMS: dict[str, tuple[type[MetaRLModule], dict[str, Any]]] = {
    "maml_vpg": (MAML, {"outer_optimizer": "adam", "outer_lr": 0.05}),
    "maml_trpo": (MAML, {"outer_optimizer": "trpo", "inner_objective": "lvc", "max_kl": 0.05, "cg_damping": 0.1}),
    "promp": (ProMP, {"num_outer_steps": 3, "target_inner_kl": 1e-3, "outer_lr": 0.01}),
    "mame": (MAME, {"num_outer_steps": 2, "outer_lr": 0.01}),
    "mame_emaml": (MAME, {"num_outer_steps": 2, "outer_lr": 0.01, "exploration_update": "emaml"}),
    "maesn": (MAESN, {"num_train_tasks": 6, "max_kl": 0.05, "cg_damping": 0.1}),
}


def share(meta_batch: MetaBatch, rank: int, size: int) -> MetaBatch:
    """Rank ``rank``'s equal share of the tasks of ``meta_batch`` (all of it with one process)."""
    per_rank = len(meta_batch.tasks) // size
    index = slice(rank * per_rank, (rank + 1) * per_rank)
    return MetaBatch(meta_batch.tasks[index], [b[index] for b in meta_batch.pre_update], meta_batch.post_update[index],
                     [s[index] for s in meta_batch.fast_states], dict(meta_batch.timings))


def main(algorithm: str, out: Path, size: int) -> None:
    cls, kwargs = ALGORITHMS[algorithm]
    torch.manual_seed(0)
    full = cls(meta_batch_size=TASKS, **SIZES, **kwargs)
    meta_batch = full.collect_and_adapt(full.sample_tasks())
    trainer = Trainer(
        accelerator="cpu", devices=size, max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        strategy=distributed.MetaRLDDPStrategy() if size > 1 else "auto",
    )

    class Fed(cls):  # type: ignore[misc, valid-type]
        def collect_and_adapt(self, tasks: Any, generator: Any = None) -> MetaBatch:
            mine = share(meta_batch, distributed.rank(), distributed.world_size())
            self.set_tasks(mine.tasks)  # what collection would have done (MAESN: the tasks' table rows)
            return mine

        def log_iteration(self, meta_batch: MetaBatch, metrics: dict[str, torch.Tensor], iteration_s: float) -> None:
            self.logged = {k: torch.as_tensor(v).item() for k, v in metrics.items()}
            self.logged.update({k: torch.as_tensor(v).item() for k, v in distributed.average_scalars(meta_batch.returns()).items()})

    torch.manual_seed(0)
    module = Fed(meta_batch_size=TASKS // size, **SIZES, **kwargs)
    assert all(torch.equal(p, q) for p, q in zip(module.parameters(), full.parameters()))
    trainer.fit(module)
    if trainer.is_global_zero:
        torch.save({"params": {k: v.detach() for k, v in module.state_dict().items()}, "logged": module.logged,
                    "initial": {k: v.detach() for k, v in full.state_dict().items()}}, out / "result.pt")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
