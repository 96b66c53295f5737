"""The kept host heap: a freed block comes back without fresh pages (counted, not timed)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc: Linux only")

# malloc, touch and free 64 MiB twice; print the page faults of the second round (16,384
# 4-KiB pages when glibc hands the block back to the kernel in between, ~0 when it keeps it).
# Plain malloc, where torch's CPU tensors come from (numpy would ask for huge pages).
SECOND_ROUND_FAULTS = """
import ctypes, resource, sys
from retrieval.device import apply_runtime, plan_runtime, probe_device
if sys.argv[1] == "cpu_plan":
    apply_runtime(plan_runtime(probe_device(device="cpu")))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
def faults(size=64 * 2**20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(faults())
"""


def _run(code: str, *args: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter: the malloc setting is process-wide."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env={"PATH": "", "CUDA_VISIBLE_DEVICES": "", **env},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@LINUX_ONLY
def test_a_cpu_plan_keeps_freed_memory_for_the_next_step():
    assert int(_run(SECOND_ROUND_FAULTS, "none")) > 8_000  # unmapped, then faulted in again
    assert int(_run(SECOND_ROUND_FAULTS, "cpu_plan")) < 1_000  # the same pages, reused


@LINUX_ONLY
def test_a_malloc_tuning_the_user_set_is_left_alone():
    code = "from retrieval.host_memory import keep_freed_host_memory as k; print(k())"
    assert _run(code) == "True"
    assert _run(code, GLIBC_TUNABLES="glibc.malloc.arena_max=2") == "False"
