"""Read scalar curves back from a run folder's TensorBoard event files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_scalars(log_dir: str | Path) -> dict[str, dict[int, float]]:
    """All scalars under ``log_dir`` as ``{tag: {step: value}}``.

    Every event file of the folder is read in order of creation, so a resumed run (which adds
    a new event file to the same folder) reads as one curve. As in TensorBoard, a restart marker
    (``SessionLog.START`` at step ``s``, written by a writer with ``purge_step=s``) drops what
    was logged before it at steps ``>= s``; a step logged twice otherwise keeps the later value
    (:func:`logged_twice` lists those).
    """
    from tensorboard.util import tensor_util

    curves: dict[str, dict[int, float]] = {}
    for event in _events(log_dir):
        if _is_restart(event):
            for curve in curves.values():
                for step in [s for s in curve if s >= event.step]:
                    del curve[step]
            continue
        for value in event.summary.value:
            if value.HasField("simple_value"):
                number = value.simple_value
            elif value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                number = float(tensor_util.make_ndarray(value.tensor))
            else:
                continue
            curves.setdefault(value.tag, {})[int(event.step)] = float(number)
    return curves


def logged_twice(log_dir: str | Path) -> list[tuple[str, int]]:
    """``(tag, step)`` of every scalar logged more than once in ``log_dir`` and not dropped by a restart marker."""
    seen: dict[tuple[str, int], int] = {}
    for event in _events(log_dir):
        if _is_restart(event):
            seen = {key: count for key, count in seen.items() if key[1] < event.step}
            continue
        for value in event.summary.value:
            key = (value.tag, int(event.step))
            seen[key] = seen.get(key, 0) + 1
    return sorted(key for key, count in seen.items() if count > 1)


def _events(log_dir: str | Path) -> Iterator[Any]:
    """Every event of the folder's event files, the files in order of creation."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for path in sorted(Path(log_dir).glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime, p.name)):
        yield from EventFileLoader(str(path)).Load()


def _is_restart(event: Any) -> bool:
    """A writer's restart marker: ``SessionLog.START`` (what ``SummaryWriter(purge_step=s)`` writes at step ``s``)."""
    from tensorboard.compat.proto.event_pb2 import SessionLog

    return event.HasField("session_log") and event.session_log.status == SessionLog.START
