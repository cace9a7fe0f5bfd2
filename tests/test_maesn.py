"""MAESN and LatentSpace: the latent policy, the inner step on omega, the prior KL, the meta-gradient, the meta-test protocol."""

from __future__ import annotations

import math

import pytest
import torch
from meta_gradients import assert_matches_finite_differences, double_meta_batch

from lightning_metarl.algorithms import MAESN, LatentSpace
from lightning_metarl.errors import ConfigError
from lightning_metarl.evaluation import adaptation_curve, step_scale
from lightning_metarl.objectives.latent import kl_to_standard_normal, latent_score_loss


def tiny(cls=MAESN, **overrides):
    torch.manual_seed(0)
    kwargs = dict(env="Point-Semicircle", env_kwargs={"reward_type": "dense"}, meta_batch_size=3, rollouts_per_task=5,
                  horizon=6, num_train_tasks=7, hidden_sizes=[8, 8], latent_size=2)
    kwargs.update(overrides)
    return cls(**kwargs)


def test_kl_to_the_prior_has_its_closed_form():
    mean = torch.tensor([[0.3, -1.2], [0.0, 0.0]], dtype=torch.float64)
    log_std = torch.tensor([[0.5, -0.7], [0.0, 0.0]], dtype=torch.float64)
    expected = [sum(0.5 * (math.exp(2 * s) + m * m - 1) - s for m, s in zip(ms, ss))
                for ms, ss in zip(mean.tolist(), log_std.tolist())]
    torch.testing.assert_close(kl_to_standard_normal(mean, log_std), torch.tensor(expected, dtype=torch.float64))
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(mean, log_std.exp()),
                                                  torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_to_standard_normal(mean, log_std), reference)
    assert kl_to_standard_normal(mean, log_std)[1] == 0


def test_the_latent_is_drawn_once_per_episode_and_stored():
    module = tiny()
    meta_batch = module.collect_and_adapt(module.sample_tasks())
    for batch, state in zip(meta_batch.batches, meta_batch.fast_states):
        noise, latent = batch["latent_noise"], batch["latent"]
        assert noise.shape == (3, 5, 6, 2)
        assert torch.equal(noise, noise[:, :, :1].expand_as(noise))  # constant within an episode
        assert (noise[:, :, 0, None] != noise[:, None, :, 0]).any(-1).sum() == 3 * 5 * 4  # differs across episodes
        expected = state["latent_mean"][:, None, None] + noise * state["latent_log_std"][:, None, None].exp()
        torch.testing.assert_close(latent, expected)
    # the post-update episodes used the adapted omega, which differs from the pre-update one
    assert not torch.equal(meta_batch.fast_states[0]["latent_mean"], meta_batch.fast_states[1]["latent_mean"])


def test_training_tasks_index_the_tables_and_held_out_tasks_start_at_the_prior():
    module = tiny()
    tasks = module.sample_tasks()
    assert tasks["task_index"].shape == (3,) and (tasks["task_index"] < 7).all()
    torch.testing.assert_close(tasks["goal"], module.train_tasks["goal"][tasks["task_index"]])
    module.set_tasks(tasks)
    state = module.initial_fast_state()
    assert torch.equal(state["latent_mean"], module.task_latents.mean[tasks["task_index"]])
    assert torch.equal(state["latent_log_std"], module.task_latents.log_std[tasks["task_index"]])
    module.set_tasks(module.env.held_out_tasks(3, seed=module.hparams.eval_seed))
    prior = module.initial_fast_state()
    assert torch.equal(prior["latent_mean"], torch.zeros(3, 2)) and torch.equal(prior["latent_log_std"], torch.zeros(3, 2))
    # the held-out tasks are none of the training tasks
    held_out = module.env.held_out_tasks(30, seed=module.hparams.eval_seed)["goal"]
    assert not (held_out[:, None] == module.train_tasks["goal"][None]).all(-1).any()


def test_inner_step_is_the_score_function_gradient_on_omega_only():
    module = tiny(learn_inner_lr=True)
    with torch.no_grad():
        module.inner_step_sizes["latent_mean"].copy_(torch.tensor([0.5, 2.0]))
        module.inner_step_sizes["latent_log_std"].copy_(torch.tensor([1.5, 0.25]))
    meta_batch = module.collect_and_adapt(module.sample_tasks())
    batch, before, after = meta_batch.pre_update[0], meta_batch.fast_states[0], meta_batch.fast_states[1]
    z = batch["latent"][:, :, 0]
    mean, std = before["latent_mean"][:, None], before["latent_log_std"][:, None].exp()
    # explicit score function: d log N(z; mu, sigma) / d mu = (z - mu) / sigma^2, / d log sigma = (z - mu)^2 / sigma^2 - 1
    advantage = batch["return"][..., 0] - batch["value"][..., 0]
    advantage = (advantage - advantage.mean(-1, keepdim=True)) / (advantage.std(-1, keepdim=True, unbiased=False) + 1e-8)
    grad_mean = ((z - mean) / std**2 * advantage[..., None]).mean(1)
    grad_log_std = (((z - mean) ** 2 / std**2 - 1) * advantage[..., None]).mean(1)
    torch.testing.assert_close(after["latent_mean"], before["latent_mean"] + torch.tensor([0.5, 2.0]) * grad_mean)
    torch.testing.assert_close(after["latent_log_std"], before["latent_log_std"] + torch.tensor([1.5, 0.25]) * grad_log_std)
    assert set(after.keys()) == {"latent_mean", "latent_log_std"}  # theta is not adapted (Eq. 4 is off)


def test_latent_score_loss_weighs_each_trajectory_once():
    latent = torch.randn(2, 4, 3)
    mean, log_std = torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 3, requires_grad=True)
    advantage = torch.randn(2, 4)
    loss = latent_score_loss(latent, mean, log_std, advantage)
    (grad,) = torch.autograd.grad(loss.sum(), mean)
    torch.testing.assert_close(grad, -(latent * advantage[..., None]).mean(1))


def test_optional_policy_step_adapts_theta_with_omega_held_fixed():
    module = tiny(adapt_policy=True, learn_inner_lr=False, inner_lr=0.3)
    meta_batch = module.collect_and_adapt(module.sample_tasks())
    before, after = meta_batch.fast_states
    assert "params" in after.keys()
    assert not torch.equal(after["params", "net", "mean_net", "0", "weight"], before["params", "net", "mean_net", "0", "weight"])
    # omega's step is still the plain score function (the policy term sees omega as a constant)
    plain = tiny(adapt_policy=False, learn_inner_lr=False, inner_lr=0.3)
    state = plain.initial_fast_state()
    plain.set_tasks(meta_batch.tasks)
    with torch.no_grad():
        plain.load_state_dict(module.state_dict())
    adapted = plain.inner_step(plain.initial_fast_state(), meta_batch.pre_update[0], create_graph=False)
    torch.testing.assert_close(adapted["latent_mean"], after["latent_mean"])
    torch.testing.assert_close(adapted["latent_log_std"], after["latent_log_std"])
    assert state.batch_size == (3,)


@pytest.mark.parametrize("outer_optimizer", ["trpo", "adam"])
def test_meta_gradient_wrt_theta_omega_and_step_sizes_matches_finite_differences(outer_optimizer):
    module = tiny(outer_optimizer=outer_optimizer, kl_weight=0.5)
    meta_batch = double_meta_batch(module)

    def objective() -> torch.Tensor:
        return module.outer_loss(meta_batch, module.adaptation_path(meta_batch.pre_update))

    parameters = list(module.parameters())
    names = [name for name, _ in module.named_parameters()]
    assert {"task_latents.mean", "task_latents.log_std", "inner_step_sizes.latent_mean",
            "inner_step_sizes.latent_log_std"} <= set(names)
    grads = torch.autograd.grad(objective(), parameters)
    # every meta-parameter gets a gradient: theta, the sampled rows of the tables, the step sizes
    for name, grad in zip(names, grads):
        assert grad.abs().sum() > 0, name
    # first order: the adapted omega held fixed (no gradient through the inner step)
    adapted = module.adapt(meta_batch.pre_update, create_graph=False)
    first_order = torch.autograd.grad(
        module.outer_loss(meta_batch, [module.adaptation_path([])[0], adapted]), parameters, allow_unused=True)
    first_order = [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, first_order)]
    assert_matches_finite_differences(objective, parameters, first_order)


def test_the_outer_loss_adds_the_prior_kl_of_the_pre_update_omega():
    module = tiny(kl_weight=0.7)
    meta_batch = module.collect_and_adapt(module.sample_tasks())
    path = module.adaptation_path(meta_batch.pre_update)
    without = tiny(kl_weight=0.0)
    without.load_state_dict(module.state_dict())
    without.set_tasks(meta_batch.tasks)
    expected = without.outer_loss(meta_batch, without.adaptation_path(meta_batch.pre_update)) + 0.7 * kl_to_standard_normal(
        path[0]["latent_mean"], path[0]["latent_log_std"]).mean()
    torch.testing.assert_close(module.outer_loss(meta_batch, path), expected)


def test_latent_space_collects_once_and_has_no_inner_update():
    module = tiny(LatentSpace)
    assert module.inner_step_sizes is None and module.hparams.kl_weight == 0.01
    meta_batch = module.collect_and_adapt(module.sample_tasks())
    assert meta_batch.pre_update == [] and len(meta_batch.fast_states) == 1
    assert set(meta_batch.returns()) == {"return/step_0", "return/pre_update", "return/post_update"}
    path = module.adaptation_path(meta_batch.pre_update)
    assert len(path) == 1
    loss = module.outer_loss(meta_batch, path)
    loss.backward()
    assert module.task_latents.mean.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="learn_inner_lr"):
        tiny(LatentSpace, learn_inner_lr=True)


def test_step_scale_follows_the_protocol():
    assert [step_scale(k, 2) for k in range(5)] == [1.0, 1.0, 0.5, 0.25, 0.125]
    assert [step_scale(k, None) for k in range(3)] == [1.0, 1.0, 1.0]


def test_adaptation_curve_equals_repeated_inner_steps_from_the_prior():
    module = tiny(meta_test_tasks=2, meta_test_rollouts=3, meta_test_iterations=3)
    env = module.meta_test_env()
    assert env.batch_size == (2, 3)
    tasks = env.held_out_tasks(2, seed=5)
    env.set_rng_state({"rng": torch.Generator().manual_seed(9).get_state()})
    curve = adaptation_curve(module, env, tasks, 3, torch.Generator().manual_seed(1), halving_start=2)
    assert curve.shape == (3, 2)
    # by hand: collect, record, step with alpha * (1, 1, 1/2)
    env.set_rng_state({"rng": torch.Generator().manual_seed(9).get_state()})
    generator = torch.Generator().manual_seed(1)
    env.set_tasks(tasks)
    state = module.initial_fast_state(2).detach()
    assert torch.equal(state["latent_mean"], torch.zeros(2, 2))
    for k, scale in enumerate((1.0, 1.0, 0.5)):
        batch = module.collect(module.actor(state, "explore", generator), "explore", env=env)
        returns = (batch["next", "reward"].squeeze(-1) * batch["mask"]).sum(-1).mean(-1)
        torch.testing.assert_close(curve[k], returns)
        gradient_state = state.detach().requires_grad_(True)
        loss = module.inner_loss(gradient_state, batch).sum()
        grads = torch.autograd.grad(loss, [gradient_state["latent_mean"], gradient_state["latent_log_std"]])
        alpha = module.inner_step_sizes
        state = state.clone()
        state["latent_mean"] = state["latent_mean"] - alpha["latent_mean"] * scale * grads[0]
        state["latent_log_std"] = state["latent_log_std"] - alpha["latent_log_std"] * scale * grads[1]
        state = state.detach()


def test_meta_test_env_uses_its_own_reward_options():
    module = tiny(meta_test_env_kwargs={"reward_type": "sparse"}, meta_test_iterations=2)
    assert module.env.reward_type == "dense" and module.meta_test_env().reward_type == "sparse"


@pytest.mark.parametrize("bad, message", [
    ({"latent_size": 0}, "latent_size"),
    ({"num_train_tasks": -1}, "num_train_tasks"),
    ({"kl_weight": -0.1}, "kl_weight"),
    ({"meta_test_iterations": 0}, "meta_test_iterations"),
    ({"meta_test_halving_start": 0}, "meta_test_halving_start"),
])
def test_bad_settings_are_rejected(bad, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**bad)


def _cli(*args: str) -> None:
    from conftest import REPO, TINY

    from lightning_metarl.cli import main

    main([args[0], "--config", str(REPO / "conf" / args[1]), *TINY, "--model.init_args.num_train_tasks", "6",
          "--model.init_args.iterations_per_epoch", "1", *args[2:]])


def test_resume_equals_an_uninterrupted_run_and_the_tables_round_trip(in_tmp):
    from lightning_metarl.evaluation import read_scalars

    def fit(name: str, epochs: int, *extra: str) -> None:
        _cli("fit", "wheeled_semicircle_maesn.yaml", "--seed_everything", "3", "--trainer.max_epochs", str(epochs),
             "--trainer.logger.init_args.name", name, *extra)

    fit("straight", 3)
    fit("resumed", 1)
    fit("resumed", 3, "--ckpt_path", "last")
    tags = ("return/pre_update", "return/post_update", "loss/outer", "latent/prior_kl", "latent/post_update_std",
            "latent/step_size_mean", "val/return/post_update")
    straight, resumed = (read_scalars(in_tmp / "runs" / name / "version_0") for name in ("straight", "resumed"))
    assert sorted(resumed["return/post_update"]) == [0, 1, 2]
    assert {t: straight[t] for t in tags} == {t: resumed[t] for t in tags}
    checkpoint = torch.load(in_tmp / "runs" / "straight" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed_checkpoint = torch.load(in_tmp / "runs" / "resumed" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("task_latents.mean", "task_latents.log_std", "inner_step_sizes.latent_mean"):
        assert checkpoint["state_dict"][key].shape[-1] == 2
        assert torch.equal(checkpoint["state_dict"][key], resumed_checkpoint["state_dict"][key])
    # a module built with the same settings has tables of the checkpoint's shape
    torch.manual_seed(3)
    fresh = MAESN(env="Wheeled-Semicircle", num_train_tasks=6, meta_batch_size=3, rollouts_per_task=4, horizon=12,
                  hidden_sizes=[100, 100], activation="relu")
    assert fresh.task_latents.mean.shape == checkpoint["state_dict"]["task_latents.mean"].shape


@pytest.mark.parametrize("config", ["wheeled_semicircle_maesn.yaml", "wheeled_semicircle_maml_trpo.yaml",
                                    "wheeled_semicircle_latent_space.yaml"])
def test_test_runs_the_meta_test_protocol_and_writes_the_curve(in_tmp, config):
    import csv

    from lightning_metarl.evaluation import read_scalars

    _cli("fit", config, "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0")
    checkpoint = next((in_tmp / "runs").glob("*/version_0/checkpoints/last.ckpt"))
    _cli("test", config, "--ckpt_path", str(checkpoint), "--model.init_args.meta_test_iterations", "4",
         "--model.init_args.meta_test_tasks", "3", "--model.init_args.meta_test_rollouts", "2")
    run = next((in_tmp / "runs").glob("*_test/version_0"))
    with open(run / "test_returns.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["batch", "task", "step", "return"]
    assert sorted((int(r["task"]), int(r["step"])) for r in rows) == [(t, k) for t in range(3) for k in range(4)]
    curves = read_scalars(run)
    assert sorted(curves["test/adaptation/return"]) == [0, 1, 2, 3]
    assert sorted(curves["test/adaptation/return_std"]) == [0, 1, 2, 3]
    for k in range(4):
        returns = [float(r["return"]) for r in rows if int(r["step"]) == k]
        assert curves["test/adaptation/return"][k] == pytest.approx(sum(returns) / 3, rel=1e-5)
    # the sparse meta-test reward: far from the goal every step costs the goal's distance (2) at least
    assert all(float(r["return"]) <= -2 * 12 + 1e-3 for r in rows)
