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


def _without(blob: bytes, names: set[str]) -> bytes:
    """A key-state snapshot as a build without the state tensors `names` wrote it (manifest, bytes, checksum)."""
    import zlib

    from models.bank import _MAGIC, FORMAT_VERSION, _width

    meta, off = unframe(blob, _MAGIC, FORMAT_VERSION, "key-state snapshot")
    payload, col, kept, parts = blob[off:], 0, [], []
    for t in meta["tensors"]:
        width = _width(t)
        if t["name"] not in names:
            kept.append(t)
            parts.append(payload[col : col + width])
        col += width
    assert len(kept) == len(meta["tensors"]) - len(names)
    row = b"".join(parts)
    return frame(_MAGIC, FORMAT_VERSION, {**meta, "tensors": kept, "crc32": zlib.crc32(row)}) + row


def test_a_snapshot_from_before_the_conformal_factor_and_the_variable_step_restores_its_learned_state():
    """An upgrade keeps every key's learned state: a snapshot written before the bank kept `b.s` and the
    SGD expert its error correlation restores whole, those at a new key's 0, beside one of today's layout
    in the same batch; a snapshot missing any other tensor is still another model's."""
    import torch

    from models.bank import OTHER_MODEL, ModelBank
    from models.cells import NetSpec
    from models.learners import make_learner

    spec = NetSpec(n_in=2, hidden=3)
    small = {"expert_options": {"dekf": {"window": 2}}}
    src = ModelBank(make_learner("ensemble", spec, **small))
    added = {"b.s", *(f"l.{k}" for k in src.learner.added_state)}
    assert added == {"b.s", "l.x2.e_prev", "l.x2.e_corr", "l.x2.e_sq"}  # the default experts: the sgd is the third
    fresh = ModelBank(make_learner("ensemble", spec, **small))
    fresh.step(["n"], torch.zeros(1, 2), torch.zeros(1))
    fresh.reset(["n"])
    assert all(float(fresh.state[k].abs().max()) == 0 for k in added)  # a new key's are zero
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        src.step(["a", "b"], torch.randn(2, 2, generator=g), torch.randn(2, generator=g))
    assert all(float(src.state[k].abs().min()) > 0 for k in added)  # they moved: a restore that kept them shows
    old_a, new_b = _without(src.snapshot("a"), added), src.snapshot("b")
    dst = ModelBank(make_learner("ensemble", spec, **small))
    keys, refused = dst.restore_many([old_a, new_b])
    assert keys == ["a", "b"] and not refused
    ia, ib, sa, sb = dst.index["a"], dst.index["b"], src.index["a"], src.index["b"]
    for k, v in src.state.items():
        assert torch.equal(dst.state[k][ib], v[sb]), k
        assert torch.equal(dst.state[k][ia], torch.zeros_like(v[sa]) if k in added else v[sa]), k
    with pytest.raises(ValueError) as refused_lam:
        dst.restore(_without(src.snapshot("a"), {"b.lam"}))
    assert str(refused_lam.value).startswith(OTHER_MODEL)
    with pytest.raises(ValueError) as refused_part:  # only some of the added ones missing: no build wrote that
        dst.restore(_without(src.snapshot("a"), {"b.s"}))
    assert str(refused_part.value).startswith(OTHER_MODEL)
