"""Trajectory collection and return estimation."""

from lightning_metarl.data.collect import collect, collect_episode, episode_mask
from lightning_metarl.data.process import add_advantages, episode_returns
from lightning_metarl.data.returns import discounted_returns, gae, masked_mean, normalize_advantages

__all__ = [
    "add_advantages",
    "collect",
    "collect_episode",
    "discounted_returns",
    "episode_mask",
    "episode_returns",
    "gae",
    "masked_mean",
    "normalize_advantages",
]
