"""Soak: a million ticks over ten thousand keys through the daemon process; does anything grow?

1. K keys x T ticks (interleaved: every key's tick t before any key's tick t+1) are produced
   into the embedded broker first.
2. The daemon (`streamer run`, burst mode) drains them as its own process while this script
   samples it every half second: resident memory, open file descriptors and threads (psutil),
   and from /metrics over HTTP the ticks consumed and the asyncio tasks alive.
3. Warm-up ends once `--warmup` of the ticks are consumed (every key exists, every buffer and
   cache has its working size). From there to the last sample before the input ran dry:
   resident memory must grow by less than 5%, fds, threads and tasks must not grow (the median
   of the last fifth may not pass the highest value of the first half, give or take the 2
   tasks and 1 socket of requests in flight that a sample can catch), and the
   throughput of the last tenth of the run must be at least 80% of the first tenth after warm-up.
4. Every tick must have its prediction: the output topic is counted at the end.

    python benchmarks/soak.py [--keys 10000] [--ticks 100] [--learner sgd] [--json benchmarks/out/soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.broker import EmbeddedBroker, free_port  # noqa: E402
from tests.kafka_helpers import create_topics, unique  # noqa: E402

console = Console()


async def produce_all(bs: str, topic: str, keys: int, ticks: int, partitions: int) -> float:
    """All ticks, as per-partition record batches (a per-message send would take minutes); returns seconds."""
    t0 = time.perf_counter()
    producer = AIOKafkaProducer(bootstrap_servers=bs, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    rng = np.random.default_rng(0)
    level = rng.normal(0, 10, keys)  # each key its own level, a daily-ish cycle and noise
    futures = []
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("producing", total=keys * ticks)
        for t in range(ticks):
            values = level + np.sin(t / 12 + np.arange(keys)) + rng.normal(0, 0.1, keys)
            batches = [producer.create_batch() for _ in range(partitions)]
            for k in range(keys):
                p = k % partitions
                key = f"k{k}".encode()
                value = orjson.dumps({"key": f"k{k}", "ts": t, "value": float(values[k])})
                if batches[p].append(key=key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batches[p], topic, partition=p))
                    batches[p] = producer.create_batch()
                    batches[p].append(key=key, value=value, timestamp=None)
            for p, b in enumerate(batches):
                futures.append(await producer.send_batch(b, topic, partition=p))
            bar.advance(task, keys)
    await asyncio.gather(*futures)
    await producer.stop()
    return time.perf_counter() - t0


def scrape(port: int) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


async def count_topic(bs: str, topic: str, expected: int, timeout: float = 300) -> int:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bs, group_id=None, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
    await consumer.start()
    n, idle_since, deadline = 0, time.monotonic(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and time.monotonic() - idle_since < 5:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            got = sum(len(m) for m in batch.values())
            n += got
            if got:
                idle_since = time.monotonic()
            if n >= expected and not got:
                break
    finally:
        await consumer.stop()
    return n


def sample_until_exit(proc: subprocess.Popen, port: int, total: int) -> list[dict]:
    ps = psutil.Process(proc.pid)
    samples: list[dict] = []
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("daemon draining", total=total)
        while proc.poll() is None:
            try:
                m = scrape(port)
                with ps.oneshot():
                    samples.append({"t": time.monotonic(), "rss": ps.memory_info().rss, "fds": ps.num_fds(),
                                    "threads": ps.num_threads(), "tasks": m.get("streamer_event_loop_tasks", 0.0),
                                    "consumed": m.get("streamer_ticks_consumed_total", 0.0),
                                    "batches": m.get("streamer_batch_size_count", 0.0),
                                    "checkpoints": m.get("streamer_checkpoints_total", 0.0)})
                bar.update(task, completed=samples[-1]["consumed"])
            except (OSError, psutil.Error):
                pass  # not serving yet, or exiting
            time.sleep(0.5)
    return samples


def analyse(samples: list[dict], total: int, warmup: float) -> dict:
    consumed = np.array([s["consumed"] for s in samples])
    t = np.array([s["t"] for s in samples])
    start = int(np.argmax(consumed >= warmup * total))
    end = int(np.argmax(consumed >= total)) if consumed[-1] >= total else len(samples) - 1
    run = samples[start : end + 1]
    rss0, rss1 = run[0]["rss"], run[-1]["rss"]
    # throughput per tenth of the post-warm-up run (by ticks), from the sampled counter
    edges = np.linspace(consumed[start], consumed[end], 11)
    times = np.interp(edges, consumed[start : end + 1], t[start : end + 1])
    rates = np.diff(edges) / np.maximum(np.diff(times), 1e-9)
    first_moving = int(np.argmax(consumed > 0))
    fifth, half = max(1, len(run) // 5), max(1, len(run) // 2)

    def early_late(field: str) -> tuple[float, float]:
        """(highest value in the first half of the run, median of the last fifth). Tasks and sockets come
        and go with each request; a leak is a level that climbs past anything seen before."""
        return (float(max(s[field] for s in run[:half])), float(np.median([s[field] for s in run[-fifth:]])))

    return {
        "batches_after_warmup": int(run[-1]["batches"] - run[0]["batches"]),
        "checkpoints_after_warmup": int(run[-1]["checkpoints"] - run[0]["checkpoints"]),
        **{f"{f}_early_late": early_late(f) for f in ("fds", "threads", "tasks")},
        "warmup_ticks": int(consumed[start]), "rss_after_warmup_mb": rss0 / 2**20, "rss_end_mb": rss1 / 2**20,
        "rss_peak_after_warmup_mb": max(s["rss"] for s in run) / 2**20,
        "rss_growth_pct": 100 * (rss1 - rss0) / rss0,
        "fds_after_warmup": run[0]["fds"], "fds_max_after_warmup": max(s["fds"] for s in run),
        "fds_end": run[-1]["fds"],
        "threads_after_warmup": run[0]["threads"], "threads_max_after_warmup": max(s["threads"] for s in run),
        "tasks_after_warmup": run[0]["tasks"], "tasks_max_after_warmup": max(s["tasks"] for s in run),
        "ticks_per_s_overall": float((consumed[end] - consumed[first_moving]) / (t[end] - t[first_moving])),
        "ticks_per_s_by_tenth": [float(r) for r in rates],
        "throughput_last_over_first": float(rates[-1] / rates[0]),
    }


def checks(res: dict, predictions: int, total: int) -> dict[str, bool]:
    """The soak's pass/fail figures, from `analyse`'s result."""
    return {
        "rss_growth_below_5pct": res["rss_growth_pct"] < 5.0,
        # fetches and sends in flight come and go (up to 2 more tasks, and a socket, at a sample); a leak of
        # one per batch would add `batches_after_warmup` (40 at the defaults) over this run
        **{f"no_{f}_growth": res[f"{f}_early_late"][1] <= res[f"{f}_early_late"][0] + slack
           for f, slack in (("fds", 1), ("threads", 0), ("tasks", 2))},
        "throughput_holds": res["throughput_last_over_first"] >= 0.8,
        "every_tick_predicted": predictions >= total,
    }


def plot(samples: list[dict], path: Path, warmup_ticks: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([s["t"] for s in samples]) - samples[0]["t"]
    consumed = np.array([s["consumed"] for s in samples])
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    a.plot(t, [s["rss"] / 2**20 for s in samples], label="resident memory (MiB)")
    a.axvline(t[int(np.argmax(consumed >= warmup_ticks))], color="grey", ls="--", label="end of warm-up")
    a.set_ylabel("MiB")
    a.legend()
    w = 8  # samples (4 s): a batch of 20,000 ticks lands at once, so shorter windows only show the batching
    rate = (consumed[w:] - consumed[:-w]) / (t[w:] - t[:-w])
    b.plot(t[w:], rate, label="ticks/s (4 s window)")
    b.set_ylabel("ticks/s")
    b.set_xlabel("seconds since the daemon started")
    b.legend()
    fig.suptitle("soak: daemon memory and throughput")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> dict:
    with EmbeddedBroker() as broker:
        bs = broker.bootstrap_servers
        env = {"bootstrap_servers": bs, "input_topic": unique("in"), "output_topic": unique("out"),
               "dlq_topic": unique("dlq"), "group_id": unique("g"), "metrics_port": str(free_port()),
               "metrics_host": "127.0.0.1", "session_timeout_ms": "3000", "heartbeat_interval_ms": "500",
               "learner": args.learner, "burst": "true", "burst_idle_s": "3", "log_level": "warning",
               "log_format": "json"}
        await create_topics(bs, [env["input_topic"]], args.partitions)
        total = args.keys * args.ticks
        produce_s = await produce_all(bs, env["input_topic"], args.keys, args.ticks, args.partitions)
        console.print(f"produced {total:,} ticks in {produce_s:.1f} s")
        proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "run"],
                                env={**os.environ, **{f"STREAMER_{k.upper()}": v for k, v in env.items()}})
        samples = await asyncio.to_thread(sample_until_exit, proc, int(env["metrics_port"]), total)
        if proc.returncode != 0:
            raise RuntimeError(f"the daemon exited with {proc.returncode}")
        predictions = await count_topic(bs, env["output_topic"], total)
    res = {"learner": args.learner, "keys": args.keys, "ticks": total, "predictions": predictions,
           **analyse(samples, total, args.warmup),
           "samples": [{k: round(v, 3) if k == "t" else v for k, v in s.items()} for s in samples]}
    plot(samples, args.plot, res["warmup_ticks"])
    res["checks"] = checks(res, predictions, total)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--ticks", type=int, default=100, help="ticks per key")
    ap.add_argument("--learner", default="sgd")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=0.2, help="share of the ticks that counts as warm-up")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/soak.json"))
    ap.add_argument("--plot", type=Path, default=Path("benchmarks/out/soak.png"))
    args = ap.parse_args()
    res = asyncio.run(main_async(args))
    t = Table(title=f"soak: {res['ticks']:,} ticks over {res['keys']:,} keys, {res['learner']}, daemon as a process")
    t.add_column("figure")
    t.add_column("after warm-up", justify="right")
    t.add_column("end", justify="right")
    t.add_row("resident memory MiB", f"{res['rss_after_warmup_mb']:.0f}",
              f"{res['rss_end_mb']:.0f} ({res['rss_growth_pct']:+.1f}%)")
    for name, f in (("open fds", "fds"), ("threads", "threads"), ("asyncio tasks", "tasks")):
        early, late = res[f"{f}_early_late"]
        t.add_row(f"{name} (first-half max / last-fifth median)", f"{early:.0f}",
                  f"{late:.0f} (max {res[f + '_max_after_warmup']:.0f})")
    by = res["ticks_per_s_by_tenth"]
    ratio = res["throughput_last_over_first"]
    t.add_row("ticks/s (first / last tenth)", f"{by[0]:,.0f}", f"{by[-1]:,.0f} ({ratio:.2f}x)")
    t.add_row("ticks/s overall", "", f"{res['ticks_per_s_overall']:,.0f}")
    t.add_row("batches / checkpoints after warm-up", "",
              f"{res['batches_after_warmup']} / {res['checkpoints_after_warmup']}")
    t.add_row("predictions / ticks", "", f"{res['predictions']:,} / {res['ticks']:,}")
    console.print(t)
    for name, ok in res["checks"].items():
        console.print(f"{'[green]pass' if ok else '[red]FAIL'}[/] {name}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2))
    console.print(f"wrote {args.json} and {args.plot}")
    sys.exit(0 if all(res["checks"].values()) else 1)


if __name__ == "__main__":
    main()
