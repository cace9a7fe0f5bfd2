"""Returns, GAE, N-step returns and advantage normalisation on padded paths (data/returns.py)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_metarl.data.returns import (
    discounted_returns,
    discounted_rewards,
    gae,
    masked_mean,
    n_step_returns,
    normalize_advantages,
)

F64 = torch.float64
NAN = float("nan")


def t(*rows):
    return torch.tensor(rows, dtype=F64)


# An episode that terminates after 3 of 4 steps; the padding holds garbage that must not leak.
REWARDS = t([1.0, 2.0, 3.0, NAN])
MASK = torch.tensor([[True, True, True, False]])


def test_discounted_returns_by_hand():
    # R_2 = 3, R_1 = 2 + 0.5 * 3, R_0 = 1 + 0.5 * 3.5
    torch.testing.assert_close(discounted_returns(REWARDS, MASK, 0.5), t([2.75, 3.5, 3.0, 0.0]))
    torch.testing.assert_close(discounted_returns(REWARDS, MASK.double(), 1.0), t([6.0, 5.0, 3.0, 0.0]))


def test_discounted_per_step_rewards_by_hand():
    torch.testing.assert_close(discounted_rewards(REWARDS, MASK, 0.5), t([1.0, 1.0, 0.75, 0.0]))


def test_gae_by_hand():
    values = t([1.0, 2.0, 1.0, 7.0])  # the padding value is ignored: V(s_3) = 0 after termination
    # deltas: 1 + .5*2 - 1 = 1, 2 + .5*1 - 2 = .5, 3 + 0 - 1 = 2; (gamma lambda) = .25
    torch.testing.assert_close(gae(REWARDS, values, MASK, 0.5, 0.5), t([1.25, 1.0, 2.0, 0.0]))
    # lambda = 1: returns minus values
    torch.testing.assert_close(gae(REWARDS, values, MASK, 0.5, 1.0), t([1.75, 1.5, 2.0, 0.0]))
    # lambda = 0: the one-step TD errors
    torch.testing.assert_close(gae(REWARDS, values, MASK, 0.5, 0.0), t([1.0, 0.5, 2.0, 0.0]))


def test_gae_at_the_horizon_takes_the_next_value_as_zero():
    rewards, values = t([1.0, 1.0]), t([0.5, 0.25])
    mask = torch.ones(1, 2, dtype=torch.bool)
    # delta_1 = 1 - .25, delta_0 = 1 + .9 * .25 - .5
    torch.testing.assert_close(gae(rewards, values, mask, 0.9, 1.0), t([0.725 + 0.9 * 0.75, 0.75]))


def test_n_step_returns_by_hand():
    rewards = t([1.0, 2.0, 3.0, 4.0, NAN])
    mask = torch.tensor([[True, True, True, True, False]])
    # N = 2, gamma = .5: r_t + .5 r_{t+1}, truncated at the end of the episode
    torch.testing.assert_close(n_step_returns(rewards, mask, 0.5, 2), t([2.0, 3.5, 5.0, 4.0, 0.0]))
    # N = 3, undiscounted (MAME's target with N = 3)
    torch.testing.assert_close(n_step_returns(rewards, mask, 1.0, 3), t([6.0, 9.0, 7.0, 4.0, 0.0]))
    # N = 1: the rewards themselves
    torch.testing.assert_close(n_step_returns(rewards, mask, 0.5, 1), t([1.0, 2.0, 3.0, 4.0, 0.0]))
    with pytest.raises(ValueError):
        n_step_returns(rewards, mask, 1.0, 0)


def random_paths(seed: int, shape=(3, 4, 20)):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(shape, generator=gen, dtype=F64)
    values = torch.randn(shape, generator=gen, dtype=F64)
    lengths = torch.randint(1, shape[-1] + 1, shape[:-1], generator=gen)
    mask = torch.arange(shape[-1]) < lengths[..., None]
    rewards = torch.where(mask, rewards, torch.full_like(rewards, NAN))
    values = torch.where(mask, values, torch.full_like(values, math.inf))
    return rewards, values, mask, lengths


def loop_returns(rewards, lengths, discount, horizon_n=None):
    """Per-episode Python loop: ``sum_{k < N} discount^k r_{t+k}`` within the episode."""
    out = torch.zeros_like(rewards)
    for index in itertools.product(*(range(n) for n in lengths.shape)):
        length = int(lengths[index])
        for step in range(length):
            stop = length if horizon_n is None else min(length, step + horizon_n)
            out[index + (step,)] = sum(discount ** (k - step) * rewards[index + (k,)] for k in range(step, stop))
    return out


@pytest.mark.parametrize("discount", [1.0, 0.9])
def test_returns_match_a_per_episode_loop(discount):
    rewards, values, mask, lengths = random_paths(0)
    torch.testing.assert_close(discounted_returns(rewards, mask, discount), loop_returns(rewards, lengths, discount))
    for n in (1, 3, 15, 40):
        torch.testing.assert_close(n_step_returns(rewards, mask, discount, n), loop_returns(rewards, lengths, discount, n))


def test_gae_matches_a_per_episode_loop():
    rewards, values, mask, lengths = random_paths(1)
    discount, lam = 0.95, 0.8
    want = torch.zeros_like(rewards)
    for index in itertools.product(*(range(n) for n in lengths.shape)):
        length, running = int(lengths[index]), 0.0
        for step in reversed(range(length)):
            next_value = values[index + (step + 1,)] if step + 1 < length else 0.0
            delta = rewards[index + (step,)] + discount * next_value - values[index + (step,)]
            running = delta + discount * lam * running
            want[index + (step,)] = running
    torch.testing.assert_close(gae(rewards, values, mask, discount, lam), want)


def test_normalize_advantages_per_task():
    advantages = torch.tensor([[[1.0, 2.0, 3.0, NAN]], [[5.0, 5.0, 9.0, 9.0]]], dtype=F64)
    mask = torch.tensor([[[1, 1, 1, 0]], [[1, 1, 1, 1]]], dtype=F64)
    out = normalize_advantages(advantages, mask, dims=(-2, -1), eps=0.0)
    s = math.sqrt(1.5)  # (x - 2) / sqrt(2/3)
    torch.testing.assert_close(out, torch.tensor([[[-s, 0.0, s, 0.0]], [[-1.0, -1.0, 1.0, 1.0]]], dtype=F64))


def test_masked_mean():
    x = t([1.0, 2.0, NAN], [4.0, NAN, NAN])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor(7.0 / 3.0, dtype=F64))
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), torch.tensor([1.5, 4.0], dtype=F64))
