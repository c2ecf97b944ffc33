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


def test_a_key_state_of_another_layout_is_another_model_not_damage():
    """The same learner and net, but an option that keeps other state (the ensemble's loss scale): the
    bank refuses the snapshot as another model's (the daemon then starts the key afresh; a damaged one
    would pause its partition), and changes nothing."""
    import torch

    from models.bank import OTHER_MODEL, ModelBank
    from models.cells import NetSpec
    from models.learners import make_learner

    spec = NetSpec(n_in=2, hidden=3)
    old = ModelBank(make_learner("ensemble", spec, eta_scale="fixed"))
    old.step(["k"], torch.ones(1, 2), torch.ones(1))
    new = ModelBank(make_learner("ensemble", spec, eta_scale="relative"))
    new.step(["k"], torch.zeros(1, 2), torch.zeros(1))
    before = {k: v.clone() for k, v in new.state.items()}
    with pytest.raises(ValueError) as refused:
        new.restore(old.snapshot("k"))
    assert str(refused.value).startswith(OTHER_MODEL) and "layout" in str(refused.value)
    assert all(torch.equal(new.state[k], v) for k, v in before.items())
