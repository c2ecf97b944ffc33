"""Property-based fuzzing of the tick decoder and the whole pipeline (hypothesis).

Random bytes, random JSON, tick-shaped objects with wrong types, huge and tiny numbers, unicode
and very long keys and texts, duplicated and out-of-order timestamps: no exception escapes, every
rejected message is a dead letter with a known reason and its original bytes, every accepted one
gets exactly one finite prediction. With FUZZ_JSON=path the number of inputs tried is written
there; FUZZ_DECODER_EXAMPLES and FUZZ_PIPELINE_EXAMPLES scale the runs (benchmarks/fuzz.py runs
them at 100,000 messages each; benchmarks/RESULTS.md records the counts).
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import math
import os
from collections import Counter
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.config import Settings
from streamer.pipeline import Pipeline, Record
from streamer.schema import DEAD_LETTER_KEEP_BYTES, MAX_KEY_CHARS, REASONS, TickError, decode_tick

TRIED: Counter[str] = Counter()


def _report() -> None:
    path = os.environ.get("FUZZ_JSON")
    if path and TRIED:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(dict(TRIED), indent=2))


atexit.register(_report)

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),  # 5e-324 .. 1.8e308
    st.sampled_from([0.0, -0.0, 1e-300, -1e300, 1.7976931348623157e308, 5e-324, 2**53 + 1]),
)
keys = st.one_of(st.text(min_size=0, max_size=8),
                 st.integers(MAX_KEY_CHARS - 2, MAX_KEY_CHARS + 40).map(lambda n: "k" * n),
                 st.sampled_from(["k0", "k1", "séries-é", "传感器", "🙂", "a\u0000b", "tab\tkey", " "]))
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
tick_objects = st.fixed_dictionaries(
    {},
    optional={
        "key": st.one_of(keys, json_values),
        "ts": st.one_of(numbers, st.sampled_from(["2026-01-01T00:00:00Z", "2026-13-01", "", "now"]), json_values),
        "value": st.one_of(numbers, json_values),
        "features": st.one_of(st.dictionaries(st.text(max_size=300), numbers, max_size=3), json_values),
        "text": st.one_of(st.text(max_size=50), st.integers(9_990, 10_020).map(lambda n: "é" * n), json_values),
        "v": st.one_of(st.just(1), json_values),
    },
)
near_valid = st.fixed_dictionaries(
    {"key": keys, "ts": st.one_of(numbers, st.just("2026-01-01T00:00:00Z")), "value": numbers},
    optional={
        "features": st.dictionaries(st.text(max_size=12), numbers, max_size=5),
        "text": st.text(max_size=80),
        "v": st.sampled_from([1, 1, 2, True]),
    },
)


def dumps(obj: object) -> bytes:
    """The stdlib encoder: unlike orjson it writes integers beyond 64 bits, as other producers may."""
    return json.dumps(obj, ensure_ascii=False).encode()


raw_messages = st.one_of(
    st.binary(max_size=300),
    json_values.map(dumps),
    tick_objects.map(dumps),
    near_valid.map(dumps),
    st.sampled_from([b"", b"{", b"null", b'{"value": NaN}', b'{"key":"a","value":1e999}', b"\xff\xfe"]),
    st.just(b"x" * 70_000),
)


def _check_decoded(raw: bytes, kafka_key: bytes | None) -> None:
    try:
        t = decode_tick(raw, kafka_key)
    except TickError as exc:
        assert exc.reason in REASONS
        TRIED["decoder_rejected"] += 1
        return
    TRIED["decoder_accepted"] += 1
    assert isinstance(t.key, str) and 0 < len(t.key) <= MAX_KEY_CHARS and t.key.isprintable()
    assert math.isfinite(t.value) and math.isfinite(t.ts)
    assert all(math.isfinite(f) for f in t.feature_values)
    assert list(t.feature_names) == sorted(t.feature_names)


@settings(max_examples=int(os.environ.get("FUZZ_DECODER_EXAMPLES", 3000)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=raw_messages, kafka_key=st.one_of(st.none(), st.binary(max_size=10), keys.map(str.encode)))
def test_decoder_never_raises_anything_but_a_reasoned_tick_error(raw, kafka_key):
    TRIED["decoder"] += 1
    _check_decoded(raw, kafka_key)


good_ticks = st.builds(
    lambda k, ts, v: orjson.dumps({"key": k, "ts": ts, "value": v}),
    st.sampled_from(["a", "b", "séries-é", "传感器", "k" * MAX_KEY_CHARS]),
    st.one_of(st.integers(-5, 5), st.sampled_from(["2026-01-01T00:00:00Z"])),  # duplicated, out of order
    st.one_of(st.floats(-1e6, 1e6), st.sampled_from([1e300, -1e300, 1e-300, 0.0])),
)


@settings(max_examples=int(os.environ.get("FUZZ_PIPELINE_EXAMPLES", 300)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batches=st.lists(st.lists(st.one_of(good_ticks, raw_messages), min_size=1, max_size=25), min_size=1, max_size=4))
def test_pipeline_predicts_every_accepted_tick_and_dead_letters_the_rest(batches):
    pipeline = Pipeline(Settings(lags=2, hidden=4))
    offset = 0
    for values in batches:
        TRIED["pipeline_messages"] += len(values)
        records = []
        for v in values:
            records.append(Record("ticks", 0, offset, None, v))
            offset += 1
        out = pipeline.process(records)
        assert len(out.predictions) + len(out.dead) == len(records)  # each message accounted for, once
        TRIED["pipeline_predicted"] += len(out.predictions)
        TRIED["pipeline_dead_lettered"] += len(out.dead)
        for d in out.dead:
            letter = orjson.loads(d.value)
            assert d.reason in REASONS and letter["reason"] == d.reason
            kept = base64.b64decode(letter["value_b64"])
            if letter.get("value_truncated"):  # a long message: its head, its length and its hash
                assert any(v.startswith(kept) and len(v) == letter["value_bytes"]
                           and hashlib.sha256(v).hexdigest() == letter["value_sha256"] for v in values)
                assert len(kept) == DEAD_LETTER_KEEP_BYTES
            else:
                assert kept in values
        for p in out.predictions:
            pred = orjson.loads(p.value)
            for field in ("prediction", "lower", "upper"):
                assert isinstance(pred[field], float) and math.isfinite(pred[field]), pred
            assert pred["lower"] <= pred["prediction"] <= pred["upper"]
    TRIED["pipeline_batches"] += len(batches)
