"""The process-wide allocator settings the CLI applies (`streamer.runtime`)."""

from __future__ import annotations

import platform
import sys

import numpy as np

from streamer.runtime import tune_allocator


def test_allocator_settings_apply_on_glibc_and_allocation_still_works():
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert tune_allocator() is glibc
    assert tune_allocator() is glibc  # idempotent
    blocks = [np.ones(1 << 21) for _ in range(8)]  # 16 MiB each: above the default threshold, below the new one
    assert sum(float(b[-1]) for b in blocks) == 8.0
