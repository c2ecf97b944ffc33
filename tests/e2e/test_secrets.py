"""Secrets come from the environment and never reach the logs: a daemon configured for SASL, at
debug level, whose broker refuses it, logs its retries without ever printing the password."""

from __future__ import annotations

import subprocess
import time

import pytest

from streamer.broker import free_port
from tests.helpers import daemon_process
from tests.kafka_helpers import http_status, unique

SECRET = "pw-" + "x7Q2-never-in-logs-91"


@pytest.mark.slow
def test_sasl_password_never_appears_in_the_output(broker):
    port = free_port()
    env = {"STREAMER_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "STREAMER_INPUT_TOPIC": unique("in"),
           "STREAMER_GROUP_ID": unique("g"), "STREAMER_METRICS_HOST": "127.0.0.1", "STREAMER_METRICS_PORT": str(port),
           "STREAMER_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "STREAMER_SASL_MECHANISM": "PLAIN",
           "STREAMER_SASL_USERNAME": "streamer", "STREAMER_SASL_PASSWORD": SECRET,
           "STREAMER_LOG_LEVEL": "debug", "STREAMER_LOG_FORMAT": "json"}
    with daemon_process(env) as proc:
        deadline = time.monotonic() + 60
        while http_status(port, "/healthz") != 200 and time.monotonic() < deadline:  # the process is up
            assert proc.poll() is None, "the daemon exited instead of retrying"
            time.sleep(0.2)
        time.sleep(8)  # connection attempts, refusals and retries get logged meanwhile
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "starting" in out  # it did log (so the check below reads real output)
    assert SECRET not in out
    assert "UnsupportedSaslMechanism" in out and "broker unreachable, retrying" in out  # SASL was attempted
