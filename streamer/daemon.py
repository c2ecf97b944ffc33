"""The daemon: consume ticks, step the models, publish predictions, commit, repeat.

    getmany (<= batch_max records)            consumer in a group, manual commits
      -> pipeline.plan, then per chunk of about batch_budget_ms:
      -> pipeline.run in a worker thread      the event loop stays free: heartbeats, /metrics
      -> send predictions and dead letters    await every acknowledgement (acks=all)
      -> checkpoint due partitions            changed keys' state to the changelog, acknowledged
      -> commit those partitions' offsets     only now: predictions sent and state durable

State (the Kafka Streams pattern): every key's state goes to a compacted changelog topic
co-partitioned with the input, keyed by the series key. A partition is checkpointed every
`checkpoint_ticks` ticks or `checkpoint_interval_s` seconds, on revoke and on shutdown; its
input offset is committed only after its checkpoint is acknowledged. On assignment the daemon
writes a fence record to the changelog partition and reads up to it, keeping the latest record
per key (Tansu never compacts, and its end offsets cannot be trusted), so it resumes from the
committed offset with the state that offset reflects. Each key's state records the input
offset it has applied, so a tick re-delivered after a crash is never applied twice; its
prediction, re-published, carries the same per-key `seq` (at-least-once, duplicates marked).

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
import time
import uuid
from collections.abc import Sequence
from typing import Any

import structlog
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
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

from streamer import __version__
from streamer.config import Settings
from streamer.metrics import HealthServer, Metrics
from streamer.pipeline import Pipeline

log = structlog.get_logger("streamer")
_PARTITIONER = DefaultPartitioner()
FENCE_KEY = b"__streamer_fence__"
Message = tuple[bytes | None, bytes, int | None, list[tuple[str, bytes]] | None]  # key, value, partition, headers


def retriable(exc: BaseException) -> bool:
    """Worth sending again: aiokafka marks network and leadership errors retriable; a batch that
    expired in the producer's queue (KafkaTimeoutError) is too."""
    return isinstance(exc, KafkaTimeoutError) or (isinstance(exc, KafkaError) and bool(exc.retriable))


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Checkpoint and commit what we are giving away, then forget it (batches are not in flight here)."""
        d = self.daemon
        d.joined = False
        d._generation += 1
        d._rebalance_started = time.monotonic()
        if revoked:
            parts = {tp.partition for tp in revoked if tp.topic == d.settings.input_topic}
            async with d.model_lock:  # no batch is inside the models while we hand them over
                await d.checkpoint(parts, locked=True)
                d.pipeline.drop_partitions(parts)
                for p in parts:
                    d._pending_commit.pop(p, None)
                    d._next_offset.pop(TopicPartition(d.settings.input_topic, p), None)
                    try:
                        d.metrics.lag.remove(str(p))
                    except KeyError:
                        pass
            log.info("partitions revoked", partitions=sorted(parts))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        d = self.daemon
        parts = {tp.partition for tp in assigned if tp.topic == d.settings.input_topic}
        d._generation += 1
        async with d.model_lock:
            restored = await d.restore(parts)
        d.joined = True
        d.metrics.rebalances.inc()
        d.metrics.assigned.set(len(assigned))
        seconds = time.monotonic() - (d._rebalance_started or time.monotonic())
        d.metrics.rebalance_seconds.observe(seconds)
        d.metrics.restored_keys.inc(restored)
        log.info("partitions assigned", partitions=sorted(parts), restored_keys=restored,
                 rebalance_s=round(seconds, 3))


class Daemon:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.pipeline = Pipeline(settings, __version__)
        self.metrics = Metrics(settings.learner, settings.cell, __version__)
        self.health = HealthServer(self.metrics, self.is_ready, settings.metrics_host, settings.metrics_port)
        self.joined = False
        self.broker_ok = False
        self._stop = asyncio.Event()
        self._next_offset: dict[TopicPartition, int] = {}
        self.dead_letters = 0  # published dead letters, for embedders such as the demo
        self.changelog = settings.changelog_topic or f"{settings.input_topic}-changelog"
        self._since_checkpoint: dict[int, int] = {}  # partition -> ticks since its last checkpoint
        self._last_checkpoint: dict[int, float] = {}
        self._pending_commit: dict[int, int] = {}  # partition -> next offset, once durable
        self._rebalance_started: float | None = time.monotonic()
        self._generation = 0  # counts rebalance callbacks: a batch planned before one is not finished after it
        self.restore_consumer: AIOKafkaConsumer | None = None
        # The rebalance callbacks run on aiokafka's coordinator task while a batch may be inside the
        # models in the worker thread: every access to the pipeline's state holds this lock.
        self.model_lock = asyncio.Lock()
        self.consumed = 0  # messages whose batch is published and committed
        self._partition_of: dict[str, dict[bytes | None, int]] = {}
        self._partition_count: dict[str, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.admin: AIOKafkaAdminClient | None = None

    # ------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stop requested: finishing the batch in hand")
            self._stop.set()

    def is_ready(self) -> bool:
        return self.joined and self.broker_ok

    def _kafka_args(self) -> dict[str, Any]:
        s = self.settings
        return {"bootstrap_servers": s.bootstrap_servers, "client_id": s.client_id,
                "request_timeout_ms": s.request_timeout_ms, **s.kafka_security()}

    async def _start_clients(self) -> None:
        """Start admin, producer and consumer, retrying with backoff while the broker is unreachable."""
        s = self.settings
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
                    fetch_max_bytes=max(52_428_800, 4 * s.max_message_bytes),
                    max_partition_fetch_bytes=max(1 << 20, 2 * s.max_message_bytes))
                self.restore_consumer = AIOKafkaConsumer(**self._kafka_args(), group_id=None,
                                                         enable_auto_commit=False, auto_offset_reset="earliest")
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
        """Create missing output and DLQ topics with the input topic's partition count."""
        s, admin = self.settings, self.admin
        assert admin is not None
        existing = set(await admin.list_topics())
        partitions = 1
        if s.input_topic in existing:
            desc = await admin.describe_topics([s.input_topic])
            partitions = max(1, len(desc[0].get("partitions", [])))
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

    async def run(self) -> int:
        s = self.settings
        # before any worker thread exists: each takes this count when it first runs torch (0: set per wave)
        torch.set_num_threads(s.torch_threads or 1)
        port = await self.health.start()
        log.info("starting", version=__version__, learner=s.learner, cell=s.cell, input=s.input_topic,
                 output=s.output_topic, group=s.group_id, metrics_port=port)
        await self._start_clients()
        probe = asyncio.create_task(self._probe())
        try:
            await self._loop()
        finally:
            self._stop.set()
            probe.cancel()
            if self.producer is not None and self.consumer is not None:
                try:  # the state of everything we own becomes durable, then its offsets are committed
                    await self.checkpoint({tp.partition for tp in self.consumer.assignment()})
                except KafkaError as exc:
                    log.error("final checkpoint failed; the next owner replays from the last one", error=str(exc))
                await self.producer.flush()
            await self._close_clients()
            await self.health.stop()
            log.info("stopped", ticks=int(self.metrics.ticks._value.get()),
                     predictions=int(self.metrics.predictions._value.get()),
                     live_keys=self.pipeline.live_keys, resets=self.pipeline.resets_total)
        return 0

    # ------------------------------------------------------------ the loop
    async def _loop(self) -> None:
        s = self.settings
        idle_since = time.monotonic()
        while not self._stop.is_set():
            assert self.consumer is not None
            batch = await self.consumer.getmany(timeout_ms=max(s.linger_ms, 100), max_records=s.batch_max)
            if not batch:
                if s.burst and self.joined and time.monotonic() - idle_since > s.burst_idle_s:
                    log.info("burst: input drained")
                    return
                continue
            idle_since = time.monotonic()
            await self._handle(batch)

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Plan the fetched batch, then step, publish and commit it a chunk at a time: each chunk is
        as many waves as fit in `batch_budget_ms`, so a backlog's predictions flow while it drains,
        the lag gauge follows it, and a stop or a rebalance waits for one chunk, not the batch."""
        s = self.settings
        records = [msg for msgs in batch.values() for msg in msgs]  # ConsumerRecords, read as they are
        generation = self._generation
        budget = s.batch_budget_ms / 1000
        async with self.model_lock:
            plan = await asyncio.to_thread(self.pipeline.plan, records)
        while True:
            t0 = time.perf_counter()
            # the model step runs in a worker thread so heartbeats and /metrics are served meanwhile
            async with self.model_lock:
                if self._generation != generation:
                    # a rebalance checkpointed and committed what was handled; the rest comes back from
                    # the committed offsets (a new assignment fetches from there), its handled ticks skipped
                    log.info("rebalance during a batch: the rest of it is fetched again", left=plan.left)
                    return
                result = await asyncio.to_thread(self.pipeline.run, plan, budget)
            self.metrics.update.labels(s.learner).observe(time.perf_counter() - t0)
            await self._publish(result)
            if plan.done:
                return
            if self._stop.is_set():  # the rest is not committed: whoever owns the partition next replays it
                log.info("stopping in the middle of a batch", left=plan.left)
                return

    async def _publish(self, result: Any) -> None:
        """Send, await acknowledgements, then advance the offsets the result handled; update the metrics."""
        s, m = self.settings, self.metrics
        assert self.producer is not None and self.consumer is not None
        dead = [(d.key, d.value, None, [("reason", d.reason.encode())]) for d in result.dead]
        # every prediction acknowledged before its offset is committed
        await self._deliver("predictions", s.output_topic, [(o.key, o.value, None, None) for o in result.predictions])
        await self._deliver("dead_letters", s.dlq_topic, dead)
        now = time.time()
        handled: dict[int, int] = {}
        for msg in result.records:
            m.latency.observe(max(0.0, now - msg.timestamp / 1000))
            handled[msg.partition] = handled.get(msg.partition, 0) + 1
        now_m = time.monotonic()
        for (topic, p), offset in result.commit.items():
            self._next_offset[TopicPartition(topic, p)] = offset
            self._pending_commit[p] = offset
            self._since_checkpoint[p] = self._since_checkpoint.get(p, 0) + handled.get(p, 0)
            # partitions start at staggered phases of the interval, so their checkpoints do not coincide
            phase = (p * 0.6180339887) % 1.0 * s.checkpoint_interval_s
            self._last_checkpoint.setdefault(p, now_m - phase)
        if result.evicted:  # evicted keys leave memory: their state must be in the changelog first
            evicted = [(k.encode(), blob, p, None) for k, p, blob in result.evicted]
            await self._deliver("changelog", self.changelog, evicted)
        since = {p: now_m - self._last_checkpoint.get(p, now_m) for p in self._since_checkpoint}
        overdue = {p: max(n / s.checkpoint_ticks, since[p] / s.checkpoint_interval_s)
                   for p, n in self._since_checkpoint.items()}
        due = [p for p, ratio in overdue.items() if ratio >= 1.0]
        if due:  # one partition per batch keeps each pause short (revoke and shutdown still do all they need)
            await self.checkpoint({max(due, key=lambda p: overdue[p])})
        n = len(result.records)
        m.ticks.inc(n)
        m.predictions.inc(len(result.predictions))
        m.batch.observe(n)
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
        m.live_keys.set(self.pipeline.live_keys)
        for tp in self.consumer.assignment():  # only partitions still ours: a rebalance may have moved some
            nxt, high = self._next_offset.get(tp), self.consumer.highwater(tp)
            if nxt is not None and high is not None:
                m.lag.labels(str(tp.partition)).set(max(0, high - nxt))

    async def checkpoint(self, partitions: set[int], locked: bool = False) -> None:
        """Write the changed keys of these partitions to the changelog, await it, then commit their offsets.

        `locked`: the caller already holds `model_lock`."""
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
            offsets = {TopicPartition(self.settings.input_topic, p): OffsetAndMetadata(self._pending_commit[p], "")
                       for p in partitions if p in self._pending_commit}
        finally:
            if not locked:
                self.model_lock.release()
        # durable before the offsets that rely on it are committed
        await self._deliver("changelog", self.changelog, [(k.encode(), blob, p, None) for k, p, blob in blobs])
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
        now = time.monotonic()
        for p in partitions:
            self._since_checkpoint[p] = 0
            self._last_checkpoint[p] = now
            if committed:
                self._pending_commit.pop(p, None)
        self.metrics.checkpoints.inc(len(partitions))
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)

    async def restore(self, partitions: set[int]) -> int:
        """Rebuild the keys of these partitions from the changelog; returns how many were restored.

        A fence record is written to each changelog partition and the partition is read up to it, so
        every checkpoint written before the assignment is seen without asking for end offsets."""
        if not partitions or self.restore_consumer is None or self.producer is None:
            return 0
        fences = {}
        for p in partitions:
            nonce = uuid.uuid4().hex.encode()
            await (await self.producer.send(self.changelog, value=nonce, key=FENCE_KEY, partition=p))
            fences[p] = nonce
        tps = [TopicPartition(self.changelog, p) for p in partitions]
        rc = self.restore_consumer
        rc.assign(tps)
        await rc.seek_to_beginning(*tps)
        latest: dict[bytes, bytes] = {}
        open_parts = set(partitions)
        deadline = time.monotonic() + 120
        while open_parts and time.monotonic() < deadline:
            batch = await rc.getmany(timeout_ms=200, max_records=10_000)
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.key == FENCE_KEY:
                        if m.value == fences.get(tp.partition):
                            open_parts.discard(tp.partition)
                    elif m.key is not None and m.value is not None:
                        latest[m.key] = m.value  # the newest record of a key wins (no compaction needed)
        if open_parts:
            raise KafkaError(f"changelog partitions {sorted(open_parts)} did not reach their fence in 120 s")
        rc.unsubscribe()
        restored = 0
        for key, blob in latest.items():  # co-partitioned: changelog partition p holds input partition p's keys
            try:
                self.pipeline.restore_key(blob)
                restored += 1
            except ValueError as exc:  # a corrupt or foreign record: that key starts cold, the rest go on
                log.error("unusable checkpoint skipped; the key starts cold", key=key[:80].decode(errors="replace"),
                          error=str(exc))
        return restored

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
                              key_bytes=len(key or b""), value_bytes=len(value))
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
                if len(cache) > 4 * self.settings.max_keys:  # bounded, like the key set itself
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
