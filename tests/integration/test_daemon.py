"""The daemon in-process against the embedded broker: ticks in, predictions and dead letters out."""

from __future__ import annotations

import asyncio
import math

import orjson
import pytest

from models.learners.ensemble import EnsembleConfig
from streamer.daemon import Daemon
from tests.helpers import BAD, settings_for
from tests.kafka_helpers import consume, create_topics, http_status, produce, scrape

K, N = 20, 15
# HTTP calls below go through a thread: the daemon under test answers on this same event loop


EXPERTS = EnsembleConfig().experts


def tick(key: str, t: int) -> bytes:
    return orjson.dumps({"key": key, "ts": 1_700_000_000 + 60 * t, "value": 20 + math.sin(t / 3) + 0.1 * len(key)})


@pytest.mark.parametrize("learner", ["ensemble", "sgd", "pf"])
def test_every_valid_tick_predicted_in_order_and_bad_ones_dead_lettered(broker, learner):
    s = settings_for(broker, learner=learner, particles=8, burst=False)
    items: list[tuple[bytes | None, bytes]] = []
    expected_reasons = []
    for t in range(N):
        for k in range(K):
            key = f"sensor-{k}"
            items.append((key.encode(), tick(key, t)))
        if t < len(BAD):  # a malformed message of each kind, keyed like a real series, between good ones
            raw, reason = BAD[t]
            items.append((None if reason == "missing_key" else b"sensor-3", raw))
            expected_reasons.append(reason)
    items.append((b"sensor-5", orjson.dumps({"key": "sensor-5", "ts": 0, "value": 1.0, "features": {"x": 1}})))
    expected_reasons.append("feature_set_changed")

    async def scenario():
        await create_topics(broker.bootstrap_servers, [s.input_topic], partitions=3)
        await produce(broker.bootstrap_servers, s.input_topic, items)
        daemon = Daemon(s)
        task = asyncio.create_task(daemon.run())
        preds = await consume(broker.bootstrap_servers, s.output_topic, K * N)
        dead = await consume(broker.bootstrap_servers, s.dlq_topic, len(expected_reasons))
        for _ in range(50):
            if await asyncio.to_thread(http_status, daemon.health.port, "/readyz") == 200:
                break
            await asyncio.sleep(0.1)
        ready = await asyncio.to_thread(http_status, daemon.health.port, "/readyz")
        metrics = await asyncio.to_thread(scrape, daemon.health.port)
        daemon.request_stop()
        code = await asyncio.wait_for(task, 60)
        return preds, dead, ready, metrics, code

    preds, dead, ready, metrics, code = asyncio.run(scenario())
    assert code == 0 and ready == 200
    assert len(preds) == K * N
    by_key: dict[str, list[dict]] = {}
    for m in preds:
        p = orjson.loads(m.value)
        assert m.key.decode() == p["key"]
        if p["seq"] == 1:  # a key's first: no level yet
            assert p["model"] == "persistence"
        elif learner == "ensemble":  # the heaviest expert leads
            assert p["model"] in {f"lstm+ensemble/{e}" for e in EXPERTS}, p["model"]
        else:
            assert p["model"] == f"lstm+{learner}"
        assert math.isfinite(p["prediction"]) and p["lower"] <= p["prediction"] <= p["upper"]
        by_key.setdefault(p["key"], []).append(p)
    assert len(by_key) == K
    for key, ps in by_key.items():
        assert [p["seq"] for p in ps] == list(range(1, N + 1)), key
        assert [p["ts"] for p in ps] == sorted(p["ts"] for p in ps)
    assert sorted(orjson.loads(m.value)["reason"] for m in dead) == sorted(expected_reasons)
    assert all(m.headers and dict(m.headers)["reason"] for m in dead)
    assert metrics["streamer_ticks_consumed_total"] == len(items)
    assert metrics["streamer_predictions_published_total"] == K * N
    assert metrics["streamer_dead_letters_total{reason=not_json}"] == sum(r == "not_json" for r in expected_reasons)
    assert metrics["streamer_live_keys"] == K
    assert metrics[f"streamer_update_seconds_count{{learner={learner}}}"] >= 1
    assert 0 <= metrics[f"streamer_interval_coverage{{learner={learner}}}"] <= 1
    assert metrics["streamer_tick_to_prediction_seconds_count"] == len(items)
    assert N <= metrics["streamer_waves_total"] <= K * N  # every key's N ticks are N waves at least
    weights = {k: v for k, v in metrics.items() if k.startswith("streamer_ensemble_weight")}
    if learner == "ensemble":  # one bounded series per expert, a mixture's weights
        assert set(weights) == {f"streamer_ensemble_weight{{expert={e}}}" for e in EXPERTS}
        assert sum(weights.values()) == pytest.approx(1.0, abs=1e-4) and min(weights.values()) > 0
    else:
        assert not weights
    assert metrics["streamer_ready"] == 1


def test_metrics_change_between_scrapes_and_health_answers(broker):
    s = settings_for(broker, burst=False)

    async def scenario():
        await create_topics(broker.bootstrap_servers, [s.input_topic], partitions=2)
        daemon = Daemon(s)
        task = asyncio.create_task(daemon.run())
        for _ in range(100):
            if await asyncio.to_thread(http_status, daemon.health.port, "/readyz") == 200:
                break
            await asyncio.sleep(0.1)
        before = await asyncio.to_thread(scrape, daemon.health.port)
        await produce(broker.bootstrap_servers, s.input_topic, [(b"a", tick("a", t)) for t in range(30)])
        await consume(broker.bootstrap_servers, s.output_topic, 30)
        await asyncio.sleep(0.3)
        after = await asyncio.to_thread(scrape, daemon.health.port)
        health = tuple([await asyncio.to_thread(http_status, daemon.health.port, p) for p in ("/healthz", "/nope")])
        daemon.request_stop()
        return before, after, health, await asyncio.wait_for(task, 30)

    before, after, health, code = asyncio.run(scenario())
    assert code == 0 and health == (200, 404)
    assert before["streamer_ticks_consumed_total"] == 0 and after["streamer_ticks_consumed_total"] == 30
    assert after["streamer_predictions_published_total"] == 30
    assert after[f"streamer_prequential_mse{{learner={s.learner}}}"] > 0
    assert after["streamer_rebalances_total"] >= 1 and after["streamer_assigned_partitions"] == 2
    assert not any("sensor" in name or "key=" in name for name in after)  # no series key as a label


def test_max_keys_bounds_memory_and_evicted_state_goes_to_the_changelog(broker):
    s = settings_for(broker, burst=False, max_keys=10)
    keys, rounds = 30, 6

    async def scenario():
        await create_topics(broker.bootstrap_servers, [s.input_topic], partitions=2)
        daemon = Daemon(s)
        task = asyncio.create_task(daemon.run())
        for r in range(rounds):  # every key comes back each round: evicted, then reloaded on its next tick
            await produce(broker.bootstrap_servers, s.input_topic, [(f"k{k}".encode(), tick(f"k{k}", r))
                                                                    for k in range(keys)])
            await consume(broker.bootstrap_servers, s.output_topic, keys * (r + 1), settle=0.2)
        metrics = await asyncio.to_thread(scrape, daemon.health.port)
        changelog = await consume(broker.bootstrap_servers, s.changelog(), 20, settle=0.5)
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
        return metrics, changelog

    metrics, changelog = asyncio.run(scenario())
    assert metrics["streamer_live_keys"] <= 10
    assert metrics["streamer_predictions_published_total"] == keys * rounds
    state_keys = {m.key for m in changelog if not m.key.startswith(b"__")}
    assert len(state_keys) >= keys - 10  # the evicted keys' state is durable before it leaves memory


async def test_a_record_the_broker_refuses_for_good_is_counted_and_skipped_not_fatal(broker, monkeypatch):
    """Apache Kafka refuses a batch holding a record over its message.max.bytes (Tansu takes any size,
    so that one answer is injected); the daemon then sends the batch's records one by one: the
    others arrive, the refused one (here 2 MB, over the producer's 1 MiB cap) is counted and skipped."""
    from aiokafka.errors import MessageSizeTooLargeError

    s = settings_for(broker)
    await create_topics(broker.bootstrap_servers, [s.input_topic], 1)
    daemon = Daemon(s)
    await daemon._start_clients()
    try:
        real = daemon._send_batches

        async def refusing(topic, messages):
            if any(len(m[1]) > 1 << 20 for m in messages):
                raise MessageSizeTooLargeError("the broker's message.max.bytes")
            return await real(topic, messages)

        monkeypatch.setattr(daemon, "_send_batches", refusing)
        messages = [(b"a", b"small-1", None, None), (b"b", b"x" * 2_000_000, None, None),
                    (b"c", b"small-2", None, [("reason", b"r")])]
        await daemon._deliver("dead_letters", s.output_topic, messages)
        got = await consume(broker.bootstrap_servers, s.output_topic, 2, settle=0.5)
        assert sorted(m.value for m in got) == [b"small-1", b"small-2"]
        assert daemon.metrics.unpublishable.labels("dead_letters")._value.get() == 1
    finally:
        await daemon._close_clients()
