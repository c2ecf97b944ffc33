"""Daemon settings: environment first (prefix STREAMER_), CLI flags override (see cli.py).

Every field here is a row of the README's configuration table; a test checks they agree.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models import defaults
from models.learners import CONFIGS
from streamer.runtime import GC_YOUNG_THRESHOLD


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMER_", frozen=True, extra="forbid")

    # Kafka
    bootstrap_servers: str = Field("localhost:9092", description="Kafka bootstrap servers, comma-separated")
    input_topic: str = Field("ticks", description="topic the ticks are read from")
    output_topic: str = Field("predictions", description="topic the predictions are written to")
    dlq_topic: str = Field("ticks-dlq", description="dead-letter topic for rejected messages")
    group_id: str = Field("streamer", description="consumer group id")
    client_id: str = Field("streamer", description="Kafka client id")
    session_timeout_ms: int = Field(10_000, description="consumer group session timeout")
    heartbeat_interval_ms: int = Field(1_000, description="consumer heartbeat interval")
    request_timeout_ms: int = Field(
        30_000, ge=1_000, description="a broker request unanswered this long fails and is retried")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism")
    sasl_username: str | None = Field(None, description="SASL user")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged)")
    sasl_password_file: str | None = Field(
        None, description="file holding the SASL password, e.g. a mounted secret (read at connect, never logged)")
    ssl_cafile: str | None = Field(None, description="CA bundle for TLS")
    ssl_certfile: str | None = Field(None, description="client certificate for mutual TLS")
    ssl_keyfile: str | None = Field(None, description="client key for mutual TLS")

    # batching
    # A batch is stepped in waves (the j-th tick of every key), so fewer, fuller batches pay the
    # per-wave and per-batch fixed costs less often when a backlog is drained: 20,000 drained
    # about 12% faster than 5,000 at 1,000 keys (benchmarks/RESULTS.md).
    batch_max: int = Field(20_000, ge=1, description="most ticks in one micro-batch")
    batch_budget_ms: int = Field(
        250, ge=1, description="a micro-batch is stepped and published in chunks of about this much model time "
                               "(its first chunk a fifth of it)")
    linger_ms: int = Field(20, ge=0, description="longest wait to fill a micro-batch")
    fetch_max_wait_ms: int = Field(50, ge=0, description="longest time the broker holds a fetch for new data")
    max_message_bytes: int = Field(65_536, ge=64, description="larger messages go to the DLQ")
    require_kafka_key: bool = Field(
        False, description="ticks without a Kafka key go to the DLQ (missing_kafka_key) instead of being "
                           "counted in streamer_unkeyed_ticks_total and warned about once per key")

    # model
    learner: defaults.LearnerName = Field(
        defaults.LEARNER, description="online learner: ensemble (persistence, RLS, SGD, DEKF, EKF and a feed-forward "
                                      "net mixed per key by fixed-share exponential weights), sgd, ekf, dekf, pf, mlp")
    cell: Literal["lstm", "gru"] = Field(defaults.CELL, description="recurrent cell")
    head: Literal["plain", "skip", "gated"] = Field(defaults.HEAD, description="final-estimate architecture")
    hidden: int = Field(defaults.HIDDEN, ge=1, le=256, description="cell size m")
    lags: int = Field(defaults.LAGS, ge=1, le=256, description="past values of the target in the regressor")
    particles: int = Field(64, ge=2, description="pf: particles per key")
    horizons: str = Field(
        "1", description="ticks ahead to forecast, comma-separated (e.g. 1,6,24): each message carries every "
                         "horizon's forecast and 90% interval in `horizons`; one beyond 1 is learned from the "
                         "tick h ahead when it arrives (delayed labels, no look-ahead)")
    learner_options: dict[str, Any] = Field(
        default_factory=dict, description='JSON of learner config fields, e.g. {"lr": 0.05}')
    seed: int = Field(0, description="seed of every key's random stream")
    warm_start: str | None = Field(
        None, description="warm-start file (`offline train warm-start --layout ticks`): every new key starts "
                          "from its weights; a file that does not fit the model settings is refused at start")
    text_model: str | None = Field(
        None, description="text model file (`offline train text`): each tick gets the feature text_p, the model's "
                          "probability for its `text` (0.5 when it has none)")
    anomaly_model: str | None = Field(
        None, description="autoencoder file (`offline train autoencoder --columns COL`): each prediction gets "
                          "`anomaly`, its window's reconstruction error over the 99th percentile of normal windows")
    # measured (benchmarks/threads.py and daemon.py, RESULTS "torch threads"): for few keys one thread
    # is as fast or faster, and 3-4x faster than two beside a busy process; for a wave of many keys on
    # idle cores two are faster (daemon at 1,000 keys: sgd +12%, pf +60%). 0 takes both.
    torch_threads: int = Field(
        0, ge=0, le=256, description="torch intra-op threads of the model step; 0: one for a wave of fewer than "
                                     "128 ticks, else the cores this process may use (at most 4)")
    gc_threshold: int = Field(
        GC_YOUNG_THRESHOLD, ge=0, description="net allocations between the garbage collector's young collections, "
                                              "start-up's objects frozen out of its scans (0: Python's default, "
                                              "700, nothing frozen); RESULTS \"The garbage collector\"")
    max_keys: int | None = Field(
        None, ge=1, description="live keys per replica, the idlest evicted beyond it (default: as many as "
                                "STREAMER_MEMORY_MB holds at the learner's bytes per key, at most 100,000)")
    memory_mb: int = Field(
        1536, ge=64, description="memory for the keys' model state; sets the default STREAMER_MAX_KEYS (README: "
                                 "bytes per key per learner)")
    changelog_topic: str | None = Field(
        None, description="compacted state topic (default: GROUP_ID-state-changelog, one per consumer group)")
    restore_timeout_s: float = Field(
        120.0, gt=0, description="a restore that has not read its changelog partitions in this long fails and is "
                                 "retried with backoff (the partitions stay paused, the replica not ready)")
    corrupt_state: Literal["pause", "cold"] = Field(
        "pause", description="a key whose newest changelog record is unusable (torn, altered): pause its "
                             "partition and retry, or start that key cold and go on")
    checkpoint_ticks: int = Field(100_000, ge=1, description="checkpoint a partition after this many ticks")
    checkpoint_interval_s: float = Field(
        30.0, gt=0, description="or after this many seconds (Kafka Streams' default commit interval)")
    spill_path: str | None = Field(None, description="SQLite file for evicted keys' state (default: a temporary file)")

    # service
    metrics_host: str = Field("0.0.0.0", description="address of the /metrics, /healthz, /readyz server")
    metrics_port: int = Field(9100, ge=0, le=65535, description="port of that server (0 = any free port)")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["auto", "json", "console"] = Field("auto", description="console on a TTY, else JSON")
    burst: bool = Field(False, description="exit once the input is drained (tests, batch jobs)")
    burst_idle_s: float = Field(3.0, gt=0, description="burst: how long the input must stay empty")

    @field_validator("horizons", mode="before")
    @classmethod
    def _parse_horizons(cls, v: Any) -> str:
        from models.horizons import parse_horizons

        try:
            return ",".join(map(str, parse_horizons(str(v) if not isinstance(v, (list, tuple)) else v)))
        except ValueError:
            raise ValueError(f"horizons are ticks ahead, comma-separated integers in 1..10000 (e.g. 1,6,24), "
                             f"got {v!r}") from None

    def horizon_list(self) -> tuple[int, ...]:
        """STREAMER_HORIZONS as numbers, 1 always first."""
        return tuple(int(h) for h in self.horizons.split(","))

    @field_validator("learner_options", mode="before")
    @classmethod
    def _parse_options(cls, v: Any) -> Any:
        return json.loads(v) if isinstance(v, str) else v

    def learner_config(self) -> dict[str, Any]:
        """Options for the learner's config dataclass, checked against its fields."""
        import dataclasses

        fields = {f.name for f in dataclasses.fields(CONFIGS[self.learner])}
        unknown = sorted(set(self.learner_options) - fields)
        if unknown:
            raise ValueError(f"learner_options {unknown} are not options of {self.learner} (have {sorted(fields)})")
        from pydantic import TypeAdapter, ValidationError

        try:  # types checked (and "0.05" read as 0.05) now, not by a TypeError at the first tick
            checked: Any = TypeAdapter(CONFIGS[self.learner]).validate_python(self.learner_options)
        except ValidationError as exc:
            wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}={e['input']!r}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"STREAMER_LEARNER_OPTIONS for {self.learner}: {wrong}") from None
        opts = {name: getattr(checked, name) for name in self.learner_options}
        if self.learner == "pf":
            opts.setdefault("n_particles", self.particles)
        return opts

    def kafka_security(self) -> dict[str, Any]:
        """aiokafka keyword arguments for the configured security protocol."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            import os

            from aiokafka.helpers import create_ssl_context

            for name, path in (("CAFILE", self.ssl_cafile), ("CERTFILE", self.ssl_certfile),
                               ("KEYFILE", self.ssl_keyfile)):
                if path and not os.access(path, os.R_OK):
                    raise ValueError(f"STREAMER_SSL_{name}={path} cannot be read")
            # a client context: verifies the broker's certificate and host name (no CA file = system CAs)
            out["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile)
        if self.security_protocol.startswith("SASL"):
            password = self.sasl_password.get_secret_value() if self.sasl_password is not None else None
            if password is None and self.sasl_password_file:
                try:
                    password = open(self.sasl_password_file, encoding="utf-8").read().rstrip("\r\n")
                except OSError as exc:
                    raise ValueError(f"STREAMER_SASL_PASSWORD_FILE unreadable: {exc.strerror}") from None
            if not (self.sasl_mechanism and self.sasl_username and password):
                need = "STREAMER_SASL_MECHANISM, STREAMER_SASL_USERNAME and STREAMER_SASL_PASSWORD (or _FILE)"
                raise ValueError(f"SASL needs {need}")
            # aiokafka takes the user and password under these names for PLAIN and SCRAM alike
            out.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                       sasl_plain_password=password)
        return out

    def changelog(self) -> str:
        return self.changelog_topic or f"{self.group_id}-state-changelog"

    def model_name(self) -> str:
        return f"{self.cell}+{self.learner}"
