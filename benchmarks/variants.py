"""Variants of a learner's settings on every regression stream and ETTh1, everything else default.

How the defaults were chosen: each group below is one question (which experts and mixing rule,
which SGD step, which particle-filter move, the feed-forward net's settings, which EKF noise
level), asked of the streams in ../shared/data with the daemon's defaults for everything not
varied (`models/defaults.py`).
The demo's keys (tick streams) are `benchmarks/demo_keys.py`.

    python benchmarks/variants.py [--group ensemble,sgd,pf,mlp,ekf] [--seeds 2] [--streams kin8nm,...,ETTh1]
        [--json benchmarks/out/variants.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from models import defaults
from models.cells import NetSpec
from streamer import bench as B

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REGRESSION = ("kin8nm", "elevators", "puma8nh")
ETT = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")

GROUPS: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "ensemble": [
        ("ensemble", "default: persistence, linear, sgd, dekf (m=8), ekf (m=6), mlp (m=16, skip); squared loss, eta "
         "0.5 (relative below 0.05), share 0.01", {}),
        ("ensemble", "experts: without the mlp (the previous default)",
         {"experts": ("persistence", "linear", "sgd", "dekf", "ekf")}),
        ("ensemble", "experts: its mlp without its skip path", {"expert_options": {"mlp": {"skip": False}}}),
        ("ensemble", "experts: its mlp in place of the ekf",
         {"experts": ("persistence", "linear", "sgd", "dekf", "mlp")}),
        ("ensemble", "experts: its mlp in place of the dekf and the ekf",
         {"experts": ("persistence", "linear", "sgd", "mlp")}),
        ("ensemble", "experts: the default before that (persistence, linear, sgd, dekf at the model's m=16)",
         {"experts": ("persistence", "linear", "sgd", "dekf"), "expert_hidden_max": {}}),
        ("ensemble", "experts: its dekf at the model's m=16 (1.9x the default's memory)",
         {"expert_hidden_max": {"ekf": 6}}),
        ("ensemble", "experts: an ekf at m=6 in place of the dekf at m=16",
         {"experts": ("persistence", "linear", "sgd", "ekf"), "expert_hidden_max": {"ekf": 6}}),
        ("ensemble", "experts: an ekf at m=8 in place of the dekf at m=16",
         {"experts": ("persistence", "linear", "sgd", "ekf"), "expert_hidden_max": {"ekf": 8}}),
        ("ensemble", "experts: its ekf at m=8 (2.1x the default's memory at 4 lags)",
         {"expert_hidden_max": {"dekf": 8, "ekf": 8}}),
        ("ensemble", "experts: its ekf at m=10 (4.0x the default's memory at 4 lags)",
         {"expert_hidden_max": {"dekf": 8, "ekf": 10}}),
        ("ensemble", "experts: its dekf and ekf at window 1 (BPTT over 1 step, not 10)",
         {"expert_options": {"dekf": {"window": 1}, "ekf": {"window": 1}}}),
        ("ensemble", "experts: its dekf and ekf at window 3",
         {"expert_options": {"dekf": {"window": 3}, "ekf": {"window": 3}}}),
        ("ensemble", "rule=likelihood (Bayesian model averaging, same share)", {"rule": "likelihood"}),
        ("ensemble", "eta 1.0", {"eta": 1.0}),
        ("ensemble", "eta 0.25", {"eta": 0.25}),
        ("ensemble", "share 0.001", {"share": 0.001}),
        ("ensemble", "eta per unit of squared error at every scale (fixed: the previous default)",
         {"eta_scale": "fixed"}),
        ("ensemble", "eta relative at every scale (scale-free Hedge), eta 0.25", {"scale_ref": 0.0, "eta": 0.25}),
        ("ensemble", "recurrent experts with the model's (skip) head", {"expert_head": None}),
        ("ensemble", "its dekf at R 100 -> 30", {"expert_options": {"dekf": {"r_init": 100.0, "r_last": 30.0}}}),
        ("ensemble", "+ a second dekf (another seed)", {"experts": ("persistence", "linear", "sgd", "dekf", "dekf"),
                                                        "expert_hidden_max": {}}),
        ("ensemble", "without sgd", {"experts": ("persistence", "linear", "dekf", "ekf")}),
        ("ensemble", "without dekf and ekf (17 KB a key)", {"experts": ("persistence", "linear", "sgd")}),
        ("ensemble", "its sgd with the NLMS read-out step fixed at 0.2 (the previous default)",
         {"expert_options": {"sgd": {"head_step": 0.2, "head_step_max": 0.0}}}),
    ],
    "sgd": [
        ("sgd", "default: Adam 0.01 on the cell, NLMS 0.1-0.4 on the read-out by error correlation, window 1", {}),
        ("sgd", "NLMS read-out step fixed at 0.2 (the previous default)", {"head_step": 0.2, "head_step_max": 0.0}),
        ("sgd", "NLMS read-out step fixed at 0.1", {"head_step": 0.1, "head_step_max": 0.0}),
        ("sgd", "NLMS read-out step fixed at 0.15", {"head_step": 0.15, "head_step_max": 0.0}),
        ("sgd", "read-out step 0.1-0.3 by error correlation", {"head_step_max": 0.3}),
        ("sgd", "read-out step 0.1-0.5 by error correlation", {"head_step_max": 0.5}),
        ("sgd", "read-out step 0.08-0.4 by error correlation", {"head_step": 0.08}),
        ("sgd", "Adam on every weight", {"head_step": 0.0, "head_step_max": 0.0}),
        ("sgd", "plain step 0.02, window 10 (an earlier default)", {"optimizer": "sgd", "lr": 0.02, "window": 10}),
        ("sgd", "normalised step (NLMS on every weight), 0.3", {"optimizer": "normalized", "lr": 0.3}),
    ],
    "pf": [
        ("pf", "default: RB read-out, particle-EKF move (diagonal P0 0.3), R 0.3, read-out walk 3e-6", {}),
        ("pf", "noise: R 0.1, P0 0.1, read-out walk 1e-5 (the previous default)",
         {"r": 0.1, "move_p0": 0.1, "readout_q": 1e-5}),
        ("pf", "noise: R 0.3 with P0 0.1 (the move's gain 1/3)", {"move_p0": 0.1}),
        ("pf", "noise: R 0.2, P0 0.2", {"r": 0.2, "move_p0": 0.2}),
        ("pf", "noise: R 0.5, P0 0.5", {"r": 0.5, "move_p0": 0.5}),
        ("pf", "noise: read-out walk 1e-5", {"readout_q": 1e-5}),
        ("pf", "noise: read-out walk 1e-6", {"readout_q": 1e-6}),
        ("pf", "particle-EKF move, P0 1", {"move_p0": 1.0}),
        ("pf", "gradient move 0.1 (HySIR; the previous default)", {"move": "gradient"}),
        ("pf", "no move (bootstrap proposal, RB read-out)", {"move": "gradient", "grad_step": 0.0}),
        ("pf", "particle-EKF move + Liu-West kernel", {"transition": "liu_west"}),
    ],
    "mlp": [
        ("mlp", "default: m=16 (the model's), skip path, P0 100, R 100 -> 30, q 1e-4 -> 1e-6", {}),
        ("mlp", "without the skip path", {"skip": False}),
        ("mlp", "P0 10", {"p0": 10.0}),
        ("mlp", "P0 1000", {"p0": 1000.0}),
        ("mlp", "R 10 -> 3", {"r_init": 10.0, "r_last": 3.0}),
        ("mlp", "R 300 -> 100", {"r_init": 300.0, "r_last": 100.0}),
        ("mlp", "weights drawn at scale 1.0", {"init_scale": 1.0}),
    ],
    "ekf": [
        ("ekf", "default (R 100 -> 30)", {}),
        ("ekf", "R 10 -> 3 (the reference's, for targets of variance 0.1)", {"r_init": 10.0, "r_last": 3.0}),
        ("dekf", "default (R 10 -> 3)", {}),
        ("dekf", "R 100 -> 30", {"r_init": 100.0, "r_last": 30.0}),
    ],
}
SLOW = {("ekf", "ETTh1")}  # the global EKF over 1,755 weights x 7 keys: minutes a run; accuracy.sh has its row


def streams() -> list[B.Stream]:
    out = [B.regression_stream(B.read_table(str(DATA / "regression" / f"{n}.csv")), "target", n) for n in REGRESSION]
    ett = B.series_stream(B.read_table(str(DATA / "ett" / "ETTh1.csv")), ETT, 2880, 3, 3600, 14400, "ETTh1")
    return [*out, ett]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", default=",".join(GROUPS))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--ett-seeds", type=int, default=1)
    ap.add_argument("--streams", default=",".join((*REGRESSION, "ETTh1")), help="a subset of the streams")
    ap.add_argument("--match", default="", help="only the variants whose label contains one of these ('|' between)")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/variants.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    console = Console()
    data = [st for st in streams() if st.name in args.streams.split(",")]
    plan = [(g, *v, st, seed) for g in args.group.split(",") for v in GROUPS[g]
            if any(m in v[1] for m in args.match.split("|")) for st in data
            for seed in range(args.ett_seeds if st.name == "ETTh1" else args.seeds) if (v[0], st.name) not in SLOW]
    results: dict[tuple[str, str, str], list[tuple[str, float, float]]] = {}  # (stream, score, seconds)
    with Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("", total=len(plan))
        for group, learner, label, opts, st, seed in plan:
            bar.update(task, description=f"{learner} {label[:24]} {st.name}")
            spec = NetSpec(n_in=st.x.shape[2], hidden=defaults.HIDDEN, cell=defaults.CELL, head=defaults.HEAD)
            t0 = time.perf_counter()
            run = B.run(st, learner, spec, seed, opts)
            score = run.mse if st.name == "ETTh1" else run.nmse  # ETTh1: the literature's MSE on the z-scale
            results.setdefault((group, learner, label), []).append((st.name, score, time.perf_counter() - t0))
            bar.advance(task)
    rows: list[dict[str, Any]] = []
    for (group, learner, label), runs in results.items():
        by: dict[str, list[float]] = {}
        for name, score, _ in runs:
            by.setdefault(name, []).append(score)
        rows.append({"group": group, "learner": learner, "variant": label,
                     "scores": {n: float(np.mean(v)) for n, v in by.items()},
                     "seconds": float(sum(s for _, _, s in runs))})
    names = [st.name for st in data]
    table = Table(title=f"variants (NMSE; ETTh1 MSE), mean of {args.seeds} seed(s), defaults otherwise")
    for col in ("group", "learner", "variant", *names):
        table.add_column(col, justify="right" if col in names else "left")
    for r in rows:
        table.add_row(r["group"], r["learner"], r["variant"],
                      *(f"{r['scores'][n]:.4f}" if n in r["scores"] else "-" for n in names))
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seeds": args.seeds, "ett_seeds": args.ett_seeds, "rows": rows}, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
