"""The soak benchmark's verdicts can fail: a leak of memory, tasks or sockets, or a slowdown, is caught."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import soak  # noqa: E402

TOTAL = 100_000


def samples(rss=lambda i: 500 << 20, tasks=lambda i: 19 + i % 2, fds=lambda i: 13, rate=lambda i: 2000.0):
    out, consumed = [], 0.0
    for i in range(60):
        out.append({"t": i * 0.5, "rss": rss(i), "fds": fds(i), "threads": 4, "tasks": float(tasks(i)),
                    "consumed": min(consumed, TOTAL), "batches": i // 2, "checkpoints": i // 10})
        consumed += rate(i)
    return out


def verdict(s: list[dict], predictions: int = TOTAL) -> dict[str, bool]:
    return soak.checks(soak.analyse(s, TOTAL, 0.2), predictions, TOTAL)


def test_a_steady_run_passes_despite_jitter():
    assert all(verdict(samples()).values())


def test_leaks_slowdowns_and_lost_ticks_fail():
    assert not verdict(samples(rss=lambda i: (500 + 2 * i) << 20))["rss_growth_below_5pct"]
    assert not verdict(samples(tasks=lambda i: 19 + i // 4))["no_tasks_growth"]
    assert not verdict(samples(fds=lambda i: 13 + i // 8))["no_fds_growth"]
    assert not verdict(samples(rate=lambda i: 3000.0 if i < 25 else 1500.0))["throughput_holds"]
    assert not verdict(samples(), predictions=TOTAL - 1)["every_tick_predicted"]


def test_throughput_by_tenth_reads_the_counter():
    res = soak.analyse(samples(rate=lambda i: 2000.0), TOTAL, 0.2)
    assert np.allclose(res["ticks_per_s_by_tenth"], 4000.0, rtol=0.05)  # 2,000 ticks per 0.5 s sample
