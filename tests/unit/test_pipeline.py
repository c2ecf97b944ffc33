"""The pipeline without Kafka: decoding, dead letters, ordering, waves, eviction."""

from __future__ import annotations

import math

import orjson
import pytest

from streamer.config import Settings
from streamer.pipeline import Pipeline, Record
from streamer.schema import REASONS, TickError, decode_tick
from tests.helpers import BAD, rec, tick


@pytest.mark.parametrize("raw,reason", BAD)
def test_decode_rejects_with_reason(raw, reason):
    with pytest.raises(TickError) as err:
        decode_tick(raw)
    assert err.value.reason == reason and reason in REASONS


def test_decode_accepts_iso_and_epoch_and_kafka_key():
    t = decode_tick(orjson.dumps({"ts": "2026-01-01T00:10:00Z", "value": 3, "features": {"b": 1, "a": 2}}), b"s-1")
    assert t.key == "s-1" and t.ts == 1767226200.0 and t.features == (("a", 2.0), ("b", 1.0))
    assert decode_tick(tick("k", 1.5, ts=12.5)).ts == 12.5


def test_one_prediction_per_valid_tick_in_order_and_bad_ones_dead_lettered():
    p = Pipeline(Settings(lags=2, hidden=4))
    records = []
    for t in range(6):
        for k in ("a", "b"):
            records.append(rec(tick(k, math.sin(t) + (k == "b"), ts=t), offset=len(records)))
        records.append(rec(b"garbage", offset=len(records)))
    out = p.process(records)
    assert len(out.dead) == 6 and all(d.reason == "not_json" for d in out.dead)
    preds = [orjson.loads(o.value) for o in out.predictions]
    assert len(preds) == 12
    for k in ("a", "b"):
        mine = [q for q in preds if q["key"] == k]
        assert [q["seq"] for q in mine] == list(range(1, 7)) and [q["ts"] for q in mine] == list(range(6))
        assert mine[0]["prev_error"] is None and all(q["prev_error"] is not None for q in mine[1:])
        assert all(q["lower"] <= q["prediction"] <= q["upper"] for q in mine)
    dl = orjson.loads(out.dead[0].value)
    assert dl["reason"] == "not_json" and dl["offset"] == 2 and dl["value_b64"] == "Z2FyYmFnZQ=="


def test_batched_and_tick_by_tick_give_the_same_predictions():
    ticks = [rec(tick(k, float(t % 5) * (1 + (k == "b")), ts=t)) for t in range(12) for k in ("a", "b")]
    one = Pipeline(Settings(lags=3, hidden=4))
    single = [orjson.loads(o.value)["prediction"] for r in ticks for o in one.process([r]).predictions]
    batch = Pipeline(Settings(lags=3, hidden=4))
    together = [orjson.loads(o.value) for o in batch.process(ticks).predictions]
    order = sorted(range(len(together)), key=lambda i: (together[i]["seq"], together[i]["key"]))
    assert [together[i]["prediction"] for i in order] == pytest.approx(single, rel=1e-5, abs=1e-6)


def test_feature_set_change_is_dead_lettered_and_key_goes_on():
    p = Pipeline(Settings(lags=2, hidden=4))
    out = p.process([rec(tick("a", 1.0, features={"t": 1.0})), rec(tick("a", 2.0)),
                     rec(tick("a", 3.0, features={"t": 2.0})), rec(tick("z", 1.0))])
    assert [d.reason for d in out.dead] == ["feature_set_changed"]
    assert [orjson.loads(o.value)["key"] for o in out.predictions] == ["a", "z", "a"]
    assert len(p.banks) == 2  # keys with and without features live in different banks


def test_eviction_keeps_state_and_bounds_live_keys():
    p = Pipeline(Settings(lags=2, hidden=4, max_keys=10))
    ref = Pipeline(Settings(lags=2, hidden=4, max_keys=1000))
    evicted = 0
    for t in range(4):
        batch = [rec(tick(f"k{i}", float((i + t) % 3)), offset=30 * t + i) for i in range(30)]
        out = p.process(batch)
        ref.process(batch)
        evicted += len(out.evicted)
        assert p.live_keys <= 10
    assert len(p.spill) + p.live_keys == 30 and evicted >= 20
    last = [rec(tick(f"k{i}", 1.0), offset=120 + i) for i in range(30)]
    a = {orjson.loads(o.value)["key"]: orjson.loads(o.value)["prediction"] for o in p.process(last).predictions}
    b = {orjson.loads(o.value)["key"]: orjson.loads(o.value)["prediction"] for o in ref.process(last).predictions}
    assert a == pytest.approx(b, rel=1e-5)


def test_checkpoint_restore_continues_exactly_and_skips_applied_ticks():
    s = Settings(lags=3, hidden=4, learner="pf", particles=8)
    ticks = [rec(tick(k, math.sin(t) * (1 + (k == "b")), ts=t), offset=t * 2 + (k == "b")) for t in range(20)
             for k in ("a", "b")]
    one = Pipeline(s)
    one.process(ticks[:20])
    blobs = {k: one.snapshot_key(k) for k in one.dirty({0})}
    assert set(blobs) == {"a", "b"}
    two = Pipeline(s)
    for blob in blobs.values():
        two.restore_key(blob)
    # the first 4 records are re-delivered (already applied): skipped, the rest continue identically
    out2 = two.process(ticks[16:])
    out1 = one.process(ticks[20:])
    assert out2.skipped == 4
    assert [o.value for o in out2.predictions] == [o.value for o in out1.predictions]
    with pytest.raises(ValueError, match="checkpoint of a"):
        Pipeline(Settings(lags=3, hidden=4)).restore_key(blobs["a"])
    with pytest.raises(ValueError, match="bad magic"):
        two.restore_key(b"\x80\x04junk")


def test_learns_a_sine_better_than_persistence():
    p = Pipeline(Settings(lags=4, hidden=8, learner="sgd"))
    errs = []
    for t in range(1500):
        out = p.process([rec(tick("s", 10 + math.sin(t / 5), ts=t))])
        errs += out.errors
    model_mse = sum(e * e for e in errs[-500:]) / 500
    persistence = sum((math.sin(t / 5) - math.sin((t - 1) / 5)) ** 2 for t in range(1000, 1500)) / 500
    assert model_mse < 0.5 * persistence


def _backlog(rounds: int) -> list[tuple[Record, int]]:
    """One partition's backlog as producers interleave it: each round the key "fast" ticks twice and
    "a" and "b" once (offsets fast, a, fast, b), then a malformed message. (record, index of the tick
    within its key), so the j-th tick of every key forms wave j."""
    out: list[tuple[Record, int]] = []
    for t in range(rounds):
        for j, (key, n) in enumerate((("fast", 2 * t), ("a", t), ("fast", 2 * t + 1), ("b", t))):
            value = math.cos(n / 3 + len(key)) * (1 + j)
            out.append((Record("ticks", 0, 4 * t + j, key.encode(), tick(key, value, ts=n)), n))
    return out + [(Record("ticks", 0, 4 * rounds, b"a", b"{bad"), -1)]


def test_a_plan_stepped_in_chunks_publishes_exactly_what_one_pass_does():
    s = Settings(lags=3, hidden=4)
    backlog = _backlog(rounds=20)
    records = [r for r, _ in backlog]
    whole = Pipeline(s).process(records)
    p = Pipeline(s)
    plan = p.plan(records)
    chunks = []
    while not plan.done:
        chunks.append(p.run(plan, budget_s=1e-9))  # the smallest budget: one wave a chunk
    assert len(chunks) == 40 and sum(len(c.records) for c in chunks) == len(records)
    assert whole.waves == 40 and [c.waves for c in chunks] == [1] * 40  # fast's 40 ticks: 40 waves
    assert [o.value for c in chunks for o in c.predictions] == [o.value for o in whole.predictions]
    assert [d.reason for c in chunks for d in c.dead] == ["not_json"] and chunks[0].dead  # handled at once
    # after w waves the first tick not handled is fast's w-th, at offset 4 (w // 2) + 2 (w % 2), though
    # a's and b's ticks past it are handled; the dead letter at the end does not let the commit run ahead
    assert [c.commit[("ticks", 0)] for c in chunks[:-1]] == [4 * (w // 2) + 2 * (w % 2) for w in range(1, 40)]
    assert chunks[-1].commit[("ticks", 0)] == len(records)


def test_stopping_in_the_middle_of_a_plan_and_replaying_from_its_commit_loses_and_repeats_nothing():
    """A stop after some chunks: checkpoint what was stepped, commit the plan's offset, restore the keys
    in a new pipeline and re-deliver from that offset; the handled ticks are skipped, the rest continue
    exactly as an uninterrupted run (no tick applied twice, none lost)."""
    s = Settings(lags=3, hidden=4, learner="ekf")
    backlog = _backlog(rounds=15)
    records = [r for r, _ in backlog]
    reference = [o.value for o in Pipeline(s).process(records).predictions]
    first = Pipeline(s)
    plan = first.plan(records)
    waves = 11
    published = [o.value for _ in range(waves) for o in first.run(plan, budget_s=1e-9).predictions]
    commit = plan.commit_offsets()[("ticks", 0)]
    assert commit == 4 * (waves // 2) + 2 * (waves % 2) and not plan.done
    second = Pipeline(s)
    for blob in first.snapshot_keys(first.dirty({0})):
        second.restore_key(blob)
    again = second.process([r for r in records if r.offset >= commit])
    stepped_past_commit = sum(1 for r, n in backlog if 0 <= n < waves and r.offset >= commit)
    assert stepped_past_commit > 0 and again.skipped == stepped_past_commit  # not applied twice
    assert published + [o.value for o in again.predictions] == reference


def test_ticks_without_a_kafka_key_are_counted_and_named_once_or_refused_when_required():
    p = Pipeline(Settings(lags=2, hidden=4))
    first = p.process([rec(tick("a", 1.0)), rec(tick("a", 2.0)), rec(tick("b", 1.0), key=b"b")])
    second = p.process([rec(tick("a", 3.0)), rec(tick("c", 1.0))])
    assert (first.unkeyed, first.unkeyed_new) == (2, ["a"]) and len(first.predictions) == 3
    assert (second.unkeyed, second.unkeyed_new) == (2, ["c"])  # "a" was named already
    strict = Pipeline(Settings(lags=2, hidden=4, require_kafka_key=True))
    out = strict.process([rec(tick("a", 1.0)), rec(tick("b", 1.0), key=b"b")])
    assert [d.reason for d in out.dead] == ["missing_kafka_key"] and len(out.predictions) == 1
    assert orjson.loads(out.dead[0].value)["reason"] == "missing_kafka_key"


def test_a_dead_letter_always_fits_whatever_the_message_and_its_key():
    """A 10 MB value under a 1.1 MB Kafka key: the dead letter keeps the head of the bytes with their
    length and hash, its own key is cut, and it stays small enough for any broker."""
    import base64
    import hashlib

    from streamer.schema import DEAD_LETTER_KEEP_BYTES, DEAD_LETTER_KEY_BYTES

    value, key = b"v" * 10_000_000, b"k" * 1_100_000
    out = Pipeline(Settings()).process([Record("ticks", 3, 7, key, value)])
    (dead,) = out.dead
    letter = orjson.loads(dead.value)
    assert dead.reason == "oversized" and len(dead.value) < 64 * 1024 and dead.key == key[:DEAD_LETTER_KEY_BYTES]
    assert base64.b64decode(letter["value_b64"]) == value[:DEAD_LETTER_KEEP_BYTES]
    assert (letter["value_bytes"], letter["value_sha256"]) == (len(value), hashlib.sha256(value).hexdigest())
    assert (letter["key_bytes"], letter["key_sha256"]) == (len(key), hashlib.sha256(key).hexdigest())
    assert (letter["partition"], letter["offset"]) == (3, 7)


def test_a_record_that_makes_processing_raise_is_dead_lettered_and_the_rest_go_on(monkeypatch):
    """Inject a record that gets through decoding malformed (a decoder bug, say: a feature value that is
    a string): its wave raises, is bisected down to it, it goes to the DLQ as processing_error with the
    exception, and every other tick is predicted as in a run without it. A decoder that raises on a
    message is caught per message too."""
    import streamer.pipeline as P

    real = P.decode_tick

    def buggy(raw, kafka_key=None, max_bytes=65_536):
        t = real(raw, kafka_key, max_bytes)
        if t.key == "poison" and t.value == 3.0:
            return P.Tick(t.key, t.ts, t.value, t.feature_names, ("not a number",), t.text)
        if t.key == "crash":
            raise RuntimeError("decoder bug")
        return t

    def batch(keys):
        return [Record("ticks", 0, t * 10 + i, k.encode(), tick(k, float(t), features={"f": t / 2}))
                for t in range(6) for i, k in enumerate(keys)]

    reference = Pipeline(Settings(lags=2, hidden=4)).process(batch(["a", "b", "c"]))
    monkeypatch.setattr(P, "decode_tick", buggy)
    out = Pipeline(Settings(lags=2, hidden=4)).process(batch(["a", "poison", "b", "crash", "c"]))
    reasons = [(d.reason, orjson.loads(d.value)["detail"]) for d in out.dead]
    assert reasons.count(("processing_error", "RuntimeError: decoder bug")) == 6
    poisoned = [detail for reason, detail in reasons if "decoder" not in detail]
    assert len(poisoned) == 1 and poisoned[0].startswith("ValueError") and reasons[0][0] == "processing_error"
    preds = [orjson.loads(o.value) for o in out.predictions]
    assert sum(p["key"] == "poison" for p in preds) == 5  # all but the poisoned tick
    got = {(p["key"], p["seq"]): p["prediction"] for p in preds if p["key"] != "poison"}
    want = {(p["key"], p["seq"]): p["prediction"] for p in map(orjson.loads, (o.value for o in reference.predictions))}
    assert got.keys() == want.keys()
    assert [got[k] for k in sorted(got)] == pytest.approx([want[k] for k in sorted(want)], rel=1e-4, abs=1e-5)


def test_the_commit_never_passes_a_tick_not_stepped_when_a_key_comes_on_two_partitions():
    """Without a Kafka key one series' ticks land on several partitions; the offset committed for a
    partition must still stay at its first tick not stepped, whatever wave that tick is in."""
    def r(partition: int, offset: int, key: str, t: int) -> Record:
        return Record("ticks", partition, offset, None, tick(key, float(t), ts=t))

    # key k: ticks 0 and 1 on partition 1, tick 2 on partition 2 at offset 5; key a: tick 0 on partition 2 at 6
    p = Pipeline(Settings(lags=2, hidden=4))
    plan = p.plan([r(1, 0, "k", 0), r(1, 1, "k", 1), r(2, 5, "k", 2), r(2, 6, "a", 0)])
    p.run(plan, budget_s=1e-9)  # wave 0: k's tick 0 and a's tick 0
    assert plan.spread and plan.commit_offsets()[("ticks", 2)] == 5  # k's tick 2 (wave 2) is not stepped
    p.run(plan)
    assert plan.commit_offsets() == {("ticks", 1): 2, ("ticks", 2): 7}
