"""Write ``conf/<family>_<algorithm>.yaml`` for every (task family, algorithm) of the ProMP and MAESN benchmarks.

    python tools/make_configs.py            # (re)write the configs
    python tools/make_configs.py --check    # exit 1 if a config differs from what this writes

The settings are those of the ProMP benchmark (Rothfuss et al. 2019 and its reference
implementation): meta-batch 40 tasks x 20 rollouts, discount 0.99, GAE lambda 1, 64 x 64 tanh
policy with initial std 1; the horizon, inner step size and inner steps of each family; the
outer settings of each algorithm. CAVIA (Zintgraf et al. 2019) runs in the same setting on the
families of its paper, with its own context size and inner step size. Edit the tables here,
not the YAML files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

CONF = Path(__file__).resolve().parents[1] / "conf"

# family -> (file stem, horizon, inner_lr, num_inner_steps, epochs of 10 iterations, env_kwargs)
FAMILIES: dict[str, tuple[str, int, float, int, int, dict[str, Any]]] = {
    "Point-Corner": ("point_corner", 100, 0.1, 1, 50, {"reward_type": "sparse"}),
    "HalfCheetah-Fwd-Bwd": ("half_cheetah_fwd_bwd", 100, 0.1, 1, 100, {}),
    "HalfCheetah-Vel": ("half_cheetah_vel", 200, 0.1, 1, 100, {}),
    "Ant-Fwd-Bwd": ("ant_fwd_bwd", 100, 0.1, 1, 100, {}),
    "Ant-Goal": ("ant_goal", 200, 0.1, 2, 100, {}),
    "Walker2D-Fwd-Bwd": ("walker2d_fwd_bwd", 200, 0.1, 1, 100, {}),
    "Walker2D-Rand-Params": ("walker2d_rand_params", 200, 0.05, 1, 100, {}),
    "Hopper-Rand-Params": ("hopper_rand_params", 200, 0.05, 1, 100, {}),
    # MAME's sparse semicircle task (PEARL's sparse point robot), with 2 exploration trajectories
    "Point-Semicircle": ("point_semicircle", 20, 0.1, 1, 50, {"reward_type": "sparse"}),
}
PROMP_BENCHMARK = [family for family in FAMILIES if family != "Point-Semicircle"]
#: Exploration (pre-update) trajectories per task where they are fewer than the 20 post-update ones.
EXPLORATION_ROLLOUTS = {"Point-Semicircle": 2}
RAND_PARAMS = {"Walker2D-Rand-Params", "Hopper-Rand-Params"}

ALGORITHMS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # stem suffix -> (class, description, init_args)
    "maml": ("MAML", "MAML-VPG: VPG inner step, one Adam step (lr 1e-3) on the post-update VPG surrogate",
             {"inner_objective": "vpg", "outer_optimizer": "adam", "outer_lr": 0.001}),
    "maml_trpo": ("MAML", "MAML-TRPO: VPG inner step, TRPO outer step (mean KL <= 0.01, 10 CG iterations)",
                  {"inner_objective": "vpg", "outer_optimizer": "trpo", "max_kl": 0.01, "cg_iterations": 10,
                   "backtrack_ratio": 0.8, "max_backtracks": 15}),
    "emaml": ("EMAML", "E-MAML-VPG: MAML-VPG plus the E-MAML exploration term",
              {"inner_objective": "vpg", "outer_optimizer": "adam", "outer_lr": 0.001, "exploration_weight": 1.0}),
    "emaml_trpo": ("EMAML", "E-MAML-TRPO: MAML-TRPO plus the E-MAML exploration term",
                   {"inner_objective": "vpg", "outer_optimizer": "trpo", "max_kl": 0.01, "exploration_weight": 1.0}),
    "promp": ("ProMP", "ProMP: LVC inner step, PPO-clip (0.3) outer steps with an inner-KL penalty",
              {"outer_lr": 0.001, "clip_epsilon": 0.3}),
    "mame": ("MAME", "MAME: exploration policy mu_phi, self-supervised inner step on z (15-step returns), PPO outer (Adam 7e-4)",
             {"outer_lr": 0.0007, "latent_size": 32, "target": "n_step_return", "n_step": 15,
              "inner_objective": "self_supervised", "exploration_update": "ppo", "clip_epsilon": 0.2}),
    "cavia": ("CAVIA", "CAVIA: VPG inner step on a context vector only (reset to 0 per task), TRPO outer step",
              {"inner_objective": "vpg", "outer_optimizer": "trpo", "max_kl": 0.01, "cg_iterations": 10,
               "backtrack_ratio": 0.8, "max_backtracks": 15}),
}

# CAVIA's families -> (context size, inner lr). Context sizes of the paper (5 for 2D navigation,
# 50 for MuJoCo); inner lr 1.0 is the default of the authors' code (used for navigation), 10 the
# HalfCheetah setting used with that code by later work (Neuromodulated CAVIA, 2021).
CAVIA: dict[str, tuple[int, float]] = {
    "Point-Corner": (5, 1.0),
    "HalfCheetah-Fwd-Bwd": (50, 10.0),
    "HalfCheetah-Vel": (50, 10.0),
}


def promp_outer(family: str) -> dict[str, Any]:
    """ProMP's outer settings: 5 steps and fixed eta 5e-4; on Rand-Params 3 steps, adaptive eta."""
    if family in RAND_PARAMS:
        return {"num_outer_steps": 3, "inner_kl_coeff": 0.001, "target_inner_kl": 0.01}
    return {"num_outer_steps": 5, "inner_kl_coeff": 0.0005, "target_inner_kl": None}


def yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, float) and "e" in str(value) and "." not in str(value):
        return str(value).replace("e", ".0e")  # YAML 1.1 reads 1e-05 as a string, 1.0e-05 as a number
    return str(value)


#: MAME's Figure 11 on HalfCheetah-Vel: adaptation trajectories per task -> meta-batch size (800
#: trajectories per phase in all four). The paper does not say how many post-update trajectories
#: it used; here both phases collect the same number per task, as in the reference samplers.
SENSITIVITY = {2: 400, 5: 160, 10: 80, 20: 40}

#: MAME's ablations (Figure 4 and Figure 7 of Gurumurthy et al. 2019) on Point-Corner:
#: stem suffix -> (what changes, the one switch that changes it).
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "vpg_inner": ("VPG-Inner loop: a policy-gradient inner step on the exploration data", {"inner_objective": "policy_gradient"}),
    "reward_target": ("Reward Self-Supervision: M predicts the one-step reward", {"target": "reward"}),
    "next_state_target": ("next-state self-supervision: M predicts the next observation", {"target": "next_state"}),
    "dice": ("Vanilla DiCE: mu_phi learns from the DiCE gradient of the inner step", {"exploration_update": "dice"}),
    "emaml": ("E-MAML Based: PPO for mu_phi on each task's post-update return", {"exploration_update": "emaml"}),
    "env_reward": ("Ours-EnvReward: mu_phi maximises its own environment reward", {"exploration_update": "env_reward"}),
}


#: Point-Corner MAME with the choices of the authors' public code instead of the paper's:
#: stem suffix -> (what changes, the model arguments that change it).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "authors_code": ("The authors' code's networks and clipping: 100 x 100 ReLU layers for the three networks, "
                     "each network's gradient clipped to norm 0.5",
                     {"hidden_sizes": [100, 100], "activation": "relu", "max_grad_norm": 0.5}),
}


def render_variant(header: str, switch: dict[str, Any]) -> str:
    """``point_corner_mame.yaml`` with the model arguments of ``switch`` set (replaced or added) under ``header``."""
    lines = render("Point-Corner", "mame").splitlines()
    for key, value in switch.items():
        line = f"    {key}: {yaml_value(value)}"
        index = next((i for i, text in enumerate(lines) if text.startswith(f"    {key}: ")), None)
        if index is None:
            lines.append(line)
        else:
            lines[index] = line
    return "\n".join([header, *lines]) + "\n"


def render_ablation(name: str) -> str:
    """``point_corner_mame.yaml`` with one ablation switch flipped and a header that names it."""
    description, switch = ABLATIONS[name]
    header = f"# MAME ablation (Gurumurthy et al. 2019, Figures 4 and 7). {description}; otherwise point_corner_mame.yaml."
    return render_variant(header, switch)


def render(family: str, suffix: str, tasks: int = 40, rollouts: int = 20) -> str:
    stem, horizon, inner_lr, inner_steps, epochs, env_kwargs = FAMILIES[family]
    cls, description, algo_args = ALGORITHMS[suffix]
    args: dict[str, Any] = {
        "env": family,
        "meta_batch_size": tasks,
        "rollouts_per_task": rollouts,
        "horizon": horizon,
        "num_inner_steps": inner_steps,
        "inner_lr": inner_lr,
        "discount": 0.99,
        "gae_lambda": 1.0,
        "normalize_advantages": True,
        "hidden_sizes": [64, 64],
        "activation": "tanh",
        "init_std": 1.0,
        "iterations_per_epoch": 10,
        **algo_args,
    }
    if cls == "ProMP":
        args.update(promp_outer(family))
    if family in EXPLORATION_ROLLOUTS:
        args["exploration_rollouts_per_task"] = EXPLORATION_ROLLOUTS[family]
    if cls == "MAME":  # ProMP's inner rate and outer steps, one adaptation step (MAME, appendix 7.2)
        args["num_inner_steps"] = inner_steps = 1
        args["num_outer_steps"] = promp_outer(family)["num_outer_steps"]
    if cls == "CAVIA":
        args["context_size"], args["inner_lr"] = CAVIA[family]
        inner_lr = args["inner_lr"]
    lines = [
        f"# {description},",
        f"# on {family} (H = {horizon}, meta-batch {tasks} tasks x {rollouts} rollouts, inner lr {inner_lr},"
        f" {inner_steps} inner step{'s' if inner_steps > 1 else ''}"
        + (f", {args['exploration_rollouts_per_task']} exploration rollouts per task" if "exploration_rollouts_per_task" in args else "")
        + ").",
        f"# {epochs} epochs x 10 = {epochs * 10} meta-iterations. Written by tools/make_configs.py.",
        "seed_everything: 1",
        "trainer:",
        f"  max_epochs: {epochs}",
        "model:",
        f"  class_path: lightning_metarl.algorithms.{cls}",
        "  init_args:",
    ]
    for key, value in args.items():
        if key == "env" and env_kwargs:
            lines.append(f"    env: {value}")
            lines.append("    env_kwargs:")
            lines += [f"      {k}: {yaml_value(v)}" for k, v in env_kwargs.items()]
            continue
        lines.append(f"    {key}: {yaml_value(value)}")
    return "\n".join(lines) + "\n"


#: Configs named for what they are used for rather than by (family, algorithm).
HEADLINE = {("Walker2D-Rand-Params", "mame"): "walker_rand.yaml"}


def config_path(family: str, suffix: str) -> Path:
    """Where the config of ``family`` and ``suffix`` goes."""
    return CONF / HEADLINE.get((family, suffix), f"{FAMILIES[family][0]}_{suffix}.yaml")


#: MAESN's task families (Gupta et al. 2018): stem, horizon, trajectories per task (meta-training and
#: each meta-test iteration), meta-iterations, MAESN's prior-KL weight.
MAESN_FAMILIES: dict[str, tuple[str, int, int, int, float]] = {
    "Wheeled-Semicircle": ("wheeled_semicircle", 200, 50, 500, 0.5),
    "Ant-Semicircle": ("ant_semicircle", 200, 50, 500, 0.1),
    "Block-Push": ("block_push", 100, 20, 400, 0.5),
}
TRPO = {"outer_optimizer": "trpo", "max_kl": 0.01, "cg_iterations": 10, "cg_damping": 1e-5, "backtrack_ratio": 0.8,
        "max_backtracks": 15}
#: suffix -> (class, description, init_args) of the methods compared on MAESN's families (its Figure 3).
MAESN_ALGORITHMS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "maesn": ("MAESN", "MAESN: latent policy, per-task omega tables, inner REINFORCE step on omega with learned step sizes, TRPO outer",
              {"latent_size": 2, "inner_lr": 1.0, "learn_inner_lr": True, "adapt_policy": False, **TRPO}),
    "latent_space": ("LatentSpace", "LatentSpace: MAESN's latent policy and omega tables trained without the inner update",
                     {"latent_size": 2, "kl_weight": 0.01, "num_inner_steps": 0, "inner_lr": 1.0, "learn_inner_lr": False,
                      **TRPO}),
    "maml_trpo": ("MAML", "MAML-TRPO: VPG inner step on the policy weights, TRPO outer",
                  {"inner_objective": "vpg", "inner_lr": 0.1, **TRPO}),
}


def render_maesn(family: str, suffix: str) -> str:
    """A config of MAESN's setting: 20 of 100 fixed training tasks per iteration, dense reward; the meta-test protocol on the sparse one."""
    stem, horizon, rollouts, iterations, kl_weight = MAESN_FAMILIES[family]
    cls, description, algo_args = MAESN_ALGORITHMS[suffix]
    args: dict[str, Any] = {
        "env": family,
        "meta_batch_size": 20,
        "rollouts_per_task": rollouts,
        "horizon": horizon,
        "num_train_tasks": 100,
        "train_task_seed": 0,
        "discount": 0.99,
        "gae_lambda": 1.0,
        "normalize_advantages": True,
        "hidden_sizes": [100, 100],
        "activation": "relu",
        "init_std": 1.0,
        "iterations_per_epoch": 10,
        "num_inner_steps": 1,
        **({"kl_weight": kl_weight} if cls == "MAESN" else {}),
        **algo_args,
        "meta_test_iterations": 100,
        "meta_test_tasks": 30,
        "meta_test_rollouts": rollouts,
        "meta_test_halving_start": 2,
    }
    lines = [
        f"# {description},",
        f"# on {family} (H = {horizon}, 20 of 100 fixed training tasks x {rollouts} trajectories per iteration, dense reward).",
        f"# {iterations // 10} epochs x 10 = {iterations} meta-iterations. `test` runs the meta-test protocol: 30 held-out",
        "# tasks from the initial state (MAESN: the prior), 100 adaptation steps on the sparse reward, steps halved from the third.",
        "# Written by tools/make_configs.py.",
        "seed_everything: 1",
        "trainer:",
        f"  max_epochs: {iterations // 10}",
        "model:",
        f"  class_path: lightning_metarl.algorithms.{cls}",
        "  init_args:",
    ]
    for key, value in args.items():
        lines.append(f"    {key}: {yaml_value(value)}")
        if key == "env":
            lines += ["    env_kwargs:", "      reward_type: dense"]
        if key == "meta_test_rollouts":
            lines += ["    meta_test_env_kwargs:", "      reward_type: sparse"]
    return "\n".join(lines) + "\n"


def all_configs() -> dict[Path, str]:
    """Every config this script writes, by path."""
    configs = {
        config_path(family, suffix): render(family, suffix)
        for suffix in ALGORITHMS
        for family in algorithm_families(suffix)
    }
    for suffix in ("mame", "promp"):
        for rollouts, tasks in SENSITIVITY.items():
            path = CONF / f"half_cheetah_vel_{suffix}_adapt{rollouts}.yaml"
            configs[path] = render("HalfCheetah-Vel", suffix, tasks, rollouts)
    for name in ABLATIONS:
        configs[CONF / f"point_corner_mame_{name}.yaml"] = render_ablation(name)
    for name, (description, switch) in VARIANTS.items():
        configs[CONF / f"point_corner_mame_{name}.yaml"] = render_variant(f"# {description}; otherwise point_corner_mame.yaml.", switch)
    for family, (stem, *_) in MAESN_FAMILIES.items():
        for suffix in MAESN_ALGORITHMS:
            configs[CONF / f"{stem}_{suffix}.yaml"] = render_maesn(family, suffix)
    return configs


def algorithm_families(suffix: str) -> list[str]:
    """The families an algorithm has configs for: the ProMP benchmark; CAVIA's and MAME's own."""
    if suffix == "cavia":
        return list(CAVIA)
    if suffix in ("mame", "promp"):
        return [*PROMP_BENCHMARK, "Point-Semicircle"]
    return PROMP_BENCHMARK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    stale = [path for path, text in all_configs().items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(CONF.parent)}")
        sys.exit(1 if stale else 0)
    CONF.mkdir(exist_ok=True)
    for path in stale:
        path.write_text(all_configs()[path])
    print(f"{len(all_configs())} configs, {len(stale)} written")


if __name__ == "__main__":
    main()
