"""ProMP, MAML-LVC/TRPO and E-MAML: the relations between their meta-gradients (MAME, Gurumurthy et al. 2019, §3.2)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import with_optimizers

from lightning_metarl.algorithms import (
    CAVIA,
    EMAML,
    MAESN,
    MAME,
    MAML,
    LatentSpace,
    MetaBatch,
    MetaRLModule,
    ProMP,
)
from lightning_metarl.nn import behaviour_distribution
from lightning_metarl.objectives import clipped_surrogate_loss, likelihood_ratio_loss, lvc_loss, per_task_mean
from lightning_metarl.optim import TrustRegion

SIZES = dict(meta_batch_size=3, rollouts_per_task=4, horizon=8, env_kwargs={"reward_type": "dense"})


def build(cls: type[MetaRLModule], **kwargs) -> MetaRLModule:
    torch.manual_seed(0)  # the same initial policy for every module
    return with_optimizers(cls(**SIZES, **kwargs))


def collect_batches(module: MetaRLModule) -> MetaBatch:
    """Pre-update and post-update batches of ``module`` on one meta-batch of tasks."""
    return module.collect_and_adapt(module.sample_tasks())


def outer_loss(module: MAML, meta_batch: MetaBatch) -> torch.Tensor:
    return module.outer_loss(meta_batch, module.adaptation_path(meta_batch.pre_update))


def meta_gradient(module: MetaRLModule, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(module.policy.parameters())))


def assert_grads_close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_promp_without_clipping_and_kl_equals_maml_lvc_likelihood_ratio():
    promp = build(ProMP, clip_epsilon=1e9, inner_kl_coeff=0.0, num_outer_steps=1)
    maml = build(MAML, inner_objective="lvc", outer_optimizer="trpo")
    assert all(torch.equal(p, q) for p, q in zip(promp.policy.parameters(), maml.policy.parameters()))
    meta_batch = collect_batches(promp)

    terms = promp.loss_terms(meta_batch)
    promp_grad = meta_gradient(promp, terms["loss_objective"] + terms["loss_inner_kl"])
    maml_grad = meta_gradient(maml, outer_loss(maml, meta_batch))
    assert_grads_close(promp_grad, maml_grad)

    # with clipping on, samples outside the clip range stop contributing: the gradients differ
    # once the policy has moved (after one outer step the ratios are no longer 1)
    clipped = build(ProMP, clip_epsilon=1e-3, inner_kl_coeff=0.0, num_outer_steps=1)
    with torch.no_grad():
        for p in clipped.policy.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    terms = clipped.loss_terms(meta_batch)
    assert terms["clip_fraction"] > 0


def test_promp_loss_terms_share_one_policy_evaluation_per_pre_update_batch():
    """The inner steps and inner KLs, computed from one evaluation per batch, equal their definitions."""
    torch.set_default_dtype(torch.float64)
    try:
        promp = build(ProMP, inner_kl_coeff=0.3, num_inner_steps=2)
        meta_batch = collect_batches(promp)
        sampling = promp.sampling_distributions(meta_batch)
        with torch.no_grad():
            for p in promp.policy.parameters():
                p.add_(1e-2 * torch.randn_like(p))  # the KLs and their gradients are not 0
        terms = promp.loss_terms(meta_batch, sampling)
        path = promp.adaptation_path(meta_batch.pre_update)
        kls = torch.stack([promp.kl(old, state, batch, "explore")
                           for old, state, batch in zip(sampling, path, meta_batch.pre_update)], dim=-1)
        post = meta_batch.post_update
        log_prob = promp.log_prob(path[-1], post)
        objective = clipped_surrogate_loss(log_prob, post.get("action_log_prob"), post.get("advantage"), post.get("mask"),
                                           promp.hparams.clip_epsilon).mean()
        expected = objective + promp.kl_coefficient(kls)
        assert float(kls.abs().min()) > 1e-8
        torch.testing.assert_close(terms["loss_objective"], objective, rtol=1e-12, atol=0)
        torch.testing.assert_close(terms["inner_kl"], kls.detach().mean(0), rtol=1e-12, atol=0)
        actual = meta_gradient(promp, terms["loss_objective"] + terms["loss_inner_kl"])
        for x, y in zip(actual, meta_gradient(promp, expected)):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-14)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("cls, kwargs", [(ProMP, {}), (MAML, {"inner_objective": "lvc"})], ids=["promp", "maml_lvc"])
def test_lvc_inner_step_is_importance_weighted_away_from_the_sampling_policy(cls, kwargs):
    module = build(cls, **kwargs)
    batch = collect_batches(module).pre_update[0]
    mask, advantage = batch.get("mask"), batch.get("advantage")

    def step_by_hand(params, loss_of_log_prob):
        params = params.detach().requires_grad_(True)
        keys = list(params.keys(True, True))
        loss = loss_of_log_prob(module.log_prob(params, batch)).sum()
        grads = torch.autograd.grad(loss, [params.get(k) for k in keys])
        return {k: params.get(k) - 0.1 * g for k, g in zip(keys, grads)}

    at_old = module.initial_fast_state()
    moved = at_old.detach().apply(lambda p: p + 0.1 * torch.randn_like(p))

    def weighted(log_prob):  # the ratio to the policy that sampled the batch, pi_theta / pi_theta_old
        return likelihood_ratio_loss(log_prob, batch.get("action_log_prob"), advantage, mask)

    def on_policy(log_prob):  # the formula pi_theta / ⊥pi_theta applied to another policy's samples
        return lvc_loss(log_prob, advantage, mask)

    for params in (at_old, moved):
        stepped = module.inner_step(params, batch, create_graph=False)
        for key, value in step_by_hand(params, weighted).items():
            torch.testing.assert_close(stepped.get(key), value, rtol=1e-5, atol=1e-6)
    # at the sampling parameters the two forms agree; away from them they do not
    def gap(params):
        a, b = step_by_hand(params, weighted), step_by_hand(params, on_policy)
        return max((a[k] - b[k]).abs().max().item() for k in a)

    assert gap(at_old) < 1e-6
    assert gap(moved) > 1e-4


def test_vpg_and_lvc_inner_steps_same_adaptation_different_meta_gradient():
    vpg = build(MAML, inner_objective="vpg")
    lvc = build(MAML, inner_objective="lvc")
    meta_batch = collect_batches(vpg)
    adapted_vpg = vpg.adapt(meta_batch.pre_update, create_graph=True)
    adapted_lvc = lvc.adapt(meta_batch.pre_update, create_graph=True)
    for key in adapted_vpg.keys(True, True):
        torch.testing.assert_close(adapted_vpg.get(key), adapted_lvc.get(key), rtol=1e-6, atol=1e-7)

    grad_vpg = meta_gradient(vpg, outer_loss(vpg, meta_batch))
    grad_lvc = meta_gradient(lvc, outer_loss(lvc, meta_batch))
    difference = sum((a - b).norm() ** 2 for a, b in zip(grad_vpg, grad_lvc)).sqrt()
    scale = sum(a.norm() ** 2 for a in grad_vpg).sqrt()
    # the LVC Hessian carries the score outer products that the VPG Hessian lacks
    assert difference > 1e-3 * scale


@pytest.mark.parametrize("cls", [MAML, EMAML])
def test_maml_trpo_update_respects_the_trust_region(cls):
    module = build(cls, inner_objective="lvc", outer_optimizer="trpo", max_kl=1e-3)
    meta_batch = collect_batches(module)
    old_adapted = meta_batch.fast_states[-1]
    before = [p.detach().clone() for p in module.parameters()]
    surrogate_before = outer_loss(module, meta_batch).item()
    metrics = module.meta_update(meta_batch)
    assert metrics["trpo/accepted"] == 1.0
    new_adapted = module.adapt(meta_batch.pre_update, create_graph=False)
    old = module.fixed_distribution(old_adapted, meta_batch.post_update)
    kl = module.kl(old, new_adapted, meta_batch.post_update).mean().item()
    with pytest.raises(TypeError, match="fixed_distribution"):
        module.kl(old_adapted, new_adapted, meta_batch.post_update)
    assert 0 < kl <= 1e-3
    assert metrics["kl/post_update"].item() == pytest.approx(kl, rel=1e-4)
    surrogate_after = outer_loss(module, meta_batch).item()
    assert surrogate_after < surrogate_before
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def post_update_kl(before: MAML, after: MAML, meta_batch: MetaBatch) -> float:
    """Mean KL between the adapted policies of two modules on the post-update batch, each adapting on its own."""
    post = meta_batch.post_update
    old_state, new_state = (m.adapt(meta_batch.pre_update, create_graph=False) for m in (before, after))
    with torch.no_grad():
        old, new = before.distribution(old_state, post), after.distribution(new_state, post)
    return per_task_mean(torch.distributions.kl_divergence(old, new), post.get("mask")).mean().item()


@pytest.mark.parametrize("cls, kwargs", [(CAVIA, {}), (MAESN, {"num_train_tasks": 5}), (LatentSpace, {"num_train_tasks": 5})],
                         ids=["cavia", "maesn", "latent_space"])
def test_trpo_trust_region_holds_for_policies_outside_the_fast_state(cls, kwargs):
    """CAVIA, MAESN and LatentSpace adapt inputs, not weights: the KL must still see theta move."""
    module = build(cls, outer_optimizer="trpo", max_kl=1e-3, **kwargs)
    meta_batch = collect_batches(module)
    before = copy.deepcopy(module)  # the policy that collected the post-update batch
    metrics = module.meta_update(meta_batch)
    assert metrics["trpo/accepted"] == 1.0
    kl = post_update_kl(before, module, meta_batch)
    assert 0 < kl <= 1e-3 * 1.001
    assert metrics["kl/post_update"].item() == pytest.approx(kl, rel=1e-3)


@pytest.mark.parametrize("option, cls, kwargs", [
    ("cg_subsample", MAML, {"inner_objective": "lvc"}), ("cg_subsample", MAESN, {"num_train_tasks": 5}),
    ("cg_inner_subsample", MAML, {"inner_objective": "lvc"}), ("cg_inner_subsample", MAML, {"inner_objective": "dice"}),
    ("cg_inner_subsample", CAVIA, {}),
], ids=["steps-maml", "steps-maesn", "trajectories-maml-lvc", "trajectories-maml-dice", "trajectories-cavia"])
def test_trpo_cg_subsample_changes_the_direction_but_the_trust_region_holds_on_every_step(option, cls, kwargs):
    """``cg_subsample: k`` (every k-th post-update step) and ``cg_inner_subsample: k`` (an inner step on every k-th
    pre-update trajectory) change only the KL Hessian: gradient and line search see the whole batch."""
    every = build(cls, outer_optimizer="trpo", max_kl=1e-3, **kwargs)
    meta_batch = collect_batches(every)
    before = copy.deepcopy(every)
    subsampled = with_optimizers(copy.deepcopy(every))  # with the table rows of the tasks that collected meta_batch
    setattr(subsampled.hparams, option, 3)
    metrics_every = every.meta_update(meta_batch)
    metrics_sub = subsampled.meta_update(meta_batch)
    assert metrics_every["trpo/accepted"] == metrics_sub["trpo/accepted"] == 1.0
    # the same gradient (the surrogate at the start is the whole batch's) ...
    assert metrics_sub["loss/surrogate_before"] == metrics_every["loss/surrogate_before"]
    # ... but another Hessian, so another step
    assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-7)
               for a, b in zip(every.parameters(), subsampled.parameters()))
    kl = post_update_kl(before, subsampled, meta_batch)
    assert 0 < kl <= 1e-3 * 1.001
    assert metrics_sub["kl/post_update"].item() == pytest.approx(kl, rel=1e-3)
    assert metrics_sub["loss/surrogate_after"] < metrics_sub["loss/surrogate_before"]


@pytest.mark.parametrize("cg_subsample, cg_inner_subsample", [(1, 1), (3, 1), (1, 3), (3, 3)])
@pytest.mark.parametrize("cls, kwargs", [(MAML, {"inner_objective": "lvc"}), (CAVIA, {})], ids=["maml", "cavia"])
def test_trpo_curvature_kl_is_zero_with_zero_gradient_where_the_step_starts(monkeypatch, cls, kwargs, cg_subsample,
                                                                             cg_inner_subsample):
    """The KL whose Hessian conjugate gradient inverts has its minimum (0, zero gradient) at the current meta-parameters,
    subsampled or not, so that its Hessian there is the Fisher term alone (float64)."""
    torch.set_default_dtype(torch.float64)
    try:
        module = build(cls, outer_optimizer="trpo", max_kl=1e-3, cg_subsample=cg_subsample,
                       cg_inner_subsample=cg_inner_subsample, **kwargs)
        meta_batch = collect_batches(module)
        original = TrustRegion.step
        start = [p.detach().clone() for p in module.parameters()]
        seen = {}

        def capture(self, closure):
            kl = closure().kl_fn()
            seen["kl"] = kl.detach()
            seen["gradient"] = torch.autograd.grad(kl, [p for p in module.parameters() if p.requires_grad],
                                                   allow_unused=True)
            return original(self, closure)

        monkeypatch.setattr(TrustRegion, "step", capture)
        module.meta_update(meta_batch)
        kl, gradient = seen["kl"], seen["gradient"]
        assert abs(kl.item()) < 1e-12
        assert all(g is None or g.abs().max().item() < 1e-9 for g in gradient)
        assert any(not torch.equal(a, b) for a, b in zip(start, module.parameters()))  # and the step was taken
    finally:
        torch.set_default_dtype(torch.float32)


def test_emaml_term_changes_the_meta_gradient_only_through_the_pre_update_policy():
    maml = build(MAML)
    emaml = build(EMAML, exploration_weight=1.0)
    meta_batch = collect_batches(maml)
    grad_maml = meta_gradient(maml, outer_loss(maml, meta_batch))
    grad_emaml = meta_gradient(emaml, outer_loss(emaml, meta_batch))
    assert any(not torch.allclose(a, b) for a, b in zip(grad_maml, grad_emaml))
    zero = build(EMAML, exploration_weight=0.0)
    grad_zero = meta_gradient(zero, outer_loss(zero, meta_batch))
    assert_grads_close(grad_zero, grad_maml)


def test_promp_adaptive_kl_coefficient_is_checkpointed():
    module = build(ProMP, target_inner_kl=0.01, inner_kl_coeff=1e-3)
    module.kl_coefficient.update(torch.tensor([0.0]))
    state = module.state_dict()
    restored = build(ProMP, target_inner_kl=0.01, inner_kl_coeff=1e-3)
    restored.load_state_dict(state)
    assert restored.kl_coefficient.value.item() == pytest.approx(5e-4)


def test_a_fixed_training_set_feeds_every_meta_batch():
    torch.manual_seed(0)
    module = MAML(env="Point-Semicircle", meta_batch_size=6, rollouts_per_task=2, horizon=3, num_train_tasks=4,
                  train_task_seed=11)
    fixed = module.env.fixed_tasks(4, seed=11)
    assert torch.equal(module.train_tasks["goal"], fixed["goal"])
    seen = set()
    for _ in range(5):
        tasks = module.sample_tasks()
        assert torch.equal(tasks["goal"], fixed["goal"][tasks["task_index"]])
        seen.update(tasks["task_index"].tolist())
    assert seen == {0, 1, 2, 3}  # drawn with replacement from all of the set
    module.collect_and_adapt(tasks)  # the envs take the tasks without their index
    assert "task_index" not in module.env.tasks.keys()
    without = MAML(env="Point-Semicircle", meta_batch_size=6, rollouts_per_task=2, horizon=3)
    assert without.train_tasks is None and "task_index" not in without.sample_tasks().keys()


@pytest.mark.parametrize("cls, kwargs", [
    (ProMP, {}),
    (CAVIA, {}),
    (MAESN, {"env": "Point-Semicircle", "num_train_tasks": 5, "latent_size": 2}),
    (MAME, {"latent_size": 4, "hidden_sizes": [16], "feature_size": 8}),
], ids=["promp", "cavia", "maesn", "mame"])
def test_the_stored_behaviour_distribution_is_the_collecting_policy(cls, kwargs):
    """``behaviour_distribution`` (what collection stored) equals the collecting state's distribution on every valid step."""
    module = build(cls, **kwargs)
    meta_batch = collect_batches(module)
    phases = [("explore", state, batch) for state, batch in zip(meta_batch.fast_states, meta_batch.pre_update)]
    phases.append(("exploit", meta_batch.fast_states[-1], meta_batch.post_update))
    for phase, state, batch in phases:
        stored, evaluated = behaviour_distribution(batch), module.fixed_distribution(state, batch, phase)
        ok = batch.get("mask")
        torch.testing.assert_close(stored.loc[ok], evaluated.loc[ok], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stored.log_std[ok], evaluated.log_std[ok], rtol=0, atol=1e-7)
        torch.testing.assert_close(stored.log_prob(batch.get("action")), batch.get("action_log_prob"))
