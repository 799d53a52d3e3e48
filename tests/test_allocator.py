"""gazegen/allocator.py: with its thresholds, a freed large block serves the next request without new pages.

Run in a fresh interpreter (the setting is process-wide). The process first pins glibc's thresholds
at 128 KiB, which also stops their adaptation: every 4 MiB array is then a fresh mapping whose
pages fault when written, and freed at once. Page faults are counted by the kernel, not timed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, json, resource
import numpy as np
from gazegen.allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, keep_freed_memory

def faults(rounds=20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        a = np.ones(2**20, np.float32)  # 4 MiB, every page written
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

mallopt = ctypes.CDLL(None).mallopt
mallopt(M_MMAP_THRESHOLD, 128 * 1024), mallopt(M_TRIM_THRESHOLD, 128 * 1024)
pinned = faults()
taken = keep_freed_memory()
faults(1)  # the first block after the change grows the heap once
print(json.dumps({"pinned": pinned, "taken": taken, "kept": faults()}))
"""


def test_freed_blocks_are_reused_not_faulted_in_again():
    if sys.platform != "linux":
        pytest.skip("glibc's malloc thresholds: Linux only")
    out = json.loads(subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout)
    if not out["taken"]:
        pytest.skip("this C library has no glibc mallopt")
    pages = 2**20 * 4 // 4096  # one array's 4 KiB pages (numpy may ask for huge pages: fewer, larger faults)
    assert out["pinned"] >= 20 * pages / 4  # the fault is real: every array is new memory (measured: ~10,000)
    assert out["kept"] < 20  # kept: fewer faults than arrays, the same pages serve all of them (measured: 0)
