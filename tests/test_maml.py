"""MAML: the batched inner step and the meta-gradient through it."""

from __future__ import annotations

import pytest
import torch
from meta_gradients import assert_matches_finite_differences, double_meta_batch

from lightning_metarl.algorithms import MAML
from lightning_metarl.objectives import vpg_loss


def tiny_maml(**overrides) -> MAML:
    torch.manual_seed(0)
    kwargs = dict(meta_batch_size=3, rollouts_per_task=4, horizon=8, env_kwargs={"reward_type": "dense"})
    kwargs.update(overrides)
    return MAML(**kwargs)


def test_batched_inner_step_equals_per_task_loop():
    module = tiny_maml()
    module.env.set_tasks(module.sample_tasks())
    state = module.initial_fast_state()
    batch = module.collect(module.actor(state, "explore", module.action_rng))
    adapted = module.inner_step(state, batch, create_graph=False)

    names = [name for name, _ in module.policy.named_parameters()]
    for task in range(3):
        sample = batch[task : task + 1]
        log_prob = module.policy.log_prob(sample["observation"], sample["action"])
        loss = vpg_loss(log_prob, sample["advantage"], sample["mask"]).sum()
        grads = torch.autograd.grad(loss, list(module.policy.parameters()))
        for name, param, grad in zip(names, module.policy.parameters(), grads):
            expected = param.detach() - module.hparams.inner_lr * grad
            got = adapted.get(("params", *name.split(".")))[task]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # tasks saw different data, so their adapted parameters differ
    assert not torch.allclose(adapted["params", "log_std"][0], adapted["params", "log_std"][1])


@pytest.mark.parametrize("learn_inner_lr", [False, True])
def test_meta_gradient_matches_finite_differences(learn_inner_lr: bool):
    module = tiny_maml(num_inner_steps=2, learn_inner_lr=learn_inner_lr)
    meta_batch = double_meta_batch(module)
    post = meta_batch.post_update

    def objective() -> torch.Tensor:
        return module.outer_loss(meta_batch, module.adaptation_path(meta_batch.pre_update))

    parameters = list(module.parameters())  # the policy and, if learned, the inner step sizes
    assert len(parameters) == (14 if learn_inner_lr else 7)

    # first-order MAML (no gradient through the inner step) for contrast
    adapted = module.adapt(meta_batch.pre_update, create_graph=False)
    adapted = adapted.apply(lambda t: t.detach().requires_grad_(True))
    post_loss = vpg_loss(module.log_prob(adapted, post), post["advantage"], post["mask"]).mean()
    keys = [("params", *name.split(".")) for name, _ in module.policy.named_parameters()]
    first_order = [g.sum(0) for g in torch.autograd.grad(post_loss, [adapted.get(k) for k in keys])]
    first_order += [torch.zeros_like(p) for p in parameters[len(first_order):]]

    assert_matches_finite_differences(objective, parameters, first_order)
