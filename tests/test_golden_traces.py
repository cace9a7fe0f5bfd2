"""Refactors change no number: seeded short runs log bit-identical scalars to the recorded traces."""

from __future__ import annotations

from pathlib import Path

import pytest
from golden_traces import TRACES, load, run_trace


@pytest.mark.parametrize("name", sorted(TRACES))
def test_trace_is_bit_identical_to_the_recorded_one(name: str, tmp_path: Path):
    expected = load(name)
    actual = run_trace(name, tmp_path)
    assert sorted(actual) == sorted(expected), "the set of logged tags changed"
    for tag in expected:
        assert actual[tag] == expected[tag], f"{tag} differs from the golden trace"
