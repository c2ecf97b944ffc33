"""torch's intra-op threads and the daemon's pipeline: ticks/s with 1, 2, ... threads, for few and
many keys, the default settings otherwise (no Kafka: the records are built in memory). The
default of STREAMER_TORCH_THREADS comes from this table.

    python benchmarks/threads.py [--threads 1,2] [--keys 1,4,16,1000] [--json benchmarks/out/threads.json]

Each cell is the median of --repeat runs, the thread counts alternating run by run so that the
machine's drift hits them alike. A second table repeats the runs with a busy neighbour (one
process spinning on a core), as on a shared machine or beside the event loop's own work.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import orjson
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.config import Settings  # noqa: E402
from streamer.pipeline import Pipeline, Record  # noqa: E402


def records(keys: int, waves: int, start: int) -> list[Record]:
    return [Record("ticks", 0, (start + t) * keys + k, f"k{k}".encode(),
                   orjson.dumps({"key": f"k{k}", "ts": start + t, "value": float((t * 7 + k) % 13)}))
            for t in range(waves) for k in range(keys)]


def rate(learner: str, keys: int, threads: int, seconds: float) -> float:
    """Ticks/s of Pipeline.process over one-wave batches (the daemon's shape when ticks trickle in),
    after a warm-up of 20 waves."""
    torch.set_num_threads(threads)
    p = Pipeline(Settings(learner=learner))
    for t in range(20):
        p.process(records(keys, 1, t))
    n, t, t0 = 0, 20, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        p.process(records(keys, 1, t))
        n, t = n + keys, t + 1
    return n / (time.perf_counter() - t0)


def spin(stop) -> None:  # a busy neighbour
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def table(args, busy: bool) -> list[dict]:
    stop = mp.Event()
    neighbour = mp.Process(target=spin, args=(stop,), daemon=True) if busy else None
    if neighbour is not None:
        neighbour.start()
    rows = []
    try:
        for learner in args.learners.split(","):
            for keys in (int(k) for k in args.keys.split(",")):
                if learner == "pf" and keys > 100:
                    continue  # a second per wave: the table would take minutes for one cell
                runs: dict[int, list[float]] = {t: [] for t in args.thread_counts}
                for _ in range(args.repeat):
                    for threads in args.thread_counts:
                        runs[threads].append(rate(learner, keys, threads, args.seconds))
                rows.append({"learner": learner, "keys": keys, "busy_neighbour": busy,
                             **{f"threads_{t}": statistics.median(v) for t, v in runs.items()},
                             **{f"threads_{t}_all": [round(x) for x in v] for t, v in runs.items()}})
    finally:
        stop.set()
        if neighbour is not None:
            neighbour.join()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--keys", default="1,4,16,1000")
    ap.add_argument("--learners", default="sgd,ekf,pf")
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/threads.json"))
    args = ap.parse_args()
    args.thread_counts = [int(t) for t in args.threads.split(",")]
    console = Console()
    rows = table(args, busy=False) + table(args, busy=True)
    for busy in (False, True):
        t = Table(title=f"Pipeline.process ticks/s by torch threads ({'a busy neighbour' if busy else 'idle machine'})")
        for c in ("learner", "keys", *[f"{n} thread(s)" for n in args.thread_counts], "best"):
            t.add_column(c, justify="right")
        for r in (r for r in rows if r["busy_neighbour"] == busy):
            vals = [r[f"threads_{n}"] for n in args.thread_counts]
            t.add_row(r["learner"], str(r["keys"]), *[f"{v:,.0f}" for v in vals],
                      str(args.thread_counts[vals.index(max(vals))]))
        console.print(t)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cores": mp.cpu_count(), "rows": rows}, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
