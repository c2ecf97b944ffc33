"""The demo's four keys through the daemon's pipeline, in process (no Kafka): skill per key.

`streamer demo` replays FR and BE hourly electricity prices (with their load and generation
forecasts as features) and Victoria's half-hourly Demand and Temperature through the broker. This
replays the same ticks in the same order through `Pipeline.process` (what the daemon runs on each
micro-batch), one tick per batch as the demo's live rate gives, and scores what it publishes: MAE
against persistence ("next = this one") and the 90% interval's coverage, per key. Each variant is
a set of STREAMER_* settings; the first is the defaults.

    python benchmarks/demo_keys.py [--rows 3000] [--json benchmarks/out/demo-keys.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from streamer.config import Settings
from streamer.demo import sources
from streamer.pipeline import Pipeline, Record

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("defaults (ensemble)", {}),
    ("ensemble, recurrent experts with the skip head", {"learner_options": {"expert_head": None}}),
    ("ensemble, eta per unit of squared error at every scale (the previous default)",
     {"learner_options": {"eta_scale": "fixed"}}),
    ("ensemble, eta relative at every scale, 0.25", {"learner_options": {"scale_ref": 0.0, "eta": 0.25}}),
    ("ensemble, without the mlp (the previous default)", {"learner_options": {
        "experts": ["persistence", "linear", "sgd", "dekf", "ekf"]}}),
    ("ensemble, its mlp without its skip path", {"learner_options": {"expert_options": {"mlp": {"skip": False}}}}),
    ("ensemble, the default before that (persistence, linear, sgd, dekf at the model's m=16)", {"learner_options": {
        "experts": ["persistence", "linear", "sgd", "dekf"], "expert_hidden_max": {}}}),
    ("ensemble, its dekf at the model's m=16", {"learner_options": {"expert_hidden_max": {"ekf": 6}}}),
    ("sgd", {"learner": "sgd"}),
    ("sgd, NLMS read-out step fixed at 0.2 (the previous default)",
     {"learner": "sgd", "learner_options": {"head_step": 0.2, "head_step_max": 0.0}}),
    ("sgd, NLMS read-out step fixed at 0.1",
     {"learner": "sgd", "learner_options": {"head_step": 0.1, "head_step_max": 0.0}}),
    ("sgd, NLMS read-out step fixed at 0.15",
     {"learner": "sgd", "learner_options": {"head_step": 0.15, "head_step_max": 0.0}}),
    ("sgd, read-out step 0.1-0.3 by error correlation", {"learner": "sgd", "learner_options": {"head_step_max": 0.3}}),
    ("sgd, read-out step 0.1-0.5 by error correlation", {"learner": "sgd", "learner_options": {"head_step_max": 0.5}}),
    ("sgd, read-out step 0.08-0.4 by error correlation", {"learner": "sgd", "learner_options": {"head_step": 0.08}}),
    ("ensemble, its sgd with the NLMS read-out step fixed at 0.2 (the previous default)",
     {"learner_options": {"expert_options": {"sgd": {"head_step": 0.2, "head_step_max": 0.0}}}}),
    ("sgd, Adam on every weight", {"learner": "sgd", "learner_options": {"head_step": 0.0, "head_step_max": 0.0}}),
    ("sgd, plain step 0.02, window 10 (an earlier default)",
     {"learner": "sgd", "learner_options": {"optimizer": "sgd", "lr": 0.02, "window": 10}}),
    ("sgd, plain head", {"learner": "sgd", "head": "plain"}),
    ("dekf", {"learner": "dekf"}),
    ("pf", {"learner": "pf"}),
    ("ekf", {"learner": "ekf"}),
    ("mlp", {"learner": "mlp"}),
]


def replay(settings: Settings, ticks: list[tuple[bytes, bytes]]) -> dict[str, dict[str, float]]:
    p = Pipeline(settings)
    offsets = itertools.count()
    err: dict[str, list[float]] = {}
    pers: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    bounds: dict[str, tuple[float, float]] = {}
    hits: dict[str, int] = {}
    for key, value in ticks:
        out = p.process([Record("ticks", 0, next(offsets), key, value)])
        k, v = key.decode(), orjson.loads(value)["value"]
        if k in last:
            lo, hi = bounds[k]
            pers.setdefault(k, []).append(abs(v - last[k]))
            hits[k] = hits.get(k, 0) + int(lo <= v <= hi)
        err.setdefault(k, []).extend(abs(e) for e in out.errors)
        for o in out.predictions:
            msg = orjson.loads(o.value)
            bounds[k] = (msg["lower"], msg["upper"])
        last[k] = v
    return {k: {"mae": sum(err[k]) / len(err[k]), "persistence_mae": sum(pers[k]) / len(pers[k]),
                "skill": 1 - (sum(err[k]) / len(err[k])) / (sum(pers[k]) / len(pers[k])),
                "coverage90": hits[k] / len(pers[k])} for k in sorted(err)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--variants", default="", help="comma-separated indices into VARIANTS (default: all)")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/demo-keys.json"))
    args = ap.parse_args()
    console = Console()
    ticks: list[tuple[bytes, bytes]] = []
    srcs = [s.ticks() for s in sources(args.rows)]
    for group in itertools.zip_longest(*srcs):  # the demo's round robin (without its malformed messages)
        ticks.extend(t for t in group if t is not None)
    chosen = [VARIANTS[int(i)] for i in args.variants.split(",")] if args.variants else VARIANTS
    rows: list[dict[str, Any]] = []
    for label, over in chosen:
        t0 = time.perf_counter()
        per_key = replay(Settings(**{"log_level": "warning", **over}), ticks)
        rows.append({"variant": label, "settings": over, "keys": per_key, "seconds": time.perf_counter() - t0})
        console.print(f"{label}: " + ", ".join(f"{k} {r['skill']:+.1%}" for k, r in per_key.items()))
    keys = list(rows[0]["keys"])
    table = Table(title=f"the demo's keys in process, {len(ticks):,} ticks: MAE skill against persistence")
    for col in ("variant", *keys, "coverage90 (min-max)", "s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        cov = [r["keys"][k]["coverage90"] for k in keys]
        table.add_row(r["variant"], *(f"{r['keys'][k]['skill']:+.1%}" for k in keys),
                      f"{min(cov):.3f}-{max(cov):.3f}", f"{r['seconds']:.0f}")
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"ticks": len(ticks), "rows": rows}, indent=2, default=float))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
