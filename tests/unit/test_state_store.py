"""Durable state at scale, in memory: the bank's slots, whole-blob validation before any write, the
changelog record format (chunks, checksums, tombstones) and the partition state store."""

from __future__ import annotations

import math
import zlib

import orjson
import pytest
import torch

from models.bank import ModelBank
from models.cells import NetSpec
from models.learners import make_learner
from streamer.config import Settings
from streamer.pipeline import Pipeline, Record
from streamer.statelog import CHUNK_PREFIX, ChangelogReader, ChangelogWriter
from streamer.store import PartitionStore

SPEC = NetSpec(n_in=3, hidden=4)


def bank_with(keys: int, learner: str = "sgd") -> ModelBank:
    bank = ModelBank(make_learner(learner, SPEC, **({"n_particles": 4} if learner == "pf" else {})))
    names = [f"k{i}" for i in range(keys)]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        bank.step(names, torch.randn(keys, 3, generator=g, dtype=torch.float64),
                  torch.randn(keys, generator=g, dtype=torch.float64))
    return bank


def contents(bank: ModelBank) -> tuple[list[str], dict[str, torch.Tensor]]:
    return list(bank.names), {k: v.clone() for k, v in bank.state.items()}


def same(a: tuple[list[str], dict[str, torch.Tensor]], b: tuple[list[str], dict[str, torch.Tensor]]) -> bool:
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x40]) + blob[at + 1 :]


@pytest.mark.parametrize("learner", ["sgd", "pf"])
def test_refused_snapshots_leave_the_bank_exactly_as_it_was(learner):
    src = bank_with(3, learner)
    good = src.snapshot("k1")
    dst = bank_with(2, learner)  # k1 is here already, with other state
    dst.state["b.lam"][dst.index["k1"]] += 1.0
    before = contents(dst)
    bad = {"trailing": good + b"\x00\x00", "truncated": good[:-7], "payload bit": flip(good, len(good) - 5),
           "manifest": good.replace(b'"shape":[', b'"shape":[1,', 1), "magic": b"XXXX" + good[4:],
           "other model": bank_with(1, "sgd" if learner == "pf" else "pf").snapshot("k0")}
    for what, blob in bad.items():
        keys, refused = dst.restore_many([blob])
        assert keys == [] and list(refused) == [0], what
        assert same(contents(dst), before), f"a {what} snapshot changed the bank"
        with pytest.raises(ValueError):
            dst.restore(blob)
        assert same(contents(dst), before)
    # a good blob beside bad ones is restored, and only it
    keys, refused = dst.restore_many([bad["truncated"], good, bad["trailing"]])
    assert keys == ["k1"] and sorted(refused) == [0, 2]
    assert all(torch.equal(dst.state[k][dst.index["k1"]], src.state[k][src.index["k1"]]) for k in src.state)


def test_adding_keys_one_at_a_time_grows_capacity_geometrically_and_drop_keeps_every_other_key():
    bank = ModelBank(make_learner("sgd", SPEC))
    capacities = set()
    for i in range(3000):
        bank.add([f"k{i}"])
        capacities.add(bank.capacity)
    assert len(bank) == 3000 and len(capacities) <= 15  # 16, 24, 36, ... x1.5: each growth copies once
    names = list(bank.names)
    snaps = dict(zip(names, bank.snapshot_many(names), strict=True))
    gone = names[::3] + names[-5:]
    bank.drop(gone)
    left = [n for n in names if n not in set(gone)]
    assert sorted(bank.names) == sorted(left) and len(bank.state["b.lam"]) == len(left)
    assert all(bank.index[n] == i for i, n in enumerate(bank.names))
    assert bank.snapshot_many(left) == [snaps[n] for n in left]  # every survivor's row moved intact
    bank.add(["new"])  # a slot freed by the drop is used again, no growth
    assert bank.capacity == max(capacities)


def test_restore_many_matches_one_by_one_and_is_a_single_pass():
    src = bank_with(50)
    blobs = src.snapshot_many(list(src.names))
    many, single = ModelBank(make_learner("sgd", SPEC)), ModelBank(make_learner("sgd", SPEC))
    keys, refused = many.restore_many(blobs)
    for b in blobs:
        single.restore(b)
    assert keys == list(src.names) and not refused
    assert same(contents(many), contents(single)) and same(contents(many), contents(src))
    assert many.capacity == 50  # an empty bank grows once, to exactly what it restores


def pipeline_with(keys: int, **over) -> Pipeline:
    p = Pipeline(Settings(lags=2, hidden=4, **over))
    p.process([Record("t", i % 2, i, f"k{i % keys}".encode(),
                      orjson.dumps({"key": f"k{i % keys}", "ts": i, "value": math.sin(i / 5)}))
               for i in range(6 * keys)])
    return p


def test_a_refused_checkpoint_keeps_the_keys_state_and_says_why():
    src, dst = pipeline_with(4), pipeline_with(4)
    dst.process([Record("t", 0, 1000, b"k0", orjson.dumps({"key": "k0", "ts": 1, "value": 9.0}))])
    before = dst.snapshot_key("k0")
    good = src.snapshot_key("k0")
    for blob in (good + b"\x01", good[:-3], flip(good, len(good) - 2)):
        restored, refused = dst.restore_keys([blob])
        assert restored == [] and list(refused) == [0] and refused[0]
        assert dst.snapshot_key("k0") == before and "k0" in dst.keys
    restored, refused = dst.restore_keys([good, good[:-1]])
    assert [ks.seq for ks in restored] == [src.keys["k0"].seq] and list(refused) == [1]
    assert dst.snapshot_key("k0") == good


def test_the_model_is_tried_at_start_and_the_key_bound_follows_memory(monkeypatch):
    import streamer.pipeline as pipeline_module

    def broken(*args, **kwargs):
        learner = make_learner(*args, **kwargs)

        def step(*a, **k):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
        learner.step = step
        return learner

    with monkeypatch.context() as m:
        m.setattr(pipeline_module, "make_learner", broken)
        with pytest.raises(ValueError, match="cannot run with these settings.*shapes"):
            Pipeline(Settings(hidden=4))
    sgd, pf = Pipeline(Settings(learner="sgd")), Pipeline(Settings(learner="pf", particles=128))
    assert pf.bytes_per_key > 50 * sgd.bytes_per_key
    assert pf.max_keys == Settings().memory_mb * 2**20 // pf.bytes_per_key
    assert sgd.max_keys == Settings().memory_mb * 2**20 // sgd.bytes_per_key
    assert Pipeline(Settings(learner="sgd", hidden=4)).max_keys == 100_000  # the cap
    assert Pipeline(Settings(max_keys=7)).max_keys == 7


def records_of(writer: ChangelogWriter, key: bytes, blob: bytes) -> list[tuple[bytes, bytes | None]]:
    return writer.records(key, blob)


def read(records, group="g", model="lstm+sgd", every: int = 0):
    """The reader's account of these records, with `blobs`: what it handed out, taken every `every` records."""
    reader = ChangelogReader(group, model)
    blobs = {}
    for i, (k, v) in enumerate(records):
        reader.add(k, v)
        if every and i % every == 0:
            blobs.update(reader.take())
    blobs.update(reader.take())
    out = reader.finish()
    out.blobs = {k: bytes(v) for k, v in blobs.items() if k not in out.deleted and k not in out.corrupt}  # type: ignore[attr-defined]
    return out


def test_large_checkpoints_are_chunked_below_a_mebibyte_and_reassembled():
    writer = ChangelogWriter("g", "lstm+sgd")
    big = bytes(range(256)) * 12_000  # 3 MB
    first = writer.records(b"a", big)
    assert len(first) == 5 and all(len(v or b"") < 1 << 20 for _, v in first)
    assert first[-1][0] == b"a" and all(k.startswith(CHUNK_PREFIX) for k, _ in first[:-1])  # chunks, then head
    small = writer.records(b"b", b"tiny")
    assert len(small) == 1
    second = writer.records(b"a", big[::-1])  # a new head, then the old chunks deleted
    assert [v for _, v in second[-4:]] == [None] * 4 and second[-5][0] == b"a"
    for every in (0, 1, 2):  # taken at the end, or a slice at a time while reading: the newest wins
        got = read(first + small + second, every=every)
        assert got.blobs == {b"a": big[::-1], b"b": b"tiny"} and not got.corrupt and not got.orphans
    assert read(first + [(b"a", None)]).deleted == {b"a"}
    # a crash between the new chunks and the new head: the old head and its chunks still stand
    third = writer.records(b"a", big)
    got = read(first + small + second + third[:3])
    assert got.blobs[b"a"] == big[::-1] and len(got.orphans) == 3


def test_torn_altered_and_foreign_records_are_refused_whole():
    writer = ChangelogWriter("g", "lstm+sgd")
    blob = b"x" * 2_000_000
    recs = writer.records(b"a", blob)
    assert read(recs[1:]).corrupt.keys() == {b"a"}  # a chunk missing
    altered = [(k, v if i != 1 else flip(v, 10)) for i, (k, v) in enumerate(recs)]
    got = read(altered)
    assert b"a" not in got.blobs and "checksum" in got.corrupt[b"a"]
    head = writer.records(b"b", b"state")
    assert "checksum" in read([(b"b", flip(head[0][1], len(head[0][1]) - 1))]).corrupt[b"b"]
    other = ChangelogWriter("other-group", "lstm+sgd").records(b"c", b"state")
    got = read(other)
    assert not got.blobs and got.foreign == {"group other-group, model lstm+sgd": 1}
    assert read([(b"d", zlib.compress(b"junk"))]).corrupt.keys() == {b"d"}


def test_partition_store_never_checkpoints_what_it_did_not_restore_or_no_longer_owns():
    store = PartitionStore(checkpoint_ticks=10, checkpoint_interval_s=5.0, backoff_s=1.0)
    store.assign({0, 1, 2})
    assert not store.all_ready() and store.checkpointable() == set() and store.to_restore(0.0) == {0, 1, 2}
    store.restored({0, 1})
    delay = store.restore_failed({2}, "fence timeout", now=100.0)
    assert delay == 1.0 and store.to_restore(100.5) == set() and store.to_restore(101.0) == {2}
    assert store.restore_failed({2}, "again", now=101.0) == 2.0  # backoff doubles
    assert store.checkpointable() == {0, 1} and "fence" not in store.not_ready()[2]
    store.stepped({0, 1})
    assert store.checkpointable() == set()  # stepped, not yet published: its state claims too much
    store.published({0: 50, 1: 7}, {0: 20, 1: 7}, now=200.0)
    assert store.checkpointable() == {0, 1} and store.offsets_to_commit({0, 1}) == {0: 50, 1: 7}
    assert store.due(200.0) == [0]  # 20 ticks past a bound of 10
    store.checkpointed({0}, committed=True, now=200.0)
    assert store.offsets_to_commit({0, 1}) == {1: 7}
    store.revoke({1})
    assert store.checkpointable({0, 1}) == {0} and 1 not in store.due(10_000.0)
    assert store.offsets_to_commit({1}) == {} and store.take_drops() == {1}


def test_only_a_partition_revoked_restored_and_checkpointable_may_keep_its_keys():
    store = PartitionStore(checkpoint_ticks=10, checkpoint_interval_s=5.0)
    store.assign({0, 1, 2})
    store.restored({0, 1})
    store.stepped({1})  # 1 was stepped and not published when revoked: its state claims too much
    store.revoke({0, 1, 2})
    assert store.keepable({0, 1, 2}) == {0}
    assert store.take_drops() == {0, 1, 2} and store.keepable({0}) == set()  # dropped: nothing left to keep


def test_a_snapshot_of_the_format_before_checksums_still_restores():
    from models.checkpoint import frame, unframe

    src = bank_with(2)
    blob = src.snapshot("k0")
    meta, off = unframe(blob, b"TSKS", 2, "snapshot")
    del meta["crc32"]
    old = frame(b"TSKS", 1, meta) + blob[off:]  # as the previous build wrote it
    dst = ModelBank(make_learner("sgd", SPEC))
    assert dst.restore(old) == "k0" and dst.snapshot("k0") == blob
    with pytest.raises(ValueError, match="format 7"):
        dst.restore(frame(b"TSKS", 7, meta) + blob[off:])
