"""The gradient-adaptation layer: MAML-like methods differ only in the hooks named here.

One meta-iteration of a :class:`GradientMetaRLModule` (MAML, Finn et al. 2017, Eq. 1 and
Algorithm 3; with the hooks filled, also ProMP, E-MAML, CAVIA)::

    state = initial_fast_state()                       # what the inner loop adapts, [n_tasks]
    for k in range(num_inner_steps):
        pre[k] = process(collect(actor(state, "explore")), "explore")
        state  = inner_step(state, pre[k])             # state - alpha * grad inner_loss, all tasks at once
    post = process(collect(actor(state, "exploit")), "exploit")
    meta_update(MetaBatch(tasks, pre, post, fast states))

The hooks:

- :meth:`~GradientMetaRLModule.initial_fast_state`: the per-task state the inner loop adapts,
  a TensorDict with batch size ``[n_tasks]`` that is a differentiable function of the
  meta-parameters. It holds policy parameters under ``"params"`` (MAML: all of them) and/or
  inputs of the policy under their key (CAVIA: ``"context"``).
- :meth:`~GradientMetaRLModule.actor`: the collecting actor of a phase, built from a policy and
  a fast state.
- :meth:`~GradientMetaRLModule.process`: per-phase processing of a collected batch.
- :meth:`~GradientMetaRLModule.inner_loss`: the per-task inner objective.
- :meth:`~GradientMetaRLModule.adaptation_path`: every fast state from the first to the last,
  as a function of the meta-parameters (what a meta-gradient differentiates);
- ``meta_update(meta_batch)`` (of :class:`~lightning_metarl.algorithms.base.MetaRLModule`): the
  outer update.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictParams

from lightning_metarl import envs
from lightning_metarl.algorithms.base import TEST_SEED_OFFSET, MetaRLModule, seed_from_global
from lightning_metarl.algorithms.meta_batch import MetaBatch
from lightning_metarl.envs.base import BatchedMetaEnv
from lightning_metarl.errors import ConfigError
from lightning_metarl.evaluation import adaptation_curve
from lightning_metarl.nn import DiagGaussian, PolicyActor, distribution_per_task, module_params
from lightning_metarl.objectives import per_task_mean

#: Key of the fast state's policy parameters (absent when the inner loop adapts only inputs).
PARAMS = "params"


def mean_kl(old: DiagGaussian, new: DiagGaussian, batch: TensorDictBase) -> torch.Tensor:
    """Per-task mean ``KL(old || new)`` over the batch's valid steps, ``[n_tasks]``."""
    return per_task_mean(torch.distributions.kl_divergence(old, new), batch.get("mask"))


class GradientMetaRLModule(MetaRLModule):
    """Meta-RL by gradient adaptation of a per-task fast state, with hooks for what varies between methods.

    Args:
        num_inner_steps: adaptation steps (each on freshly sampled trajectories).
        inner_lr: step size alpha of the inner update ``state' = state - alpha * grad L_in``.
        learn_inner_lr: meta-learn a step size per fast-state entry (Meta-SGD, Li et al. 2017;
            initialised to ``inner_lr``) with the outer update; otherwise alpha is the constant
            ``inner_lr``.
        exploration_rollouts_per_task: trajectories per task of the pre-update (exploration)
            phases, if other than ``rollouts_per_task`` (which the post-update phase keeps); they
            are collected in an env of their own (e.g. 2 for Point-Semicircle in MAME, and the
            2/5/10/20 adaptation trajectories of MAME's Figure 11).
        meta_test_iterations: if set, ``test`` runs the long meta-test protocol of MAESN (Gupta et
            al. 2018, §4, Figure 3) instead of one adaptation: on ``meta_test_tasks`` held-out
            tasks, from the initial fast state, this many iterations of (collect with the
            adapting policy, record its return, one inner step); see
            :func:`~lightning_metarl.evaluation.adaptation_curve`.
        meta_test_tasks: held-out tasks of the protocol (MAESN: 30).
        meta_test_rollouts: trajectories per task and iteration (default ``rollouts_per_task``;
            MAESN: 50).
        meta_test_env_kwargs: family options that replace ``env_kwargs`` for the protocol, e.g.
            ``{"reward_type": "sparse"}`` (MAESN meta-trains on dense and meta-tests on sparse rewards).
        meta_test_halving_start: the first (0-based) iteration whose step is half the previous
            one; every later one halves again (MAESN: 2, i.e. alpha, alpha, alpha/2, alpha/4, ...).
            ``None``: constant steps.
        **kwargs: see :class:`~lightning_metarl.algorithms.base.MetaRLModule`.
    """

    #: Fewest inner steps the method is defined with (0: a method that may collect without adapting).
    min_inner_steps: ClassVar[int] = 1

    def __init__(
        self,
        *args: Any,
        num_inner_steps: int = 1,
        inner_lr: float = 0.1,
        learn_inner_lr: bool = False,
        exploration_rollouts_per_task: int | None = None,
        meta_test_iterations: int | None = None,
        meta_test_tasks: int = 30,
        meta_test_rollouts: int | None = None,
        meta_test_env_kwargs: dict[str, Any] | None = None,
        meta_test_halving_start: int | None = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        for name, value, optional in (("meta_test_iterations", meta_test_iterations, True),
                                      ("meta_test_tasks", meta_test_tasks, False),
                                      ("meta_test_rollouts", meta_test_rollouts, True)):
            if (value is not None or not optional) and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"model.{name} must be a positive integer{' or null' if optional else ''}, got {value!r}")
        start = meta_test_halving_start
        if start is not None and (isinstance(start, bool) or not isinstance(start, int) or start < 1):
            raise ConfigError(f"model.meta_test_halving_start must be a positive integer or null, got {start!r}")
        if isinstance(num_inner_steps, bool) or not isinstance(num_inner_steps, int) or num_inner_steps < self.min_inner_steps:
            kind = "a positive integer" if self.min_inner_steps == 1 else f"an integer >= {self.min_inner_steps}"
            raise ConfigError(f"model.num_inner_steps must be {kind}, got {num_inner_steps!r}")
        if not inner_lr > 0:
            raise ConfigError(f"model.inner_lr must be positive, got {inner_lr}")
        rollouts = exploration_rollouts_per_task
        if rollouts is not None and (isinstance(rollouts, bool) or not isinstance(rollouts, int) or rollouts < 1):
            raise ConfigError(f"model.exploration_rollouts_per_task must be a positive integer, got {rollouts!r}")
        self.__dict__["exploration_env"] = None
        if rollouts is not None and rollouts != self.hparams.rollouts_per_task:
            hp = self.hparams
            self.__dict__["exploration_env"] = envs.make(
                hp.env, n_tasks=hp.meta_batch_size, rollouts_per_task=rollouts, horizon=hp.horizon,
                seed=seed_from_global(), **(hp.env_kwargs or {}),
            )
        self.inner_step_sizes: TensorDictParams | None = None
        if learn_inner_lr:
            sizes = self.initial_fast_state()[0].detach().apply(lambda p: torch.full_like(p, float(inner_lr)))
            self.inner_step_sizes = TensorDictParams(sizes)

    # ------------------------------------------------------------------ hooks
    def physics_envs(self) -> dict[str, BatchedMetaEnv]:
        """The env, and the exploration phases' own env if their rollout count differs."""
        extra = {} if self.exploration_env is None else {"exploration_env": self.exploration_env}
        return {**super().physics_envs(), **extra}

    def env_for(self, phase: str) -> BatchedMetaEnv:
        """The exploration env for ``"explore"`` if there is one, else ``self.env``."""
        return self.exploration_env if phase == "explore" and self.exploration_env is not None else self.env

    def policy_params(self) -> TensorDictBase:
        """The shared (pre-update) policy parameters theta as a TensorDict, batch size ``[]`` (no buffers)."""
        return module_params(self.policy)

    def initial_fast_state(self, n_tasks: int | None = None) -> TensorDictBase:
        """The fast state before adaptation, ``[n_tasks]`` (default: the meta-batch size): here all policy parameters (MAML), under ``"params"``."""
        n_tasks = self.hparams.meta_batch_size if n_tasks is None else n_tasks
        return TensorDict({PARAMS: self.policy_params().expand(n_tasks)}, batch_size=[n_tasks])

    def distribution(self, fast_state: TensorDictBase, batch: TensorDictBase, phase: str = "exploit") -> DiagGaussian:
        """The action distribution of the phase's policy under ``fast_state`` on ``batch``'s states, for all tasks.

        Parameters come from ``fast_state["params"]`` if present (else the shared ones); each
        policy input is read from ``fast_state`` if it holds it, else from ``batch``.
        Differentiable in the fast state and the meta-parameters. Only the batch's valid steps
        are evaluated (mean and log-std 0 on its padding; see
        :func:`~lightning_metarl.nn.functional.distribution_per_task`).
        """
        policy = self.phase_policy(phase)
        params = self.phase_params(fast_state, policy)
        inputs = [fast_state.get(k) if k in fast_state.keys() else batch.get(k) for k in policy.in_keys]
        return distribution_per_task(policy, params, inputs, batch.get("mask", None))

    def log_prob(self, fast_state: TensorDictBase, batch: TensorDictBase, phase: str = "exploit") -> torch.Tensor:
        """``log pi(a|s)`` of the batch's actions under ``fast_state``, ``[n_tasks, rollouts, T]``, differentiable."""
        return self.distribution(fast_state, batch, phase).log_prob(batch.get("action"))

    def phase_policy(self, phase: str) -> torch.nn.Module:
        """The policy that acts in ``phase`` (``"explore"``: pre-update, ``"exploit"``: post-update); ``self.policy`` here."""
        return self.policy

    @staticmethod
    def phase_params(fast_state: TensorDictBase, policy: torch.nn.Module) -> TensorDictBase:
        """The parameters ``policy`` acts with: the fast state's ``"params"`` if it adapts them, else the shared ones."""
        return fast_state.get(PARAMS) if PARAMS in fast_state.keys() else module_params(policy)

    def actor(self, fast_state: TensorDictBase, phase: str, generator: torch.Generator) -> PolicyActor:
        """The actor that collects ``phase``'s trajectories with the policy under ``fast_state``."""
        policy = self.phase_policy(phase)
        params = self.phase_params(fast_state, policy)
        inputs = fast_state.exclude(PARAMS) if len(policy.in_keys) > 1 else None
        return PolicyActor(policy, params, generator, inputs=inputs)

    def inner_loss(self, fast_state: TensorDictBase, batch: TensorDictBase) -> torch.Tensor:
        """Per-task inner objective ``[n_tasks]`` whose gradient adapts the fast state."""
        raise NotImplementedError

    # ------------------------------------------------------------------ adaptation
    def inner_step(self, fast_state: TensorDictBase, batch: TensorDictBase, create_graph: bool,
                   step_scale: float = 1.0, inner_loss: torch.Tensor | None = None) -> TensorDictBase:
        """One batched adaptation step ``state'_i = state_i - alpha * grad L_in(state_i, tau_i)`` for all tasks.

        ``fast_state`` has batch size ``[n_tasks]``; the sum of the per-task losses is
        differentiated once, giving each task its own gradient. With ``create_graph`` the result
        stays a differentiable function of the meta-parameters (MAML, Finn et al. 2017, Eq. 1).
        ``step_scale`` multiplies alpha (the decaying steps of the meta-test protocol); a subclass
        may descend another direction than the gradient (:meth:`inner_direction`).
        ``inner_loss``: the per-task :meth:`inner_loss` of ``fast_state`` on ``batch`` if the
        caller already computed it from ``fast_state``'s own tensors (only with ``create_graph``;
        an outer loss that evaluates the policy on the same batch shares that evaluation).
        """
        if inner_loss is not None and not create_graph:
            raise ValueError("inner_step: a precomputed inner_loss needs create_graph=True")
        if not create_graph:
            fast_state = fast_state.detach().requires_grad_(True)
        loss = (self.inner_loss(fast_state, batch) if inner_loss is None else inner_loss).sum()
        keys = list(fast_state.keys(True, True))
        grads = torch.autograd.grad(loss, [fast_state.get(k) for k in keys], create_graph=create_graph)
        adapted = fast_state.clone(recurse=False)
        for key, grad in zip(keys, grads):
            direction = self.inner_direction(key, grad)
            adapted.set(key, fast_state.get(key) - self.inner_step_size(key) * step_scale * direction)
        return adapted if create_graph else adapted.detach()

    def inner_direction(self, key: tuple[str, ...] | str, grad: torch.Tensor) -> torch.Tensor:
        """The direction the inner step descends for the fast-state entry ``key``, given its per-task gradient: the gradient itself here."""
        return grad

    def inner_step_size(self, key: tuple[str, ...] | str) -> torch.Tensor | float:
        """alpha for the fast-state entry ``key``: a learned tensor of its shape, or the constant ``inner_lr``."""
        if self.inner_step_sizes is None:
            return self.hparams.inner_lr
        return self.inner_step_sizes.get(key)

    def adaptation_path(self, batches: Sequence[TensorDictBase], create_graph: bool = True) -> list[TensorDictBase]:
        """The fast states before each inner step and after the last: ``len(batches) + 1`` items.

        Item ``k`` is the state that collected ``batches[k]`` (item 0 is
        :meth:`initial_fast_state`); the last item is the adapted state that collected the
        post-update batch. With ``create_graph`` every item is a differentiable function of the
        current meta-parameters.
        """
        path = [self.initial_fast_state()]
        for batch in batches:
            path.append(self.inner_step(path[-1], batch, create_graph))
        return path

    def adapt(self, batches: Sequence[TensorDictBase], create_graph: bool = True) -> TensorDictBase:
        """The adapted fast state after one inner step on each of ``batches`` in turn."""
        return self.adaptation_path(batches, create_graph)[-1]

    def kl(self, old: DiagGaussian, new_state: TensorDictBase, batch: TensorDictBase, phase: str = "exploit") -> torch.Tensor:
        """Per-task mean ``KL(pi_old(.|s) || pi_new(.|s))`` over the batch's valid states, ``[n_tasks]``.

        ``old`` is ``pi_old``'s distribution on the batch: the collecting policy's as collection
        stored it (:func:`~lightning_metarl.nn.behaviour_distribution`), or one taken with
        :meth:`fixed_distribution` before an update moved the parameters (a fast state alone does
        not fix the policy: where it holds no weights, the shared ones are read when it is
        evaluated); a caller evaluating many KLs to the same policy computes it once.
        """
        if not isinstance(old, DiagGaussian):
            raise TypeError("kl() takes the old policy's distribution (behaviour_distribution(batch) or "
                            f"fixed_distribution(state, batch)), not {type(old).__name__}")
        return mean_kl(old, self.distribution(new_state, batch, phase), batch)

    def fixed_distribution(self, fast_state: TensorDictBase, batch: TensorDictBase, phase: str = "exploit") -> DiagGaussian:
        """A copy of :meth:`distribution` now (no gradient), which later updates of the parameters leave as it is.

        Where the fast state holds no ``"params"`` (CAVIA's context, MAESN's latents, MAME's
        ``z``), :meth:`distribution` reads the shared parameters as they are when it is called:
        take this before an update to keep the policy that collected ``batch``.
        """
        with torch.no_grad():
            current = self.distribution(fast_state.detach(), batch, phase)
            return DiagGaussian(current.loc.clone(), current.log_std.clone())

    # ------------------------------------------------------------------ meta-test protocol
    def meta_test_env(self) -> BatchedMetaEnv:
        """The env of the long meta-test protocol (``meta_test_tasks x meta_test_rollouts`` copies), built once."""
        env = self.__dict__.get("_meta_test_env")
        if env is None:
            hp = self.hparams
            env = envs.make(
                hp.env, n_tasks=hp.meta_test_tasks, rollouts_per_task=hp.meta_test_rollouts or hp.rollouts_per_task,
                horizon=hp.horizon, seed=0, **{**(hp.env_kwargs or {}), **(hp.meta_test_env_kwargs or {})},
            )
            self.__dict__["_meta_test_env"] = env
        return env

    def test_step(self, batch: int, batch_idx: int) -> None:
        """The one-adaptation evaluation of ``validate``, or with ``meta_test_iterations`` the long protocol."""
        if self.hparams.meta_test_iterations is None:
            return super().test_step(batch, batch_idx)
        self.meta_test(int(batch))

    def meta_test(self, index: int) -> torch.Tensor:
        """Run the long meta-test protocol on the ``index``-th held-out task set; log and return ``[iterations, tasks]``.

        The tasks are the test set of :meth:`evaluate` (seed ``eval_seed + TEST_SEED_OFFSET +
        index``, never used for training). Logs, per iteration ``k`` (TensorBoard step ``k``),
        ``test/adaptation/return`` and ``test/adaptation/return_std`` (mean and standard
        deviation over tasks), and adds every task's return to ``test_returns.csv``
        (``step`` = iteration).
        """
        hp = self.hparams
        seed = hp.eval_seed + TEST_SEED_OFFSET + index
        env = self.meta_test_env()
        env.set_rng_state({"rng": torch.Generator().manual_seed(seed + 7919).get_state()})
        tasks = env.held_out_tasks(hp.meta_test_tasks, seed=seed)
        with torch.inference_mode(False), torch.enable_grad():
            curve = adaptation_curve(self, env, tasks, hp.meta_test_iterations, torch.Generator().manual_seed(seed),
                                     halving_start=hp.meta_test_halving_start)
        add_scalar = getattr(getattr(self.logger, "experiment", None), "add_scalar", None)
        for k, returns in enumerate(curve):
            if add_scalar is not None:
                add_scalar("test/adaptation/return", returns.mean().item(), k)
                add_scalar("test/adaptation/return_std", returns.std(unbiased=False).item(), k)
            self._test_rows += [(index, task, k, value) for task, value in enumerate(returns.tolist())]
        means = curve.mean(-1)
        for name, value in (("first", means[0]), ("last", means[-1]), ("mean", means.mean())):
            self.log(f"test/adaptation/return_{name}", value.item(), on_step=False, on_epoch=True, batch_size=1,
                     prog_bar=name == "last")
        return curve

    # ------------------------------------------------------------------ the meta-iteration
    def collect_and_adapt(self, tasks: TensorDictBase, generator: torch.Generator | None = None) -> MetaBatch:
        """``num_inner_steps`` x (collect with the exploration actor, inner step), then collect with the exploitation actor.

        The returned :class:`MetaBatch` holds detached copies of every fast state that collected
        a batch, so the meta-update need not recompute them.
        """
        generator = self.action_rng if generator is None else generator
        timings = {"collect": 0.0, "adapt": 0.0}
        self.set_tasks(tasks)
        state = self.initial_fast_state()
        # clones: the first state may be a view of the parameters that the optimizer updates in place
        states = [state.detach().clone()]
        pre_update: list[TensorDictBase] = []
        for _ in range(self.hparams.num_inner_steps):
            t0 = time.perf_counter()
            pre_update.append(self.collect(self.actor(state, "explore", generator), "explore"))
            t1 = time.perf_counter()
            state = self.inner_step(state, pre_update[-1], create_graph=False)
            states.append(state.detach().clone())
            timings["collect"] += t1 - t0
            timings["adapt"] += time.perf_counter() - t1
        t0 = time.perf_counter()
        post_update = self.collect(self.actor(state, "exploit", generator), "exploit")
        timings["collect"] += time.perf_counter() - t0
        return MetaBatch(tasks, pre_update, post_update, states, timings)

