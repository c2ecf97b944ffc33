"""The fuzz suite (tests/unit/test_fuzz.py) at scale: at least 100,000 generated messages through the
decoder and 100,000 through the pipeline, counted, in one run.

    python benchmarks/fuzz.py [--decoder 100000] [--pipeline-messages 100000] [--json benchmarks/out/fuzz.json]

The pipeline property draws batches of up to 4 x 25 messages, about 11 a example on average, so it
runs pipeline-messages / 11 examples (and says how many messages that came to)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decoder", type=int, default=100_000, help="decoder examples (one message each)")
    ap.add_argument("--pipeline-messages", type=int, default=100_000)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/fuzz.json"))
    args = ap.parse_args()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FUZZ_JSON": str(args.json.resolve()), "FUZZ_DECODER_EXAMPLES": str(args.decoder),
           "FUZZ_PIPELINE_EXAMPLES": str(args.pipeline_messages // 11 + 1)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_fuzz.py"],
                          cwd=ROOT, env=env)
    seconds = time.perf_counter() - t0
    counts = json.loads(args.json.read_text())
    counts.update(seconds=round(seconds, 1), passed=proc.returncode == 0)
    args.json.write_text(json.dumps(counts, indent=2))
    t = Table(title=f"fuzzing in {seconds:.0f} s: {'every property held' if proc.returncode == 0 else 'FAILED'}")
    t.add_column("count")
    t.add_column("n", justify="right")
    for k, v in counts.items():
        if isinstance(v, int) and not isinstance(v, bool):
            t.add_row(k, f"{v:,}")
    Console().print(t)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
