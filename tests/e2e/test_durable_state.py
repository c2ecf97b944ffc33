"""State that belongs to one deployment and survives its failures, daemons as processes: two groups
on one input, a crash between a batch's model step and its publication, a changelog that is not
co-partitioned with the input, and checkpoints far over Kafka's default 1 MiB message limit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import daemon_process, env_for, predictions, stream
from tests.kafka_helpers import consume, create_topics, produce, unique

KEYS = 6


def burst(env: dict[str, str], **over: str) -> dict[str, str]:
    return {**env, "STREAMER_BURST": "true", "STREAMER_BURST_IDLE_S": "2",
            **{f"STREAMER_{k.upper()}": v for k, v in over.items()}}


def run_to_end(env: dict[str, str], timeout: float = 180) -> str:
    with daemon_process(env) as proc:
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow
def test_each_group_has_its_own_state_and_another_learner_cannot_overwrite_it(broker):
    bs = broker.bootstrap_servers
    a = burst(env_for(bs))
    topic = a["STREAMER_INPUT_TOPIC"]
    asyncio.run(create_topics(bs, [topic], 2))
    asyncio.run(produce(bs, topic, stream(0, 40, KEYS)))
    run_to_end(a)
    # a second group on the same input, and a third with another learner, each from the start
    b = {**a, "STREAMER_GROUP_ID": unique("g"), "STREAMER_OUTPUT_TOPIC": unique("out")}
    c = {**a, "STREAMER_GROUP_ID": unique("g"), "STREAMER_OUTPUT_TOPIC": unique("out"), "STREAMER_LEARNER": "pf",
         "STREAMER_PARTICLES": "8"}
    run_to_end(b)
    run_to_end(c)
    for env in (b, c):  # neither took the first group's keys (nor their applied offsets): every tick predicted
        got = predictions(asyncio.run(consume(bs, env["STREAMER_OUTPUT_TOPIC"], 40 * KEYS, settle=0.5)))
        assert len(got) == 40 * KEYS and {p[0]["seq"] for (k, t), p in got.items() if t == 0} == {1}
    # the first group continues from its own learned state: its sequence numbers go on
    asyncio.run(produce(bs, topic, stream(40, 50, KEYS)))
    run_to_end(a)
    got = predictions(asyncio.run(consume(bs, a["STREAMER_OUTPUT_TOPIC"], 50 * KEYS, settle=0.5)))
    assert {p[0]["seq"] for (k, t), p in got.items() if t == 45} == {46}
    assert all(len(p) == 1 for p in got.values())  # no (key, seq) published twice
    state = asyncio.run(consume(bs, f"{a['STREAMER_GROUP_ID']}-state-changelog", 1, settle=0.5))
    assert all(dict(m.headers).get("streamer-group") == a["STREAMER_GROUP_ID"].encode()
               for m in state if not m.key.startswith(b"__streamer"))


CRASH_AFTER_STEP = textwrap.dedent('''
    import streamer.daemon as D

    _real = D.Daemon._send_result

    async def _crash(self, result):  # the model stepped this chunk; it never reaches the broker
        if result.predictions:
            raise RuntimeError("injected: the process fails between the model step and the publication")
        await _real(self, result)

    D.Daemon._send_result = _crash
''')


@pytest.mark.slow
def test_a_crash_between_step_and_publication_reprocesses_that_batch(broker, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(CRASH_AFTER_STEP)
    bs = broker.bootstrap_servers
    env = burst(env_for(bs))
    topic = env["STREAMER_INPUT_TOPIC"]
    asyncio.run(create_topics(bs, [topic], 2))
    asyncio.run(produce(bs, topic, stream(0, 30, KEYS)))
    run_to_end(env)  # learned state and committed offsets for ticks 0..29
    asyncio.run(produce(bs, topic, stream(30, 50, KEYS)))
    crashing = {**env, "PYTHONPATH": str(tmp_path)}
    with daemon_process(crashing) as proc:
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "injected" in out, out[-3000:]
    assert "not checkpointed at exit" in out
    run_to_end(env)
    got = predictions(asyncio.run(consume(bs, env["STREAMER_OUTPUT_TOPIC"], 50 * KEYS, settle=0.5)))
    assert set(got) == {(f"s{k}", t) for k in range(KEYS) for t in range(50)}, "ticks of the failed batch lost"
    assert {p[0]["seq"] for (k, t), p in got.items() if t == 49} == {50}


def test_a_changelog_with_other_partitions_than_the_input_is_refused_at_start(broker):
    bs = broker.bootstrap_servers
    env = env_for(bs)
    asyncio.run(create_topics(bs, [env["STREAMER_INPUT_TOPIC"]], 2))
    asyncio.run(create_topics(bs, [f"{env['STREAMER_GROUP_ID']}-state-changelog"], 1))
    proc = subprocess.run([sys.executable, "-m", "streamer.cli", "run"], env={**__import__("os").environ, **env},
                          capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("streamer: error: changelog topic"), proc.stderr[-2000:]
    assert "has 1 partitions and input topic" in lines[-1] and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("learner, over", [("pf", {"particles": "128", "hidden": "16"}),
                                           ("dekf", {"hidden": "32"})])
def test_checkpoints_over_a_mebibyte_fit_kafkas_default_limit_and_restore(broker, learner, over):
    bs = broker.bootstrap_servers
    env = burst(env_for(bs, learner=learner, **over))
    topic = env["STREAMER_INPUT_TOPIC"]
    asyncio.run(create_topics(bs, [topic], 2))
    asyncio.run(produce(bs, topic, stream(0, 8, 2)))
    run_to_end(env)
    state = asyncio.run(consume(bs, f"{env['STREAMER_GROUP_ID']}-state-changelog", 2, settle=1.0))
    sizes = [len(m.value or b"") + len(m.key or b"") for m in state]
    chunks = [m for m in state if m.key.startswith(b"__streamer_chunk__/")]
    assert max(sizes) < 1_000_000 and chunks, (max(sizes), len(chunks))  # Apache Kafka's default: 1,048,588
    asyncio.run(produce(bs, topic, stream(8, 12, 2)))
    out = run_to_end(env)
    assert '"restored_keys": 2' in out or "restored_keys=2" in out, out[-3000:]
    got = predictions(asyncio.run(consume(bs, env["STREAMER_OUTPUT_TOPIC"], 24, settle=0.5)))
    assert {p[0]["seq"] for (k, t), p in got.items() if t == 11} == {12}  # continued, not cold
