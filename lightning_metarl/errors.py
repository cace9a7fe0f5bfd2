"""Errors that carry a one-screen message for the user (the CLI prints them without a traceback)."""


class MetaRLError(Exception):
    """Base class of the errors caused by bad user input (config, task, checkpoint, tensor shapes)."""


class UnknownTaskFamilyError(MetaRLError, ValueError):
    """A task family name that is not registered in :mod:`lightning_metarl.envs`."""


class TaskError(MetaRLError, ValueError):
    """Task parameters out of the family's range or of the wrong shape."""


class ActionError(MetaRLError, ValueError):
    """An action tensor of the wrong shape or dtype, or with non-finite entries."""


class CheckpointError(MetaRLError, RuntimeError):
    """A checkpoint that is missing, unreadable or not written by this package."""


class ConfigError(MetaRLError, ValueError):
    """A configuration value that parses but makes no sense (e.g. a negative horizon)."""


class NonFiniteUpdateError(MetaRLError, RuntimeError):
    """Too many meta-iterations in a row whose update was not finite (a diverging run)."""
