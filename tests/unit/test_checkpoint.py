"""State framing: round trip, and every malformed file refused with a reason (nothing is executed)."""

from __future__ import annotations

import pickle

import pytest

from models.checkpoint import frame, unframe


def test_round_trip_and_payload_offset():
    blob = frame(b"TEST", 3, {"a": [1, 2], "b": "x"}) + b"payload"
    meta, off = unframe(blob, b"TEST", 3, "test file")
    assert meta == {"a": [1, 2], "b": "x"} and blob[off:] == b"payload"


@pytest.mark.parametrize("blob,message", [
    (pickle.dumps({"a": 1}), "bad magic"),
    (b"TEST\x03", "truncated"),
    (frame(b"TEST", 9, {}), "format 9, this build reads 3"),
    (b"TEST" + b"\x03\x00" + (5).to_bytes(4, "little") + b"{oops", "not valid JSON"),
])
def test_malformed_files_are_refused(blob, message):
    with pytest.raises(ValueError, match=message):
        unframe(blob, b"TEST", 3, "test file")
