"""Keep the memory a process frees, instead of handing it back to the OS after every large tensor.

glibc's malloc serves a large request (above ``M_MMAP_THRESHOLD``, 128 KiB at start) with a fresh
``mmap`` and returns it on free, and gives the top of its heap back once more than
``M_TRIM_THRESHOLD`` of it is free. It raises both as it sees large blocks freed, but that
adaptation can fall far short: in a Ray render actor, 10,000-21,000 minor page faults per source of
the tiny preset's 125-row grid against ~2,500 in a plain process, each a fresh zeroed page that
the render's elementwise ops then write; a demo training step ~23,000 more than with fixed thresholds. Fixed
thresholds keep the freed blocks for the next source or step: ~20 faults per source, 8-13% less
model time per source in the actor (benchmarks/synthesis.py), a demo training step 1.08x faster
(benchmarks/train_step.py), the tiny preset's forward 1.9 -> 1.45 ms per image and the demo's
54 -> 51.5 ms in `gazegen bench`. The cost is resident memory: blocks are kept rather than
returned, and the demo bench's peak grew from 693 to 832 MB. Set by the render actor, the trainer
on CPU and `gazegen bench`. Other C libraries (macOS, musl) keep their own defaults.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # blocks up to this size come from the heap (glibc's largest allowed value)
TRIM_THRESHOLD = 512 * 2**20  # free heap kept at its top before any is returned


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Sets this process's glibc malloc thresholds; True if glibc took both (False elsewhere: nothing changes)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):  # no mallopt: not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1


__all__ = ["keep_freed_memory"]
