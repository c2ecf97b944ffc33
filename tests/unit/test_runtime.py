"""The process-wide allocator and collector settings the CLI applies (`streamer.runtime`)."""

from __future__ import annotations

import gc
import platform
import sys
import weakref

import numpy as np

from streamer.runtime import GC_YOUNG_THRESHOLD, PYTHON_GC_THRESHOLDS, tune_allocator, tune_gc


def test_allocator_settings_apply_on_glibc_and_allocation_still_works():
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert tune_allocator() is glibc
    assert tune_allocator() is glibc  # idempotent
    blocks = [np.ones(1 << 21) for _ in range(8)]  # 16 MiB each: above the default threshold, below the new one
    assert sum(float(b[-1]) for b in blocks) == 8.0


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_tuned_collector_freezes_start_up_and_still_collects_cycles_made_after():
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *PYTHON_GC_THRESHOLDS[1:])
        assert gc.get_freeze_count() > 0  # what exists now is out of the collector's scans
        gc.collect(0)  # the young generation's count starts at 0
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a cycle: only the collector frees it
        gone = weakref.ref(a)
        del a, b
        alive = [[] for _ in range(GC_YOUNG_THRESHOLD // 10)]  # far fewer than the threshold: no collection
        assert gone() is not None
        alive += [[] for _ in range(GC_YOUNG_THRESHOLD)]  # past it: a young collection on its own
        assert gone() is None
        del alive
    finally:
        tune_gc(0)
    assert gc.get_threshold() == PYTHON_GC_THRESHOLDS and gc.get_freeze_count() == 0  # 0: Python's own again
