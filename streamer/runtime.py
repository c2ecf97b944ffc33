"""Process-wide settings for the daemon's process: the CLI applies them at start (an embedder may too).

glibc serves a block above its dynamic mmap threshold (128 KiB, rising to at most 32 MiB as blocks
are freed) with a fresh mmap and unmaps it on free, so a wave's temporaries of a few MiB (one Adam
moment over 1,000 keys of 1,625 weights is 6.5 MB) are page-faulted in again on every wave. Pinning
the threshold at its ceiling and keeping up to `TRIM_THRESHOLD` of freed memory in the heap makes
them reused instead. Measured on the 2-core machine: the Adam update at 1,000 keys 4.8 ms against
1.3 ms, `Pipeline.process` at 1,000 sgd keys 56k against 67k ticks/s (RESULTS, speed.py). The
price: up to TRIM_THRESHOLD of freed memory stays resident.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit; blocks above it are still mapped
TRIM_THRESHOLD = 256 << 20


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
