"""A/B: the daemon's pipeline at one git revision against the working tree, in one run, alternating.

The machine is shared and its speed moves by up to 2x between runs (benchmarks/RESULTS.md), so a
change's effect is only readable against its base measured beside it. This checks BASE out into a
temporary worktree and keeps one worker process per side (each imports its own tree's `models`
and `streamer`); every round measures each case on both sides, in alternating order, with
`speed.py`'s own `few_keys_pipeline` (the daemon's `Pipeline.process` on records built in memory,
one tick per key a wave, default settings). The figure per case is the median over rounds of
ticks/s, and the ratio of the medians.

    python benchmarks/ab.py 17f3ce7 [--learners ensemble,sgd,dekf,pf] [--keys 1,4,1000] [--rounds 3]
                            [--seconds 2] [--json benchmarks/out/ab.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent

# Runs in each side's tree: one JSON line in ({"learner", "keys", "seconds"}), one out (seconds per wave).
WORKER = """
import json, sys
sys.path.insert(0, ".")
import models, streamer
from benchmarks.speed import few_keys_pipeline
from streamer.runtime import tune_allocator
try:
    from streamer.runtime import tune_gc
except ImportError:  # a base from before the collector was tuned: tuned alike, so the A/B compares the code
    import gc
    def tune_gc():
        gc.freeze()
        gc.set_threshold(50_000, *gc.get_threshold()[1:])
tune_allocator()
tune_gc()
print(json.dumps({"models": models.__file__}), flush=True)
for line in sys.stdin:
    case = json.loads(line)
    wave_s, _ = few_keys_pipeline(case["learner"], case["keys"], case["seconds"])
    print(json.dumps({"wave_s": wave_s}), flush=True)
"""


@contextlib.contextmanager
def base_worktree(base: str, prefix: str = "ab-") -> Iterator[tuple[str, Path]]:
    """(the short name of revision `base`, a temporary git worktree checked out at it), removed on exit; a
    name that is no revision here is one line and exit 1."""
    rev = subprocess.run(["git", "rev-parse", "--short", base], cwd=ROOT, capture_output=True, text=True)
    if rev.returncode:
        raise SystemExit(f"not a revision here: {base}")
    base_rev = rev.stdout.strip()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        tree = Path(tmp) / base_rev
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), base_rev], cwd=ROOT, check=True)
        try:
            yield base_rev, tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


class Side:
    """One worker process in one tree (explicit start and stop, as the daemon's parts)."""

    def __init__(self, name: str, tree: Path) -> None:
        self.name, self.tree = name, tree
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], cwd=self.tree, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        first = json.loads(self._line())
        if not Path(first["models"]).resolve().is_relative_to(self.tree.resolve()):
            raise SystemExit(f"{self.name}: imported models from {first['models']}, not from {self.tree}")

    def _line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name}: the worker exited (rc {self.proc.wait()})")
        return line

    def measure(self, learner: str, keys: int, seconds: float) -> float:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"learner": learner, "keys": keys, "seconds": seconds}) + "\n")
        self.proc.stdin.flush()
        return keys / json.loads(self._line())["wave_s"]

    def stop(self) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
            self.proc = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="the git revision to compare the working tree with")
    ap.add_argument("--learners", default="ensemble,sgd,dekf,pf")
    ap.add_argument("--keys", default="1,4,1000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds measured per case, side and round")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/ab.json"))
    args = ap.parse_args()
    console = Console()
    cases = [(name, int(k)) for name in args.learners.split(",") for k in args.keys.split(",")]
    with base_worktree(args.base) as (base_rev, tree):
        sides = [Side(f"base {base_rev}", tree), Side("working tree", ROOT)]
        rates: dict[tuple[str, int], list[list[float]]] = {c: [[], []] for c in cases}
        try:
            for side in sides:
                side.start()
            steps = [(r, c) for r in range(args.rounds) for c in cases]
            for i, (r, case) in enumerate(track(steps, description="a/b", console=console)):
                order = [0, 1] if (i + r) % 2 == 0 else [1, 0]
                for s in order:
                    rates[case][s].append(sides[s].measure(*case, args.seconds))
        finally:
            for side in sides:
                side.stop()
    rows: list[dict[str, Any]] = []
    for (name, keys), (a, b) in rates.items():
        rows.append({"learner": name, "keys": keys, "base_ticks_per_s": statistics.median(a),
                     "head_ticks_per_s": statistics.median(b), "ratio": statistics.median(b) / statistics.median(a),
                     "base_all": a, "head_all": b})
    table = Table(title=f"pipeline ticks/s, base {base_rev} against the working tree, median of {args.rounds} rounds")
    for col in ("learner", "keys", f"base {base_rev}", "working tree", "ratio", "rounds (base / tree)"):
        table.add_column(col, justify="left" if col == "learner" else "right")
    for row in rows:
        table.add_row(row["learner"], str(row["keys"]), f"{row['base_ticks_per_s']:,.0f}",
                      f"{row['head_ticks_per_s']:,.0f}", f"{row['ratio']:.2f}x",
                      " ".join(f"{x:,.0f}" for x in row["base_all"]) + " / "
                      + " ".join(f"{x:,.0f}" for x in row["head_all"]))
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"base": base_rev, "rounds": args.rounds, "seconds": args.seconds,
                                     "rows": rows}, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
