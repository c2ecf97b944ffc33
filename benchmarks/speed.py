"""Throughput of the batched ModelBank against a per-key Python loop, and memory per key.

Bank of K keys (default 1,000), LSTM m=16, p=8, one tick per key per step. For each learner:
ticks/s of `ModelBank.step` over all keys (steady state, after warm-up steps; this includes the
per-key normaliser, calibration and health checks), ticks/s of the bare batched `learner.step`,
ticks/s of a naive loop that calls the same learner once per key (on a subset of keys, since it
is slow), the speed-up batched learner / per-key loop (like for like), and the bytes of state
per key. Ratios are what to read: the machine is shared and noisy.

    python benchmarks/speed.py [--keys 1000] [--steps 20] [--json benchmarks/out/speed.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from models.bank import ModelBank
from models.cells import NetSpec
from models.learners import make_learner

CASES: list[tuple[str, dict[str, Any], str]] = [
    ("ensemble", {}, "ensemble (the default: persistence, RLS, sgd, dekf)"),
    ("sgd", {}, "sgd (default: Adam, window 1)"),
    ("sgd", {"window": 1, "optimizer": "sgd"}, "sgd (plain step, window 1)"),
    ("sgd", {"window": 10, "optimizer": "sgd"}, "sgd (plain step, window 10)"),
    ("dekf", {"window": 1}, "dekf (window 1)"),
    ("dekf", {"window": 10}, "dekf (window 10)"),
    ("pf", {"n_particles": 64}, "pf (N=64)"),
    ("pf", {"n_particles": 64, "move": "gradient"}, "pf (N=64, gradient move)"),
    ("pf", {"n_particles": 64, "move": "gradient", "grad_step": 0.0}, "pf (N=64, no move)"),
]


def bank_rate(name: str, opts: dict, spec: NetSpec, K: int, steps: int) -> tuple[float, float, float]:
    """(ticks/s through ModelBank.step, ticks/s of the bare batched learner.step, bytes of state per key)."""
    bank = ModelBank(make_learner(name, spec, **opts))
    keys = [f"k{i}" for i in range(K)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps + 3, K, spec.n_in, generator=g)
    d = torch.randn(steps + 3, K, generator=g)
    for t in range(3):  # warm-up: allocations, first-tick paths
        bank.step(keys, x[t], d[t])
    t0 = time.perf_counter()
    for t in range(3, steps + 3):
        bank.step(keys, x[t], d[t])
    rate = K * steps / (time.perf_counter() - t0)
    per_key = sum(v.element_size() * v[0].numel() for v in bank.state.values())
    learner, state = bank.learner, bank._learner_part(bank.state)
    t0 = time.perf_counter()
    for t in range(3, steps + 3):
        state = learner.step(state, x[t], d[t])[2]
    bare = K * steps / (time.perf_counter() - t0)
    return rate, bare, per_key


def naive_rate(name: str, opts: dict, spec: NetSpec, K: int, steps: int) -> float:
    """The same learner called once per key with batch size 1, as a per-key loop would."""
    learner = make_learner(name, spec, **opts)
    states = [learner.init_state(torch.tensor([i])) for i in range(K)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps + 1, K, spec.n_in, generator=g)
    d = torch.randn(steps + 1, K, generator=g)
    for k in range(K):
        learner.step(states[k], x[0, k : k + 1], d[0, k : k + 1])
    t0 = time.perf_counter()
    for t in range(1, steps + 1):
        for k in range(K):
            learner.step(states[k], x[t, k : k + 1], d[t, k : k + 1])
    return K * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--naive-keys", type=int, default=50)
    ap.add_argument("--naive-steps", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    spec = NetSpec(n_in=args.inputs, hidden=args.hidden)
    console = Console()
    rows = []
    for name, opts, label in CASES:
        steps = args.steps if name != "pf" else max(3, args.steps // 4)
        rate, bare, per_key = bank_rate(name, opts, spec, args.keys, steps)
        naive = naive_rate(name, opts, spec, args.naive_keys, args.naive_steps)
        rows.append({"case": label, "learner": name, "options": opts, "keys": args.keys, "ticks_per_s": rate,
                     "learner_ticks_per_s": bare, "naive_ticks_per_s": naive, "speedup": bare / naive,
                     "bytes_per_key": per_key})
        console.print(f"{label}: bank {rate:,.0f} ticks/s, batched learner {bare:,.0f}, per-key loop {naive:,.0f}")
    table = Table(title=f"bank of {args.keys} keys, {spec.describe()}, {torch.get_num_threads()} threads")
    cols = ("case", "ticks/s (bank)", "ticks/s (batched learner)", "ticks/s (per-key loop)", "speed-up", "state/key")
    for col in cols:
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        rates = (r["ticks_per_s"], r["learner_ticks_per_s"], r["naive_ticks_per_s"])
        table.add_row(r["case"], *(f"{v:,.0f}" for v in rates), f"{r['speedup']:.0f}x",
                      f"{r['bytes_per_key'] / 1024:,.1f} KiB")
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"spec": spec.describe(), "threads": torch.get_num_threads(), "rows": rows},
                                    indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
