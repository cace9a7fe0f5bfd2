"""Read scalar curves back from a run folder's TensorBoard event files."""

from __future__ import annotations

from pathlib import Path


def read_scalars(log_dir: str | Path) -> dict[str, dict[int, float]]:
    """All scalars under ``log_dir`` as ``{tag: {step: value}}``.

    Every event file of the folder is read in order of creation, so a resumed run (which adds
    a new event file to the same folder) reads as one curve; a step logged twice keeps the
    later value.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    curves: dict[str, dict[int, float]] = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime, p.name)):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = value.simple_value
                elif value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                    number = float(tensor_util.make_ndarray(value.tensor))
                else:
                    continue
                curves.setdefault(value.tag, {})[int(event.step)] = float(number)
    return curves
