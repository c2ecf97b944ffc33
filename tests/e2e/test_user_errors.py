"""A user's mistake is one line on stderr and a non-zero exit, never a traceback (which
STREAMER_LOG_LEVEL=debug adds back). Each case runs `streamer` as a process, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streamer.broker import free_port


def streamer(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamer.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200", **env}, stdin=subprocess.DEVNULL)


def foreign_file(tmp_path) -> str:
    f = tmp_path / "not-a-model.bin"
    f.write_bytes(b"PK\x03\x04 a zip file, say")
    return str(f)


CASES = {
    "broker binary missing (broker)": (["broker", "--port", "0"], {"STREAMER_TANSU_BIN": "/nonexistent/tansu"},
                                       "STREAMER_TANSU_BIN=/nonexistent/tansu is not an executable"),
    "broker binary missing (demo)": (["demo"], {"STREAMER_TANSU_BIN": "/nonexistent/tansu"},
                                     "STREAMER_TANSU_BIN=/nonexistent/tansu is not an executable"),
    "replay without a broker": (["replay", "pkg:tsdata/fpp3/vic_elec.csv", "--series", "Demand",
                                 "--bootstrap-servers", "127.0.0.1:{port}"], {},
                                "no Kafka broker answers at 127.0.0.1:{port}"),
    "tail without a broker": (["tail", "--bootstrap-servers", "127.0.0.1:{port}"], {},
                              "no Kafka broker answers at 127.0.0.1:{port}"),
    "bad learner": (["run"], {"STREAMER_LEARNER": "adam"}, "STREAMER_LEARNER='adam'"),
    "bad number": (["run"], {"STREAMER_HIDDEN": "lots"}, "STREAMER_HIDDEN='lots'"),
    "learner options not JSON": (["run"], {"STREAMER_LEARNER_OPTIONS": "{lr: 0.1"},
                                 "STREAMER_LEARNER_OPTIONS is not valid JSON"),
    "unknown learner option": (["run"], {"STREAMER_LEARNER_OPTIONS": '{"speed": 1}'},
                               "learner_options ['speed'] are not options of ensemble"),
    "option of another learner": (["run"], {"STREAMER_LEARNER_OPTIONS": '{"lr": 0.05}'},
                                  "learner_options ['lr'] are not options of ensemble"),
    "learner option of the wrong type": (["run"], {"STREAMER_LEARNER": "sgd",
                                                   "STREAMER_LEARNER_OPTIONS": '{"lr": "fast"}'},
                                         "STREAMER_LEARNER_OPTIONS for sgd: lr='fast'"),
    "unknown expert": (["run"], {"STREAMER_LEARNER_OPTIONS": '{"experts": ["persistence", "lstm"]}'},
                       "unknown learner 'lstm'"),
    "SASL without a user": (["run"], {"STREAMER_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                      "STREAMER_SASL_MECHANISM": "PLAIN"}, "SASL needs STREAMER_SASL_MECHANISM"),
    "CA file missing": (["run"], {"STREAMER_SECURITY_PROTOCOL": "SSL", "STREAMER_SSL_CAFILE": "/nonexistent/ca.pem"},
                        "STREAMER_SSL_CAFILE=/nonexistent/ca.pem cannot be read"),
    "warm start missing": (["run"], {"STREAMER_WARM_START": "/nonexistent/w.tsmf"},
                           "STREAMER_WARM_START /nonexistent/w.tsmf: No such file or directory"),
    "warm start foreign": (["run"], {"STREAMER_WARM_START": "{foreign}"}, "is not a model file"),
    "text model foreign": (["run"], {"STREAMER_TEXT_MODEL": "{foreign}"}, "is not a model file"),
    "anomaly model missing": (["run"], {"STREAMER_ANOMALY_MODEL": "/nonexistent/ae.tsmf"},
                              "STREAMER_ANOMALY_MODEL /nonexistent/ae.tsmf: No such file or directory"),
    "bench file missing": (["bench", "/nonexistent/x.csv", "--target", "y"], {}, "/nonexistent/x.csv"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_error_is_one_line_and_a_nonzero_exit(case, tmp_path):
    port, foreign = str(free_port()), foreign_file(tmp_path)  # a port nobody listens on

    def fill(text: str) -> str:
        return text.replace("{port}", port).replace("{foreign}", foreign)

    args, env, expected = CASES[case]
    proc = streamer(*[fill(a) for a in args], **{k: fill(v) for k, v in env.items()})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("streamer: error: "), proc.stderr[-3000:]
    assert fill(expected) in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_debug_level_shows_the_traceback_behind_the_line():
    proc = streamer("run", STREAMER_LEARNER_OPTIONS="{lr: 0.1", STREAMER_LOG_LEVEL="debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("streamer: error: bad setting")
