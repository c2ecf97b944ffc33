"""A real Prometheus (Debian's package, loopback only) scrapes a real daemon fed through the
embedded broker; every Grafana panel expression and every alert rule expression then runs through
Prometheus's HTTP API: each parses and evaluates, and each dashboard panel returns data."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from streamer.broker import free_port
from tests.deploy.conftest import DEPLOY, tool
from tests.helpers import daemon_process, wait_ready
from tests.kafka_helpers import create_topics, http_status, unique

RATE_WINDOW = "10s"  # stands in for Grafana's $__rate_interval at a 1 s scrape interval


def dashboard_targets() -> list[tuple[str, str]]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "streamer.json").read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def alert_rules() -> list[tuple[str, str]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


@contextlib.contextmanager
def prometheus(tmp: Path, target_port: int) -> Iterator[int]:
    """Prometheus on a loopback port, scraping the daemon every second with the shipped alert rules."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "scrape_configs": [{"job_name": "streamer", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"))  # noqa: SIM115
    try:
        deadline = time.monotonic() + 60
        while http_status(port, "/-/ready") != 200:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus never became ready"
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def api(port: int, path: str, **params: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # a bad expression answers 400 with the parser's error
        return json.loads(exc.read())


async def feed(bootstrap: str, topic: str, stop: asyncio.Event) -> int:
    """20 keys at ~100 ticks/s, with a malformed message now and then (the dead-letter panel)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    sent, t = 0, 0
    try:
        while not stop.is_set():
            for k in range(20):
                value = orjson.dumps({"key": f"s{k}", "ts": t, "value": math.sin(t / 5 + k)})
                await producer.send(topic, value=value, key=f"s{k}".encode())
            if t % 10 == 0:
                await producer.send(topic, value=b"{not json", key=b"s0")
            t += 1
            sent += 20
            await asyncio.sleep(0.2)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


@pytest.mark.slow
async def test_dashboard_and_alert_expressions_run_against_a_live_daemon(broker, tmp_path):
    bs = broker.bootstrap_servers
    topic_in = unique("in")
    await create_topics(bs, [topic_in], 2)
    metrics_port = free_port()
    env = {"STREAMER_BOOTSTRAP_SERVERS": bs, "STREAMER_INPUT_TOPIC": topic_in,
           "STREAMER_OUTPUT_TOPIC": unique("out"), "STREAMER_DLQ_TOPIC": unique("dlq"),
           "STREAMER_GROUP_ID": unique("g"),
           "STREAMER_METRICS_HOST": "127.0.0.1", "STREAMER_METRICS_PORT": str(metrics_port),
           "STREAMER_CHECKPOINT_INTERVAL_S": "1", "STREAMER_SESSION_TIMEOUT_MS": "6000",
           "STREAMER_HEARTBEAT_INTERVAL_MS": "500", "STREAMER_LOG_LEVEL": "warning"}
    with daemon_process(env) as proc, prometheus(tmp_path, metrics_port) as prom:
        await asyncio.to_thread(wait_ready, metrics_port, proc)
        stop = asyncio.Event()
        feeder = asyncio.create_task(feed(bs, topic_in, stop))
        try:
            await asyncio.sleep(15)  # >= 10 scrapes of a busy daemon, so every rate window has data
            targets = await asyncio.to_thread(api, prom, "targets")
            health = [t["health"] for t in targets["data"]["activeTargets"]]
            assert health == ["up"], targets

            empty = []
            for title, expr in dashboard_targets():
                q = expr.replace("$__rate_interval", RATE_WINDOW)
                res = await asyncio.to_thread(api, prom, "query", query=q)
                assert res["status"] == "success", (title, q, res)
                if not res["data"]["result"]:
                    empty.append((title, q))
            assert not empty, f"dashboard panels with no data: {empty}"

            throughput = await asyncio.to_thread(
                api, prom, "query", query=f"sum(rate(streamer_predictions_published_total[{RATE_WINDOW}]))")
            assert float(throughput["data"]["result"][0]["value"][1]) > 20  # predictions flowed while scraped

            for name, expr in alert_rules():
                res = await asyncio.to_thread(api, prom, "query", query=expr)
                assert res["status"] == "success", (name, res)
            rules = await asyncio.to_thread(api, prom, "rules")
            loaded = {r["name"]: r for g in rules["data"]["groups"] for r in g["rules"]}
            assert set(loaded) == {name for name, _ in alert_rules()}
            assert all(r["health"] == "ok" for r in loaded.values()), loaded
            # a healthy, busy daemon fires nothing
            alerts = await asyncio.to_thread(api, prom, "alerts")
            assert alerts["data"]["alerts"] == [], alerts
        finally:
            stop.set()
            await feeder
