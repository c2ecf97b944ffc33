"""What forecasts further ahead cost: the daemon's Pipeline.process (no Kafka) for a wave of K keys,
one tick each, with the default model and STREAMER_HORIZONS 1 (the default), 1,6,24 and 1,24,48, in one
run (compare the ratios: the machine is shared). Prints a table and writes JSON (RESULTS, "Multi-horizon").

    python benchmarks/horizon_speed.py [--keys 1,4,16,1000] [--json benchmarks/out/horizon-speed.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from speed import daemon_threads, few_keys_pipeline  # noqa: E402

from streamer.config import Settings  # noqa: E402

SETTINGS = ("1", "1,6,24", "1,24,48")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", default="1,4,16,1000")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds measured per case")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/horizon-speed.json"))
    a = ap.parse_args()
    learner = Settings().learner
    rows = []
    print(f"{'keys':>6} " + " ".join(f"{'h=' + h:>14}" for h in SETTINGS) + "   (pipeline ticks/s, " + learner + ")")
    for K in (int(k) for k in a.keys.split(",")):
        torch.set_num_threads(daemon_threads(K))
        rates = {}
        for hs in SETTINGS:
            s, _ = few_keys_pipeline(learner, K, a.seconds, horizons=hs)
            rates[hs] = K / s
            rows.append({"learner": learner, "keys": K, "horizons": hs, "pipeline_ticks_per_s": K / s,
                         "ms_per_wave": s * 1e3})
        print(f"{K:>6} " + " ".join(f"{rates[h]:>14,.0f}" for h in SETTINGS), flush=True)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"learner": learner, "rows": rows}, indent=2))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
