"""Name -> task family registry: :func:`make`, :func:`available`, :func:`register`."""

from __future__ import annotations

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


def make(name: str, **kwargs: Any) -> BatchedMetaEnv:
    """Build the batched env of task family ``name``.

    ``kwargs`` go to the family's constructor (``n_tasks``, ``rollouts_per_task``, ``horizon``,
    ``seed`` and the family's own options such as ``reward_type``).
    """
    cls = family(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"task family {name!r}: {err}") from None
