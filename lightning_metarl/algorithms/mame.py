"""MAME (Gurumurthy et al. 2019): a separate exploration policy and a self-supervised inner step on a latent ``z``."""

from __future__ import annotations

from typing import Any, Literal

import torch
from tensordict import TensorDict, TensorDictBase

from lightning_metarl import distributed
from lightning_metarl.algorithms.gradient import GradientMetaRLModule
from lightning_metarl.algorithms.meta_batch import MetaBatch
from lightning_metarl.data.returns import discounted_returns, gae, n_step_returns, normalize_advantages
from lightning_metarl.errors import ConfigError
from lightning_metarl.masking import SAMPLE_DIMS, valid, zero_padding
from lightning_metarl.nn import (
    GaussianMLPPolicy,
    SelfSupervisionNetwork,
    behaviour_distribution,
    linear_baseline_values,
)
from lightning_metarl.objectives import (
    approximate_kl,
    clip_fraction,
    clipped_surrogate_loss,
    cumulative_log_prob,
    magic_box,
    per_task_mean,
    vpg_loss,
)

#: The fast-state and policy-input key of the task latent ``z``.
LATENT = "latent"
#: Key of the regression target of the self-supervision in an exploration batch.
TARGET = "self_supervision_target"
#: Key of the exploration policy's advantages ``A^mu`` in an exploration batch.
EXPLORATION_ADVANTAGE = "exploration_advantage"

Target = Literal["n_step_return", "reward", "next_state"]
InnerObjective = Literal["self_supervised", "policy_gradient"]
ExplorationUpdate = Literal["ppo", "dice", "emaml", "env_reward"]


class MAME(GradientMetaRLModule):
    """Model-Agnostic Meta-Exploration: explore with ``mu_phi``, adapt ``z`` by self-supervision, exploit with ``pi_theta,z'``.

    Three networks (§4.1): the exploration policy ``mu_phi(a|s)`` (it does not see ``z``), the
    exploitation policy ``pi_theta,z(a|s)`` with the latent ``z`` (``latent_size``, 0 for every
    task, never updated by the outer loop) concatenated to its input, and the self-supervision
    network ``M_beta,z(s, a)`` (:class:`~lightning_metarl.nn.SelfSupervisionNetwork`).

    Inner step (Eq. 4 with the DiCE weights of §4): for every task, with the exploration
    trajectories ``tau ~ mu_phi``,
    ``z' = z - alpha * grad_z mean_t magic_box(sum_{t' <= t} log mu_phi(a_t'|s_t')) l_t(z)``,
    ``l_t = (M_beta,z(s_t, a_t) - M_t)^2`` with ``M_t`` the ``N``-step return (``target``), the
    mean over the task's valid steps; all tasks in one batched call, second order (``beta`` and
    ``w_beta`` get meta-gradients through ``z'``).

    Outer (Eq. 5, §4): ``num_outer_steps`` Adam steps (``outer_lr``, paper 7e-4) on the PPO
    clipped surrogate of the post-update trajectories of ``pi_theta,z'`` (``z'`` recomputed at
    every step) for ``theta``, ``beta`` and ``w_beta``, plus, for ``phi``, a PPO clipped surrogate
    on the exploration trajectories with advantages ``A^mu_t`` (Eq. 8) of the exploration rewards
    ``r^mu_t`` (Eq. 9) and a linear feature baseline.

    The exploration reward, with the sign and factor the paper leaves out: differentiating the
    post-update objective ``J(z')`` through the DiCE weights of the inner step gives
    ``grad_phi J = (grad_z' J)^T d z'/d phi = sum_t' grad_phi log mu_phi(a_t'|s_t') sum_{t >= t'} r^mu_t``
    with ``r^mu_t = -(alpha / K) (grad_z' J)^T grad_z l_t`` (``K`` the task's number of valid
    exploration steps, from the mean in the inner loss; ``alpha`` the inner step size, per
    entry if learned). ``z' = z - alpha grad_z L``, so ``d z' / d phi = -(alpha / K) sum_t
    (grad_phi tau_t) (grad_z l_t)^T`` at the magic box's value 1, and regrouping the sum over
    ``t' <= t`` gives the returns of ``r^mu``: a step is rewarded when descending its
    self-supervision loss moves ``z'`` up the post-update objective. ``grad_z' J`` is the
    gradient of the task's post-update surrogate ``mean_t log pi_theta,z'(a_t|s_t) A_t``;
    ``(grad_z' J)^T grad_z l_t`` is computed for all steps at once as a forward-mode
    directional derivative of ``l_t(z)`` along ``alpha * grad_z' J``.

    Ablations (Figure 4 and Figure 7 of the paper):

    - ``inner_objective="policy_gradient"``: the inner step is a policy-gradient step of the
      exploitation policy on the exploration data, importance-weighted by ``pi / mu``;
    - ``target="reward"`` (one-step reward, window 1) or ``"next_state"`` (the next observation)
      instead of the ``N``-step return;
    - ``exploration_update="dice"``: ``phi`` learns by differentiating the DiCE weights of the
      inner step directly (vanilla DiCE; no ``r^mu``, no baseline, no PPO for ``phi``);
      ``"emaml"``: PPO for ``phi`` with every exploration step's advantage the task's mean
      post-update return standardised over the meta-batch (no causal credit);
      ``"env_reward"``: PPO for ``phi`` on its own environment reward.

    Args:
        latent_size: size of ``z`` (paper 32).
        target: self-supervision target, ``"n_step_return"`` (paper), ``"reward"`` or ``"next_state"``.
        n_step: ``N`` of the ``N``-step return and of the successor window (paper 15).
        inner_objective: ``"self_supervised"`` (the method) or ``"policy_gradient"`` (ablation).
        exploration_update: ``"ppo"`` (the method), ``"dice"``, ``"emaml"`` or ``"env_reward"``.
        clip_epsilon: PPO clip range of both surrogates (authors' code 0.2).
        num_outer_steps: Adam steps per meta-iteration on the same batches (authors' code 5).
        feature_size: size of the self-supervision features ``m_beta``.
        max_grad_norm: if set, before every Adam step the gradient of each network (``theta``,
            ``phi``, ``beta`` with ``w_beta``, and the learned step sizes) is rescaled to at most
            this 2-norm (the authors' code: 0.5 per network; the paper does not clip: ``None``).
        target_kl: if set, the outer steps stop early, before the first step at which the
            approximate KL of the post-update policy to the one that collected the post-update
            batch (:func:`~lightning_metarl.objectives.approximate_kl`, the mean over its samples,
            averaged over ranks) exceeds ``1.5 * target_kl`` (the early stopping of
            Stable-Baselines3's PPO). Neither the paper nor the authors' code stops early
            (``None``); ``ppo/outer_steps`` logs the steps taken.
        normalize_inner_step: descend the unit direction ``g_i / ||g_i||`` of each task's inner
            gradient ``g_i = grad_z L_in,i``, so that ``||z' - z|| = alpha`` for every task (with
            ``learn_inner_lr``, ``z' - z = -alpha * g_i / ||g_i||`` entrywise; normalised gradient
            descent; not in the paper, which takes the plain gradient step, ``False``). The
            meta-gradient can then turn the step but not shrink it: a run cannot settle where
            ``z`` barely moves (``pi_theta,z'`` may still learn to ignore it). ``r^mu`` follows
            (``z' - z = -alpha g / ||g||`` has ``d z' = -alpha (I - g g^T / ||g||^2) d g / ||g||``,
            so ``r^mu_t = -(1 / (K ||g||)) (grad_z l_t)^T (I - g g^T / ||g||^2) (alpha * grad_z' J)``).
        **kwargs: see :class:`~lightning_metarl.algorithms.gradient.GradientMetaRLModule`
            (``hidden_sizes`` and ``activation`` shape all three networks).
    """

    def __init__(
        self,
        *args: Any,
        latent_size: int = 32,
        target: Target = "n_step_return",
        n_step: int = 15,
        inner_objective: InnerObjective = "self_supervised",
        exploration_update: ExplorationUpdate = "ppo",
        clip_epsilon: float = 0.2,
        num_outer_steps: int = 5,
        feature_size: int = 64,
        max_grad_norm: float | None = None,
        target_kl: float | None = None,
        normalize_inner_step: bool = False,
        **kwargs: Any,
    ) -> None:
        for name, value in (("latent_size", latent_size), ("n_step", n_step), ("num_outer_steps", num_outer_steps),
                            ("feature_size", feature_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        choices = {"target": (target, Target), "inner_objective": (inner_objective, InnerObjective),
                   "exploration_update": (exploration_update, ExplorationUpdate)}
        for name, (value, kind) in choices.items():
            if value not in kind.__args__:
                raise ConfigError(f"model.{name} must be one of {list(kind.__args__)}, got {value!r}")
        if not clip_epsilon > 0:
            raise ConfigError(f"model.clip_epsilon must be positive, got {clip_epsilon}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ConfigError(f"model.max_grad_norm must be positive or null, got {max_grad_norm}")
        if target_kl is not None and not target_kl > 0:
            raise ConfigError(f"model.target_kl must be positive or null, got {target_kl}")
        if not isinstance(normalize_inner_step, bool):
            raise ConfigError(f"model.normalize_inner_step must be true or false, got {normalize_inner_step!r}")
        kwargs.setdefault("outer_lr", 7e-4)
        super().__init__(*args, **kwargs)
        hp = self.hparams
        if hp.num_inner_steps != 1:
            raise ConfigError("MAME takes one adaptation step (model.num_inner_steps: 1)")
        if hp.meta_test_iterations is not None:
            raise ConfigError("model.meta_test_iterations: the long meta-test protocol repeats one policy's adaptation; "
                              "MAME explores with mu_phi and exploits with pi_theta,z', so it is not defined for MAME")
        env = self.env
        self.exploration_policy = GaussianMLPPolicy(
            env.observation_dim, env.action_dim, tuple(hp.hidden_sizes), hp.activation, hp.init_std
        )
        target_dim, window = {"n_step_return": (1, n_step), "reward": (1, 1),
                              "next_state": (env.observation_dim, 1)}[target]
        self.self_supervision = SelfSupervisionNetwork(
            env.observation_dim, env.action_dim, latent_size, target_dim, tuple(hp.hidden_sizes),
            feature_size, hp.activation, window,
        )

    # ------------------------------------------------------------------ hooks
    def policy_inputs(self) -> dict[str, int]:
        """The exploitation policy reads the latent ``z`` after the observation."""
        return {LATENT: self.hparams.latent_size}

    def phase_policy(self, phase: str) -> torch.nn.Module:
        """``mu_phi`` explores, ``pi_theta,z`` exploits."""
        return self.exploration_policy if phase == "explore" else self.policy

    def initial_fast_state(self, n_tasks: int | None = None) -> TensorDictBase:
        """``{"latent": 0}`` for every task, ``[n_tasks, latent_size]``."""
        n_tasks = self.hparams.meta_batch_size if n_tasks is None else n_tasks
        like = self.policy.log_std
        latent = torch.zeros(n_tasks, self.hparams.latent_size, dtype=like.dtype, device=like.device, requires_grad=True)
        return TensorDict({LATENT: latent}, batch_size=[n_tasks])

    def process(self, batch: TensorDictBase, phase: str) -> TensorDictBase:
        """Advantages for both phases; on exploration batches also the self-supervision target ``M_t``."""
        batch = super().process(batch, phase)
        if phase == "explore":
            batch.set(TARGET, self.self_supervision_target(batch))
        return batch

    def self_supervision_target(self, batch: TensorDictBase) -> torch.Tensor:
        """``M_t``, ``[n_tasks, rollouts, T, target_dim]``: the ``N``-step return (plain sum), the reward or the next observation."""
        rewards, mask = batch.get(("next", "reward")).squeeze(-1), batch.get("mask")
        target = self.hparams.target
        if target == "n_step_return":
            return n_step_returns(rewards, mask, 1.0, self.hparams.n_step).unsqueeze(-1)
        if target == "reward":
            return zero_padding(rewards, mask).unsqueeze(-1)
        return batch.get(("next", "observation"))

    # ------------------------------------------------------------------ inner step
    def step_losses(self, latent: torch.Tensor, batch: TensorDictBase) -> torch.Tensor:
        """Per-step inner losses ``l_t(z)``, ``[n_tasks, rollouts, T]`` (0 on padding), for latents ``[n_tasks, d]``."""
        mask = batch.get("mask")
        if self.hparams.inner_objective == "policy_gradient":
            state = TensorDict({LATENT: latent}, batch_size=latent.shape[:1])
            ratio = torch.exp(self.log_prob(state, batch) - batch.get("action_log_prob"))
            return zero_padding(-ratio * zero_padding(batch.get("advantage"), mask), mask)
        prediction = self.self_supervision(batch.get("observation"), batch.get("action"), latent, mask)
        error = (prediction - batch.get(TARGET)).pow(2).sum(-1)
        return zero_padding(error, mask)

    def inner_direction(self, key: tuple[str, ...] | str, grad: torch.Tensor) -> torch.Tensor:
        """Each task's gradient on ``z``, or with ``normalize_inner_step`` its unit direction (0 where it is 0)."""
        if not self.hparams.normalize_inner_step:
            return grad
        return grad / grad.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)

    def inner_loss(self, fast_state: TensorDictBase, batch: TensorDictBase) -> torch.Tensor:
        """``mean_t magic_box(tau_t) l_t(z)`` per task (Eq. 4 with DiCE); its value is the plain mean of ``l_t``.

        ``tau_t`` is the cumulative log-probability of the exploration actions under ``mu_phi``.
        Only with ``exploration_update="dice"`` does it carry ``phi``'s gradient; otherwise
        ``phi`` learns from ``r^mu`` alone and the weights are constants.
        """
        mask = batch.get("mask")
        losses = self.step_losses(fast_state.get(LATENT), batch)
        if self.hparams.exploration_update != "dice":
            # magic_box of a constant is exactly 1: skip the forward pass of mu_phi
            return per_task_mean(losses, mask)
        weights = magic_box(cumulative_log_prob(self.log_prob(fast_state, batch, "explore"), mask))
        return per_task_mean(weights * losses, mask)

    # ------------------------------------------------------------------ exploration credit
    def exploitation_objective(self, fast_state: TensorDictBase, batch: TensorDictBase) -> torch.Tensor:
        """Per-task post-update surrogate ``J = mean_t log pi_theta,z'(a_t|s_t) A_t``, whose gradient in ``z'`` is Eq. 9's."""
        return -vpg_loss(self.log_prob(fast_state, batch), batch.get("advantage"), batch.get("mask"))

    def exploration_rewards(self, meta_batch: MetaBatch) -> torch.Tensor:
        """``r^mu_t = -(alpha / K) (grad_z' J)^T grad_z l_t`` for every exploration step, ``[n_tasks, rollouts, T]``.

        See the class docstring for the derivation (and ``normalize_inner_step`` for its form with
        a normalised inner step); 0 on padding.
        """
        batch = meta_batch.pre_update[0]
        mask = batch.get("mask")
        adapted = meta_batch.fast_states[-1].detach().clone()
        adapted.get(LATENT).requires_grad_(True)
        with torch.enable_grad():
            objective = self.exploitation_objective(adapted, meta_batch.post_update).sum()
            (grad_adapted,) = torch.autograd.grad(objective, [adapted.get(LATENT)])
        tangent = (self.inner_step_size(LATENT) * grad_adapted).detach()
        latent = meta_batch.fast_states[0].get(LATENT).detach()
        if self.hparams.normalize_inner_step:  # d (g / ||g||) = (I - g g^T / ||g||^2) d g / ||g||
            start = latent.clone().requires_grad_(True)
            with torch.enable_grad():
                loss = per_task_mean(self.step_losses(start, batch), mask).sum()
                (grad,) = torch.autograd.grad(loss, [start])
            norm = grad.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
            unit = self.inner_direction(LATENT, grad)
            tangent = (tangent - unit * (unit * tangent).sum(-1, keepdim=True)) / norm
        _, derivative = torch.func.jvp(lambda z: self.step_losses(z, batch), (latent,), (tangent,))
        count = valid(mask).to(derivative.dtype).sum(SAMPLE_DIMS).clamp_min(1)
        return zero_padding(-derivative.detach() / count[:, None, None], mask)

    def exploration_advantages(self, meta_batch: MetaBatch) -> torch.Tensor:
        """``A^mu`` for the PPO update of ``mu_phi`` (per ``exploration_update``), normalised per task."""
        batch, mode = meta_batch.pre_update[0], self.hparams.exploration_update
        mask = batch.get("mask")
        if mode == "env_reward":
            return batch.get("advantage")
        if mode == "emaml":
            post = meta_batch.post_update
            post_return = per_task_mean(zero_padding(post.get(("next", "reward")).squeeze(-1), post.get("mask")),
                                        post.get("mask"))
            score = distributed.standardize_over_ranks(post_return)  # over the whole meta-batch
            return zero_padding(score[:, None, None].expand_as(mask.to(score.dtype)), mask)
        rewards = self.exploration_rewards(meta_batch)
        returns = discounted_returns(rewards, mask, 1.0)  # the reward-to-go of r^mu
        values = linear_baseline_values(batch.get("observation"), returns, mask)
        advantages = gae(rewards, values, mask, 1.0, 1.0)
        batch.set("exploration_reward", rewards)
        return normalize_advantages(advantages, mask, SAMPLE_DIMS)

    # ------------------------------------------------------------------ outer step
    def loss_terms(self, meta_batch: MetaBatch) -> dict[str, torch.Tensor]:
        """The outer losses at the current parameters: ``loss_exploitation`` (theta, beta, w_beta), ``loss_exploration`` (phi).

        Also the diagnostics ``clip_fraction`` and ``approx_kl`` (the post-update policy's
        approximate KL to the collecting one over the post-update samples,
        :func:`~lightning_metarl.objectives.approximate_kl`; what ``target_kl`` reads).
        """
        epsilon = self.hparams.clip_epsilon
        path = self.adaptation_path(meta_batch.pre_update)
        post, explore = meta_batch.post_update, meta_batch.pre_update[0]
        log_pi, old_pi, post_mask = self.log_prob(path[-1], post), post.get("action_log_prob"), post.get("mask")
        terms = {
            "loss_exploitation": clipped_surrogate_loss(log_pi, old_pi, post.get("advantage"), post_mask, epsilon).mean(),
            "clip_fraction": clip_fraction(log_pi, old_pi, post_mask, epsilon).mean(),
            "approx_kl": per_task_mean(approximate_kl(log_pi.detach(), old_pi), post_mask).mean(),
        }
        if self.hparams.exploration_update != "dice":
            log_mu = self.log_prob(path[0], explore, "explore")
            old_mu, mask = explore.get("action_log_prob"), explore.get("mask")
            advantage = explore.get(EXPLORATION_ADVANTAGE)
            terms["loss_exploration"] = clipped_surrogate_loss(log_mu, old_mu, advantage, mask, epsilon).mean()
            terms["exploration_clip_fraction"] = clip_fraction(log_mu, old_mu, mask, epsilon).mean()
        return terms

    def networks(self) -> dict[str, list[torch.nn.Parameter]]:
        """The parameters of each network the outer update trains, by name (what ``max_grad_norm`` clips separately)."""
        groups = {"exploitation_policy": list(self.policy.parameters()),
                  "exploration_policy": list(self.exploration_policy.parameters()),
                  "self_supervision": list(self.self_supervision.parameters())}
        if self.inner_step_sizes is not None:
            groups["inner_step_sizes"] = list(self.inner_step_sizes.values(True, True))
        return groups

    def clip_gradients_per_network(self) -> torch.Tensor:
        """Rescale each network's gradient to at most ``max_grad_norm`` (2-norm); returns the largest norm before clipping."""
        norms = [torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.hparams.max_grad_norm)
                 for params in self.networks().values()]
        return torch.stack(norms).max()

    def meta_update(self, meta_batch: MetaBatch) -> dict[str, torch.Tensor]:
        """``num_outer_steps`` Adam steps on the exploitation and exploration PPO losses (fewer with ``target_kl``)."""
        explore = meta_batch.pre_update[0]
        metrics: dict[str, torch.Tensor] = {}
        if self.hparams.exploration_update != "dice":
            explore.set(EXPLORATION_ADVANTAGE, self.exploration_advantages(meta_batch))
        if "exploration_reward" in explore.keys():
            rewards, mask = explore.get("exploration_reward"), explore.get("mask")
            metrics["exploration/reward_mean"] = per_task_mean(rewards, mask).mean()
            metrics["exploration/reward_abs_mean"] = per_task_mean(rewards.abs(), mask).mean()
        before, after = meta_batch.fast_states[0], meta_batch.fast_states[-1]
        collecting = behaviour_distribution(meta_batch.post_update)
        with torch.no_grad():
            metrics["self_supervision/loss_before"] = self.inner_loss(before, explore).mean()
            metrics["self_supervision/loss_after"] = self.inner_loss(after, explore).mean()
        metrics["latent/step_norm"] = (after.get(LATENT) - before.get(LATENT)).norm(dim=-1).mean()
        if self.inner_step_sizes is not None:  # the learned step sizes this iteration's inner step used
            sizes = self.inner_step_sizes.get(LATENT).detach()
            metrics["latent/step_size_mean"] = sizes.mean()
            metrics["latent/step_size_min"] = sizes.min()
            metrics["latent/step_size_max"] = sizes.max()
        optimizer = self.optimizers()
        history = []
        target_kl = self.hparams.target_kl
        for step in range(self.hparams.num_outer_steps):
            terms = self.loss_terms(meta_batch)
            if step > 0 and target_kl is not None and distributed.all_reduce_mean(terms["approx_kl"]) > 1.5 * target_kl:
                break  # the same decision on every rank
            loss = sum(value for name, value in terms.items() if name.startswith("loss_"))
            optimizer.zero_grad()
            self.manual_backward(loss)
            if self.hparams.max_grad_norm is not None:
                metrics["grad_norm/before_clipping"] = self.clip_gradients_per_network()
            optimizer.step()
            history.append({name: value.detach() for name, value in terms.items()})
        metrics["loss/outer"] = sum(v for k, v in history[-1].items() if k.startswith("loss_"))
        metrics["loss/exploitation_before"] = history[0]["loss_exploitation"]
        metrics["loss/exploitation_after"] = history[-1]["loss_exploitation"]
        metrics["ppo/clip_fraction"] = history[-1]["clip_fraction"]
        metrics["ppo/approx_kl"] = history[-1]["approx_kl"]
        metrics["ppo/outer_steps"] = torch.tensor(float(len(history)))
        if "loss_exploration" in history[-1]:
            metrics["loss/exploration"] = history[-1]["loss_exploration"]
            metrics["ppo/exploration_clip_fraction"] = history[-1]["exploration_clip_fraction"]
        adapted = self.adapt(meta_batch.pre_update, create_graph=False)
        metrics["kl/post_update"] = self.kl(collecting, adapted, meta_batch.post_update).mean().detach()
        return metrics
