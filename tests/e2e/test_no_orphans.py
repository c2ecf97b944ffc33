"""No Tansu process outlives what started it: `streamer broker`, `streamer demo` and the test
fixtures' EmbeddedBroker, whether they exit, get SIGTERM/SIGINT, or are killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from streamer.broker import free_port
from tests.helpers import wait_until


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, waiting for init to reap it
    except psutil.NoSuchProcess:
        return True


def broker_child(parent: psutil.Process, timeout: float = 60) -> int:
    """The pid of the Tansu process under `parent`, once it runs."""
    found: list[int] = []

    def look() -> bool:
        found[:] = [c.pid for c in parent.children(recursive=True) if "broker" in c.cmdline()[1:2]]
        return bool(found)

    wait_until(look, timeout, "no broker process appeared")
    return found[0]


def _interruptible() -> None:
    # a job started in the background by a non-interactive shell (as CI may run us) inherits SIGINT
    # ignored, and Python then leaves it ignored: give the child the Ctrl-C a terminal would
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "120"}, stdin=subprocess.DEVNULL,
                            preexec_fn=_interruptible)


FIXTURE = ("from streamer.broker import EmbeddedBroker\nimport sys, time\n"
           "b = EmbeddedBroker().start()\nprint('ready', flush=True)\ntime.sleep(600)\n")


@pytest.mark.parametrize("what", ["broker", "demo", "fixture"])
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_the_broker_dies_with_its_parent(what, how):
    args = {"broker": ["-m", "streamer.cli", "broker", "--port", str(free_port())],
            "demo": ["-m", "streamer.cli", "demo", "--rows", "2000"],
            "fixture": ["-c", FIXTURE]}[what]
    proc = start(args)
    try:
        pid = broker_child(psutil.Process(proc.pid))
        time.sleep(0.5)  # let it get going (the demo: its daemon is joining)
        proc.send_signal(how)
        proc.wait(30)
        wait_until(lambda: gone(pid), 2.0, f"broker {pid} outlived its parent ({what}, {how.name})")
        out = proc.stdout.read() if proc.stdout else ""
        if how != signal.SIGKILL and what == "broker":  # a clean stop, not just the kernel's
            assert proc.returncode == 0 and "broker stopped" in out, out[-2000:]
        if how != signal.SIGKILL and what == "demo":  # drained and stopped its broker itself
            assert proc.returncode == 130 and "demo stopped" in out, out[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_broker_that_exits_normally_takes_its_broker_along():
    proc = subprocess.run([sys.executable, "-c", "from streamer.broker import EmbeddedBroker\n"
                           "b = EmbeddedBroker().start()\nprint(b._proc.pid)\n"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    pid = int(proc.stdout.strip())
    wait_until(lambda: gone(pid), 2.0, "a broker outlived a parent that exited without stopping it")
