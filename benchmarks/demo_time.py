"""How long `streamer demo` takes with its defaults: 4 keys, 12,000 ticks, through the embedded broker.

Runs the demo in process (as `streamer demo` does, its live table sent to /dev/null) and times it
from the start: the broker, the daemon's start and group join, the first prediction read back,
and the last. "Processed in" is the demo's own footer figure: from the moment it starts reading
predictions (the daemon started, the replay under way) to the last one.

    python benchmarks/demo_time.py [--learner ensemble] [--json benchmarks/out/demo-time.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console

import streamer.demo as demo
from models import defaults
from streamer.runtime import tune_allocator, tune_gc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--learner", default=defaults.LEARNER)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/demo-time.json"))
    args = ap.parse_args()
    tune_allocator()  # as `streamer demo` has it
    tune_gc()
    stamps: list[float] = []
    update = demo._update

    def timed(views, value):  # noqa: ANN001  the demo's own reader, stamped
        stamps.append(time.monotonic())
        update(views, value)

    demo._update = timed
    footer: list[float] = []
    table = demo._table

    def noted(views, elapsed, dead, done):  # noqa: ANN001  the footer's "N predictions in X s"
        if done:
            footer.append(elapsed)
        return table(views, elapsed, dead, done)

    demo._table = noted
    t0 = time.monotonic()
    with open(os.devnull, "w") as sink, tempfile.TemporaryDirectory() as tmp:
        views = asyncio.run(demo.run_demo(args.learner, args.rows, None, Path(tmp) / "demo.png", Console(file=sink)))
    res = {"learner": args.learner, "ticks": sum(v.ticks for v in views.values()),
           "first_prediction_s": stamps[0] - t0, "last_prediction_s": stamps[-1] - t0,
           "steady_s": stamps[-1] - stamps[0], "processed_in_s": footer[-1] if footer else None,
           "ticks_per_s_after_first": (len(stamps) - 1) / (stamps[-1] - stamps[0])}
    Console().print(res)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
