"""Settings: environment, overrides, and the README's table agree with the code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from streamer.config import Settings
from tests.helpers import readme_table


def test_readme_configuration_table_matches_settings():
    table = readme_table()
    assert set(table) == set(Settings.model_fields), "README table and Settings fields differ"
    for name, field in Settings.model_fields.items():
        default = field.default if field.default_factory is None else field.default_factory()
        shown = "" if default is None else (str(default).lower() if isinstance(default, bool) else str(default))
        assert table[name] == shown, f"README default of STREAMER_{name.upper()} is {table[name]!r}, code {shown!r}"


def test_one_learner_list():
    """The settings' choices, the CLI's and the registry's are the same list (models.defaults)."""
    import typing

    from models import defaults
    from models.learners import BASELINES, LEARNERS, REGISTRY

    assert typing.get_args(defaults.LearnerName) == defaults.LEARNER_NAMES == LEARNERS
    assert set(REGISTRY) == set(LEARNERS + BASELINES)
    assert Settings().learner == defaults.LEARNER and Settings().hidden == defaults.HIDDEN


def test_environment_then_overrides(monkeypatch):
    monkeypatch.setenv("STREAMER_LEARNER", "pf")
    monkeypatch.setenv("STREAMER_LEARNER_OPTIONS", '{"threshold": 0.3}')
    s = Settings()
    assert s.learner == "pf" and s.learner_config() == {"threshold": 0.3, "n_particles": 64}
    assert Settings(learner="ekf").learner == "ekf"  # a CLI flag wins over the environment
    with pytest.raises(ValidationError):
        Settings(learner="adam")


def test_unknown_learner_option_and_incomplete_sasl_are_refused():
    with pytest.raises(ValueError, match="not options of sgd"):
        Settings(learner="sgd", learner_options={"nope": 1}).learner_config()
    with pytest.raises(ValueError, match="SASL needs"):
        Settings(security_protocol="SASL_PLAINTEXT").kafka_security()
    sasl = Settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
                    sasl_password="s3cr3t-pw")
    assert sasl.kafka_security()["sasl_plain_password"] == "s3cr3t-pw"
    assert "s3cr3t-pw" not in repr(sasl)  # the secret is not in the settings' repr, so not in logs


def test_tls_settings_build_a_verifying_client_context(tmp_path):
    import ssl

    ca = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    sec = Settings(security_protocol="SSL", ssl_cafile=str(ca)).kafka_security()
    ctx = sec["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    with pytest.raises(ValueError, match=r"STREAMER_SSL_CAFILE=.*missing.pem cannot be read"):
        Settings(security_protocol="SSL", ssl_cafile=str(tmp_path / "missing.pem")).kafka_security()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
async def test_sasl_over_tls_reaches_the_kafka_client(mechanism, tmp_path):
    """Tansu speaks neither SASL/SCRAM nor TLS, so the client configuration is checked where aiokafka keeps it:
    the mechanism, the credentials, and a verifying TLS context (TLS itself is tested end to end through a
    TLS-terminating proxy in tests/e2e/test_broker_faults.py)."""
    import ssl

    import trustme
    from aiokafka import AIOKafkaConsumer

    from streamer.daemon import Daemon

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "pw").write_text("from-a-file\n")
    s = Settings(security_protocol="SASL_SSL", sasl_mechanism=mechanism, sasl_username="svc",
                 sasl_password_file=str(tmp_path / "pw"), ssl_cafile=str(tmp_path / "ca.pem"), metrics_port=0)
    consumer = AIOKafkaConsumer(**Daemon(s)._kafka_args())
    client = consumer._client
    assert client._security_protocol == "SASL_SSL" and client._sasl_mechanism == mechanism
    assert (client._sasl_plain_username, client._sasl_plain_password) == ("svc", "from-a-file")
    ctx = client._ssl_context
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert any(c["subject"] for c in ctx.get_ca_certs()), "the CA file was not loaded"
    assert "from-a-file" not in repr(s)
    with pytest.raises(ValueError, match="PASSWORD_FILE unreadable"):
        Settings(security_protocol="SASL_SSL", sasl_mechanism=mechanism, sasl_username="svc",
                 sasl_password_file=str(tmp_path / "missing")).kafka_security()


def test_library_log_lines_are_json_like_ours(capsys):
    """aiokafka logs through the standard library; in JSON mode its lines must be JSON too, or log shippers
    choke on the one line that matters (a TLS failure, a lost broker)."""
    import json
    import logging

    import structlog

    from streamer.logs import configure_logging

    root_handlers = logging.getLogger().handlers[:]
    configure_logging("info", "json")
    try:
        logging.getLogger("aiokafka").error('Unable connect to "%s": %s', "127.0.0.1:9", "refused")
        structlog.get_logger("streamer").warning("broker unreachable, retrying", retry_in_s=0.5)
    finally:  # later tests must not write into this test's captured stream
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = root_handlers
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["logger"] == "aiokafka" and lines[0]["level"] == "error"
    assert lines[0]["event"] == 'Unable connect to "127.0.0.1:9": refused'
    assert lines[1]["event"] == "broker unreachable, retrying"


async def test_metrics_server_binds_only_the_configured_address():
    """STREAMER_METRICS_HOST decides who can scrape: bound to 127.0.0.2, nothing answers on 127.0.0.1."""
    import urllib.request

    from streamer.metrics import HealthServer, Metrics

    server = HealthServer(Metrics("sgd", "lstm", "test"), lambda: True, "127.0.0.2", 0)
    port = await server.start()
    try:
        def get(host: str) -> int:
            with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=3) as resp:
                return int(resp.status)

        assert await asyncio.to_thread(get, "127.0.0.2") == 200
        with pytest.raises(OSError):
            await asyncio.to_thread(get, "127.0.0.1")
    finally:
        await server.stop()


def test_learner_options_are_type_checked_at_start_not_at_the_first_tick():
    assert Settings(learner="sgd", learner_options={"lr": "0.05", "betas": [0.8, 0.9]}).learner_config() == {
        "lr": 0.05, "betas": (0.8, 0.9)}
    with pytest.raises(ValueError, match=r"STREAMER_LEARNER_OPTIONS for sgd: lr='fast'"):
        Settings(learner="sgd", learner_options={"lr": "fast"}).learner_config()
    with pytest.raises(ValueError, match=r"schedule='sometimes'"):
        Settings(learner="sgd", learner_options={"schedule": "sometimes"}).learner_config()
    # and their ranges, where the learners' configs declare them
    for learner, options, message in (("sgd", {"lr": -0.1}, "greater than or equal to 0"),
                                      ("sgd", {"window": 0}, "window"),
                                      ("pf", {"threshold": 1.5}, "less than or equal to 1"),
                                      ("pf", {"n_particles": 1}, "greater than or equal to 2"),
                                      ("ekf", {"p0": 0}, "p0=0"), ("dekf", {"q_init": -1e-3}, "q_init"),
                                      ("ensemble", {"share": 0}, "share"), ("ensemble", {"eta": -1}, "eta")):
        with pytest.raises(ValueError, match=message):
            Settings(learner=learner, learner_options=options).learner_config()
