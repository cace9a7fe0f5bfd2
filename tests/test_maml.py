"""MAML: the batched inner step and the meta-gradient through it."""

from __future__ import annotations

import pytest
import torch

from lightning_metarl.algorithms import MAML
from lightning_metarl.objectives import vpg_loss


def tiny_maml(**overrides) -> MAML:
    torch.manual_seed(0)
    kwargs = dict(meta_batch_size=3, rollouts_per_task=4, horizon=8, env_kwargs={"reward_type": "dense"})
    kwargs.update(overrides)
    return MAML(**kwargs)


def to_double(batch):
    return batch.apply(lambda x: x.double() if x.is_floating_point() else x)


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
    module.env.set_tasks(module.sample_tasks())
    meta_batch = module.collect_and_adapt(module.sample_tasks())
    module.double()
    meta_batch.pre_update = [to_double(b) for b in meta_batch.pre_update]
    meta_batch.post_update = post = to_double(meta_batch.post_update)

    def objective() -> torch.Tensor:
        return module.outer_loss(meta_batch, module.adaptation_path(meta_batch.pre_update))

    parameters = list(module.parameters())  # the policy and, if learned, the inner step sizes
    assert len(parameters) == (14 if learn_inner_lr else 7)
    meta_grad = torch.autograd.grad(objective(), parameters)

    # first-order MAML (no gradient through the inner step) for contrast
    adapted = module.adapt(meta_batch.pre_update, create_graph=False)
    adapted = adapted.apply(lambda t: t.detach().requires_grad_(True))
    post_loss = vpg_loss(module.log_prob(adapted, post), post["advantage"], post["mask"]).mean()
    keys = [("params", *name.split(".")) for name, _ in module.policy.named_parameters()]
    first_order = [g.sum(0) for g in torch.autograd.grad(post_loss, [adapted.get(k) for k in keys])]
    first_order += [torch.zeros_like(p) for p in parameters[len(first_order):]]

    generator = torch.Generator().manual_seed(1)
    eps = 1e-6
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in parameters]
        values = []
        for sign in (1.0, -2.0, 1.0):
            with torch.no_grad():
                for p, d in zip(parameters, direction):
                    p.add_(sign * eps * d)
            values.append(objective().item())
        plus, minus = values[0], values[1]
        finite_difference = (plus - minus) / (2 * eps)
        analytic = sum((g * d).sum() for g, d in zip(meta_grad, direction)).item()
        assert abs(analytic - finite_difference) <= 1e-6 * max(1.0, abs(finite_difference))
        first = sum((g * d).sum() for g, d in zip(first_order, direction)).item()
        # the second-order term through the inner step is present and not negligible
        assert abs(analytic - first) > 1e-4 * max(1.0, abs(analytic))
