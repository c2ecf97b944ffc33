"""The daemon: consume ticks, step the models, publish predictions, commit, repeat.

    getmany (<= batch_max records)            consumer in a group, manual commits
      -> pipeline.plan, then per chunk of about batch_budget_ms:
      -> pipeline.run in a worker thread      the event loop stays free: heartbeats, /metrics
      -> send predictions and dead letters    await every acknowledgement (acks=all)
      -> checkpoint due partitions            changed keys' state to the changelog, acknowledged
      -> commit those partitions' offsets     only now: predictions sent and state durable

State (the Kafka Streams pattern): every key's state goes to a compacted changelog topic
co-partitioned with the input and named per consumer group (`GROUP-state-changelog`), keyed by
the series key, in records of any size (`statelog`: chunked past 768 KiB, checksummed, naming
the group and model that wrote them). A partition is checkpointed every `checkpoint_ticks`
ticks or `checkpoint_interval_s` seconds, on revoke and on shutdown; its input offset is
committed only after its checkpoint is acknowledged.

The partition state store (`store.PartitionStore`) owns each assigned partition's status,
offsets and checkpoint due-ness. The rebalance listener only checkpoints what is revoked and
records what is assigned, pausing it; between batches the loop drops revoked keys and restores
assigned partitions in a background task: it writes a fence record to each changelog partition
and reads up to it (Tansu never compacts, and its end offsets cannot be trusted), then loads
the keys in one batched call in a worker thread, so heartbeats, /healthz and /metrics are
served throughout and the partitions already restored keep flowing. A restore that fails (a
timeout, a broker error, a record that does not check out) keeps its partitions paused and the
replica not ready, and is retried with backoff; only a restored partition is ever processed or
checkpointed, so no record is overwritten by state that was not restored from it.

Each key's state records the input offset it has applied, so a tick re-delivered after a crash
is never applied twice; its prediction, re-published, carries the same per-key `seq`
(at-least-once, duplicates marked). A chunk holds the model lock from its step to its
acknowledgement: a partition whose chunk was stepped but not published (a crash in between) is
not checkpointed, so its ticks are processed again by whoever owns it next.

One batch is in flight at a time, so offsets are committed in order and a crash re-delivers at
most the uncommitted batch. (Overlapping the next batch's model step with this one's
acknowledgements was measured slower on 2 cores: the two threads fight over the GIL.)
A send that fails retriably (connection lost, request timed out) is repeated with backoff while
the batch stays in hand and the daemon reports not-ready: nothing is committed past it, and a
prediction sent twice carries the same `seq`.
SIGTERM/SIGINT stop fetching; the chunk in hand is finished, published and committed, then
the consumer leaves the group and the process exits 0.
Burst mode (arq's idea) exits once the input has been empty for `burst_idle_s`, so tests and
batch jobs run the real loop to its end.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import structlog
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import OffsetAndMetadata

from models import jit
from models.bank import OTHER_MODEL
from streamer import __version__, groupjoin
from streamer.config import Settings
from streamer.metrics import HealthServer, Metrics, observe_many
from streamer.pipeline import Pipeline
from streamer.statelog import FENCE_KEY, ChangelogReader, ChangelogWriter, Restored
from streamer.store import PartitionStore

log = structlog.get_logger("streamer")
_PARTITIONER = DefaultPartitioner()
# key, value (None: a tombstone), partition, headers
Message = tuple[bytes | None, bytes | None, int | None, list[tuple[str, bytes]] | None]


def retriable(exc: BaseException) -> bool:
    """Worth sending again: aiokafka marks network and leadership errors retriable; a batch that
    expired in the producer's queue (KafkaTimeoutError) is too."""
    return isinstance(exc, KafkaTimeoutError) or (isinstance(exc, KafkaError) and bool(exc.retriable))


LOAD_SLICE_BYTES = 32 << 20  # checkpoints read before they are loaded into the models: a restore's extra memory


class RestoreError(Exception):
    """A restore that did not complete: its partitions (all of the attempt's, or those named) stay
    paused and it is tried again."""

    def __init__(self, message: str, partitions: set[int] | None = None):
        super().__init__(message)
        self.partitions = partitions


class _Rebalance(ConsumerRebalanceListener):
    """Records what the group gives and takes; the loop restores and drops between batches."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Checkpoint and commit what we are giving away while it is still ours (the next owner restores
        from it). The model lock waits for the chunk in hand to be stepped and published."""
        d = self.daemon
        d.joined = False
        d._rebalance_started = time.monotonic()
        d._revoked_generation = d._group_generation()
        parts = {tp.partition for tp in revoked if tp.topic == d.settings.input_topic}
        await d.cancel_restore()  # a restore of partitions we may be losing is moot
        async with d.model_lock:
            await d.checkpoint(d.store.checkpointable(parts), locked=True)
            d.store.revoke(parts)
        for p in parts:
            try:
                d.metrics.lag.remove(str(p))
            except KeyError:
                pass
        if parts:
            log.info("partitions revoked", partitions=sorted(parts))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        """New partitions are paused until the loop has restored them. A partition revoked in the
        rebalance just before and given back in the very next generation was nobody else's meanwhile:
        its keys are still here, checkpointed, and are kept."""
        d = self.daemon
        parts = {tp.partition for tp in assigned if tp.topic == d.settings.input_topic}
        kept: set[int] = set()
        generation = d._group_generation()
        if generation is not None and d._revoked_generation is not None and generation == d._revoked_generation + 1:
            kept = d.store.keepable(parts)
        d.store.assign(parts)
        d.store.restored(kept)  # still in memory and durable: ready at once
        waiting = [tp for tp in assigned if tp.topic == d.settings.input_topic and tp.partition not in kept]
        if waiting and d.consumer is not None:
            d.consumer.pause(*waiting)
        d.joined = True
        d.metrics.rebalances.inc()
        d.metrics.assigned.set(len(assigned))
        d.metrics.ready.set(1 if d.is_ready() else 0)
        log.info("partitions assigned", partitions=sorted(parts), kept=sorted(kept),
                 to_restore=sorted(tp.partition for tp in waiting), generation=generation,
                 revoked_in=d._revoked_generation)


class Daemon:
    def __init__(self, settings: Settings):
        self.settings = settings
        # before torch first runs (the pipeline tries the model at once) and before any worker thread
        # exists: each takes this count when it first runs torch (0: set per wave). Set after the
        # probe instead, the daemon ran 25% slower (benchmarks/daemon.py: 22k against 30k ticks/s).
        torch.set_num_threads(settings.torch_threads or 1)
        self.pipeline = Pipeline(settings, __version__)
        self.metrics = Metrics(settings.learner, settings.cell, __version__, settings.horizon_list())
        self.health = HealthServer(self.metrics, self.is_ready, settings.metrics_host, settings.metrics_port)
        self.joined = False
        self.broker_ok = False
        self._stop = asyncio.Event()
        self.dead_letters = 0  # published dead letters, for embedders such as the demo
        self.changelog = settings.changelog()
        self.store = PartitionStore(settings.checkpoint_ticks, settings.checkpoint_interval_s)
        self.writer = ChangelogWriter(settings.group_id, self.pipeline.model)
        self._rebalance_started: float | None = time.monotonic()
        self._revoked_generation: int | None = None
        self._restore_task: asyncio.Task[None] | None = None
        self.restore_consumer: AIOKafkaConsumer | None = None
        # The rebalance callbacks run on aiokafka's coordinator task while a chunk may be inside the
        # models in the worker thread or on its way to the broker: every access to the pipeline's
        # state, and every chunk from its step to its acknowledgement, holds this lock.
        self.model_lock = asyncio.Lock()
        self.consumed = 0  # messages whose batch is published and committed
        self._partition_of: dict[str, dict[bytes | None, int]] = {}
        self._partition_count: dict[str, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.admin: AIOKafkaAdminClient | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._warm_task: asyncio.Task[bool] | None = None
        self._stopped = False

    # ------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stop requested: finishing the batch in hand")
            self._stop.set()

    def is_ready(self) -> bool:
        """Joined, the broker answers, and every assigned partition's state is restored."""
        return self.joined and self.broker_ok and self.store.all_ready()

    def _group_generation(self) -> int | None:
        coordinator = getattr(self.consumer, "_coordinator", None)
        generation = getattr(coordinator, "generation", None)
        return generation if isinstance(generation, int) and generation >= 0 else None

    def _kafka_args(self) -> dict[str, Any]:
        s = self.settings
        return {"bootstrap_servers": s.bootstrap_servers, "client_id": s.client_id,
                "request_timeout_ms": s.request_timeout_ms, **s.kafka_security()}

    async def _start_clients(self) -> None:
        """Start admin, producer and consumer, retrying with backoff while the broker is unreachable."""
        s = self.settings
        groupjoin.install()  # one JoinGroup per join with both assignors (aiokafka 0.14 sends one per assignor)
        delay = 0.5
        while not self._stop.is_set():
            try:
                self.admin = AIOKafkaAdminClient(**self._kafka_args())
                await self.admin.start()
                await self._ensure_topics()
                self.producer = AIOKafkaProducer(**self._kafka_args(), acks="all", linger_ms=2,
                                                 max_request_size=max(1 << 20, 4 * s.max_message_bytes))
                await self.producer.start()
                self.consumer = AIOKafkaConsumer(
                    **self._kafka_args(), group_id=s.group_id, enable_auto_commit=False,
                    auto_offset_reset="earliest", session_timeout_ms=s.session_timeout_ms,
                    heartbeat_interval_ms=s.heartbeat_interval_ms, max_poll_records=s.batch_max,
                    fetch_max_wait_ms=s.fetch_max_wait_ms,
                    # sticky first: a rebalance moves only the partitions it must, so the others keep their
                    # keys in memory instead of being restored; round-robin while a member lacks it
                    partition_assignment_strategy=(StickyPartitionAssignor, RoundRobinPartitionAssignor),
                    fetch_max_bytes=max(52_428_800, 4 * s.max_message_bytes),
                    max_partition_fetch_bytes=max(1 << 20, 2 * s.max_message_bytes))
                # small fetches: what a restore holds beside the state it rebuilds stays small (a chunk
                # record is at most ~770 KB, and a partition's first batch is returned whatever its size)
                self.restore_consumer = AIOKafkaConsumer(
                    **self._kafka_args(), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                    fetch_max_bytes=8 << 20, max_partition_fetch_bytes=2 << 20)
                await self.restore_consumer.start()
                self.consumer.subscribe([s.input_topic], listener=_Rebalance(self))
                await self.consumer.start()
                self.broker_ok = True
                return
            except KafkaConnectionError as exc:  # retriable: the broker is not there yet
                log.warning("broker unreachable, retrying", error=str(exc), retry_in_s=delay)
                await self._close_clients()
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, 10.0)

    async def _ensure_topics(self) -> None:
        """Create missing topics with the input topic's partition count; refuse a changelog that is
        not co-partitioned with the input (its partition p must hold input partition p's keys)."""
        s, admin = self.settings, self.admin
        assert admin is not None
        existing = set(await admin.list_topics())
        partitions = 1
        if s.input_topic in existing:
            desc = await admin.describe_topics([s.input_topic])
            partitions = max(1, len(desc[0].get("partitions", [])))
        if self.changelog in existing:
            desc = await admin.describe_topics([self.changelog])
            have = len(desc[0].get("partitions", []))
            if have != partitions:
                raise ValueError(
                    f"changelog topic {self.changelog} has {have} partitions and input topic {s.input_topic} has "
                    f"{partitions}: they must match (state partition p holds input partition p's keys); add "
                    "partitions to the changelog, or set STREAMER_CHANGELOG_TOPIC to a new topic")
        missing = [t for t in (s.input_topic, s.output_topic, s.dlq_topic, self.changelog) if t not in existing]
        if missing:
            compact = {"cleanup.policy": "compact"}
            try:
                await admin.create_topics([
                    NewTopic(t, partitions, 1, topic_configs=compact if t == self.changelog else {}) for t in missing])
                log.info("created topics", topics=missing, partitions=partitions)
            except TopicAlreadyExistsError:
                pass

    async def _close_clients(self) -> None:
        for client in (self.consumer, self.restore_consumer, self.producer, self.admin):
            if client is None:
                continue
            try:
                await client.stop() if not isinstance(client, AIOKafkaAdminClient) else await client.close()
            except (KafkaError, OSError) as exc:
                log.warning("error while closing a Kafka client", error=str(exc))
        self.consumer = self.restore_consumer = self.producer = self.admin = None

    async def _probe(self) -> None:
        """Readiness: does the broker answer a metadata request right now?"""
        while not self._stop.is_set():
            try:
                assert self.admin is not None
                await asyncio.wait_for(self.admin.describe_cluster(), 3)
                self.broker_ok = True
            except Exception:  # any failure to answer means not ready
                self.broker_ok = False
            self.metrics.ready.set(1 if self.is_ready() else 0)
            self.metrics.tasks.set(len(asyncio.all_tasks()))
            try:
                await asyncio.wait_for(self._stop.wait(), 2)
            except TimeoutError:
                pass

    async def start(self) -> None:
        """Serve /metrics and the probes, connect to the broker (retrying while it is unreachable) and
        join the group. No I/O happens in the constructor."""
        s = self.settings
        port = await self.health.start()
        log.info("starting", version=__version__, learner=s.learner, cell=s.cell, input=s.input_topic,
                 output=s.output_topic, group=s.group_id, changelog=self.changelog, max_keys=self.pipeline.max_keys,
                 bytes_per_key=self.pipeline.bytes_per_key, metrics_port=port)
        # the compiled kernels of few-key waves (`models.jit`), loaded (or, in a fresh container, compiled: a few
        # seconds) in a worker thread while the clients connect and join, so the first wave does not wait for them
        self._warm_task = asyncio.create_task(asyncio.to_thread(jit.warm_up, torch.float32))
        await self._start_clients()
        self._probe_task = asyncio.create_task(self._probe())

    async def stop(self) -> None:
        """Make the state of what this replica owns durable and commit it (only partitions restored from
        the changelog, with nothing stepped that was not published), leave the group, close. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self._probe_task is not None:
            self._probe_task.cancel()
        if self._warm_task is not None:  # a thread cannot be cancelled: it ends within seconds
            await self._warm_task
        await self.cancel_restore()
        if self.producer is not None and self.consumer is not None:
            try:
                await self.checkpoint(self.store.checkpointable())
            except KafkaError as exc:
                log.error("final checkpoint failed; the next owner replays from the last one", error=str(exc))
            skipped = self.store.assigned - self.store.checkpointable()
            if skipped:
                log.warning("not checkpointed at exit (not restored, or stepped and not published): the next "
                            "owner re-processes from their last checkpoint", partitions=sorted(skipped))
            await self.producer.flush()
        await self._close_clients()
        await self.health.stop()
        log.info("stopped", ticks=int(self.metrics.ticks._value.get()),
                 predictions=int(self.metrics.predictions._value.get()),
                 live_keys=self.pipeline.live_keys, resets=self.pipeline.resets_total)

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self) -> int:
        """start(), the loop until a stop is requested (or, in burst mode, the input is drained), stop()."""
        try:
            await self.start()
            await self._loop()
        finally:
            await self.stop()
        return 0

    # ------------------------------------------------------------ the loop
    async def _loop(self) -> None:
        s = self.settings
        idle_since = time.monotonic()
        while not self._stop.is_set():
            assert self.consumer is not None
            await self._between_batches()
            batch = await self.consumer.getmany(timeout_ms=max(s.linger_ms, 100), max_records=s.batch_max)
            batch = self._restored_only(batch)
            if not batch:
                await self._checkpoint_due()  # a quiet input still gets its interval checkpoints
                if (s.burst and self.is_ready() and self._restore_task is None
                        and time.monotonic() - idle_since > s.burst_idle_s):
                    log.info("burst: input drained")
                    return
                continue
            idle_since = time.monotonic()
            await self._handle(batch)

    async def _between_batches(self) -> None:
        """Drop the keys of revoked partitions; start restoring assigned ones that are due (one restore
        at a time, in the background: the partitions already restored keep flowing meanwhile)."""
        # revoked partitions, and ones given back whose keys in memory may be stale (restored afresh); not
        # in the middle of a rebalance: a partition revoked now may come straight back, keys and all
        drops = {p for p in self.store.take_drops() if not self.store.ready(p)} if self.joined else set()
        if drops:
            async with self.model_lock:
                dropped = await asyncio.to_thread(self.pipeline.drop_partitions, drops)
                self.writer.forget([k.encode() for k in dropped])
            self.metrics.live_keys.set(self.pipeline.live_keys)
        if self._restore_task is None:
            due = self.store.to_restore(time.monotonic())
            if due:
                self._restore_task = asyncio.create_task(self._restore(due, self.store.generation))

    def _restored_only(self, batch: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, list[Any]]:
        """Records of a partition not restored (paused late, or fetched just before a rebalance) are
        not processed: the consumer is moved back to the first of them, to read them once it is."""
        out = {}
        for tp, msgs in batch.items():
            if tp.topic == self.settings.input_topic and not self.store.ready(tp.partition):
                if msgs and self.consumer is not None and tp in self.consumer.assignment():
                    self.consumer.seek(tp, msgs[0].offset)
                continue
            out[tp] = msgs
        return out

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Plan the fetched batch, then step, publish and commit it a chunk at a time: each chunk is
        as many waves as fit in `batch_budget_ms`, so a backlog's predictions flow while it drains,
        the lag gauge follows it, and a stop or a rebalance waits for one chunk, not the batch."""
        s = self.settings
        records = [msg for msgs in batch.values() for msg in msgs]  # ConsumerRecords, read as they are
        generation = self.store.generation
        budget = s.batch_budget_ms / 1000
        partitions = {tp.partition for tp in batch if tp.topic == s.input_topic}
        async with self.model_lock:
            plan = await asyncio.to_thread(self.pipeline.plan, records)
        # the first chunk of a fetch is a fifth of the budget: a backlog's first predictions are out after
        # ~50 ms of model time, not 250 (a daemon started on a backlog shows its first ones that much sooner)
        chunk_budget = budget / 5
        while True:
            t0 = time.perf_counter()
            async with self.model_lock:  # held from the step to the acknowledgement (see the module doc)
                if self.store.generation != generation:
                    # a rebalance checkpointed and committed what was handled; the rest comes back from
                    # the committed offsets (a new assignment fetches from there), its handled ticks skipped
                    log.info("rebalance during a batch: the rest of it is fetched again", left=plan.left)
                    return
                self.store.stepped(partitions)
                # the model step runs in a worker thread so heartbeats and /metrics are served meanwhile
                result = await asyncio.to_thread(self.pipeline.run, plan, chunk_budget)
                chunk_budget = budget
                self.metrics.update.labels(s.learner).observe(time.perf_counter() - t0)
                await self._send_result(result)
            await self._after_publish(result)
            if plan.done:
                return
            if self._stop.is_set():  # the rest is not committed: whoever owns the partition next replays it
                log.info("stopping in the middle of a batch", left=plan.left)
                return

    async def _send_result(self, result: Any) -> None:
        """Send predictions and dead letters and await their acknowledgement; then the chunk's
        partitions may be committed with their next checkpoint."""
        s = self.settings
        dead = [(d.key, d.value, None, [("reason", d.reason.encode())]) for d in result.dead]
        await self._deliver("predictions", s.output_topic, [(o.key, o.value, None, None) for o in result.predictions])
        await self._deliver("dead_letters", s.dlq_topic, dead)
        handled: dict[int, int] = {}
        for msg in result.records:
            handled[msg.partition] = handled.get(msg.partition, 0) + 1
        commit = {p: offset for (topic, p), offset in result.commit.items() if topic == s.input_topic}
        self.store.published(commit, handled, time.monotonic())

    async def _after_publish(self, result: Any) -> None:
        """Evicted state to the changelog, the most overdue partition's checkpoint, the metrics."""
        s, m = self.settings, self.metrics
        assert self.consumer is not None
        now = time.time()
        stamps = np.fromiter((msg.timestamp for msg in result.records), dtype=np.float64, count=len(result.records))
        observe_many(m.latency, np.maximum(now - stamps / 1000, 0.0))
        if result.evicted:  # evicted keys leave memory: their state must be in the changelog first
            await self._deliver("changelog", self.changelog, self._state_records(
                [(k, p, blob) for k, p, blob in result.evicted if self.store.ready(p)]))
        await self._checkpoint_due()
        n = len(result.records)
        m.ticks.inc(n)
        m.predictions.inc(len(result.predictions))
        m.batch.observe(n)
        m.waves.inc(result.waves)
        for d in result.dead:
            m.dead.labels(d.reason).inc()
        self.dead_letters += len(result.dead)
        self.consumed += n
        if result.resets:
            m.resets.labels(s.learner).inc(result.resets)
        if result.unkeyed:
            m.unkeyed.inc(result.unkeyed)
        for key in result.unkeyed_new:
            log.warning("ticks without a Kafka key: the series key must be the Kafka key, or the series' ticks "
                        "spread over partitions and replicas and are processed out of order",
                        key=key[:80], topic=s.input_topic)
        m.scored(result.scaled_errors, result.hits)
        for h, (scaled, hits) in result.ahead.items():
            m.scored(scaled, hits, horizon=h)
        m.live_keys.set(self.pipeline.live_keys)
        for expert, w in self.pipeline.expert_weights().items():  # bounded: the configured experts
            m.expert_weight.labels(expert).set(w)
        for tp in self.consumer.assignment():  # only partitions still ours: a rebalance may have moved some
            st, high = self.store.parts.get(tp.partition), self.consumer.highwater(tp)
            if st is not None and st.next_offset is not None and high is not None:
                m.lag.labels(str(tp.partition)).set(max(0, high - st.next_offset))

    async def _checkpoint_due(self) -> None:
        """Checkpoint the most overdue partition, if any: one per batch (or idle poll) keeps each pause
        short (revoke and shutdown still do all they need)."""
        due = self.store.due(time.monotonic())
        if due:
            await self.checkpoint({due[0]})

    def _state_records(self, blobs: Sequence[tuple[str, int, bytes]]) -> list[Message]:
        """Changelog records of (key, partition, checkpoint): chunked when large, naming who wrote them."""
        headers = [("streamer-group", self.settings.group_id.encode()),
                   ("streamer-model", self.pipeline.model.encode())]
        return [(k, v, p, headers) for key, p, blob in blobs for k, v in self.writer.records(key.encode(), blob)]

    async def checkpoint(self, partitions: set[int], locked: bool = False) -> None:
        """Write the changed keys of these partitions to the changelog, await it, then commit their offsets.
        Only restored partitions with nothing stepped and unpublished are written (see the store).

        `locked`: the caller already holds `model_lock`."""
        partitions = self.store.checkpointable(partitions)
        if not partitions or self.producer is None or self.consumer is None:
            return
        t0 = time.perf_counter()

        def collect() -> list[tuple[str, int, bytes]]:
            keys = self.pipeline.dirty(partitions)
            blobs = list(zip(keys, [self.pipeline.keys[k].partition for k in keys], self.pipeline.snapshot_keys(keys),
                             strict=True))
            self.pipeline.mark_clean(keys)
            return blobs

        if not locked:
            await self.model_lock.acquire()
        try:  # snapshots are taken in the worker thread: the event loop keeps serving meanwhile
            blobs = await asyncio.to_thread(collect)
            offsets = {TopicPartition(self.settings.input_topic, p): OffsetAndMetadata(o, "")
                       for p, o in self.store.offsets_to_commit(partitions).items()}
            records = self._state_records(blobs)
        finally:
            if not locked:
                self.model_lock.release()
        # durable before the offsets that rely on it are committed
        await self._deliver("changelog", self.changelog, records)
        committed = bool(offsets)
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:  # a rebalance took the partition: re-delivered
                log.warning("commit refused during a rebalance; those ticks will be re-delivered", error=str(exc))
            except KafkaError as exc:
                if not retriable(exc):
                    raise
                # the state is durable; the offsets go with the partition's next checkpoint
                log.warning("commit failed, kept for the next checkpoint", error=repr(exc))
                committed = False
        self.store.checkpointed(partitions, committed, time.monotonic())
        self.metrics.checkpoints.inc(len(partitions))
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)

    # ------------------------------------------------------------ restore
    async def cancel_restore(self) -> None:
        task, self._restore_task = self._restore_task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _restore(self, partitions: set[int], generation: int) -> None:
        """Restore these partitions (the background task `_between_batches` starts); a failure leaves
        them paused, marked failed, their keys out of memory, and retried with backoff."""
        t0 = time.monotonic()
        # The loading thread holds the GIL in long stretches; at the default 5 ms switch interval every
        # system call of an HTTP answer waits that long for it again, and /healthz takes 100+ ms. 1 ms
        # while restoring keeps probes and heartbeats prompt (benchmarks/restore.py).
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, 0.001))
        try:
            try:
                found = await asyncio.wait_for(self.read_changelog(partitions, generation),
                                               self.settings.restore_timeout_s)
            except TimeoutError:
                raise RestoreError(f"changelog partitions {sorted(partitions)} not read within "
                                   f"{self.settings.restore_timeout_s:g} s (STREAMER_RESTORE_TIMEOUT_S)") from None
            except KafkaError as exc:
                raise RestoreError(f"changelog unreadable: {exc!r}") from None
            restored, failed = await self._finish_restore(found, generation)
            if failed:
                first = min(failed)
                raise RestoreError(f"{len(failed)} partition(s) hold unusable checkpoints: partition {first}: "
                                   f"{failed[first]} (STREAMER_CORRUPT_STATE=cold starts such keys afresh)",
                                   set(failed))
        except RestoreError as exc:
            failed_parts = exc.partitions or partitions
            async with self.model_lock:  # what a failed attempt loaded leaves memory: the retry starts clean
                gone = {p for p in failed_parts if not self.store.ready(p)}
                await asyncio.to_thread(self.pipeline.drop_partitions, gone)
            delay = self.store.restore_failed(failed_parts, str(exc), time.monotonic())
            self.metrics.restore_failures.inc()
            log.error("restore failed: those partitions stay paused and the replica not ready", error=str(exc),
                      partitions=sorted(failed_parts), retry_in_s=delay)
        else:
            seconds = time.monotonic() - t0
            self.metrics.restored_keys.inc(restored)
            self.metrics.restore_seconds.observe(seconds)
            if self._rebalance_started is not None and self.store.all_ready():
                self.metrics.rebalance_seconds.observe(time.monotonic() - self._rebalance_started)
                self._rebalance_started = None
            log.info("partitions restored", partitions=sorted(partitions), restored_keys=restored,
                     restore_s=round(seconds, 3), load_s=round(sum(r.load_s for r in found.values()), 3))
        finally:
            sys.setswitchinterval(switch)
            if self._restore_task is asyncio.current_task():
                self._restore_task = None
            self.metrics.ready.set(1 if self.is_ready() else 0)

    async def read_changelog(self, partitions: set[int], generation: int) -> dict[int, Restored]:
        """Read each changelog partition up to a fence record written now (so every checkpoint written
        before the assignment is seen, without asking for end offsets), loading its checkpoints into
        the pipeline a slice at a time as they come: a restore holds one slice of records beside the
        state it rebuilds. Returns each partition's account (unusable, deleted and loaded keys)."""
        assert self.restore_consumer is not None and self.producer is not None
        fences = {}
        for p in partitions:
            nonce = uuid.uuid4().hex.encode()
            await (await self.producer.send(self.changelog, value=nonce, key=FENCE_KEY, partition=p))
            fences[p] = nonce
        tps = [TopicPartition(self.changelog, p) for p in partitions]
        rc = self.restore_consumer
        rc.assign(tps)
        await rc.seek_to_beginning(*tps)
        readers = {p: ChangelogReader(self.settings.group_id, self.pipeline.model) for p in partitions}
        open_parts = set(partitions)
        try:
            while open_parts:
                batch = await rc.getmany(timeout_ms=200, max_records=2_000)
                for tp, msgs in batch.items():
                    reader = readers[tp.partition]
                    for m in msgs:
                        if m.key == FENCE_KEY and m.value == fences[tp.partition]:
                            open_parts.discard(tp.partition)
                            rc.pause(tp)  # past the fence: nothing more is needed from it
                            break
                        reader.add(m.key, m.value)
                for p, reader in readers.items():
                    if reader.pending_bytes >= LOAD_SLICE_BYTES or (p not in open_parts and reader.waiting):
                        await self._load_slice(reader, generation)
        finally:
            rc.unsubscribe()
        return {p: r.finish() for p, r in readers.items()}

    async def _load_slice(self, reader: ChangelogReader, generation: int) -> None:
        """Load the checkpoints a reader has collected, in one batched call in a worker thread."""
        t0 = time.perf_counter()

        def load() -> tuple[list[bytes], dict[int, str]]:
            heads = reader.take()  # checksums and assembly: CPU work, here off the event loop
            return list(heads), self.pipeline.restore_keys(list(heads.values()))[1]

        async with self.model_lock:
            if self.store.generation != generation:  # a rebalance since the read began: it starts again
                raise RestoreError("a rebalance happened during the restore; it starts again")
            keys, refused = await asyncio.to_thread(load)
        r = reader.result
        r.load_s += time.perf_counter() - t0
        for i, key in enumerate(keys):
            if i not in refused:
                r.loaded.add(key)
            elif refused[i].startswith(OTHER_MODEL):  # intact, of other settings: the key starts afresh
                label = refused[i][len(OTHER_MODEL):]
                r.foreign[label] = r.foreign.get(label, 0) + 1
                r.deleted.add(key)  # an older record of it loaded before is dropped too
            else:
                r.corrupt[key] = refused[i]

    async def _finish_restore(self, found: dict[int, Restored], generation: int) -> tuple[int, dict[int, str]]:
        """Settle each partition once its changelog is read; returns the keys restored and the partitions
        that failed, with why. A key whose newest record is unusable (torn, altered, refused by the model)
        fails its partition (STREAMER_CORRUPT_STATE=pause: nothing of it is used) or starts cold (=cold);
        a key whose newest record is a tombstone leaves memory."""
        cold = self.settings.corrupt_state == "cold"
        for p, r in found.items():
            for label, count in r.foreign.items():
                log.error("changelog holds state of another deployment or of other model settings; those keys "
                          "start afresh (a deployment per group: give each its own STREAMER_CHANGELOG_TOPIC)",
                          changelog=self.changelog, partition=p, writer=label, records=count)
        async with self.model_lock:
            if self.store.generation != generation:  # a rebalance since the read: what was read may be stale
                raise RestoreError("a rebalance happened during the restore; it starts again")
            live = {p for p in found if p in self.store.parts and not self.store.ready(p)}
            failed: dict[int, str] = {}
            forget: list[str] = []
            for p in sorted(live):
                r = found[p]
                forget += [k.decode() for k in r.deleted & r.loaded]
                if r.corrupt:
                    problems = [f"key {k[:80].decode(errors='replace')}: {why}" for k, why in r.corrupt.items()]
                    log.error("unusable checkpoints in the changelog" + ("; those keys start cold" if cold else ""),
                              partition=p, keys=len(problems), first=problems[:3])
                    if cold:
                        forget += [k.decode() for k in r.corrupt if k in r.loaded]
                    else:
                        failed[p] = problems[0]
            self.pipeline.forget_keys(forget)
            ok = live - set(failed)  # the failed ones' keys leave memory in `_restore`, which retries them
            for p in ok:
                self.writer.chunks.update(found[p].chunks)
            self.store.restored(ok)
            if self.consumer is not None:
                mine = self.consumer.assignment()
                self.consumer.resume(*[tp for p in ok if (tp := TopicPartition(self.settings.input_topic, p)) in mine])
        orphans: list[Message] = [(k, None, p, None) for p in ok for k in found[p].orphans]
        if orphans:  # chunks a crash left without their head: deleted
            await self._deliver("changelog", self.changelog, orphans)
        restored = sum(len(found[p].loaded - found[p].deleted - set(found[p].corrupt)) for p in ok)
        return restored, failed

    async def _deliver(self, kind: str, topic: str, messages: Sequence[Message]) -> None:
        """Send (key, value, partition, headers) messages and await every acknowledgement. A retriable
        failure sends everything again with backoff (duplicates keep their `seq`), not ready meanwhile,
        giving up only when stopping. A refusal no retry can mend (a record over the broker's size
        limit, say) sends the records one by one, so that only the ones refused are lost: each is
        logged and counted (`streamer_unpublishable_total`), and the daemon goes on."""
        if not messages:
            return
        delay = 0.25
        while True:
            try:
                await asyncio.gather(*await self._send_batches(topic, messages))
                return
            except KafkaError as exc:
                if not retriable(exc):
                    log.warning("a batch was refused; sending its records one by one", kind=kind, error=repr(exc))
                    await self._deliver_each(kind, topic, messages)
                    return
                if self._stop.is_set():
                    raise
                delay = await self._backoff(kind, exc, delay)

    async def _deliver_each(self, kind: str, topic: str, messages: Sequence[Message]) -> None:
        producer = self.producer
        assert producer is not None
        for key, value, partition, headers in messages:
            delay = 0.25
            while True:
                try:
                    await (await producer.send(topic, value=value, key=key, partition=partition, headers=headers))
                    break
                except KafkaError as exc:
                    if retriable(exc) and not self._stop.is_set():
                        delay = await self._backoff(kind, exc, delay)
                        continue
                    self.metrics.unpublishable.labels(kind).inc()
                    log.error("record could not be published, skipped", kind=kind, topic=topic, error=repr(exc),
                              key_bytes=len(key or b""), value_bytes=len(value or b""))
                    break

    async def _backoff(self, kind: str, exc: BaseException, delay: float) -> float:
        self.broker_ok = False
        self.metrics.ready.set(0)
        self.metrics.delivery_retries.inc()
        log.warning("send failed, retrying", what=kind, error=repr(exc), retry_in_s=delay)
        await asyncio.sleep(delay)
        return min(2 * delay, 5.0)

    async def _send_batches(self, topic: str, messages: Sequence[Message]) -> list[Any]:
        """Send many (key, value, partition, headers) messages as per-partition record batches (one
        future per batch).

        A None partition comes from the producer's default partitioner (murmur2 of the key, as in the
        Java client), so a key's predictions land where a per-message send would put them; changelog
        records name their partition, so they sit beside their key's input partition."""
        producer = self.producer
        assert producer is not None
        partitions = sorted(await producer.partitions_for(topic))
        if len(partitions) != self._partition_count.get(topic):  # the topic grew: recompute
            self._partition_of.pop(topic, None)
            self._partition_count[topic] = len(partitions)
        cache = self._partition_of.setdefault(topic, {})  # murmur2 in Python costs more than a lookup
        by_partition: dict[int, list[Message]] = {}
        for msg in messages:
            p = msg[2] if msg[2] is not None else cache.get(msg[0])
            if p is None:
                p = cache[msg[0]] = _PARTITIONER(msg[0], partitions, partitions)
                if len(cache) > 4 * self.pipeline.max_keys:  # bounded, like the key set itself
                    cache.clear()
            by_partition.setdefault(p, []).append(msg)
        futures = []
        for partition, msgs in by_partition.items():
            batch = producer.create_batch()
            for key, value, _, headers in msgs:
                if batch.append(key=key, value=value, timestamp=None, headers=headers or []) is None:  # full: ship it
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None, headers=headers or [])
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures


def run_daemon(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (or, in burst mode, until the input is drained)."""

    async def main() -> int:
        daemon = Daemon(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.request_stop)
        return await daemon.run()

    return asyncio.run(main())
