"""Keep freed memory in the process instead of handing it back to the OS (glibc ``mallopt``).

A meta-iteration allocates and frees the same large tensors over and over (the outer update of
ProMP on HalfCheetah-Fwd-Bwd: activations of 40 tasks x 2,000 steps x 64 units, about 20 MB
each, some hundred times per iteration). glibc's default ``malloc`` serves blocks that large
with fresh ``mmap`` pages, or trims the heap above them when they are freed, so the next
allocation of the same size faults in and zeroes its pages again: about 200,000 page faults and
a sixth of the time of that outer update. :func:`retain_freed_memory` fixes the two thresholds
(``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``) so that freed blocks of up to 32 MiB are reused;
the resident memory stays at its peak instead of following the current use.

``python -m lightning_metarl`` calls it at start-up; set ``LIGHTNING_METARL_RETAIN_MEMORY=0``
to keep the allocator's defaults. Elsewhere (a script that builds its own ``Trainer``) call it
before training. It does nothing off glibc (macOS, musl) and returns ``False`` there.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: ``mallopt`` parameters of glibc's ``malloc.h``.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap, not from ``mmap`` (32 MiB, the ceiling of glibc's own
#: dynamic threshold on 64-bit systems). Larger blocks still get pages of their own: with all of
#: them on the heap, its fragmentation raised the peak memory of MAML-TRPO at MAESN's sizes from
#: 1.5 to 2.0 GB (1.65 GB with this value).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap is returned to the OS only above this size (2 GiB - 1).
TRIM_THRESHOLD = (1 << 31) - 1

#: Environment variable: ``0`` leaves the allocator's defaults.
ENV_VAR = "LIGHTNING_METARL_RETAIN_MEMORY"


def retain_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds so that freed large blocks are reused; ``True`` if set.

    Returns ``False`` without changing anything off glibc or when :data:`ENV_VAR` is ``0``, and
    ``False`` when ``mallopt`` refuses a value (a threshold it accepted before stays set).
    """
    if os.environ.get(ENV_VAR, "1").strip() == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # The mmap threshold first: setting it fixes both thresholds (no more dynamic adjustment).
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
