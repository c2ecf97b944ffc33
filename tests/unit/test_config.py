"""Settings: environment, overrides, and the README's table agree with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from streamer.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_table() -> dict[str, str]:
    rows = re.findall(r"^\| `STREAMER_([A-Z0-9_]+)` \| `?([^|`]*)`? \|", README.read_text(), flags=re.M)
    return {name.lower(): default.strip() for name, default in rows}


def test_readme_configuration_table_matches_settings():
    table = readme_table()
    assert set(table) == set(Settings.model_fields), "README table and Settings fields differ"
    for name, field in Settings.model_fields.items():
        default = field.default if field.default_factory is None else field.default_factory()
        shown = "" if default is None else (str(default).lower() if isinstance(default, bool) else str(default))
        assert table[name] == shown, f"README default of STREAMER_{name.upper()} is {table[name]!r}, code {shown!r}"


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
        Settings(learner_options={"nope": 1}).learner_config()
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
    with pytest.raises(FileNotFoundError):
        Settings(security_protocol="SSL", ssl_cafile=str(tmp_path / "missing.pem")).kafka_security()
