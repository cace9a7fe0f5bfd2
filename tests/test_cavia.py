"""CAVIA: the batched inner step on the context, the meta-gradient through it, and what it leaves alone."""

from __future__ import annotations

import torch
from meta_gradients import assert_matches_finite_differences, double_meta_batch

from lightning_metarl.algorithms import CAVIA
from lightning_metarl.objectives import vpg_loss


def tiny_cavia(**overrides) -> CAVIA:
    torch.manual_seed(0)
    kwargs = dict(meta_batch_size=3, rollouts_per_task=4, horizon=8, context_size=5, inner_lr=1.0,
                  env_kwargs={"reward_type": "dense"})
    kwargs.update(overrides)
    return CAVIA(**kwargs)


def test_the_policy_reads_the_context_after_the_observation():
    module = tiny_cavia()
    assert module.policy.in_keys == ["observation", "context"]
    first_layer = module.policy.mean_net[0]
    assert first_layer.in_features == module.env.observation_dim + 5
    state = module.initial_fast_state()
    assert list(state.keys()) == ["context"]
    assert state["context"].shape == (3, 5) and torch.equal(state["context"], torch.zeros(3, 5))


def test_batched_inner_step_on_the_context_equals_a_per_task_loop():
    module = tiny_cavia()
    module.env.set_tasks(module.sample_tasks())
    state = module.initial_fast_state()
    batch = module.collect(module.actor(state, "explore", module.action_rng))
    adapted = module.inner_step(state, batch, create_graph=False)
    for task in range(3):
        sample = batch[task]
        context = torch.zeros(5, requires_grad=True)
        log_prob = module.policy.log_prob(sample["observation"], sample["action"], context)
        loss = vpg_loss(log_prob[None], sample["advantage"][None], sample["mask"][None]).sum()
        (grad,) = torch.autograd.grad(loss, context)
        torch.testing.assert_close(adapted["context"][task], -1.0 * grad, rtol=1e-5, atol=1e-7)
    # every task has its own context after the step
    assert not torch.allclose(adapted["context"][0], adapted["context"][1])


def test_the_inner_loop_adapts_the_context_and_leaves_the_policy_weights_alone():
    module = tiny_cavia(num_inner_steps=2)
    before = [p.detach().clone() for p in module.policy.parameters()]
    meta_batch = module.collect_and_adapt(module.sample_tasks())
    path = module.adaptation_path(meta_batch.pre_update, create_graph=True)
    assert all(list(state.keys()) == ["context"] for state in path)
    assert all(torch.equal(a, b) for a, b in zip(before, module.policy.parameters()))
    assert not torch.equal(path[-1]["context"], path[0]["context"])
    # the context is no parameter: the outer update cannot touch it
    assert {id(p) for p in module.parameters()} == {id(p) for p in module.policy.parameters()}
    # and it starts from 0 again for the next meta-batch
    assert torch.equal(module.initial_fast_state()["context"], torch.zeros(3, 5))


def test_meta_gradient_through_the_context_step_matches_finite_differences():
    module = tiny_cavia(num_inner_steps=1, outer_optimizer="trpo")
    meta_batch = double_meta_batch(module)

    def objective() -> torch.Tensor:
        return module.outer_loss(meta_batch, module.adaptation_path(meta_batch.pre_update))

    parameters = list(module.parameters())
    # the first-order part alone (the adapted context held fixed) for contrast
    adapted = module.adapt(meta_batch.pre_update, create_graph=False)
    post = meta_batch.post_update
    first_order = torch.autograd.grad(
        vpg_loss(module.log_prob(adapted, post), post["advantage"], post["mask"]).mean(), parameters
    )
    assert_matches_finite_differences(objective, parameters, first_order)


def test_learned_step_sizes_have_the_shape_of_the_context():
    module = tiny_cavia(learn_inner_lr=True)
    assert module.inner_step_sizes["context"].shape == (5,)
    assert torch.all(module.inner_step_sizes["context"] == 1.0)
