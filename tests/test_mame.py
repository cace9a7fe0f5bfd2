"""MAME: the self-supervised inner step on z, its meta-gradient, and the exploration reward r^mu (sign and scale)."""

from __future__ import annotations

import pytest
import torch
from meta_gradients import assert_matches_finite_differences, double_meta_batch
from tensordict import TensorDict

from lightning_metarl.algorithms import MAME
from lightning_metarl.algorithms.mame import EXPLORATION_ADVANTAGE, TARGET
from lightning_metarl.data.returns import window_mean
from lightning_metarl.errors import ConfigError
from lightning_metarl.objectives import per_task_mean

N_TASKS, ROLLOUTS, HORIZON = 3, 4, 10


def tiny_mame(**overrides) -> MAME:
    torch.manual_seed(0)
    kwargs = dict(meta_batch_size=N_TASKS, rollouts_per_task=ROLLOUTS, horizon=HORIZON, latent_size=4, n_step=3,
                  hidden_sizes=[16], feature_size=8, env_kwargs={"reward_type": "dense"})
    kwargs.update(overrides)
    return MAME(**kwargs)


def exploration_batch(module: MAME):
    module.env.set_tasks(module.sample_tasks())
    state = module.initial_fast_state()
    return state, module.collect(module.actor(state, "explore", module.action_rng), "explore")


def test_three_networks_and_who_explores():
    module = tiny_mame()
    assert module.exploration_policy.in_keys == ["observation"]  # mu_phi does not see z
    assert module.policy.in_keys == ["observation", "latent"]
    state, batch = exploration_batch(module)
    assert list(state.keys()) == ["latent"] and torch.equal(state["latent"], torch.zeros(N_TASKS, 4))
    # the exploration batch was sampled by mu_phi: its stored log-density is mu_phi's
    expected = module.exploration_policy.log_prob(batch["observation"], batch["action"])
    torch.testing.assert_close(batch["action_log_prob"], expected)
    assert batch[TARGET].shape == (N_TASKS, ROLLOUTS, HORIZON, 1)
    # z is no parameter: the outer loop never updates it
    names = {name.split(".")[0] for name, _ in module.named_parameters()}
    assert names == {"policy", "exploration_policy", "self_supervision"}


def test_the_dice_weighted_inner_loss_has_the_value_of_the_plain_regression_loss():
    module = tiny_mame(exploration_update="dice")
    state, batch = exploration_batch(module)
    mask = batch["mask"]
    prediction = module.self_supervision(batch["observation"], batch["action"], state["latent"], mask)
    plain = per_task_mean((prediction - batch[TARGET]).pow(2).sum(-1), mask)
    dice = module.inner_loss(state, batch)
    torch.testing.assert_close(dice, plain)
    # with vanilla DiCE the weights carry phi's gradient; in the method they do not
    (grad_z,) = torch.autograd.grad(dice.sum(), [state["latent"]], create_graph=True)
    phi = list(module.exploration_policy.parameters())
    assert any(g is not None and g.abs().sum() > 0
               for g in torch.autograd.grad(grad_z.sum(), phi, allow_unused=True))
    method = tiny_mame()
    loss = method.inner_loss(state, batch)
    (grad_z,) = torch.autograd.grad(loss.sum(), [state["latent"]], create_graph=True)
    assert all(g is None for g in torch.autograd.grad(grad_z.sum(), list(method.exploration_policy.parameters()),
                                                       allow_unused=True))


def test_the_batched_inner_step_on_z_equals_a_per_task_loop():
    module = tiny_mame()
    state, batch = exploration_batch(module)
    adapted = module.inner_step(state, batch, create_graph=False)
    for task in range(N_TASKS):
        sample = batch[task : task + 1]
        latent = torch.zeros(1, 4, requires_grad=True)
        mask = sample["mask"]
        prediction = module.self_supervision(sample["observation"], sample["action"], latent, mask)
        loss = per_task_mean((prediction - sample[TARGET]).pow(2).sum(-1), mask).sum()
        (grad,) = torch.autograd.grad(loss, latent)
        torch.testing.assert_close(adapted["latent"][task], -0.1 * grad[0], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(adapted["latent"][0], adapted["latent"][1])


def test_the_normalised_inner_step_moves_z_by_alpha_along_each_tasks_gradient():
    plain, normalised = tiny_mame(), tiny_mame(normalize_inner_step=True, inner_lr=0.3)
    state, batch = exploration_batch(plain)
    step = plain.inner_step(state, batch, create_graph=False)["latent"]  # -0.1 * g_i
    moved = normalised.inner_step(state, batch, create_graph=False)["latent"]
    torch.testing.assert_close(moved.norm(dim=-1), torch.full((N_TASKS,), 0.3))
    torch.testing.assert_close(moved, 0.3 * step / step.norm(dim=-1, keepdim=True))
    assert step.norm(dim=-1).sub(0.1).abs().max() > 1e-3  # the plain step's length is not alpha
    with pytest.raises(ConfigError, match="normalize_inner_step"):
        tiny_mame(normalize_inner_step="yes")


def test_meta_gradient_through_z_prime_wrt_theta_and_beta_matches_finite_differences():
    module = tiny_mame()
    meta_batch = double_meta_batch(module)
    post = meta_batch.post_update

    def objective() -> torch.Tensor:
        return -module.exploitation_objective(module.adapt(meta_batch.pre_update), post).mean()

    parameters = list(module.policy.parameters()) + list(module.self_supervision.parameters())
    adapted = module.adapt(meta_batch.pre_update, create_graph=False)
    first_order = list(torch.autograd.grad(-module.exploitation_objective(adapted, post).mean(), module.policy.parameters()))
    first_order += [torch.zeros_like(p) for p in module.self_supervision.parameters()]  # beta only acts through z'
    assert_matches_finite_differences(objective, parameters, first_order)


@pytest.mark.parametrize("learn_inner_lr,normalize_inner_step", [(False, False), (True, False), (False, True),
                                                                  (True, True)])
def test_the_exploration_policy_gradient_of_r_mu_is_the_exact_dice_gradient(learn_inner_lr: bool,
                                                                           normalize_inner_step: bool):
    """Sum_t grad log mu(a_t|s_t) sum_{t' >= t} r^mu_t' (no baseline) = d J(z'(phi)) / d phi through the DiCE weights."""
    module = tiny_mame(exploration_update="dice", learn_inner_lr=learn_inner_lr,
                       normalize_inner_step=normalize_inner_step)
    if learn_inner_lr:  # unequal step sizes per entry, so that alpha's place in r^mu is tested too
        with torch.no_grad():
            module.inner_step_sizes["latent"].copy_(torch.tensor([0.05, 0.1, 0.2, 0.4]))
    meta_batch = double_meta_batch(module)
    explore, post = meta_batch.pre_update[0], meta_batch.post_update
    phi = list(module.exploration_policy.parameters())

    # exact: differentiate J(z') through the DiCE weights of the inner step (phi enters nowhere else)
    adapted = module.adapt(meta_batch.pre_update, create_graph=True)
    exact = torch.autograd.grad(module.exploitation_objective(adapted, post).sum(), phi)

    # estimator: REINFORCE of mu_phi on the reward-to-go of r^mu
    rewards = module.exploration_rewards(meta_batch)
    reward_to_go = rewards.flip(-1).cumsum(-1).flip(-1)
    log_mu = module.log_prob(meta_batch.fast_states[0], explore, "explore")
    estimate = torch.autograd.grad((log_mu * reward_to_go * explore["mask"]).sum(), phi)
    for a, b in zip(exact, estimate):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    # a non-zero gradient, so that the equality pins the sign and the factor alpha / K of r^mu
    assert all(g.abs().sum() > 1e-6 for g in exact)


def test_n_step_targets_and_the_successor_window_at_episode_ends_and_early_terminations():
    rewards = torch.arange(1.0, 9.0).reshape(1, 1, 8)
    mask = torch.tensor([[[1, 1, 1, 1, 1, 0, 0, 0]]], dtype=torch.bool)  # terminated at step 4
    batch = TensorDict({("next", "reward"): rewards.unsqueeze(-1), "mask": mask}, batch_size=[1, 1, 8])
    module = tiny_mame(n_step=3)
    target = module.self_supervision_target(batch).squeeze(-1)[0, 0]
    # sum of the next 3 rewards, stopping at the termination
    assert target.tolist() == [6.0, 9.0, 12.0, 9.0, 5.0, 0.0, 0.0, 0.0]
    full = torch.ones(1, 1, 8, dtype=torch.bool)
    target = module.self_supervision_target(batch.set("mask", full)).squeeze(-1)[0, 0]
    assert target.tolist() == [6.0, 9.0, 12.0, 15.0, 18.0, 21.0, 15.0, 8.0]  # and at the horizon

    features = torch.randn(1, 1, 8, 2)
    expected = torch.stack([features[0, 0, t:min(t + 3, 5)].mean(0) if t < 5 else torch.zeros(2)
                            for t in range(8)])
    torch.testing.assert_close(window_mean(features, mask, 3)[0, 0], expected)
    assert torch.equal(window_mean(features, full, 1), features)


@pytest.mark.parametrize("switch, value", [
    ("target", "reward"), ("target", "next_state"), ("inner_objective", "policy_gradient"),
    ("exploration_update", "emaml"), ("exploration_update", "env_reward"),
])
def test_each_ablation_changes_the_piece_it_names(switch: str, value: str):
    base, ablation = tiny_mame(), tiny_mame(**{switch: value})
    meta_batch = base.collect_and_adapt(base.sample_tasks())
    explore = meta_batch.pre_update[0]
    if switch == "target":
        target = ablation.self_supervision_target(explore)
        if value == "reward":
            assert torch.equal(target.squeeze(-1), explore["next", "reward"].squeeze(-1) * explore["mask"])
            assert ablation.self_supervision.window == 1
        else:
            assert torch.equal(target, explore["next", "observation"])
            assert ablation.self_supervision.head.out_features == base.env.observation_dim
        assert not torch.equal(target, explore[TARGET])
    elif switch == "inner_objective":
        state = base.initial_fast_state()
        losses = ablation.step_losses(state["latent"], explore)
        ratio = torch.exp(ablation.log_prob(state, explore) - explore["action_log_prob"])
        torch.testing.assert_close(losses, -ratio * explore["advantage"] * explore["mask"])
    else:
        advantages = ablation.exploration_advantages(meta_batch)
        if value == "env_reward":
            assert torch.equal(advantages, explore["advantage"])
        else:  # one standardised post-update score per task, the same for all its exploration steps
            per_task = advantages[:, 0, 0]
            assert torch.equal(advantages, per_task[:, None, None].expand_as(advantages) * explore["mask"])
            torch.testing.assert_close(per_task.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)  # float32 rounding
        assert not torch.allclose(advantages, base.exploration_advantages(meta_batch))


@pytest.mark.parametrize("learn_inner_lr", [False, True])
def test_max_grad_norm_clips_each_network_on_its_own(learn_inner_lr: bool):
    module = tiny_mame(max_grad_norm=0.5, learn_inner_lr=learn_inner_lr)
    networks = module.networks()
    assert set(networks) == {"exploitation_policy", "exploration_policy", "self_supervision"} | (
        {"inner_step_sizes"} if learn_inner_lr else set())
    assert sum(len(params) for params in networks.values()) == len(list(module.parameters()))  # every parameter, once
    generator = torch.Generator().manual_seed(0)
    scales = {"exploitation_policy": 10.0, "exploration_policy": 0.01, "self_supervision": 3.0, "inner_step_sizes": 2.0}
    for name, params in networks.items():
        for p in params:
            p.grad = scales[name] * torch.randn(p.shape, generator=generator)
    before = {name: [p.grad.clone() for p in params] for name, params in networks.items()}
    largest = module.clip_gradients_per_network()

    def norm(grads):
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

    assert largest == max(norm(grads) for grads in before.values())
    for name, params in networks.items():
        old, new = before[name], [p.grad for p in params]
        if norm(old) <= 0.5:  # left alone
            assert all(torch.equal(a, b) for a, b in zip(old, new))
        else:  # rescaled as a whole to norm 0.5, direction kept
            torch.testing.assert_close(norm(new), torch.tensor(0.5), rtol=1e-5, atol=0)
            factor = norm(new) / norm(old)
            for a, b in zip(old, new):
                torch.testing.assert_close(b, a * factor)
    with pytest.raises(ConfigError, match="max_grad_norm"):
        tiny_mame(max_grad_norm=0.0)


def test_resume_equals_an_uninterrupted_run(in_tmp):
    from conftest import REPO, TINY

    from lightning_metarl.cli import main
    from lightning_metarl.evaluation import read_scalars

    config = str(REPO / "conf" / "point_corner_mame.yaml")

    def fit(name: str, epochs: int, *extra: str) -> None:
        main(["fit", "--config", config, *TINY, "--seed_everything", "3", "--trainer.max_epochs", str(epochs),
              "--model.init_args.iterations_per_epoch", "1", "--trainer.logger.init_args.name", name, *extra])

    fit("straight", 3)
    fit("resumed", 1)
    fit("resumed", 3, "--ckpt_path", "last")
    tags = ("return/pre_update", "return/post_update", "loss/outer", "self_supervision/loss_after",
            "exploration/reward_mean", "latent/step_norm")
    straight, resumed = (read_scalars(in_tmp / "runs" / name / "version_0") for name in ("straight", "resumed"))
    assert sorted(resumed["return/post_update"]) == [0, 1, 2]
    assert {t: straight[t] for t in tags} == {t: resumed[t] for t in tags}
    # the held-out evaluation drew the first task's trajectories into TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(in_tmp / "runs" / "straight" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    assert "val/trajectories" in events.Tags()["images"]


def test_fewer_exploration_trajectories_are_collected_in_an_env_of_their_own():
    module = tiny_mame(exploration_rollouts_per_task=2)
    meta_batch = module.collect_and_adapt(module.sample_tasks())
    assert meta_batch.pre_update[0].batch_size == (N_TASKS, 2, HORIZON)
    assert meta_batch.post_update.batch_size == (N_TASKS, ROLLOUTS, HORIZON)
    # both envs run the same tasks
    assert torch.equal(module.exploration_env.tasks["goal"], module.env.tasks["goal"])
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert {"env", "exploration_env"} <= set(checkpoint["lightning_metarl_rng"])


def test_trajectory_picture_marks_goal_and_both_phases():
    from lightning_metarl.evaluation import trajectory_image
    from lightning_metarl.evaluation.figures import EXPLOITATION, EXPLORATION, GOAL

    explore = torch.tensor([[[-1.0, 0.0], [-1.0, 1.0]]])
    exploit = torch.tensor([[[0.0, -1.0], [1.0, -1.0]]])
    image = trajectory_image(explore, exploit, torch.tensor([1.0, 1.0]), extent=2.0, size=101)

    def colour_at(x: float, y: float) -> tuple[float, ...]:
        column, row = round((x + 2) / 4 * 100), 100 - round((y + 2) / 4 * 100)
        return tuple(round(v, 2) for v in image[:, row, column].tolist())

    assert colour_at(1.0, 1.0) == GOAL
    assert colour_at(-1.0, 0.5) == EXPLORATION  # on the blue segment, y upwards
    assert colour_at(0.5, -1.0) == EXPLOITATION
    assert colour_at(0.5, 0.5) == (1.0, 1.0, 1.0)


def test_the_long_meta_test_protocol_is_refused():
    from lightning_metarl.errors import ConfigError

    with pytest.raises(ConfigError, match="meta_test_iterations"):
        tiny_mame(meta_test_iterations=3)


def meta_batch_of(module: MAME):
    return module.collect_and_adapt(module.sample_tasks())


def test_target_kl_stops_the_outer_steps_early_and_only_then():
    """``target_kl`` takes steps while the post-update policy's approximate KL stays below 1.5x the target."""
    from conftest import with_optimizers

    def after_update(**overrides):
        module = with_optimizers(tiny_mame(**overrides))
        metrics = module.meta_update(meta_batch_of(module))
        return metrics, [p.detach().clone() for p in module.parameters()]

    reference, one_step = after_update(num_outer_steps=1)
    stopped, early = after_update(num_outer_steps=5, target_kl=1e-12)  # any step away from theta_old exceeds it
    assert float(stopped["ppo/outer_steps"]) == 1.0
    assert all(torch.equal(a, b) for a, b in zip(one_step, early))
    unbounded, every = after_update(num_outer_steps=5)
    loose, loose_params = after_update(num_outer_steps=5, target_kl=1e6)
    assert float(unbounded["ppo/outer_steps"]) == float(loose["ppo/outer_steps"]) == 5.0
    assert all(torch.equal(a, b) for a, b in zip(every, loose_params))
    assert not all(torch.equal(a, b) for a, b in zip(every, early))
    assert float(loose["ppo/approx_kl"]) > 0  # the policy moved over the first four steps
    with pytest.raises(ConfigError, match="target_kl"):
        tiny_mame(target_kl=0.0)


def test_approx_kl_is_the_mean_log_ratio_of_the_post_update_samples():
    module = tiny_mame()
    meta_batch = meta_batch_of(module)
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    meta_batch.pre_update[0].set(EXPLORATION_ADVANTAGE, module.exploration_advantages(meta_batch))
    terms = module.loss_terms(meta_batch)
    post = meta_batch.post_update
    adapted = module.adapt(meta_batch.pre_update, create_graph=False)
    log_ratio = module.log_prob(adapted, post) - post["action_log_prob"]
    expected = per_task_mean(log_ratio.exp() - 1 - log_ratio, post["mask"]).mean()
    torch.testing.assert_close(terms["approx_kl"], expected)
    assert float(expected) > 0.0


def test_learned_step_sizes_are_logged_as_used_by_the_iteration():
    """``latent/step_size_mean|min|max``: the step sizes of this iteration's inner step, only when they are learned."""
    from conftest import with_optimizers

    module = with_optimizers(tiny_mame(learn_inner_lr=True, inner_lr=0.3))
    with torch.no_grad():
        module.inner_step_sizes.get("latent").copy_(torch.tensor([0.1, 0.3, 0.2, 0.5]))
    metrics = module.meta_update(meta_batch_of(module))
    assert float(metrics["latent/step_size_mean"]) == pytest.approx(0.275)
    assert float(metrics["latent/step_size_min"]) == pytest.approx(0.1)
    assert float(metrics["latent/step_size_max"]) == pytest.approx(0.5)
    assert not torch.equal(module.inner_step_sizes.get("latent"), torch.tensor([0.1, 0.3, 0.2, 0.5]))  # then learned
    fixed = with_optimizers(tiny_mame())
    assert not any(key.startswith("latent/step_size") for key in fixed.meta_update(meta_batch_of(fixed)))
