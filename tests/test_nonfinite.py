"""A meta-iteration whose update is not finite is undone and counted; too many in a row stop the run."""

from __future__ import annotations

import pytest
import torch
from lightning import Trainer

from lightning_metarl.algorithms import MAML, ProMP
from lightning_metarl.errors import NonFiniteUpdateError

TINY = dict(meta_batch_size=2, rollouts_per_task=2, horizon=4, env_kwargs={"reward_type": "dense"})


def poisoning(cls):
    """``cls`` whose meta-update breaks the policy (NaN weights) on the iterations in ``poisoned``."""

    class Poisoned(cls):
        poisoned: set[int] = set()
        seen: list[dict[str, torch.Tensor]] = []

        def meta_update(self, meta_batch):
            Poisoned.seen.append({k: v.detach().clone() for k, v in self.state_dict().items()})
            metrics = super().meta_update(meta_batch)
            if int(self.iteration) in self.poisoned:
                with torch.no_grad():
                    self.policy.log_std.fill_(float("nan"))
            return metrics

    return Poisoned


def train(module, iterations: int) -> None:
    module.hparams.iterations_per_epoch = iterations
    Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, accelerator="cpu", inference_mode=False).fit(module)


@pytest.mark.parametrize("cls", [MAML, ProMP], ids=["maml_adam", "promp_kl_coefficients"])
def test_a_non_finite_update_is_undone_and_counted(cls):
    torch.manual_seed(0)
    module = poisoning(cls)(**TINY, max_nonfinite_updates=3)
    module.poisoned = {1}
    train(module, 3)
    assert int(module.skipped_updates) == 1 and int(module.consecutive_skips) == 0
    assert all(torch.isfinite(p).all() for p in module.parameters())
    # the state after the undone iteration 1 is the state before it: iteration 2 started from it
    before, after = module.seen[1], module.seen[2]
    counters = ("iteration", "skipped_updates", "consecutive_skips")
    assert all(torch.equal(before[k], after[k]) for k in before if k not in counters)
    assert int(after["iteration"]) == int(before["iteration"]) + 1


def test_too_many_non_finite_updates_in_a_row_stop_the_run():
    torch.manual_seed(0)
    module = poisoning(MAML)(**TINY, max_nonfinite_updates=2)
    module.poisoned = {0, 1, 2, 3}
    with pytest.raises(NonFiniteUpdateError, match="2 meta-iterations in a row"):
        train(module, 4)
    assert all(torch.isfinite(p).all() for p in module.parameters())
