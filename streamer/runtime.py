"""Process-wide settings for the daemon's process: the CLI applies them at start (an embedder may too).

glibc serves a block above its dynamic mmap threshold (128 KiB, rising to at most 32 MiB as blocks
are freed) with a fresh mmap and unmaps it on free, so a wave's temporaries of a few MiB (one Adam
moment over 1,000 keys of 1,625 weights is 6.5 MB) are page-faulted in again on every wave. Pinning
the threshold at its ceiling and keeping up to `TRIM_THRESHOLD` of freed memory in the heap makes
them reused instead. Measured on the 2-core machine: the Adam update at 1,000 keys 4.8 ms against
1.3 ms, `Pipeline.process` at 1,000 sgd keys 56k against 67k ticks/s (RESULTS, speed.py). The
price: up to TRIM_THRESHOLD of freed memory stays resident.

The cyclic garbage collector runs a young collection every 700 net container allocations, and a full
one every hundred of those (when the survivors have grown by a quarter). A wave of 1,000 keys makes
and frees tens of thousands of lists, tuples and messages, none in a cycle, so with Python's default
the collector ran several times a wave and, every few waves, walked every object the process has,
torch's hundreds of thousands among them. `tune_gc` freezes what exists at start (the imported
modules: never garbage) out of the collector's sight and raises the young threshold, so a wave's own
churn no longer triggers it; cycles are still collected, a little later. Measured on the 2-core
machine (`Pipeline.process` at 1,000 sgd keys, in-process, one run each way, alternating): 70-71k
against 97-99k ticks/s; at 1-4 keys no change (RESULTS "The garbage collector").
"""

from __future__ import annotations

import ctypes
import gc
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit; blocks above it are still mapped
TRIM_THRESHOLD = 256 << 20
PYTHON_GC_THRESHOLDS = gc.get_threshold()  # as the interpreter started
GC_YOUNG_THRESHOLD = 50_000  # net container allocations between young collections (Python's default: 700)


def tune_allocator() -> bool:
    """Keep freed blocks of up to 32 MiB for reuse (see the module doc). Returns whether the C library
    took the settings (glibc does; musl and other platforms are left as they are)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def tune_gc(young: int = GC_YOUNG_THRESHOLD) -> None:
    """Freeze the objects that exist now out of the cyclic collector's scans and set its young threshold
    (see the module doc); young 0 puts the collector back as Python had it. Call it once start-up has
    imported what the process needs (again later to freeze more): objects made after are collected as usual."""
    if young <= 0:
        gc.unfreeze()
        gc.set_threshold(*PYTHON_GC_THRESHOLDS)
        return
    gc.freeze()
    gc.set_threshold(young, *PYTHON_GC_THRESHOLDS[1:])
