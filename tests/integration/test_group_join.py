"""The daemon's group join on the embedded broker: one JoinGroup round with both of its assignors, and a
group it shares with a member that only knows round-robin (a daemon from before sticky assignment).

What is checked is what goes on the wire: every JoinGroup request is recorded as it is encoded."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.group import JoinGroupRequest

from streamer.daemon import Daemon
from tests.helpers import settings_for, tick
from tests.kafka_helpers import consume, create_topics, produce

BOTH = ["sticky", "roundrobin"]  # the daemon's assignors, in order of preference
OLD_SESSION_MS = 4000  # tells the old member's requests from the daemon's (settings_for's is 3000)


@pytest.fixture
def join_requests(monkeypatch) -> list[tuple[str, int, str, list[str]]]:
    """(group, session timeout, member id, protocol names) of every JoinGroup request, as encoded for the broker."""
    seen: list[tuple[str, int, str, list[str]]] = []
    build = JoinGroupRequest.build

    def recorded(self, struct_class):  # noqa: ANN001, ANN202
        struct = build(self, struct_class)
        names = [name for name, _ in struct.group_protocols]
        seen.append((struct.group, struct.session_timeout, struct.member_id, names))
        return struct

    monkeypatch.setattr(JoinGroupRequest, "build", recorded)
    return seen


def test_one_join_round_offers_both_assignors(broker, join_requests):
    s = settings_for(broker, learner="sgd", burst=False)
    items = [(f"k{k}".encode(), tick(f"k{k}", float(t), ts=t)) for t in range(5) for k in range(4)]

    async def scenario() -> int:
        await create_topics(broker.bootstrap_servers, [s.input_topic], partitions=4)
        await produce(broker.bootstrap_servers, s.input_topic, items)
        daemon = Daemon(s)
        task = asyncio.create_task(daemon.run())
        preds = await consume(broker.bootstrap_servers, s.output_topic, len(items), settle=0.2)
        assert len(preds) == len(items)
        daemon.request_stop()
        return await asyncio.wait_for(task, 60)

    assert asyncio.run(scenario()) == 0
    ours = [(member, names) for group, _, member, names in join_requests if group == s.group_id]
    # a broker refuses a member whose protocols the group does not share, so each request must carry both;
    # aiokafka 0.14 alone first sends sticky by itself, then both again (two rounds, or a refusal)
    assert ours and all(names == BOTH for _, names in ours), ours
    # KIP-394: a request without a member id is answered with one, and the member joins with it, once
    assert [bool(member) for member, _ in ours] == [False, True], ours


def test_shares_a_group_with_a_round_robin_only_member(broker, join_requests):
    """A rolling upgrade from a version without sticky assignment: the group settles on round-robin,
    the partitions are split between the two, and the daemon predicts every tick of its own."""
    s = settings_for(broker, learner="sgd", burst=False)
    keys = [f"k{k}" for k in range(12)]
    items = [(k.encode(), tick(k, float(t), ts=t)) for t in range(5) for k in keys]

    async def scenario() -> tuple[int, set, set, list, list]:
        await create_topics(broker.bootstrap_servers, [s.input_topic], partitions=4)
        old = AIOKafkaConsumer(s.input_topic, bootstrap_servers=broker.bootstrap_servers, group_id=s.group_id,
                               enable_auto_commit=False, session_timeout_ms=OLD_SESSION_MS,
                               heartbeat_interval_ms=s.heartbeat_interval_ms)  # aiokafka's default: round-robin
        await old.start()
        stop_old = asyncio.Event()

        async def poll_old() -> None:  # the old member keeps consuming (and so rejoining) until told
            while not stop_old.is_set():
                await old.getmany(timeout_ms=100)

        old_task = asyncio.create_task(poll_old())
        deadline = time.monotonic() + 30
        while not old.assignment() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert old.assignment(), "the old member never joined"
        daemon = Daemon(s)
        task = asyncio.create_task(daemon.run())
        deadline = time.monotonic() + 30
        while not (daemon.joined and daemon.consumer and daemon.consumer.assignment()
                   and len(old.assignment()) < 4) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        ours = {tp.partition for tp in daemon.consumer.assignment()} if daemon.consumer else set()
        theirs = {tp.partition for tp in old.assignment()}
        await produce(broker.bootstrap_servers, s.input_topic, items)
        partition_of = DefaultPartitioner()  # the producer's: murmur2 of the key
        expected = [k for k in keys if partition_of(k.encode(), [0, 1, 2, 3], [0, 1, 2, 3]) in ours]
        preds = await consume(broker.bootstrap_servers, s.output_topic, 5 * len(expected), timeout=30, settle=0.5)
        daemon.request_stop()
        code = await asyncio.wait_for(task, 60)
        stop_old.set()
        await old_task
        await old.stop()
        return code, ours, theirs, preds, expected

    code, ours, theirs, preds, expected = asyncio.run(scenario())
    assert code == 0 and expected
    assert ours and theirs and not ours & theirs and ours | theirs == {0, 1, 2, 3}, (ours, theirs)
    mine = [names for group, session, _, names in join_requests if group == s.group_id and session != OLD_SESSION_MS]
    assert mine and all(names == BOTH for names in mine), mine
    by_key: dict[str, list[int]] = {}
    for m in preds:
        p = orjson.loads(m.value)
        by_key.setdefault(p["key"], []).append(p["seq"])
    assert sorted(by_key) == sorted(expected) and all(seqs == [1, 2, 3, 4, 5] for seqs in by_key.values()), by_key
