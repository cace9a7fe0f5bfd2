"""Evaluating networks on the valid steps only: the same values and derivatives as evaluating every step."""

from __future__ import annotations

import pytest
import torch
from meta_gradients import double_meta_batch

import lightning_metarl.nn.functional as functional
import lightning_metarl.nn.self_supervision as self_supervision
from lightning_metarl.algorithms import MAME
from lightning_metarl.masking import zero_padding
from lightning_metarl.nn import GaussianMLPPolicy, module_params, on_valid_steps
from lightning_metarl.nn.functional import distribution_per_task

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


def test_first_second_and_forward_mode_derivatives_match_every_step():
    inputs, mask = padded_inputs()
    net = policy()
    action = torch.randn(N_TASKS, ROLLOUTS, T, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = list(net.parameters())

    def objective(evaluate, per_task):
        dist = evaluate([inputs[0], per_task, inputs[2]])
        return zero_padding(dist.log_prob(action), mask).sum()

    def compact(xs):
        return distribution_per_task(net, module_params(net), xs, mask)

    def every_step(xs):
        return distribution_per_task(net, module_params(net), xs)

    per_task = inputs[1]
    for evaluate in (compact, every_step):
        # an inner step on the per-task input, then a meta-gradient through it (second order)
        (grad,) = torch.autograd.grad(objective(evaluate, per_task), [per_task], create_graph=True)
        adapted = per_task + 0.1 * grad
        meta = torch.autograd.grad(objective(evaluate, adapted), weights)
        _, tangent = torch.func.jvp(lambda z, evaluate=evaluate: objective(evaluate, z), (per_task.detach(),), (torch.ones_like(per_task),))
        if evaluate is compact:
            expected = (grad, meta, tangent)
        else:
            torch.testing.assert_close(grad, expected[0], rtol=1e-10, atol=1e-12)
            for a, b in zip(meta, expected[1]):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(tangent, expected[2], rtol=1e-10, atol=1e-12)


def test_a_mask_of_another_shape_is_refused():
    inputs, mask = padded_inputs()
    with pytest.raises(ValueError, match="does not broadcast"):
        on_valid_steps(policy(), inputs, mask[:, :2])


@pytest.mark.parametrize("exploration_update", ["ppo", "dice"])
def test_mame_outer_update_on_early_terminated_episodes_equals_evaluating_every_step(monkeypatch, exploration_update):
    """Hopper falls early: MAME's losses, exploration rewards and meta-gradient on valid steps only equal those on every step."""
    torch.manual_seed(0)
    module = MAME(env="Hopper-Rand-Params", meta_batch_size=2, rollouts_per_task=3, horizon=40, latent_size=4, n_step=5,
                  hidden_sizes=[16], feature_size=8, exploration_update=exploration_update)
    meta_batch = double_meta_batch(module)
    assert not meta_batch.pre_update[0]["mask"].all() and not meta_batch.post_update["mask"].all()  # padding to skip

    def evaluate() -> tuple[torch.Tensor, ...]:
        module.zero_grad()
        advantages = module.exploration_advantages(meta_batch) if exploration_update == "ppo" else None
        if advantages is not None:
            meta_batch.pre_update[0].set("exploration_advantage", advantages)
        terms = module.loss_terms(meta_batch)
        loss = sum(v for k, v in terms.items() if k.startswith("loss_"))
        loss.backward()
        grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
        values = [loss.detach()] + ([advantages] if advantages is not None else [])
        return tuple(values + grads)

    compact = evaluate()
    every_step = functional.on_valid_steps

    def without_mask(fn, inputs, mask):
        return every_step(fn, inputs, None)

    monkeypatch.setattr(functional, "on_valid_steps", without_mask)
    monkeypatch.setattr(self_supervision, "on_valid_steps", without_mask)
    full = evaluate()
    assert len(compact) == len(full) > 3
    for a, b in zip(compact, full):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
