"""The daemon's micro-batches in process: what the prediction memo saves when a fetch holds several
ticks of each of a few keys.

A fetch at a steady rate holds a few ticks of every key, not the same number of each: here each of
K keys has 6-14 ticks in a fetch, shuffled as partitions interleave. `Pipeline.process` steps a
fetch in waves (the j-th tick of every key in wave j), so a wave's keys are often some of the
previous wave's. Each wave learns from the ticks its keys' last predictions were for; the memo of
that prediction (`models.learners.base`) saves the step its Jacobian or forward pass. Two ways are
compared, alternating round by round in one process (the machine is noisy):

- "subsets" (the default): a step of some of the rows just predicted takes their part of the memo;
- "exact" (`ModelBank.memo_subsets = False`): only a step of exactly the predicted rows uses it.

Reported: ticks/s through the whole pipeline and the share of steps the memo served.

    python benchmarks/batches.py [--keys 4,16] [--rounds 3] [--json benchmarks/out/batches.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import time
from pathlib import Path

import orjson
import torch
from rich.console import Console
from rich.table import Table

from models.bank import ModelBank
from streamer.config import Settings
from streamer.pipeline import Pipeline, Record
from streamer.runtime import tune_allocator, tune_gc

LEARNERS = ("ensemble", "sgd", "dekf", "pf")
MODES = {"subsets": True, "exact": False}


def fetches(K: int, n: int, seed: int = 0) -> list[list[Record]]:
    """n fetches of K keys, 6-14 ticks of each key per fetch, partitions interleaved (key k on partition k % 4)."""
    rnd = random.Random(seed)
    offsets, t_of = itertools.count(), [0] * K
    out = []
    for _ in range(n):
        order = [k for k in range(K) for _ in range(rnd.randint(6, 14))]
        rnd.shuffle(order)
        batch = []
        for k in order:
            t = t_of[k]
            t_of[k] += 1
            value = orjson.dumps({"key": f"k{k}", "ts": t, "value": math.sin(t / 7 + k) + 0.01 * k})
            batch.append(Record("ticks", k % 4, next(offsets), f"k{k}".encode(), value))
        out.append(batch)
    return out


def run(learner: str, K: int, batches: list[list[Record]], subsets: bool) -> tuple[float, float]:
    """(ticks/s, share of steps served by a memo) of `Pipeline.process` over the fetches, after the first."""
    ModelBank.memo_subsets = subsets
    try:
        p = Pipeline(Settings(learner=learner))
        p.process(batches[0])  # the bank is built and the keys admitted before the clock starts
        bank = next(iter(p.banks.values()))
        step, served = bank.learner.step, [0, 0]

        def counted(st, x, d, memo=None):  # noqa: ANN001, ANN202  the learner's own step, counted
            served[memo is not None] += 1
            return step(st, x, d, memo=memo) if memo is not None else step(st, x, d)

        bank.learner.step = counted  # type: ignore[method-assign]
        n, t0 = 0, time.perf_counter()
        for b in batches[1:]:
            p.process(b)
            n += len(b)
        return n / (time.perf_counter() - t0), served[1] / max(1, sum(served))
    finally:
        ModelBank.memo_subsets = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", default="4,16")
    ap.add_argument("--learners", default=",".join(LEARNERS))
    ap.add_argument("--fetches", type=int, default=25, help="fetches per run (the first one warms up)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs of each mode; the median is reported")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/batches.json"))
    a = ap.parse_args()
    tune_allocator()
    tune_gc()
    torch.set_num_threads(1)  # the daemon's choice for waves this small
    console = Console()
    rows = []
    for learner in a.learners.split(","):
        for K in (int(k) for k in a.keys.split(",")):
            batches = fetches(K, a.fetches)
            got: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
            for _ in range(a.rounds):
                for mode, subsets in MODES.items():
                    got[mode].append(run(learner, K, batches, subsets))
            for mode in MODES:
                rates = sorted(r for r, _ in got[mode])
                rows.append({"learner": learner, "keys": K, "memo": mode, "ticks_per_s": rates[len(rates) // 2],
                             "ticks_per_s_all": rates, "memo_share": got[mode][0][1]})
            console.print(f"{learner} K={K}: " + ", ".join(
                f"{r['memo']} {r['ticks_per_s']:,.0f} ticks/s (memo {r['memo_share']:.0%})" for r in rows[-2:]))
    table = Table(title="fetches of 6-14 ticks per key through Pipeline.process: the memo for some of the rows")
    for col in ("learner", "keys", "memo", "ticks/s (median)", "steps served by the memo", "runs"):
        table.add_column(col, justify="left" if col in ("learner", "memo") else "right")
    for r in rows:
        table.add_row(r["learner"], str(r["keys"]), r["memo"], f"{r['ticks_per_s']:,.0f}", f"{r['memo_share']:.0%}",
                      ", ".join(f"{v:,.0f}" for v in r["ticks_per_s_all"]))
    console.print(table)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"fetch": "6-14 ticks per key", "rows": rows}, indent=2))
    console.print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
