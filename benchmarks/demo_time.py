"""How long `streamer demo` takes with its defaults: 4 keys, 12,000 ticks, through the embedded broker.

Runs the demo in process (as `streamer demo` does, its live table sent to /dev/null) and times it
from the start: the broker, the daemon's start and group join, the first prediction read back,
and the last. "Processed in" is the demo's own footer figure: from the moment it starts reading
predictions (the daemon started, the replay under way) to the last one.

With `--base REV`, the demo of that revision (checked out into a temporary worktree) and of the working
tree run alternately, `--repeat` times each, every run in a process of its own; the JSON then holds every
run of both sides and their medians.

    python benchmarks/demo_time.py [--learner ensemble] [--base REV --repeat 2] [--json benchmarks/out/demo-time.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

import streamer.demo as demo
from models import defaults
from streamer.runtime import tune_allocator, tune_gc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab import ROOT, base_worktree  # noqa: E402


def against_base(base: str, repeat: int, learner: str, out: Path) -> None:
    """The demo at `base` and in the working tree, alternating, each run its own process (as ab.py's sides)."""
    runs: dict[str, list[dict]] = {"base": [], "head": []}
    with base_worktree(base, prefix="demo-ab-") as (base_rev, tree), tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            for side in (("base", "head") if i % 2 == 0 else ("head", "base")):
                where = tree if side == "base" else ROOT
                got = Path(tmp) / f"{side}-{i}.json"
                subprocess.run([sys.executable, str(where / "benchmarks" / "demo_time.py"), "--learner", learner,
                                "--json", str(got)], cwd=where, env={**os.environ, "PYTHONPATH": str(where)},
                               check=True, stdout=subprocess.DEVNULL)
                runs[side].append(json.loads(got.read_text()))
    res = {"learner": learner, "base": base_rev, "repeat": repeat, "runs": runs,
           **{f"{side}_processed_in_s": statistics.median(r["processed_in_s"] for r in runs[side]) for side in runs},
           **{f"{side}_first_prediction_s": statistics.median(r["first_prediction_s"] for r in runs[side])
              for side in runs}}
    Console().print(res)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--learner", default=defaults.LEARNER)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--base", default="", help="a git revision to time beside the working tree, alternating")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each side with --base")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/demo-time.json"))
    args = ap.parse_args()
    if args.base:
        against_base(args.base, args.repeat, args.learner, args.json)
        return
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
