"""Evaluating networks on the valid steps only: the same values and derivatives as evaluating every step."""

from __future__ import annotations

import pytest
import torch
from meta_gradients import double_meta_batch

import lightning_metarl.nn.functional as functional
import lightning_metarl.nn.self_supervision as self_supervision
from lightning_metarl.algorithms import MAME, MAML, ProMP
from lightning_metarl.masking import zero_padding
from lightning_metarl.nn import (
    GaussianMLPPolicy,
    call_per_task,
    distribution_per_task,
    module_params,
    on_valid_steps,
    on_valid_steps_per_task,
)

N_TASKS, ROLLOUTS, T = 3, 4, 6


def padded_inputs() -> tuple[list[torch.Tensor], torch.Tensor]:
    """Observations ``[n, r, T, 5]``, a per-task input ``[n, 2]``, a per-episode input ``[n, r, 3]``, and a mask with padding."""
    generator = torch.Generator().manual_seed(0)
    observation = torch.randn(N_TASKS, ROLLOUTS, T, 5, generator=generator, dtype=torch.float64)
    per_task = torch.randn(N_TASKS, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    per_episode = torch.randn(N_TASKS, ROLLOUTS, 3, generator=generator, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (N_TASKS, ROLLOUTS), generator=generator)
    lengths[0, 0] = T  # one full episode, and every other length
    mask = torch.arange(T) < lengths.unsqueeze(-1)
    assert not mask.all()
    return [observation, per_task, per_episode], mask


def policy() -> GaussianMLPPolicy:
    torch.manual_seed(0)
    return GaussianMLPPolicy(5, 2, (8,), extra_inputs={"task": 2, "episode": 3}).double()


def test_values_are_those_of_every_step_and_zero_on_padding():
    inputs, mask = padded_inputs()
    net = policy()
    mean, log_std = on_valid_steps(net, inputs, mask)
    full_mean, full_log_std = net(*inputs)
    torch.testing.assert_close(mean, zero_padding(full_mean, mask.unsqueeze(-1)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_std, zero_padding(full_log_std, mask.unsqueeze(-1)), rtol=0, atol=0)
    # without padding (or without a mask) the inputs go through untouched
    all_valid = torch.ones_like(mask)
    torch.testing.assert_close(on_valid_steps(net, inputs, all_valid)[0], full_mean, rtol=0, atol=0)
    torch.testing.assert_close(on_valid_steps(net, inputs, None)[0], full_mean, rtol=0, atol=0)


def per_task_params(net: GaussianMLPPolicy):
    """The policy's parameters made different for every task (leaves that require grad)."""
    generator = torch.Generator().manual_seed(2)
    return module_params(net).detach().expand(N_TASKS).apply(
        lambda p: (p + 0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype)).requires_grad_(True)
    )


@pytest.mark.parametrize("per_task", [False, True], ids=["shared_params", "per_task_params"])
def test_first_second_and_forward_mode_derivatives_match_every_step(per_task: bool):
    inputs, mask = padded_inputs()
    net = policy()
    params = per_task_params(net) if per_task else module_params(net)
    action = torch.randn(N_TASKS, ROLLOUTS, T, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = list(params.values(True, True))

    def objective(evaluate, task_input):
        dist = evaluate([inputs[0], task_input, inputs[2]])
        return zero_padding(dist.log_prob(action), mask).sum()

    def compact(xs):
        return distribution_per_task(net, params, xs, mask)

    def every_step(xs):
        return distribution_per_task(net, params, xs)

    task_input = inputs[1]
    for evaluate in (compact, every_step):
        # an inner step on the per-task input, then a meta-gradient through it (second order)
        (grad,) = torch.autograd.grad(objective(evaluate, task_input), [task_input], create_graph=True)
        adapted = task_input + 0.1 * grad
        meta = torch.autograd.grad(objective(evaluate, adapted), weights)
        _, tangent = torch.func.jvp(lambda z, evaluate=evaluate: objective(evaluate, z), (task_input.detach(),),
                                    (torch.ones_like(task_input),))
        if evaluate is compact:
            expected = (grad, meta, tangent)
        else:
            torch.testing.assert_close(grad, expected[0], rtol=1e-10, atol=1e-12)
            for a, b in zip(meta, expected[1]):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(tangent, expected[2], rtol=1e-10, atol=1e-12)


def test_per_task_values_are_those_of_every_step_and_zero_on_padding():
    inputs, mask = padded_inputs()
    mask[1] = False  # a task without a valid step
    net = policy()
    params = per_task_params(net)
    mean, log_std = on_valid_steps_per_task(lambda *xs: call_per_task(net, params, *xs), inputs, mask)
    full_mean, full_log_std = call_per_task(net, params, *inputs)
    torch.testing.assert_close(mean, zero_padding(full_mean, mask.unsqueeze(-1)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_std, zero_padding(full_log_std, mask.unsqueeze(-1)), rtol=0, atol=0)
    assert not mean[1].any()


def test_a_mask_of_another_shape_is_refused():
    inputs, mask = padded_inputs()
    with pytest.raises(ValueError, match="does not broadcast"):
        on_valid_steps(policy(), inputs, mask[:, :2])


ALGORITHMS = {
    "mame": (MAME, {"latent_size": 4, "n_step": 5, "feature_size": 8}),
    "mame_dice": (MAME, {"latent_size": 4, "n_step": 5, "feature_size": 8, "exploration_update": "dice"}),
    "promp": (ProMP, {}),
    "maml_trpo": (MAML, {"outer_optimizer": "trpo"}),
}


def outer_loss(module, meta_batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The algorithm's outer loss at the current parameters, and anything it derives from the batch first."""
    if isinstance(module, MAME):
        extra = []
        if module.hparams.exploration_update == "ppo":
            extra = [module.exploration_advantages(meta_batch)]
            meta_batch.pre_update[0].set("exploration_advantage", extra[0])
        terms = module.loss_terms(meta_batch)
        return sum(v for k, v in terms.items() if k.startswith("loss_")), extra
    if isinstance(module, ProMP):
        terms = module.loss_terms(meta_batch)
        return terms["loss_objective"] + terms["loss_inner_kl"], [terms["inner_kl"]]
    path = module.adaptation_path(meta_batch.pre_update)
    collecting = module.fixed_distribution(meta_batch.fast_states[-1], meta_batch.post_update)
    kl = module.kl(collecting, path[-1], meta_batch.post_update).mean()
    return module.outer_loss(meta_batch, path) + kl, [path[-1]["params"].flatten_keys(".")["mean_net.0.weight"]]


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_outer_losses_on_early_terminated_episodes_equal_evaluating_every_step(monkeypatch, name: str):
    """Hopper falls early: losses, their inputs and meta-gradients on valid steps only equal those on every step."""
    cls, kwargs = ALGORITHMS[name]
    torch.manual_seed(0)
    module = cls(env="Hopper-Rand-Params", meta_batch_size=2, rollouts_per_task=3, horizon=100, hidden_sizes=[16], **kwargs)
    meta_batch = double_meta_batch(module)
    for batch in meta_batch.batches:  # every task has padding to skip, in unequal amounts
        valid_steps = batch["mask"].reshape(2, -1).sum(-1)
        assert (valid_steps < batch["mask"][0].numel()).all() and valid_steps[0] != valid_steps[1]

    def evaluate() -> tuple[torch.Tensor, ...]:
        module.zero_grad()
        loss, extra = outer_loss(module, meta_batch)
        loss.backward()
        grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
        return tuple([loss.detach(), *(x.detach() for x in extra), *grads])

    compact = evaluate()

    def without_mask(compact_fn):
        return lambda fn, inputs, mask: compact_fn(fn, inputs, None)

    monkeypatch.setattr(functional, "on_valid_steps", without_mask(functional.on_valid_steps))
    monkeypatch.setattr(functional, "on_valid_steps_per_task", without_mask(functional.on_valid_steps_per_task))
    monkeypatch.setattr(self_supervision, "on_valid_steps", functional.on_valid_steps)
    full = evaluate()
    assert len(compact) == len(full) > 3
    for a, b in zip(compact, full):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def mapped_forward(net: GaussianMLPPolicy, params, *inputs: torch.Tensor):
    """``net.forward`` mapped over the task dimension with ``torch.vmap`` (the generic path of ``call_per_task``)."""

    def apply(p, *xs):
        return torch.func.functional_call(net, p.flatten_keys(".").to_dict(), xs, strict=False)

    return torch.vmap(apply)(params, *inputs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_per_task_policy_evaluation_equals_mapping_forward_over_tasks(dtype: torch.dtype):
    """``GaussianMLPPolicy.forward_per_task`` (batched matrix products): the values, first and second derivatives of the vmapped ``forward``."""
    inputs, _ = padded_inputs()
    inputs = [x.detach().to(dtype).requires_grad_(True) for x in inputs]
    net = policy().to(dtype)
    params = per_task_params(net)
    weights = list(params.values(True, True))
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    assert net.forward_per_task(params, *inputs) is not None  # the batched path, not the vmapped fallback
    ours = call_per_task(net, params, *inputs)
    reference = mapped_forward(net, params, *inputs)
    assert ours[0].shape == reference[0].shape == (N_TASKS, ROLLOUTS, T, 2)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, **tolerance)

    def gradients(outputs, create_graph):
        value = (outputs[0].tanh() * outputs[1].exp()).sum()
        return torch.autograd.grad(value, [*weights, *inputs], create_graph=create_graph)

    first, first_reference = gradients(ours, True), gradients(reference, True)
    for a, b in zip(first, first_reference):
        torch.testing.assert_close(a / b.abs().max(), b / b.abs().max(), **tolerance)
    second = torch.autograd.grad(sum((g * g).sum() for g in first), weights)
    second_reference = torch.autograd.grad(sum((g * g).sum() for g in first_reference), weights)
    for a, b in zip(second, second_reference):  # up to rounding, relative to each gradient's scale
        torch.testing.assert_close(a / b.abs().max(), b / b.abs().max(), **tolerance)


def test_per_task_policy_evaluation_falls_back_where_it_does_not_apply():
    inputs, _ = padded_inputs()
    net = policy()
    params = per_task_params(net)
    assert net.forward_per_task(params.exclude("log_std"), *inputs) is None  # a parameter missing: the module's own

    class Shifted(GaussianMLPPolicy):
        def forward(self, observation, *extra):
            return super().forward(observation + 1.0, *extra)

    torch.manual_seed(0)
    shifted = Shifted(5, 2, (8,), extra_inputs={"task": 2, "episode": 3}).double()
    assert shifted.forward_per_task(params, *inputs) is None  # an overridden forward is mapped, not bypassed
    torch.testing.assert_close(call_per_task(shifted, params, *inputs)[0], mapped_forward(shifted, params, *inputs)[0],
                               rtol=0, atol=0)
