"""Name -> task family registry: :func:`make`, :func:`available`, :func:`register`."""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from lightning_metarl.envs.base import BatchedMetaEnv
from lightning_metarl.errors import ConfigError, UnknownTaskFamilyError

_FAMILIES: dict[str, type[BatchedMetaEnv]] = {}

E = TypeVar("E", bound=type[BatchedMetaEnv])


def register(name: str):
    """Class decorator that registers a :class:`BatchedMetaEnv` subclass under ``name``."""

    def decorator(cls: E) -> E:
        if name in _FAMILIES and _FAMILIES[name] is not cls:
            raise ValueError(f"task family {name!r} is already registered by {_FAMILIES[name].__qualname__}")
        cls.family = name
        _FAMILIES[name] = cls
        return cls

    return decorator


def available() -> list[str]:
    """The names of all registered task families, sorted."""
    return sorted(_FAMILIES)


def family(name: str) -> type[BatchedMetaEnv]:
    """The class registered under ``name``; raises :class:`UnknownTaskFamilyError` listing the known names."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise UnknownTaskFamilyError(
            f"unknown task family {name!r}; available: {', '.join(available())}"
        ) from None


def make(
    name: str,
    n_tasks: int = 1,
    rollouts_per_task: int = 1,
    horizon: int | None = None,
    seed: int = 0,
    **options: Any,
) -> BatchedMetaEnv:
    """Build the batched env of task family ``name``, with defaults as ``gymnasium.make`` has them.

    Args:
        name: a task family (see :func:`available`).
        n_tasks: number of tasks evaluated together (batch size ``[n_tasks, rollouts_per_task]``).
        rollouts_per_task: copies per task.
        horizon: episode length H; ``None`` for the family's ``default_horizon``.
        seed: seed of the env's generator (reset noise, and the tasks a :meth:`reset` without
            :meth:`~BatchedMetaEnv.set_tasks` draws).
        **options: the family's own options, such as ``reward_type`` or ``action_scale``, and
            ``device``.

    ``envs.make(name).rollout(max_steps)`` works as it is: with no tasks set, ``reset`` draws them.

    Raises:
        UnknownTaskFamilyError: ``name`` is not registered.
        ConfigError: an option the family does not take, or a bad value.
    """
    cls = family(name)
    accepted = _options_of(cls)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise ConfigError(
            f"task family {name!r}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(sorted(accepted))}"
        )
    try:
        return cls(n_tasks=n_tasks, rollouts_per_task=rollouts_per_task, horizon=horizon, seed=seed, **options)
    except TypeError as err:
        raise ConfigError(f"task family {name!r}: {err}") from None


def _options_of(cls: type[BatchedMetaEnv]) -> set[str] | None:
    """Keyword options of ``cls``'s constructor besides the common ones; None if it takes ``**kwargs``."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    common = {"n_tasks", "rollouts_per_task", "horizon", "seed"}
    return {
        p.name for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY) and p.name not in common
    }
