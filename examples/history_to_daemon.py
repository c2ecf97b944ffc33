"""From a CSV of history to the daemon, in the commands a user types.

    python examples/history_to_daemon.py                      # Victoria's electricity demand and temperature
    python examples/history_to_daemon.py --csv mine.csv --series sensor_a,sensor_b

1. In a notebook: `models.api.KeyedRegressor` (the daemon's model, no Kafka) learns the history
   tick by tick on the daemon's regressor (each key's last 4 values) and is scored against persistence.
2. `offline train warm-start --layout ticks` trains one model for every new key on that history.
3. The embedded broker (`streamer broker`), the later rows replayed to it (`streamer replay`), and the
   daemon run over them twice in burst mode (`streamer run --burst`): cold, then with
   `STREAMER_WARM_START`. Its predictions are read back (`streamer tail`) and scored: a warm start
   shows in the first predictions, before a cold model has learned anything.

Every command is printed before it runs; the files land in --out (default runs/history-to-daemon).
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from rich.console import Console
from rich.table import Table

from models import defaults
from models.api import KeyedRegressor
from streamer.broker import free_port

console = Console()
LAGS = defaults.LAGS  # the daemon's regressor is a key's last 4 values


def show(cmd: list[str], env: dict[str, str] | None = None) -> None:
    shown = [("streamer" if c == "streamer.cli" else "offline" if c == "offline.cli" else c) for c in cmd[2:]]
    prefix = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    console.print(f"[bold]$[/] {prefix + ' ' if prefix else ''}{' '.join(shown)}")


def run(cmd: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    show(cmd, env)
    res = subprocess.run(cmd, env={**os.environ, **(env or {})}, **kw)
    if res.returncode != 0:
        sys.exit(f"history_to_daemon: {' '.join(cmd[2:4])} failed with exit code {res.returncode}")
    return res


def cli(tool: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"{tool}.cli", *args]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"history_to_daemon: the broker exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"history_to_daemon: the broker did not listen on port {port} within {timeout:.0f} s")


def lag_regressors(values: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The daemon's regressor of every tick: x_t = [v_t, v_{t-1}, .., v_{t-3}], target v_{t+1}.
    values [R, K] -> x [R - LAGS, K, LAGS], y [R - LAGS, K]."""
    R = len(values)
    t = np.arange(LAGS - 1, R - 1)
    x = np.stack([values[t - j] for j in range(LAGS)], axis=2)  # [T, K, LAGS]
    return [f"lag{j}" for j in range(LAGS)], x, values[t + 1]


def notebook_step(history: pd.DataFrame, series: list[str]) -> dict[str, tuple[float, float]]:
    """KeyedRegressor over the history, each tick predicted before it is learned: MAE and persistence's."""
    names, x, y = lag_regressors(history[series].to_numpy(np.float64))
    model = KeyedRegressor(features=tuple(names))
    errors = np.empty_like(y)
    with console.status(f"KeyedRegressor learning {len(y):,} ticks of {len(series)} keys"):
        for t in range(len(y)):
            errors[t] = model.predict_many(series, x[t]) - y[t]
            model.learn_many(series, x[t], y[t])
    naive = x[:, :, 0] - y
    return {k: (float(np.abs(errors[:, i]).mean()), float(np.abs(naive[:, i]).mean())) for i, k in enumerate(series)}


def daemon_scores(lines: list[str], live: pd.DataFrame, series: list[str], first: int) -> dict[str, tuple]:
    """Each key's MAE over its first `first` and all predictions (from `prev_error`: a tick's value minus
    the prediction made for it), persistence's over the same ticks, and the 90% interval's coverage."""
    by_key: dict[str, list[dict]] = {k: [] for k in series}
    for line in lines:
        key, _, value = line.partition("\t")
        if key in by_key:
            by_key[key].append(orjson.loads(value))
    out = {}
    for k, msgs in by_key.items():
        msgs.sort(key=lambda m: m["seq"])
        errs = np.array([abs(m["prev_error"]) for m in msgs if m["prev_error"] is not None])
        v = live[k].to_numpy(np.float64)
        naive = np.abs(np.diff(v))[: len(errs)]
        actual = {m["seq"]: v[i] for i, m in enumerate(msgs)}  # the key's i-th tick carries seq msgs[i]["seq"]
        inside = [m["lower"] <= actual[m["target_seq"]] <= m["upper"] for m in msgs if m["target_seq"] in actual]
        out[k] = (len(msgs), errs[:first].mean(), naive[:first].mean(), errs.mean(), naive.mean(),
                  float(np.mean(inside)) if inside else float("nan"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", default="pkg:tsdata/fpp3/vic_elec.csv", help="a CSV of history (or pkg:PACKAGE/path)")
    ap.add_argument("--series", default="Demand,Temperature", help="its columns, one key each")
    ap.add_argument("--train-rows", type=int, default=3000, help="offline training rows")
    ap.add_argument("--val-rows", type=int, default=4000, help="early stopping on rows [train-rows, val-rows)")
    ap.add_argument("--live-rows", type=int, default=1000, help="rows after the history, replayed to the daemon")
    ap.add_argument("--epochs", type=int, default=None, help="offline training epochs, at most (default: offline's)")
    ap.add_argument("--first", type=int, default=100, help="score a key's first N predictions apart")
    ap.add_argument("--offline-args", default="", help="more flags for `offline train warm-start` ('--dropout 0.5')")
    ap.add_argument("--out", type=Path, default=Path("runs/history-to-daemon"))
    ap.add_argument("--json", type=Path, default=None, help="write the scores here too")
    a = ap.parse_args()
    series = [s.strip() for s in a.series.split(",") if s.strip()]
    from streamer.bench import read_table  # reads pkg: paths too

    try:
        table = read_table(a.csv)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"history_to_daemon: {exc}")
    missing = [s for s in series if s not in table.columns]
    if missing or len(table) < a.val_rows + a.live_rows:
        sys.exit(f"history_to_daemon: {a.csv} needs columns {series} and {a.val_rows + a.live_rows} rows "
                 f"(missing {missing}, {len(table)} rows)")
    a.out.mkdir(parents=True, exist_ok=True)
    history, live = a.out / "history.csv", a.out / "live.csv"
    table[series].iloc[: a.val_rows].to_csv(history, index=False)
    live_rows = table[series].iloc[a.val_rows : a.val_rows + a.live_rows].reset_index(drop=True)
    live_rows.to_csv(live, index=False)
    console.print(f"history: {history} ({a.val_rows} rows), live: {live} ({a.live_rows} rows), keys {series}")

    console.rule("1. In a notebook: the daemon's model on the history, no Kafka")
    console.print("model = models.api.KeyedRegressor(features=('lag0', 'lag1', 'lag2', 'lag3'))  # the defaults")
    scores = notebook_step(pd.read_csv(history), series)
    t = Table("key", "MAE", "naive", "skill", caption="naive: persistence (next = now); skill: 1 - MAE / naive")
    for k, (mae, naive) in scores.items():
        t.add_row(k, f"{mae:.4g}", f"{naive:.4g}", f"{1 - mae / naive:+.1%}")
    console.print(t)

    console.rule("2. A warm start trained on the history")
    warm = a.out / "warm-start.tsmf"
    # --layout ticks: the daemon's regressor and model (its defaults are the daemon's: 4 lags, an LSTM of 16)
    epochs = ["--epochs", str(a.epochs)] if a.epochs is not None else []
    run(cli("offline", "train", "warm-start", str(history), "--series", ",".join(series), "--layout", "ticks",
            "--train-rows", str(a.train_rows), "--val-rows", str(a.val_rows), *epochs, *shlex.split(a.offline_args),
            "--out", str(warm)))

    console.rule("3. The daemon on the live rows, cold and warm-started")
    port = free_port()
    bs = f"127.0.0.1:{port}"
    broker_cmd = cli("streamer", "broker", "--port", str(port))
    show(broker_cmd)
    broker = subprocess.Popen(broker_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    results = {}
    try:
        wait_for_port(port, broker)
        for mode in ("cold", "warm"):
            env = {"STREAMER_BOOTSTRAP_SERVERS": bs, "STREAMER_INPUT_TOPIC": f"ticks-{mode}",
                   "STREAMER_OUTPUT_TOPIC": f"predictions-{mode}", "STREAMER_DLQ_TOPIC": f"dlq-{mode}",
                   "STREAMER_GROUP_ID": f"example-{mode}", "STREAMER_METRICS_PORT": "0",
                   "STREAMER_LOG_LEVEL": "warning"}
            if mode == "warm":
                env["STREAMER_WARM_START"] = str(warm)
            run(cli("streamer", "replay", str(live), "--series", ",".join(series), "--topic", f"ticks-{mode}"),
                {"STREAMER_BOOTSTRAP_SERVERS": bs}, stdout=subprocess.DEVNULL)
            run(cli("streamer", "run", "--burst"), env)
            tail = run(cli("streamer", "tail", f"predictions-{mode}", "--from-beginning", "--limit",
                           str(len(series) * a.live_rows), "--idle-exit", "10"),
                       {"STREAMER_BOOTSTRAP_SERVERS": bs}, capture_output=True, text=True)
            results[mode] = daemon_scores(tail.stdout.splitlines(), live_rows, series, a.first)
    finally:
        broker.terminate()
        broker.wait(timeout=30)

    t = Table("key", "start", "n", f"MAE 1-{a.first}", f"naive 1-{a.first}", "MAE", "naive", "cover90",
              caption="naive: persistence (next = now) on the same ticks; cover90: the 90% interval's coverage")
    for k in series:
        for mode in ("cold", "warm"):
            n, mf, nf, ma, na, cov = results[mode][k]
            t.add_row(k, mode, str(n), f"{mf:.4g}", f"{nf:.4g}", f"{ma:.4g}", f"{na:.4g}", f"{cov:.0%}")
    console.print(t)
    if a.json is not None:
        fields = ("predictions", "mae_first", "naive_first", "mae", "naive", "coverage90")
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_bytes(orjson.dumps({
            "csv": a.csv, "series": series, "train_rows": a.train_rows, "val_rows": a.val_rows,
            "live_rows": a.live_rows, "first": a.first, "offline_args": a.offline_args,
            "notebook": {k: {"mae": m, "naive": n} for k, (m, n) in scores.items()},
            "daemon": {mode: {k: dict(zip(fields, map(float, r[k]), strict=True)) for k in series}
                       for mode, r in results.items()}}, option=orjson.OPT_INDENT_2))
    total = sum(results["warm"][k][0] for k in series)
    console.print(f"{total} warm-started predictions read back from the daemon; warm start {warm}")


if __name__ == "__main__":
    main()
