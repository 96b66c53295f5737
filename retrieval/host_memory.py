"""Keep freed host memory in the process heap (glibc), so CPU training stops page-faulting.

Why: glibc serves each allocation above its mmap threshold (32 MiB at most) with a fresh
``mmap`` and unmaps it on ``free``, so every training step's activations (gigabytes at a
64-image batch) arrive as new zeroed pages: millions of page faults a step, paid in kernel
time. On the 2-core VM this project measures on, that made a lite0 training step about three
times slower (``bench/host_malloc.py``). With mmap off and the heap trimmed only above 2 GiB
of free top memory, freed pages stay mapped and the next step reuses them. The cost: the
process keeps the memory of its peak instead of handing it back between steps.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes a C int


def heap_can_be_kept() -> bool:
    """Linux, where the user has not tuned malloc through ``GLIBC_TUNABLES`` themselves."""
    return sys.platform.startswith("linux") and "malloc" not in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_host_memory() -> bool:
    """Ask glibc to reuse freed memory instead of unmapping it; True when it took effect.

    Does nothing where ``heap_can_be_kept()`` says no, or on a C library without
    ``mallopt`` (musl answers 0).
    """
    if not heap_can_be_kept():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))
