"""How far two paths that differ only in rounding drift apart over a stream: the Kalman filters' compiled
innovation and step (`models/learners/ekf_kernel.py`) against the path before them (one Kalman loop per block,
torch around it, H by a batched product), the same learner, seed and ticks, in float64.

At the first ticks the two agree to the last bits of float64 (they are the same arithmetic in another order);
the table shows how the largest difference between their predictions grows with the ticks, which is what a
rounding-level change does to a learner's accuracy figures over thousands of ticks (and why float32 runs of the
two differ at the 3rd or 4th digit while their unit tests agree within rounding).

    python benchmarks/rounding.py [--learner dekf] [--ticks 3000] [--json benchmarks/out/rounding.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import defaults  # noqa: E402
from models.bank import BankConfig, ModelBank  # noqa: E402
from models.cells import NetSpec  # noqa: E402
from models.learners import bptt_kernel, ekf_kernel, make_learner, window  # noqa: E402
from streamer.bench import read_table, series_stream  # noqa: E402

ETT = "../shared/data/ett/ETTh1.csv"
SERIES = "HUFL,HULL,MUFL,MULL,LUFL,LULL,OT".split(",")


def predictions(learner: str, ticks: int, before: bool) -> np.ndarray:
    """The bank's predictions [ticks, keys] on ETTh1 (the accuracy table's protocol, from its first row), float64,
    by this revision's path or, `before`, the one before the compiled innovation and step."""
    saved = ekf_kernel.MAX_ROWS, bptt_kernel.lstm_jacobian
    if before:
        ekf_kernel.MAX_ROWS = -1  # no wave takes the new loops

        def jacobian(m, skip, cell, readout, h0, xbuf, x):  # noqa: ANN001, ANN202  H by the batched product
            d_hat, U, Delta, phi, h_first = bptt_kernel.lstm_bptt(m, skip, cell, readout, h0, xbuf, x)
            return d_hat, window.bptt_jacobian(U, Delta, phi), h_first

        bptt_kernel.lstm_jacobian = jacobian
    try:
        stream = series_stream(read_table(ETT), SERIES, 2880, 3, 3600, 14400)
        spec = NetSpec(n_in=stream.x.shape[2], hidden=defaults.HIDDEN, cell=defaults.CELL, head=defaults.HEAD)
        bank = ModelBank(make_learner(learner, spec, dtype=torch.float64), BankConfig(seed=0))
        x, d = torch.from_numpy(stream.x).double(), torch.from_numpy(stream.d).double()
        return np.stack([bank.step(stream.keys, x[t], d[t]).mean.numpy() for t in range(ticks)])
    finally:
        ekf_kernel.MAX_ROWS, bptt_kernel.lstm_jacobian = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--learner", default="dekf")
    ap.add_argument("--ticks", type=int, default=3000)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/rounding.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    gap = np.abs(predictions(args.learner, args.ticks, False) - predictions(args.learner, args.ticks, True)).max(1)
    marks = [t for t in (1, 10, 50, 100, 200, 300, 500, 1000, 2000, 3000, 5000, 10000) if t <= args.ticks]
    rows = [{"ticks": t, "max_abs_difference": float(gap[:t].max())} for t in marks]
    table = Table(title=f"{args.learner} on ETTh1 (7 keys), float64: this revision's path against the one before")
    table.add_column("first ticks", justify="right")
    table.add_column("largest difference of the predictions", justify="right")
    for r in rows:
        table.add_row(f"{r['ticks']:,}", f"{r['max_abs_difference']:.1e}")
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"learner": args.learner, "dtype": "float64", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
