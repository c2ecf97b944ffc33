"""State files are data, never code: a crafted checkpoint (a pickle that would run a command, or a
valid checkpoint with bytes flipped) is refused with a ValueError and runs nothing."""

from __future__ import annotations

import itertools
import os
import pickle

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.config import Settings
from streamer.pipeline import Pipeline, Record


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pipeline_with_a_key() -> tuple[Pipeline, bytes]:
    p = Pipeline(Settings(lags=2, hidden=4))
    off = itertools.count()
    for t in range(5):
        p.process([Record("ticks", 0, next(off), None, orjson.dumps({"key": "k", "ts": t, "value": float(t % 3)}))])
    return p, p.snapshot_key("k")


def test_a_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(str(marker)))
    p, good = _pipeline_with_a_key()
    for blob in (payload, good[:4] + payload, b"TSCK" + payload):
        with pytest.raises(ValueError):
            Pipeline(Settings(lags=2, hidden=4)).restore_key(blob)
    assert not marker.exists()


_SHARED: dict[str, bytes] = {}


def _good() -> bytes:
    if "blob" not in _SHARED:
        _SHARED["blob"] = _pipeline_with_a_key()[1]
    return _SHARED["blob"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_checkpoints_are_refused_or_restored_never_crash(data):
    blob = bytearray(_good())
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        del blob[data.draw(st.integers(0, len(blob) - 1)):]
    else:
        blob += data.draw(st.binary(min_size=1, max_size=64))
    p = Pipeline(Settings(lags=2, hidden=4))
    try:
        ks = p.restore_key(bytes(blob))
    except ValueError:
        return
    # a mutation that kept the file well-formed restores a usable key
    assert ks.signature == () and len(ks.lags) == 2
