"""Several processes (Lightning DDP): what is averaged across ranks, and the strategy that runs them.

Under ``--trainer.strategy ddp`` every process (rank) runs the whole meta-iteration on a meta-batch
of its own (``meta_batch_size`` tasks per rank, drawn from generators offset by rank) and the
ranks meet only where the single-process algorithm would combine tasks:

- every gradient of the outer update is averaged (after each ``manual_backward``; in TRPO the
  surrogate gradient and every Fisher-vector product), so N ranks with M tasks each take the step
  of one process with the N x M tasks;
- every scalar that a decision depends on is averaged (TRPO's losses and KLs in the line search,
  ProMP's inner KLs that adapt its penalty coefficients), so the decision is the same on all ranks
  and the parameters stay identical;
- the logged scalars are averaged, so TensorBoard shows the whole meta-batch.

The per-task losses are means over each task's samples and the outer losses means over tasks,
so averaging the ranks' means equals the mean over all tasks (ranks hold equally many tasks).

Lightning's own DDP wraps the module in :class:`torch.nn.parallel.DistributedDataParallel`,
whose reducer averages gradients only inside ``loss.backward()`` and insists that every
parameter gets one; TRPO's ``torch.autograd.grad`` products bypass it. :class:`MetaRLDDPStrategy`
is Lightning's DDP strategy (process group, launchers, rank-0 logging and checkpointing) without
that wrapper: the module does the averaging above itself. The CLI uses it for
``--trainer.strategy ddp``: Lightning re-runs the command once per further process (torchrun and
SLURM start the processes themselves).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

from lightning_metarl.errors import ConfigError
from lightning_metarl.masking import standardize, valid, zero_padding


def world_size() -> int:
    """Number of processes of the run (1 without an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's global rank (0 without an initialised process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (a new tensor, the same on every rank); ``tensor`` itself with one process."""
    if world_size() == 1:
        return tensor
    total = tensor.detach().to(_communication_device(), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all ranks (a new tensor, the same on every rank); ``tensor`` itself with one process."""
    if world_size() == 1:
        return tensor
    return all_reduce_sum(tensor) / world_size()


def _communication_device() -> torch.device:
    """Where the backend reduces tensors: the current GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace every ``.grad`` of ``params`` by its mean over ranks (one all-reduce of the flattened gradients).

    Parameters without a gradient count as zero on the ranks where they have none, so a
    parameter that only some ranks' tasks touch (a row of MAESN's per-task latent table) gets
    the same gradient as in one process holding all the tasks.
    """
    if world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params])
    flat = all_reduce_mean(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def average_scalars(scalars: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``{name: mean over ranks}`` of scalar values, in one all-reduce (the same dict, as tensors, with one process)."""
    names = list(scalars)
    values = torch.stack([torch.as_tensor(scalars[n], dtype=torch.float64).detach().cpu().reshape(()) for n in names]) \
        if names else torch.zeros(0, dtype=torch.float64)
    values = all_reduce_mean(values)
    return {name: values[i] for i, name in enumerate(names)}


def standardize_over_ranks(x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` with the mean and population std over the valid entries of every rank; 0 on padding.

    :func:`~lightning_metarl.masking.standardize` over all entries with one process; with several,
    the moments of the whole meta-batch (E-MAML's standardised rewards, MAME's E-MAML ablation).
    """
    mask = torch.ones_like(x, dtype=torch.bool) if mask is None else mask
    if world_size() == 1:
        return standardize(x, mask, None, eps)
    ok = valid(mask)
    count = all_reduce_sum(ok.to(x.dtype).sum()).clamp_min(1)
    mean = all_reduce_sum(zero_padding(x, ok).sum()) / count
    centered = zero_padding(x - mean, ok)
    var = all_reduce_sum(centered.pow(2).sum()) / count
    return centered / (var.sqrt() + eps)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` with one process."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_module(module: torch.nn.Module) -> None:
    """Overwrite every parameter and buffer of ``module`` with rank 0's values (nothing with one process)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def rank_offset_generator_state(state: torch.Tensor, rank: int) -> torch.Tensor:
    """A generator state for ``rank`` derived from ``state``: ``state`` itself for rank 0, an independent stream otherwise.

    The seed is a hash of the state and the rank, so ranks draw different tasks and noise while a
    run stays reproducible from its seed (and a 1-process run equals a run without DDP).
    """
    if rank == 0:
        return state
    digest = hashlib.sha256(state.numpy().tobytes() + rank.to_bytes(8, "little")).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1).get_state()


class MetaRLDDPStrategy(DDPStrategy):
    """Lightning's DDP strategy without the ``DistributedDataParallel`` wrapper (see the module docstring).

    Takes :class:`~lightning.pytorch.strategies.DDPStrategy`'s arguments (``start_method``,
    ``process_group_backend``, ``timeout``, cluster environment ...). When fitting, the module's
    parameters and buffers are broadcast from rank 0 once, so every rank starts from the same
    meta-parameters; from then on identical averaged updates keep them equal.
    """

    strategy_name = "metarl_ddp"

    def configure_ddp(self) -> None:
        """Broadcast rank 0's parameters and buffers instead of wrapping the module."""
        broadcast_module(self.model)

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        """Register as ``metarl_ddp``."""
        strategy_registry.register(cls.strategy_name, cls, description="DDP without the DDP module wrapper (lightning_metarl)")


#: Lightning's DDP strategies that start processes by pickling or forking the module: its envs
#: hold MuJoCo thread pools, which can be neither.
UNSUPPORTED_DDP = ("ddp_spawn", "ddp_fork", "ddp_notebook")


def meta_rl_strategy(strategy: Any) -> Any:
    """``strategy`` with ``"ddp"`` replaced by a :class:`MetaRLDDPStrategy` (the same launcher: the command is re-run per process).

    Raises:
        ConfigError: for the DDP variants that pickle or fork the module (:data:`UNSUPPORTED_DDP`).
    """
    if strategy == "ddp":
        return MetaRLDDPStrategy()
    if isinstance(strategy, str) and strategy in UNSUPPORTED_DDP:
        raise ConfigError(
            f"trainer.strategy {strategy!r} is not supported: it starts processes by pickling or forking the module, "
            f"whose envs hold MuJoCo thread pools; use --trainer.strategy ddp (or torchrun / SLURM)"
        )
    return strategy


if MetaRLDDPStrategy.strategy_name not in StrategyRegistry:
    MetaRLDDPStrategy.register_strategies(StrategyRegistry)
