"""Whatever producers send, the daemon process keeps going: batches compressed in every codec
Kafka defines, values of 800 KB and 10 MB, a 1.1 MB Kafka key, and records that make processing
raise, all produced by librdkafka (confluent-kafka), not aiokafka. Every good tick around them is
predicted and every bad one is in the DLQ with its reason.

Records that make processing raise need a bug to meet; the test brings one along: a
`sitecustomize` module on the daemon's PYTHONPATH wraps its decoder (Python imports it at start),
so the product carries no test hook."""

from __future__ import annotations

import asyncio
import textwrap

import orjson
import pytest

from tests.helpers import daemon_process, env_for, predictions
from tests.kafka_helpers import consume, create_topics, produce_with_librdkafka

BUG = textwrap.dedent('''
    import streamer.pipeline as P

    _real = P.decode_tick

    def _buggy(raw, kafka_key=None, max_bytes=65_536):
        t = _real(raw, kafka_key, max_bytes)
        if t.key == "crash":  # the decoder itself raises
            raise RuntimeError("decoder bug")
        if t.value == 666.0:  # a tick that passes decoding malformed and makes its wave raise
            return P.Tick(t.key, t.ts, t.value, t.feature_names, ("not a number",), t.text)
        return t

    P.decode_tick = _buggy
''')


def good(key: str, t: int) -> tuple[bytes, bytes]:
    value = (t % 7) + 0.1 * int(key[1:])
    return key.encode(), orjson.dumps({"key": key, "ts": t, "value": value, "features": {"f": 1.0}})


@pytest.mark.slow
def test_codecs_oversized_and_poison_records_never_stop_the_daemon(broker, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BUG)
    bs = broker.bootstrap_servers
    env = env_for(bs, burst="true", burst_idle_s="3")
    topic = env["STREAMER_INPUT_TOPIC"]
    asyncio.run(create_topics(bs, [topic], partitions=2))
    expected, t = set(), 0
    for codec in ("none", "gzip", "snappy", "lz4", "zstd"):
        items = []
        for _ in range(10):
            for k in range(4):
                items.append(good(f"k{k}", t))
                expected.add((f"k{k}", t))
            t += 1
        produce_with_librdkafka(bs, topic, items, **{"compression.type": codec})
    big = {"message.max.bytes": 20_000_000}
    produce_with_librdkafka(bs, topic, [(b"k0", b" " * 800_000 + orjson.dumps({"key": "k0", "ts": t, "value": 1}))],
                            **big)
    produce_with_librdkafka(bs, topic, [(b"k1", b"x" * 10_000_000)], **big)
    produce_with_librdkafka(bs, topic, [(b"K" * 1_100_000, orjson.dumps({"ts": t, "value": 1.0}))], **big)
    produce_with_librdkafka(bs, topic, [(b"k2", orjson.dumps({"key": "k2", "ts": t, "value": 666.0,
                                                               "features": {"f": 1.0}})),
                                        (b"crash", orjson.dumps({"key": "crash", "ts": t, "value": 1.0}))])
    after = [good(f"k{k}", t + 1 + i) for i in range(5) for k in range(4)]  # good ticks after the bad ones
    expected |= {(f"k{k}", t + 1 + i) for i in range(5) for k in range(4)}
    produce_with_librdkafka(bs, topic, after, **{"compression.type": "lz4"})

    with daemon_process({**env, "PYTHONPATH": str(tmp_path)}) as proc:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-4000:]
    got = predictions(asyncio.run(consume(bs, env["STREAMER_OUTPUT_TOPIC"], len(expected), settle=1.0)))
    assert set(got) == expected and all(len(v) == 1 for v in got.values())
    letters = [orjson.loads(m.value) for m in asyncio.run(consume(bs, env["STREAMER_DLQ_TOPIC"], 5, settle=1.0))]
    reasons = sorted(letter["reason"] for letter in letters)
    assert reasons == ["bad_key", "oversized", "oversized", "processing_error", "processing_error"], letters
    sizes = sorted(letter.get("value_bytes", 0) for letter in letters if letter["reason"] == "oversized")
    assert sizes == [800_000 + len(orjson.dumps({"key": "k0", "ts": t, "value": 1})), 10_000_000]
    assert [letter.get("key_bytes") for letter in letters if letter["reason"] == "bad_key"] == [1_100_000]
    details = sorted(letter["detail"] for letter in letters if letter["reason"] == "processing_error")
    assert details[0] == "RuntimeError: decoder bug" and details[1].startswith("ValueError")
