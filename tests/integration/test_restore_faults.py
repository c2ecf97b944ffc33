"""A restore that fails never costs learned state: injected faults (the changelog unreadable, a read
that never reaches its fence, a corrupted record) keep the partitions paused and the replica not
ready, nothing is processed or checkpointed meanwhile, and once the fault heals the keys continue
from their learned state. The daemon runs in-process against the embedded broker; the faults are
put into its changelog read (the broker itself does not misbehave on demand)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiokafka.errors import KafkaConnectionError

from streamer.daemon import Daemon
from tests.helpers import predictions, settings_for, stream
from tests.kafka_helpers import consume, create_topics, http_status, produce

KEYS, FIRST, SECOND = 6, 60, 30


async def run_burst(s) -> None:
    daemon = Daemon(s)
    assert await asyncio.wait_for(daemon.run(), 120) == 0


def errors_after(preds, start: int) -> float:
    return float(np.mean([ps[0]["prev_error"] ** 2 for (k, t), ps in preds.items() if t > start]))


async def test_a_failing_restore_pauses_retries_and_then_continues_learned(broker):
    bs = broker.bootstrap_servers
    s = settings_for(broker, burst=False, restore_timeout_s=1.0)
    reference = settings_for(broker)  # the same ticks, never interrupted
    for topic in (s.input_topic, reference.input_topic):
        await create_topics(bs, [topic], 2)
        await produce(bs, topic, stream(0, FIRST, KEYS))
    await run_burst(s.model_copy(update={"burst": True}))
    await produce(bs, s.input_topic, stream(FIRST, FIRST + SECOND, KEYS))
    await produce(bs, reference.input_topic, stream(FIRST, FIRST + SECOND, KEYS))
    await run_burst(reference)

    daemon = Daemon(s)
    real = daemon.read_changelog
    faults = ["unreachable", "hangs", "corrupt"]
    attempts: list[str] = []

    real_load = daemon.pipeline.restore_keys
    tearing = False

    def torn_load(blobs):  # the third attempt reads torn checkpoints: the model refuses them
        return real_load([b[:-9] if tearing and i == 0 else b for i, b in enumerate(blobs)])

    async def faulty(partitions, generation):
        nonlocal tearing
        attempts.append(faults[0] if faults else "ok")
        fault = faults.pop(0) if faults else None
        tearing = fault == "corrupt"
        if fault == "unreachable":
            raise KafkaConnectionError("injected: the changelog's leader is unreachable")
        if fault == "hangs":
            await asyncio.sleep(3600)  # never reaches its fence: the restore timeout (1 s) ends it
        return await real(partitions, generation)

    daemon.pipeline.restore_keys = torn_load  # type: ignore[method-assign]
    daemon.read_changelog = faulty  # type: ignore[method-assign]
    task = asyncio.create_task(daemon.run())
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while len(attempts) < 4 and asyncio.get_running_loop().time() < deadline:
            ready = await asyncio.to_thread(http_status, daemon.health.port, "/readyz")
            if len(attempts) < 4:
                assert ready != 200, "ready while its state was not restored"
                assert daemon.metrics.predictions._value.get() == 0, "ticks processed before their state was restored"
                assert daemon.metrics.checkpoints._value.get() == 0, "a checkpoint before the restore"
            await asyncio.sleep(0.1)
        assert attempts[:4] == ["unreachable", "hangs", "corrupt", "ok"], attempts
        assert daemon.metrics.restore_failures._value.get() == 3
        out = await consume(bs, s.output_topic, KEYS * (FIRST + SECOND), timeout=60, settle=0.5)  # both runs
        deadline = asyncio.get_running_loop().time() + 10
        while await asyncio.to_thread(http_status, daemon.health.port, "/readyz") != 200:
            assert asyncio.get_running_loop().time() < deadline, "never ready after the fault healed"
            await asyncio.sleep(0.1)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
    got = {kt: ps for kt, ps in predictions(out).items() if kt[1] >= FIRST}
    ref = predictions(await consume(bs, reference.output_topic, KEYS * (FIRST + SECOND), settle=0.5))
    assert set(got) == {(f"s{k}", t) for k in range(KEYS) for t in range(FIRST, FIRST + SECOND)}
    assert {ps[0]["seq"] for (k, t), ps in got.items() if t == FIRST} == {FIRST + 1}  # learned, not cold
    mse, ref_mse = errors_after(got, FIRST), errors_after({k: v for k, v in ref.items() if k[1] >= FIRST}, FIRST)
    assert mse <= 1.1 * ref_mse, (mse, ref_mse)
    assert all(ps[0]["model"].startswith(f"lstm+{reference.learner}") for ps in got.values())


@pytest.mark.parametrize("change", [{"hidden": 8}, {"learner_options": {"eta_scale": "fixed"}}],
                         ids=["cell-size", "state-layout"])
async def test_changed_model_settings_start_keys_afresh_without_pausing_and_seq_goes_on(broker, change):
    """A redeploy with another cell size, or a learner option that keeps other state (the ensemble's
    loss scale), finds checkpoints of the old model: intact, but unusable by this one. The replica must
    not stall on them (nothing to retry) and must not re-use (key, seq)."""
    bs = broker.bootstrap_servers
    s = settings_for(broker, hidden=4, learner="ensemble", learner_options={"eta_scale": "relative"})
    await create_topics(bs, [s.input_topic], 2)
    await produce(bs, s.input_topic, stream(0, 20, KEYS))
    await run_burst(s)
    await produce(bs, s.input_topic, stream(20, 30, KEYS))
    changed = s.model_copy(update=change)
    daemon = Daemon(changed)
    assert await asyncio.wait_for(daemon.run(), 120) == 0
    assert daemon.metrics.restore_failures._value.get() == 0
    got = predictions(await consume(bs, s.output_topic, KEYS * 30, settle=0.5))
    assert all(len(ps) == 1 for ps in got.values())
    assert {ps[0]["seq"] for (k, t), ps in got.items() if t == 20} == {21}  # afresh, numbering goes on
    assert {ps[0]["model"] for (k, t), ps in got.items() if t == 20} == {"persistence"}  # a new model's first tick
