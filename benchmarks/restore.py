"""Restore at scale: a daemon process rebuilding N keys from its changelog on the embedded broker.

For each configuration a changelog is written (the checkpoints of N keys that have seen two ticks
each, made in-process by the pipeline and framed exactly as the daemon frames them), then a
`streamer run` process with default settings starts on it. Measured:

    restore_s      the daemon's own figure ("partitions restored", from the fence write to the
                   keys loaded and the partitions resumed)
    ready_s        process start to /readyz 200 (imports, group join and restore)
    keys_per_s     keys / restore_s
    peak_rss_mb    the process's peak resident memory (VmHWM) once ready; `idle_rss_mb` is the
                   same for a daemon of that learner restoring nothing, and `rss_over_state` =
                   (peak - idle) / the checkpoints' bytes
    healthz_p99_ms /healthz polled every 50 ms from start to ready (each a fresh connection)
    rebalances     streamer_rebalances_total once ready (1: the restore caused no extra one)

    python benchmarks/restore.py [--sgd 1000,10000,100000] [--dekf 1000] [--pf 1000]
                                 [--json benchmarks/data/restore.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import torch
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.broker import EmbeddedBroker, free_port  # noqa: E402
from streamer.config import Settings  # noqa: E402
from streamer.pipeline import Pipeline, Record  # noqa: E402
from streamer.statelog import ChangelogWriter  # noqa: E402
from tests.kafka_helpers import create_topics, http_status, scrape, unique  # noqa: E402

PARTITIONS = 4
SLICE = 20_000  # keys made and written per pass, so the generator's own memory stays small


async def write_changelog(bs: str, settings: Settings, keys: int, progress: Progress) -> int:
    """Checkpoints of `keys` keys on the changelog partitions their input partition gives; returns bytes written."""
    changelog = settings.changelog()
    await create_topics(bs, [settings.input_topic, changelog], PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=bs, linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    partitioner, parts = DefaultPartitioner(), list(range(PARTITIONS))
    total = 0
    task = progress.add_task(f"changelog of {keys:,} {settings.learner} keys", total=keys)
    try:
        for start in range(0, keys, SLICE):
            names = [f"k{i}" for i in range(start, min(keys, start + SLICE))]
            pipeline = Pipeline(settings)
            part_of = {n: partitioner(n.encode(), parts, parts) for n in names}
            records = [Record(settings.input_topic, part_of[n], t, n.encode(),
                              orjson.dumps({"key": n, "ts": t, "value": math.sin(t + i)}))
                       for t in range(2) for i, n in enumerate(names)]
            await asyncio.to_thread(pipeline.process, records)
            writer = ChangelogWriter(settings.group_id, pipeline.model)
            blobs = pipeline.snapshot_keys(names)
            futures = []
            for n, blob in zip(names, blobs, strict=True):
                for k, v in writer.records(n.encode(), blob):
                    total += len(v or b"")
                    futures.append(await producer.send(changelog, value=v, key=k, partition=part_of[n]))
            await asyncio.gather(*futures)
            progress.advance(task, len(names))
    finally:
        await producer.stop()
    return total


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def restore_run(settings: Settings, port: int) -> dict:
    env = {**os.environ, "STREAMER_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "STREAMER_INPUT_TOPIC": settings.input_topic, "STREAMER_GROUP_ID": settings.group_id,
           "STREAMER_OUTPUT_TOPIC": settings.output_topic, "STREAMER_DLQ_TOPIC": settings.dlq_topic,
           "STREAMER_LEARNER": settings.learner, "STREAMER_METRICS_PORT": str(port),
           "STREAMER_METRICS_HOST": "127.0.0.1", "STREAMER_LOG_FORMAT": "json", "STREAMER_SESSION_TIMEOUT_MS": "6000",
           "STREAMER_HEARTBEAT_INTERVAL_MS": "1000"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "run"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    probes: list[float] = []
    ready_s = math.nan
    try:
        while time.monotonic() - t0 < 600 and proc.poll() is None:
            a = time.monotonic()
            try:
                health = http_status(port, "/healthz")
            except OSError:
                health = 0
            if health:
                probes.append(time.monotonic() - a)
            if http_status_safe(port, "/readyz") == 200:
                ready_s = time.monotonic() - t0
                break
            time.sleep(max(0.0, 0.05 - (time.monotonic() - a)))
        rss = peak_rss_mb(proc.pid)
        metrics = scrape(port)
    finally:
        proc.terminate()
        proc.wait(120)
        reader.join(5)
    restored = [orjson.loads(ln) for ln in lines if '"partitions restored"' in ln]
    return {"ready_s": ready_s, "restore_s": sum(r["restore_s"] for r in restored),
            "load_s": sum(r.get("load_s", 0.0) for r in restored),
            "restored_keys": sum(r["restored_keys"] for r in restored), "peak_rss_mb": rss,
            "healthz_p99_ms": 1000 * float(np.percentile(probes, 99)) if probes else math.nan,
            "healthz_max_ms": 1000 * max(probes) if probes else math.nan, "healthz_probes": len(probes),
            "rebalances": metrics.get("streamer_rebalances_total", math.nan)}


def http_status_safe(port: int, path: str) -> int:
    try:
        return http_status(port, path)
    except OSError:
        return 0


def one(bs: str, learner: str, keys: int, progress: Progress) -> dict:
    settings = Settings(bootstrap_servers=bs, input_topic=unique("in"), output_topic=unique("out"),
                        dlq_topic=unique("dlq"), group_id=unique("g"), learner=learner)
    state_bytes = asyncio.run(write_changelog(bs, settings, keys, progress)) if keys else 0
    run = restore_run(settings, free_port())
    return {"learner": learner, "keys": keys, "state_mb": state_bytes / 2**20, **run,
            "keys_per_s": keys / run["restore_s"] if run["restore_s"] else math.nan}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sgd", default="1000,10000,100000")
    ap.add_argument("--dekf", default="1000")
    ap.add_argument("--pf", default="1000")
    ap.add_argument("--json", default="benchmarks/data/restore.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    plan = [(learner, int(n)) for learner, spec in (("sgd", args.sgd), ("dekf", args.dekf), ("pf", args.pf))
            for n in spec.split(",") if n]
    console = Console(width=170)
    rows = []
    with EmbeddedBroker() as broker, Progress(console=console) as progress:
        idle = {learner: one(broker.bootstrap_servers, learner, 0, progress)["peak_rss_mb"]
                for learner in dict.fromkeys(learner for learner, _ in plan)}  # the same daemon restoring nothing
        for learner, keys in plan:
            r = one(broker.bootstrap_servers, learner, keys, progress)
            r["idle_rss_mb"] = idle[learner]
            r["rss_over_state"] = (r["peak_rss_mb"] - idle[learner]) / r["state_mb"] if r["state_mb"] else math.nan
            rows.append(r)
            progress.console.print(f"{learner} {keys:,} keys: restore {r['restore_s']:.2f} s, "
                                   f"ready {r['ready_s']:.1f} s")
    sgd = {r["keys"]: r for r in rows if r["learner"] == "sgd"}
    ns = sorted(sgd)
    linear = [(sgd[b]["restore_s"] / sgd[a]["restore_s"]) / (b / a) for a, b in zip(ns, ns[1:], strict=False)]
    table = Table(title=f"Restore from the changelog (daemon process, default settings, {PARTITIONS} partitions)")
    for col in ("learner", "keys", "state MB", "restore s", "keys/s", "ready s", "peak RSS MB", "(RSS-idle)/state",
                "/healthz p99 ms", "max ms", "rebalances"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["learner"], f"{r['keys']:,}", f"{r['state_mb']:.0f}", f"{r['restore_s']:.2f}",
                      f"{r['keys_per_s']:,.0f}", f"{r['ready_s']:.1f}", f"{r['peak_rss_mb']:.0f}",
                      f"{r['rss_over_state']:.2f}", f"{r['healthz_p99_ms']:.1f}", f"{r['healthz_max_ms']:.1f}",
                      f"{r['rebalances']:.0f}")
    console.print(table)
    idle_text = ", ".join(f"{k} {v:.0f}" for k, v in idle.items())
    console.print(f"idle daemons' peak RSS (MB): {idle_text}; SGD time per key, each step over the one "
                  f"before: {', '.join(f'{x:.2f}x' for x in linear)} (1 = linear)")
    out = {"rows": rows, "idle_rss_mb": idle, "sgd_linearity": linear, "partitions": PARTITIONS,
           "cores": os.cpu_count()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
