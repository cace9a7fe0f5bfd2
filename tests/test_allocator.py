"""Keeping freed memory: large blocks come from the heap and stay there when freed (glibc)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from lightning_metarl.allocator import retain_freed_memory

# Allocates four 24 MB tensors (as the activations of an outer update come and go) and reads
# glibc's mallinfo2 while they live and after they are freed: bytes in mmap'ed blocks
# (``hblkhd``, each faulted in afresh and returned to the OS when freed) and the size of the
# heap (``arena``, trimmed when its top is free).
PROBE = """
import ctypes, json, sys, torch
from lightning_metarl.allocator import retain_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
xs = [torch.ones(6_000_000) for _ in range(4)]
alive = libc.mallinfo2()
del xs
freed = libc.mallinfo2()
print(json.dumps({"applied": applied, "mmapped_alive": alive.hblkhd, "heap_alive": alive.arena, "heap_freed": freed.arena}))
"""

MB = 1 << 20
pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")


def probe(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout
    return json.loads(out.splitlines()[-1])


def test_large_blocks_come_from_the_heap_and_stay_there_when_freed():
    retained = probe("retain")
    assert retained["applied"]
    assert retained["mmapped_alive"] < 24 * MB  # no tensor in its own mmap'ed pages
    assert retained["heap_alive"] >= 4 * 24 * MB
    assert retained["heap_freed"] >= 4 * 24 * MB  # not trimmed: the next allocations reuse the pages
    default = probe("default")
    assert not default["applied"]
    assert default["mmapped_alive"] >= 24 * MB  # with glibc's defaults, large tensors get mmap'ed pages


def test_the_environment_variable_keeps_the_allocator_defaults(monkeypatch):
    kept = probe("retain", LIGHTNING_METARL_RETAIN_MEMORY="0")
    assert not kept["applied"]
    assert kept["mmapped_alive"] >= 24 * MB
    monkeypatch.setenv("LIGHTNING_METARL_RETAIN_MEMORY", "0")
    assert retain_freed_memory() is False
