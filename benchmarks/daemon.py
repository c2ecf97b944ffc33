"""The daemon end to end on the embedded broker: sustained throughput, its ceiling, and latency.

The daemon runs as its own process (`streamer run`), as in production; this script is the load
generator and the reader.

1. Throughput: K keys x T ticks are produced first; the daemon (burst mode) then drains them.
   Predictions are stamped by the daemon's producer as each micro-batch is published, so they
   come in bursts, one per batch. Rate = predictions after the first burst / (last prediction's
   timestamp - first prediction's timestamp): start-up and group join are excluded, and so is
   the first batch, whose processing happened before the first stamp. The pass-through produces
   each record as it consumes it, so there every output after the first counts.
2. The ceiling: a bare aiokafka pass-through (`passthrough` below, its own process) drains the
   same input on the same broker in the same run: it consumes each record in a group, decodes it,
   produces one small keyed message per record and commits per batch. The daemon's throughput is
   reported as a share of it: what the Kafka client itself can move on this machine.
3. Latency: the daemon runs while ticks are offered at a fixed rate (librdkafka, paced, so the
   generator is not the bottleneck at 10k ticks/s); the latency of a tick is its prediction's
   producer timestamp minus the tick's create time (same clock). At 2k, 5k and 10k ticks/s over
   1,000 keys and at 1k ticks/s over 4 keys; beside each, the bare pass-through under the same load
   (its output's producer timestamp against the tick's): the floor the broker and the Kafka client
   set on this machine.

    python benchmarks/daemon.py [--keys 1000] [--json benchmarks/out/daemon.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.broker import EmbeddedBroker, free_port  # noqa: E402
from streamer.runtime import GC_YOUNG_THRESHOLD, tune_gc  # noqa: E402
from tests.kafka_helpers import consume, create_topics, http_status, scrape, unique  # noqa: E402


def daemon_env(bs: str, learner: str, **over: str) -> dict[str, str]:
    env = {"bootstrap_servers": bs, "input_topic": unique("in"), "output_topic": unique("out"),
           "dlq_topic": unique("dlq"), "group_id": unique("g"), "metrics_port": str(free_port()),
           "metrics_host": "127.0.0.1", "session_timeout_ms": "3000", "heartbeat_interval_ms": "500",
           "learner": learner, "burst": "true", "burst_idle_s": "2", "log_level": "warning", "log_format": "json"}
    env.update(over)
    return {f"STREAMER_{k.upper()}": v for k, v in env.items()}


def start_daemon(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamer.cli", "run"], env={**os.environ, **env})


def start_passthrough(env: dict[str, str]) -> subprocess.Popen:
    """The ceiling's process: this script's `passthrough` on the daemon's settings (topics, group, idle exit)."""
    return subprocess.Popen([sys.executable, __file__, "--passthrough"], env={**os.environ, **env})


async def passthrough(env: dict[str, str]) -> None:
    """A bare aiokafka pass-through: consume in a group (the daemon's fetch settings), decode each tick,
    produce one small keyed message per record, await the batch's acknowledgements, commit; exit once
    the input has been empty for STREAMER_BURST_IDLE_S. Its collector is tuned as the daemon's process has
    it (`streamer.runtime.tune_gc`, STREAMER_GC_THRESHOLD): the ceiling is not held down by what the daemon is
    spared."""
    tune_gc(int(env.get("STREAMER_GC_THRESHOLD", GC_YOUNG_THRESHOLD)))
    bs, topic_in = env["STREAMER_BOOTSTRAP_SERVERS"], env["STREAMER_INPUT_TOPIC"]
    topic_out = env["STREAMER_OUTPUT_TOPIC"]
    consumer = AIOKafkaConsumer(topic_in, bootstrap_servers=bs, group_id=env["STREAMER_GROUP_ID"],
                                enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=20_000,
                                fetch_max_wait_ms=50, session_timeout_ms=3000, heartbeat_interval_ms=500,
                                fetch_max_bytes=52_428_800, max_partition_fetch_bytes=1 << 20)
    producer = AIOKafkaProducer(bootstrap_servers=bs, acks="all", linger_ms=2)
    await consumer.start()
    await producer.start()
    idle_since = time.monotonic()
    ready = env.get("PASSTHROUGH_READY_FILE")  # the latency run offers ticks once the group has been joined
    try:
        while time.monotonic() - idle_since < float(env["STREAMER_BURST_IDLE_S"]):
            batch = await consumer.getmany(timeout_ms=100, max_records=20_000)
            if ready and consumer.assignment():
                Path(ready).touch()
                ready = None
                idle_since = time.monotonic()  # idle from the join on: the generator starts only now
            if not batch:
                continue
            futures = []
            for msgs in batch.values():
                for m in msgs:
                    tick = orjson.loads(m.value)
                    out = orjson.dumps({"key": tick["key"], "ts": tick["ts"], "value": tick["value"]})
                    futures.append(await producer.send(topic_out, value=out, key=m.key))
            await asyncio.gather(*futures)
            await consumer.commit()
            idle_since = time.monotonic()
    finally:
        await producer.stop()
        await consumer.stop()


def tick(key: int, t: int) -> bytes:
    return orjson.dumps({"key": f"k{key}", "ts": t, "value": float(np.sin(t / 7 + key) + 0.01 * key)})


async def throughput(bs: str, learner: str, keys: int, ticks_per_key: int, partitions: int, **over: str) -> dict:
    """The daemon (or, learner "passthrough", the bare aiokafka ceiling) draining keys x ticks_per_key ticks."""
    env = daemon_env(bs, learner if learner != "passthrough" else "sgd", **over)
    topic_in, topic_out = env["STREAMER_INPUT_TOPIC"], env["STREAMER_OUTPUT_TOPIC"]
    await create_topics(bs, [topic_in], partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bs, linger_ms=5)
    await producer.start()
    futs = [await producer.send(topic_in, value=tick(k, t), key=f"k{k}".encode())
            for t in range(ticks_per_key) for k in range(keys)]
    await asyncio.gather(*futs)
    await producer.stop()
    n = keys * ticks_per_key
    proc = start_daemon(env) if learner != "passthrough" else start_passthrough(env)
    await asyncio.to_thread(proc.wait, 600)
    preds = await consume(bs, topic_out, n, settle=0.5)
    stamps = np.sort(np.array([p.timestamp for p in preds]) / 1000)
    bursts = split_bursts(stamps)
    span = stamps[-1] - stamps[0]
    if learner == "passthrough" and span > 0:
        # it produces each record as it consumes it, so no part of its output was made before the first stamp,
        # whether or not its batches leave pauses between them: every record counts (the daemon's first
        # batch is all made before its first stamp, so there it is left out)
        rate = (len(stamps) - 1) / span
    elif len(bursts) >= 3:
        rate = (len(stamps) - bursts[0]) / span
    else:
        raise RuntimeError(f"only {len(bursts)} batches: give the run more ticks so that a rate can be measured")
    return {"learner": learner, "keys": keys, "ticks": n, "predictions": len(preds), "batches": len(bursts),
            "seconds": float(span), "ticks_per_s": rate}


def split_bursts(stamps: np.ndarray, gap_s: float = 0.05) -> list[int]:
    """Sizes of the bursts of sorted timestamps (a batch is published in one go; the next one
    comes after a model step of at least tens of milliseconds)."""
    cuts = np.flatnonzero(np.diff(stamps) > gap_s) + 1
    return np.diff(np.concatenate([[0], cuts, [len(stamps)]])).tolist()


def offer(bs: str, topic: str, keys: int, rate: float, seconds: float) -> tuple[dict[tuple[str, int], float], float]:
    """Produce keys round robin at `rate` ticks/s for `seconds` through librdkafka (paced every 1 ms);
    returns each tick's create time by (key, ts) and the rate actually offered."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bs, "linger.ms": 1, "enable.idempotence": False, "acks": "all"})
    sent: dict[tuple[str, int], float] = {}

    def delivered(err, msg) -> None:  # noqa: ANN001  librdkafka's callback
        if err is None:
            q = orjson.loads(msg.value())
            sent[(q["key"], q["ts"])] = msg.timestamp()[1] / 1000

    n = int(rate * seconds)
    start = time.monotonic()
    for i in range(n):
        k, t = i % keys, i // keys
        p.produce(topic, value=tick(k, t), key=f"k{k}".encode(), on_delivery=delivered)
        ahead = (i + 1) / rate - (time.monotonic() - start)
        if ahead > 0.001:
            p.poll(0)
            time.sleep(ahead)
    offered = n / (time.monotonic() - start)
    if p.flush(60) != 0:
        raise RuntimeError("the load generator could not deliver every tick")
    return sent, offered


async def latency(bs: str, learner: str, keys: int, rate: float, seconds: float, partitions: int,
                  **over: str) -> dict:
    """The daemon (or, learner "passthrough", the bare aiokafka pass-through: the floor that the broker
    and the Kafka client set) under ticks offered at `rate`; tick-to-output latency."""
    bare = learner == "passthrough"
    env = daemon_env(bs, "sgd" if bare else learner, burst="false", linger_ms="5", **over)
    topic_in, topic_out = env["STREAMER_INPUT_TOPIC"], env["STREAMER_OUTPUT_TOPIC"]
    await create_topics(bs, [topic_in], partitions)
    port = int(env["STREAMER_METRICS_PORT"])
    if bare:  # idles out only after the run: the generator's ticks keep it busy until then
        ready = Path(tempfile.mkdtemp()) / "ready"
        proc = start_passthrough({**env, "STREAMER_BURST_IDLE_S": "5", "PASSTHROUGH_READY_FILE": str(ready)})
    else:
        proc = start_daemon(env)
    while not (ready.exists() if bare else await asyncio.to_thread(http_status, port, "/readyz") == 200):
        if proc.poll() is not None:
            raise RuntimeError(f"{learner} exited before it was ready")
        await asyncio.sleep(0.2)
    sent, offered = await asyncio.to_thread(offer, bs, topic_in, keys, rate, seconds)
    n = len(sent)
    preds = await consume(bs, topic_out, n, settle=1.0)
    metrics = {} if bare else await asyncio.to_thread(scrape, port)
    proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.wait, 60)
    if bare:
        shutil.rmtree(ready.parent, ignore_errors=True)
    pairs = np.array([(sent[(q["key"], q["ts"])], p.timestamp / 1000)
                      for p in preds for q in [orjson.loads(p.value)] if (q["key"], q["ts"]) in sent])
    pairs = pairs[np.argsort(pairs[:, 0])]  # [n, 2] (tick sent, prediction stamped), in send order
    lat = pairs[:, 1] - pairs[:, 0]
    thirds = np.array_split(lat, 3)  # drift over the run: the first and the last third of the ticks sent
    return {"learner": learner, "keys": keys, "offered_ticks_per_s": rate, "achieved_offer_ticks_per_s": offered,
            "ticks": n, "predictions": len(preds), "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "max_ms": float(lat.max() * 1e3),
            "p99_first_third_ms": float(np.percentile(thirds[0], 99) * 1e3),
            "p99_last_third_ms": float(np.percentile(thirds[-1], 99) * 1e3),
            # how full the model's waves were (few keys: a wave's cost is about fixed)
            "ticks_per_wave": (metrics["streamer_ticks_consumed_total"] / max(1.0, metrics["streamer_waves_total"])
                               if metrics else float("nan"))}


def median_run(runs: list[dict], field: str) -> dict:
    """The run with the median `field`, annotated with the spread over all runs (this machine is noisy)."""
    ordered = sorted(runs, key=lambda r: r[field])
    mid = dict(ordered[len(ordered) // 2])
    mid["runs"] = len(runs)
    mid[f"{field}_all"] = [round(r[field], 1) for r in runs]
    return mid


async def main_async(args) -> dict:
    out: dict = {"throughput": [], "latency": []}
    if not (args.only_compare or args.only_latency):
        # Each run gets a broker of its own: the embedded broker keeps every topic in memory, and
        # the gigabytes of input, output and checkpoints of earlier runs slow the later ones down
        # (measured: the 4-key latency p99 20 ms on a fresh broker, 117 ms after the throughput runs).
        # The daemon and its ceiling alternate, so the machine's drift hits both alike.
        cases = [("passthrough", args.sgd_ticks), ("sgd", args.sgd_ticks), ("ensemble", args.ensemble_ticks),
                 ("pf", args.pf_ticks)]
        runs: dict[str, list[dict]] = {learner: [] for learner, _ in cases}
        for _ in range(args.repeat):
            for learner, ticks in cases:
                with EmbeddedBroker() as broker:
                    runs[learner].append(await throughput(broker.bootstrap_servers, learner, args.keys, ticks,
                                                          args.partitions))
        ceiling = median_run(runs["passthrough"], "ticks_per_s")["ticks_per_s"]
        for learner, _ in cases:
            row = median_run(runs[learner], "ticks_per_s")
            row["share_of_passthrough"] = row["ticks_per_s"] / ceiling
            out["throughput"].append(row)
    if not args.only_compare:
        # each daemon row beside the pass-through's at the same load: the latency floor of the broker and
        # the Kafka client on this machine, in the same run; the cases alternate, each on a fresh broker
        grid = [(learner, args.keys, r) for r in args.rates for learner in ("passthrough", "sgd")] + [
            (learner, args.few_keys, args.few_rate) for learner in ("passthrough", "sgd", "ensemble")]
        lat: dict[tuple, list[dict]] = {case: [] for case in grid}
        for _ in range(args.repeat):
            for learner, keys, rate in grid:
                with EmbeddedBroker() as broker:
                    lat[(learner, keys, rate)].append(await latency(broker.bootstrap_servers, learner, keys, rate,
                                                                    args.seconds, args.partitions))
        out["latency"] = [median_run(runs, "p99_ms") for runs in lat.values()]
    if args.compare:
        out["compare"] = await compare(args)
    return out


async def compare(args) -> list[dict]:
    """An A/B of one setting (NAME=V1,V2: STREAMER_NAME), its runs alternating so that the machine's
    drift hits every value alike."""
    name, _, values = args.compare.partition("=")
    by_value: dict[str, list[dict]] = {v: [] for v in values.split(",") if v}
    if args.compare_latency:  # the few-keys latency run, a fresh broker each (see main_async)
        for _ in range(args.compare_repeat):
            for v in by_value:
                with EmbeddedBroker() as broker:
                    r = await latency(broker.bootstrap_servers, args.compare_learner, args.few_keys, args.few_rate,
                                      args.seconds, args.partitions, **{name: v})
                by_value[v].append({**r, "setting": name, "value": v})
        return [median_run(runs, "p99_ms") for runs in by_value.values()]
    with EmbeddedBroker() as broker:
        for _ in range(args.compare_repeat):
            for v in by_value:
                r = await throughput(broker.bootstrap_servers, args.compare_learner, args.keys, args.compare_ticks,
                                     args.partitions, **{name: v})
                by_value[v].append({**r, "setting": name, "value": v})
    return [median_run(runs, "ticks_per_s") for runs in by_value.values()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--sgd-ticks", type=int, default=200, help="ticks per key in the sgd throughput run")
    ap.add_argument("--pf-ticks", type=int, default=100, help="ticks per key in the pf throughput run")
    ap.add_argument("--ensemble-ticks", type=int, default=50,
                    help="ticks per key in the run of the default learner, the ensemble")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rates", type=lambda v: [float(r) for r in v.split(",")], default=[2000.0, 5000.0, 10000.0],
                    help="offered ticks/s of the latency runs over --keys keys")
    ap.add_argument("--few-keys", type=int, default=4, help="keys of the few-keys latency run")
    ap.add_argument("--few-rate", type=float, default=1000.0, help="offered ticks/s of the few-keys latency run")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the median run is reported")
    ap.add_argument("--compare", default="", help="also an A/B of one setting, e.g. batch_budget_ms=250,1000000 "
                    "(the latter: a whole fetched batch in one chunk) or torch_threads=0,1")
    ap.add_argument("--compare-learner", default="sgd")
    ap.add_argument("--compare-ticks", type=int, default=200, help="ticks per key in each comparison run")
    ap.add_argument("--compare-repeat", type=int, default=5, help="runs per value")
    ap.add_argument("--compare-latency", action="store_true",
                    help="the A/B on the few-keys latency run (--few-keys, --few-rate, --seconds), not throughput")
    ap.add_argument("--only-compare", action="store_true", help="skip the main figures")
    ap.add_argument("--only-latency", action="store_true", help="skip the throughput runs")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/daemon.json"))
    ap.add_argument("--passthrough", action="store_true", help=argparse.SUPPRESS)  # the ceiling's own process
    args = ap.parse_args()
    if args.passthrough:
        asyncio.run(passthrough(dict(os.environ)))
        return
    res = asyncio.run(main_async(args))
    console = Console()
    t = Table(title="daemon on the embedded broker, sustained throughput (2-core machine)")
    for c in ("learner", "keys", "ticks", "ticks/s (median)", "share of pass-through", "all runs"):
        t.add_column(c, justify="right")
    for r in res["throughput"]:
        t.add_row(r["learner"], str(r["keys"]), str(r["ticks"]), f"{r['ticks_per_s']:,.0f}",
                  f"{r['share_of_passthrough']:.0%}", ", ".join(f"{v:,.0f}" for v in r["ticks_per_s_all"]))
    if res["throughput"]:
        console.print(t)
    t = Table(title="tick-to-prediction latency at a fixed offered rate")
    for c in ("learner", "keys", "offered ticks/s", "achieved", "ticks", "p50 ms", "p99 ms (median)", "max ms",
              "ticks/wave", "p99 all runs"):
        t.add_column(c, justify="right")
    for r in res["latency"]:
        t.add_row(r["learner"], str(r["keys"]), f"{r['offered_ticks_per_s']:,.0f}",
                  f"{r['achieved_offer_ticks_per_s']:,.0f}", str(r["ticks"]),
                  f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['max_ms']:.1f}",
                  "-" if math.isnan(r["ticks_per_wave"]) else f"{r['ticks_per_wave']:.2f}",
                  ", ".join(f"{v:.0f}" for v in r["p99_ms_all"]))
    if res["latency"]:
        console.print(t)
    if res.get("compare") and "p99_ms" in res["compare"][0]:
        c0 = res["compare"][0]
        t = Table(title=f"{c0['learner']} latency, {c0['keys']} keys at {c0['offered_ticks_per_s']:,.0f} ticks/s, "
                        f"by STREAMER_{c0['setting'].upper()} (runs alternating)")
        for c in ("value", "p50 ms", "p99 ms (median run)", "p99 first / last third", "ticks/wave", "p99 all runs"):
            t.add_column(c, justify="right")
        for r in res["compare"]:
            t.add_row(r["value"], f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                      f"{r['p99_first_third_ms']:.0f} / {r['p99_last_third_ms']:.0f}", f"{r['ticks_per_wave']:.2f}",
                      ", ".join(f"{v:.0f}" for v in r["p99_ms_all"]))
        console.print(t)
    elif res.get("compare"):
        name = res["compare"][0]["setting"]
        t = Table(title=f"{res['compare'][0]['learner']} throughput by STREAMER_{name.upper()} (runs alternating)")
        for c in ("value", "ticks/s (median)", "bursts (median run)", "all runs"):
            t.add_column(c, justify="right")
        for r in res["compare"]:
            t.add_row(r["value"], f"{r['ticks_per_s']:,.0f}", str(r["batches"]),
                      ", ".join(f"{v:,.0f}" for v in r["ticks_per_s_all"]))
        console.print(t)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
