"""Network trouble and a broker restart under a running daemon process: nothing is lost.

A fault-injecting proxy (tests/faultproxy.py) sits between the daemon and the embedded broker,
which advertises the proxy's port, so every connection passes through it. The daemon must report
not-ready while cut off, reconnect on its own, and once healed every tick has its prediction,
duplicates only as at-least-once allows (same key, same seq, same value).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.broker import EmbeddedBroker, free_port
from tests.faultproxy import FaultProxy
from tests.helpers import daemon_process, env_for, predictions, stream
from tests.kafka_helpers import consume, create_topics, http_status, produce, scrape

KEYS, TICKS = 12, 80


@contextlib.contextmanager
def daemon_behind_proxy(tmp_path: Path) -> Iterator[tuple[FaultProxy, str, dict[str, str], subprocess.Popen]]:
    """A ready daemon process whose every connection to the embedded broker passes the proxy:
    (proxy, bootstrap servers, the daemon's variables, the process); its log in tmp_path/daemon.log."""
    proxy = FaultProxy(upstream_port=free_port())
    with proxy, EmbeddedBroker(port=proxy.upstream[1], advertised_port=proxy.port):
        bs = f"{proxy.host}:{proxy.port}"
        env = env_for(bs, batch_max="40", checkpoint_ticks="200", request_timeout_ms="4000")
        asyncio.run(create_topics(bs, [env["STREAMER_INPUT_TOPIC"]], 2))
        with daemon_process(env, tmp_path / "daemon.log") as proc:
            wait_for(lambda: http_status(int(env["STREAMER_METRICS_PORT"]), "/readyz") == 200, 60, "ready",
                     tmp_path / "daemon.log")
            yield proxy, bs, env, proc


def wait_for(predicate, timeout: float, what: str, log: Path | None = None) -> float:  # type: ignore[no-untyped-def]
    """Poll until `predicate()` is true; returns the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"{what} not within {timeout:.0f} s\n{tail}")


def assert_every_tick_once_or_marked(got: dict[tuple[str, int], list[dict]], keys: int, ticks: int) -> int:
    assert set(got) == {(f"s{k}", t) for t in range(ticks) for k in range(keys)}, "a tick lost its prediction"
    dups = {tick: ps for tick, ps in got.items() if len(ps) > 1}
    for ps in dups.values():  # a duplicate repeats the same prediction under the same seq: consumers drop it
        assert len({p["seq"] for p in ps}) == 1
        assert ps[0]["prediction"] == pytest.approx(ps[1]["prediction"], rel=1e-5)
    for k in range(keys):  # every key saw each of its ticks exactly once, in order
        assert sorted(got[(f"s{k}", t)][0]["seq"] for t in range(ticks)) == list(range(1, ticks + 1))
    return sum(len(ps) - 1 for ps in dups.values())


@pytest.mark.slow
def test_cuts_delays_and_dropped_packets_lose_no_prediction(tmp_path):
    items = stream(0, TICKS, KEYS)
    quarter = len(items) // 4
    log = tmp_path / "daemon.log"
    with daemon_behind_proxy(tmp_path) as (proxy, bs, env, proc):
        topic_in, topic_out = env["STREAMER_INPUT_TOPIC"], env["STREAMER_OUTPUT_TOPIC"]
        port = int(env["STREAMER_METRICS_PORT"])
        asyncio.run(produce(bs, topic_in, items[:quarter]))
        asyncio.run(consume(bs, topic_out, quarter, settle=0.2))

        # 1. the link is cut mid-stream: ticks are in the broker, the daemon is working on them
        asyncio.run(produce(bs, topic_in, items[quarter : 2 * quarter]))
        proxy.cut()
        wait_for(lambda: http_status(port, "/readyz") == 503, 15, "not-ready while cut off", log)
        time.sleep(4)
        refused_while_cut = proxy.stats.refused
        proxy.heal()
        wait_for(lambda: http_status(port, "/readyz") == 200, 60, "ready again after the cut", log)

        # 2. a slow link, then a black hole (packets dropped, connections left open)
        proxy.delay(0.05)
        asyncio.run(produce(bs, topic_in, items[2 * quarter : 3 * quarter]))
        time.sleep(1)
        proxy.blackhole()
        wait_for(lambda: http_status(port, "/readyz") == 503, 15, "not-ready in the black hole", log)
        time.sleep(3)
        proxy.heal()
        wait_for(lambda: http_status(port, "/readyz") == 200, 60, "ready again after the black hole", log)

        asyncio.run(produce(bs, topic_in, items[3 * quarter :]))
        msgs = asyncio.run(consume(bs, topic_out, len(items), timeout=90, settle=2.0))
        assert proc.poll() is None, "the daemon died of a network fault"
        metrics = scrape(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        duplicates = assert_every_tick_once_or_marked(predictions(msgs), KEYS, TICKS)
        assert duplicates <= len(items) // 2  # at most what was processed but not committed when cut
        assert refused_while_cut >= 2, "the daemon did not keep trying while cut off"
        assert metrics["streamer_ready"] == 1
        assert metrics["streamer_ticks_consumed_total"] >= len(items)
        print(f"faults: refused {refused_while_cut} reconnects while cut, {proxy.stats.cut} connections cut, "
              f"{proxy.stats.dropped_bytes} bytes dropped, {duplicates} duplicates, "
              f"{metrics['streamer_delivery_retries_total']:.0f} delivery retries")


@contextlib.contextmanager
def s3_storage() -> Iterator[dict[str, str]]:
    """A local S3 (moto's server) with a `tansu` bucket: Tansu's storage that outlives the broker process."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT": f"http://{host}:{port}", "AWS_ALLOW_HTTP": "true"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT"], aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket="tansu")
    try:
        yield env
    finally:
        server.stop()


@pytest.mark.slow
def test_broker_restarted_under_the_daemon_loses_no_prediction(tmp_path):
    keys, ticks = 6, 40
    with s3_storage() as aws:
        broker = EmbeddedBroker(storage="s3://tansu/", env=aws, log_path=tmp_path / "broker.log")
        with broker:
            bs = broker.bootstrap_servers
            env = env_for(bs, batch_max="30", checkpoint_ticks="60", request_timeout_ms="4000")
            topic_in, topic_out = env["STREAMER_INPUT_TOPIC"], env["STREAMER_OUTPUT_TOPIC"]
            port = int(env["STREAMER_METRICS_PORT"])
            log = tmp_path / "daemon.log"
            asyncio.run(create_topics(bs, [topic_in], 2))
            items = stream(0, ticks, keys)
            half = len(items) // 2
            with daemon_process(env, log) as proc:
                wait_for(lambda: http_status(port, "/readyz") == 200, 60, "ready", log)
                asyncio.run(produce(bs, topic_in, items[:half]))
                asyncio.run(consume(bs, topic_out, half // 2, settle=0.0))  # mid-stream
                broker.stop()
                wait_for(lambda: http_status(port, "/readyz") == 503, 15, "not-ready with the broker gone", log)
                time.sleep(2)
                assert proc.poll() is None, "the daemon died with the broker"
                broker.start()
                wait_for(lambda: http_status(port, "/readyz") == 200, 90, "ready after the broker restart", log)
                asyncio.run(produce(bs, topic_in, items[half:]))
                msgs = asyncio.run(consume(bs, topic_out, len(items), timeout=120, settle=2.0))
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0
            duplicates = assert_every_tick_once_or_marked(predictions(msgs), keys, ticks)
            print(f"broker restart: {len(msgs)} predictions for {len(items)} ticks, {duplicates} duplicates")


@pytest.mark.slow
def test_daemon_speaks_tls_and_refuses_a_broker_it_cannot_verify(tmp_path):
    """TLS end to end: the proxy terminates TLS with a certificate from a test CA, the daemon verifies it
    (STREAMER_SSL_CAFILE) and works; without that CA it never connects and says why."""
    import ssl

    import trustme
    from aiokafka.helpers import create_ssl_context

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    tls = {"security_protocol": "SSL", "ssl_context": create_ssl_context(cafile=str(ca_file))}
    proxy = FaultProxy(upstream_port=free_port(), server_ssl=server_ctx)
    with proxy, EmbeddedBroker(port=proxy.upstream[1], advertised_port=proxy.port):
        bs = f"{proxy.host}:{proxy.port}"
        env = env_for(bs, security_protocol="SSL", ssl_cafile=str(ca_file), burst="true", burst_idle_s="2")
        topic_in, topic_out = env["STREAMER_INPUT_TOPIC"], env["STREAMER_OUTPUT_TOPIC"]
        asyncio.run(create_topics(bs, [topic_in], 2, **tls))
        items = stream(0, 10, 4)
        asyncio.run(produce(bs, topic_in, items, **tls))
        log = tmp_path / "tls.log"
        with daemon_process(env, log) as proc:
            assert proc.wait(120) == 0, log.read_text()[-3000:]
        got = predictions(asyncio.run(consume(bs, topic_out, len(items), settle=0.5, **tls)))
        assert set(got) == {(f"s{k}", t) for t in range(10) for k in range(4)}

        untrusted = {**env, "STREAMER_SSL_CAFILE": str(Path(ssl.get_default_verify_paths().openssl_cafile)),
                     "STREAMER_METRICS_PORT": str(free_port())}
        log = tmp_path / "untrusted.log"
        with daemon_process(untrusted, log) as proc:
            time.sleep(8)
            ready = http_status(int(untrusted["STREAMER_METRICS_PORT"]), "/readyz")
        text = log.read_text()
        assert ready != 200
        assert "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text, text[-3000:]


@pytest.mark.slow
def test_a_30_second_cut_mid_stream_loses_no_prediction(tmp_path):
    """The link to the broker is down for 30 s while ticks wait in it: the group session expires, the
    daemon stays up and not ready, reconnects, rejoins, restores its state, and once healed every tick
    has its prediction (duplicates only as at-least-once allows: same key, same seq, same value)."""
    items = stream(0, TICKS, KEYS)
    half = len(items) // 2
    log = tmp_path / "daemon.log"
    with daemon_behind_proxy(tmp_path) as (proxy, bs, env, proc):
        topic_in, topic_out = env["STREAMER_INPUT_TOPIC"], env["STREAMER_OUTPUT_TOPIC"]
        port = int(env["STREAMER_METRICS_PORT"])
        asyncio.run(produce(bs, topic_in, items[:half]))
        asyncio.run(consume(bs, topic_out, half // 2, settle=0.0))  # the daemon is in the middle of them
        proxy.cut()
        wait_for(lambda: http_status(port, "/readyz") == 503, 15, "not-ready while cut off", log)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            assert proc.poll() is None, "the daemon died during the cut"
            assert http_status(port, "/healthz") == 200 and http_status(port, "/readyz") == 503
            time.sleep(1)
        proxy.heal()
        wait_for(lambda: http_status(port, "/readyz") == 200, 90, "ready again after a 30 s cut", log)
        asyncio.run(produce(bs, topic_in, items[half:]))
        msgs = asyncio.run(consume(bs, topic_out, len(items), timeout=120, settle=2.0))
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        duplicates = assert_every_tick_once_or_marked(predictions(msgs), KEYS, TICKS)
        assert duplicates <= half, duplicates
