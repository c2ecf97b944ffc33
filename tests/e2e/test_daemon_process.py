"""`streamer run` as a process, driven only through Kafka and HTTP: start, feed, scrape, SIGTERM, restart."""

from __future__ import annotations

import asyncio
import signal
import time

import orjson
import pytest

from streamer.broker import free_port
from tests.helpers import daemon_process, env_for, predictions, wait_ready, wait_until
from tests.kafka_helpers import consume, create_topics, produce, scrape, unique


def ticks(keys: int, start: int, n: int) -> list[tuple[bytes, bytes]]:
    return [(f"k{k}".encode(), orjson.dumps({"key": f"k{k}", "ts": t, "value": float((t * 7 + k) % 11)}))
            for t in range(start, start + n) for k in range(keys)]


@pytest.mark.slow
def test_daemon_process_publishes_drains_on_sigterm_and_resumes_without_reemitting(broker):
    bs = broker.bootstrap_servers
    topics = {"in": unique("in"), "out": unique("out"), "dlq": unique("dlq")}
    port = free_port()
    env = {"STREAMER_BOOTSTRAP_SERVERS": bs, "STREAMER_INPUT_TOPIC": topics["in"],
           "STREAMER_OUTPUT_TOPIC": topics["out"], "STREAMER_DLQ_TOPIC": topics["dlq"],
           "STREAMER_GROUP_ID": unique("g"), "STREAMER_METRICS_PORT": str(port), "STREAMER_METRICS_HOST": "127.0.0.1",
           "STREAMER_SESSION_TIMEOUT_MS": "3000", "STREAMER_HEARTBEAT_INTERVAL_MS": "500", "STREAMER_HIDDEN": "4",
           "STREAMER_LOG_FORMAT": "json"}
    asyncio.run(create_topics(bs, [topics["in"]], partitions=4))

    with daemon_process(env) as first:
        wait_ready(port, first)
        asyncio.run(produce(bs, topics["in"], ticks(10, 0, 20) + [(b"k1", b"not json")]))
        preds = asyncio.run(consume(bs, topics["out"], 200, settle=0.5))
        assert len(preds) == 200
        deadline = time.monotonic() + 10
        while scrape(port)["streamer_ticks_consumed_total"] < 201 and time.monotonic() < deadline:
            time.sleep(0.2)
        m = scrape(port)
        assert m["streamer_ticks_consumed_total"] == 201 and m["streamer_predictions_published_total"] == 200
        assert m["streamer_dead_letters_total{reason=not_json}"] == 1
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=30)
        assert first.returncode == 0, out
        lines = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert any(rec["event"] == "stopped" and rec["predictions"] == 200 for rec in lines)
        assert all("value" not in rec for rec in lines)  # no per-tick log lines

    with daemon_process(env) as second:
        wait_ready(port, second)
        asyncio.run(produce(bs, topics["in"], ticks(10, 20, 5)))
        preds = asyncio.run(consume(bs, topics["out"], 250, settle=2.0))
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    seen = [(orjson.loads(p.value)["key"], orjson.loads(p.value)["ts"]) for p in preds]
    assert len(seen) == 250 and len(set(seen)) == 250, "committed ticks were predicted again after the restart"
    assert sorted({ts for _, ts in seen}) == list(range(25))
    assert len(asyncio.run(consume(bs, topics["dlq"], 1, timeout=10))) == 1


def lag(port: int) -> float:
    return sum(v for k, v in scrape(port).items() if k.startswith("streamer_consumer_lag{"))


@pytest.mark.slow
def test_a_backlog_flows_at_once_its_lag_falls_and_sigterm_stops_a_pf_daemon_within_10s(broker):
    """20,000 ticks wait before a particle-filter daemon (default settings) starts: predictions flow
    within a second of it being ready, the lag gauge follows the backlog down while it drains, and
    SIGTERM in the middle of it ends the process within 10 s. A restart then finishes the backlog:
    every tick has its prediction, and a tick predicted by both runs got the same one."""
    bs = broker.bootstrap_servers
    env = env_for(bs, learner="pf", hidden="16")
    port = int(env["STREAMER_METRICS_PORT"])
    keys, per_key = 10, 2000
    asyncio.run(create_topics(bs, [env["STREAMER_INPUT_TOPIC"]], partitions=2))
    asyncio.run(produce(bs, env["STREAMER_INPUT_TOPIC"], ticks(keys, 0, per_key)))
    with daemon_process(env) as first:
        wait_ready(port, first)
        ready_at = time.time()
        early = asyncio.run(consume(bs, env["STREAMER_OUTPUT_TOPIC"], 1, timeout=30, settle=0.0))
        first_prediction_s = min(m.timestamp for m in early) / 1000 - ready_at
        assert first_prediction_s < 1.0 + 0.2, first_prediction_s  # (+ wait_ready's polling interval)
        wait_until(lambda: lag(port) > 0, 10, "no lag gauge for the backlog")  # set just after the first chunk's send
        lag_then = lag(port)
        wait_until(lambda: lag(port) < lag_then, 20, "the lag gauge did not follow the backlog down")
        assert 0 < lag(port) < keys * per_key
        first.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        out, _ = first.communicate(timeout=60)
        stop_s = time.monotonic() - t0
        assert first.returncode == 0 and stop_s < 10, (stop_s, out[-3000:])
    with daemon_process({**env, "STREAMER_BURST": "true", "STREAMER_BURST_IDLE_S": "2"}) as second:
        assert second.wait(600) == 0
    got = predictions(asyncio.run(consume(bs, env["STREAMER_OUTPUT_TOPIC"], keys * per_key, settle=1.0)))
    assert set(got) == {(f"k{k}", t) for k in range(keys) for t in range(per_key)}, "ticks lost"
    for (key, t), preds in got.items():
        assert len({(p["seq"], p["prediction"], p["lower"], p["upper"]) for p in preds}) == 1, (key, t, preds)
