"""How the read-outs' defaults were chosen (`models.horizons.HorizonConfig`): ETTh1 in the FSNet/OneNet
protocol, horizons 1, 24, 48, one learner, each variant of the read-out's forgetting factor and conformal
step, and (every recurrent learner) the weights learning from every horizon's error too (`cell_r`); MSE and
coverage90 per horizon. Prints a table and writes JSON (RESULTS, "Multi-horizon").

    python benchmarks/horizon_variants.py --learner sgd --json benchmarks/out/horizon-variants.json
    python benchmarks/horizon_variants.py --learner dekf --match "default|weights" \
        --json benchmarks/out/horizon-cell-dekf.json   # likewise ekf, pf, sgd, ensemble: horizon-cell-NAME.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from models.cells import NetSpec
from models.horizons import HorizonConfig
from models.learners import make_learner
from models.learners.base import LearnsFromHorizons
from streamer import bench as B

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VARIANTS = {  # name -> read-out settings; "default" is HorizonConfig()
    "default": HorizonConfig(),
    "lam 1 (no forgetting)": HorizonConfig(lam=1.0),
    "lam 0.999": HorizonConfig(lam=0.999),
    "lam 0.998": HorizonConfig(lam=0.998),
    "no conformal factor": HorizonConfig(coverage_step=0.0),
    "conformal step 0.003": HorizonConfig(coverage_step=0.003),
    "conformal step 0.03": HorizonConfig(coverage_step=0.03),
    # a recurrent learner only (not `--learner linear`): its weights learn from every due horizon's error too
    "weights learn from the horizons, R x 1": HorizonConfig(cell_r=1.0),
    "weights learn from the horizons, R x 10": HorizonConfig(cell_r=10.0),
}
NEEDS_FILTER = {name for name, cfg in VARIANTS.items() if cfg.cell_r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learner", default="sgd")
    ap.add_argument("--horizons", default="1,24,48")
    ap.add_argument("--match", default="", help="only variants whose name contains one of these (|-separated)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    df = pd.read_csv(DATA / "ett" / "ETTh1.csv")
    cols = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    stream = B.series_stream(df, cols, warmup=2880, lags=3, start=3600, end=14400, name="ETTh1")
    spec = NetSpec(n_in=stream.x.shape[2])
    hs = tuple(int(h) for h in a.horizons.split(","))
    rows = []
    picks = [m for m in a.match.split("|") if m]
    for name, cfg in VARIANTS.items():
        if picks and not any(p in name for p in picks):
            continue
        if name in NEEDS_FILTER and not isinstance(make_learner(a.learner, spec), LearnsFromHorizons):
            continue
        t0 = time.perf_counter()
        r = B.run(stream, a.learner, spec, horizons=hs, readout=cfg)
        for x in [r, *r.ahead]:
            rows.append({"variant": name, "learner": a.learner, "horizon": x.horizon, "mse": x.mse,
                         "coverage90": x.coverage90, "lam": cfg.lam, "coverage_step": cfg.coverage_step,
                         "cell_r": cfg.cell_r})
        print(f"{name:<24}" + "  ".join(f"h={x.horizon}: {x.mse:.4f} cov {x.coverage90:.3f}" for x in [r, *r.ahead])
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"stream": "ETTh1", "learner": a.learner, "horizons": list(hs), "rows": rows},
                                     indent=2))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
