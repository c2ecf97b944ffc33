"""Prometheus metrics and the /metrics, /healthz, /readyz endpoints.

Label values are bounded: learner names, dead-letter reasons, partition numbers; never a
series key. The HTTP server is a few lines of asyncio, so it shares the daemon's event loop
and answers while a model step runs in the worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from streamer.schema import REASONS

# 10 us .. 100 ms and a little beyond: a batched model step sits in this range
UPDATE_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)
LATENCY_BUCKETS = (1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)


def observe_many(histogram: Histogram, amounts: np.ndarray) -> None:
    """`histogram.observe(a)` for every a in amounts [n], in a few calls whatever n (the tick latencies of a
    whole chunk: one observe a tick cost the event loop about a microsecond each, at 1,000 keys a few per
    cent of the daemon's time). It adds to the counters `observe` itself adds to (prometheus_client's
    `_sum` and per-bucket `_buckets`, the first bucket whose bound is >= a); a histogram without them
    (another client version) takes the amounts one at a time. NaN is counted in the sum only, as `observe`
    counts it."""
    buckets, total = getattr(histogram, "_buckets", None), getattr(histogram, "_sum", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    if buckets is None or total is None or bounds is None:
        for a in amounts.tolist():
            histogram.observe(a)
        return
    if not len(amounts):
        return
    total.inc(float(amounts.sum()))
    where = np.searchsorted(np.asarray(bounds, dtype=float), amounts, side="left")  # [n] a <= bounds[where]
    counts = np.bincount(where, minlength=len(bounds))[: len(bounds)]  # NaN sorts past the last bound: no bucket
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))


class Metrics:
    def __init__(self, learner: str, cell: str, version: str, horizons: tuple[int, ...] = (1,)):
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, ...: what a soak watches
        self.learner = learner
        Gauge("streamer_info", "daemon build and model", ["version", "learner", "cell"], registry=r).labels(
            version, learner, cell).set(1)
        self.ticks = Counter("streamer_ticks_consumed", "messages consumed from the input topic", registry=r)
        self.predictions = Counter("streamer_predictions_published", "predictions acknowledged by the broker",
                                   registry=r)
        self.dead = Counter("streamer_dead_letters", "messages sent to the dead-letter topic", ["reason"], registry=r)
        self.waves = Counter("streamer_waves", "model waves stepped (a wave is one batched step of the keys with a "
                             "tick in it): ticks / waves is how full they are, and for few keys the cost per tick",
                             registry=r)
        self.batch = Histogram("streamer_batch_size", "ticks per micro-batch", buckets=BATCH_BUCKETS, registry=r)
        self.update = Histogram("streamer_update_seconds", "model step time per micro-batch", ["learner"],
                                buckets=UPDATE_BUCKETS, registry=r)
        self.latency = Histogram("streamer_tick_to_prediction_seconds",
                                 "from the tick's Kafka timestamp to its prediction's acknowledgement",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.unpublishable = Counter("streamer_unpublishable", "records the broker refused for good (too large, "
                                     "say): logged and skipped", ["kind"], registry=r)
        self.unkeyed = Counter("streamer_unkeyed_ticks", "ticks without a Kafka key: their series may be "
                               "processed out of order across partitions", registry=r)
        self.live_keys = Gauge("streamer_live_keys", "series keys held in memory", registry=r)
        self.resets = Counter("streamer_model_resets", "keys reset after their state turned non-finite", ["learner"],
                              registry=r)
        self.mse = Gauge("streamer_prequential_mse",
                         "rolling mean squared error of published predictions, in units of each key's running sd "
                         "(1 = as good as the running mean; each square capped at 100)", ["learner"], registry=r)
        self.coverage = Gauge("streamer_interval_coverage", "rolling share of ticks inside the 90% interval",
                              ["learner"], registry=r)
        self.expert_weight = Gauge("streamer_ensemble_weight", "ensemble learner: each expert's mixture weight, "
                                   "averaged over the live keys", ["expert"], registry=r)
        self.lag = Gauge("streamer_consumer_lag", "messages behind the partition's high watermark", ["partition"],
                         registry=r)
        self.rebalances = Counter("streamer_rebalances", "partition assignments received", registry=r)
        self.assigned = Gauge("streamer_assigned_partitions", "partitions this replica owns", registry=r)
        self.ready = Gauge("streamer_ready", "1 when joined to the group and the broker answers", registry=r)
        self.rebalance_seconds = Histogram("streamer_rebalance_seconds", "from revoke (or start) to restored state",
                                           buckets=LATENCY_BUCKETS + (30.0, 60.0), registry=r)
        self.restored_keys = Counter("streamer_restored_keys", "keys rebuilt from the changelog", registry=r)
        self.restore_failures = Counter("streamer_restore_failures", "restores that failed (their partitions stay "
                                        "paused, retried with backoff)", registry=r)
        self.restore_seconds = Histogram("streamer_restore_seconds", "time to restore assigned partitions' state",
                                         buckets=LATENCY_BUCKETS + (30.0, 60.0, 120.0), registry=r)
        self.checkpoints = Counter("streamer_checkpoints", "partition checkpoints written", registry=r)
        self.tasks = Gauge("streamer_event_loop_tasks", "asyncio tasks alive (a leak shows as growth)", registry=r)
        self.delivery_retries = Counter("streamer_delivery_retries", "sends retried after a retriable broker error",
                                        registry=r)
        self.checkpoint_seconds = Histogram("streamer_checkpoint_seconds", "time to write and commit a checkpoint",
                                            buckets=UPDATE_BUCKETS, registry=r)
        # per horizon (STREAMER_HORIZONS, bounded by the settings): h = 1 as the two gauges above, and each
        # further one scored when its target arrives
        self.horizon_mse = Gauge("streamer_horizon_mse", "rolling MSE of the forecasts h ticks ahead, scored when "
                                 "their target arrives (units of each key's running sd, as streamer_prequential_mse)",
                                 ["horizon"], registry=r)
        self.horizon_coverage = Gauge("streamer_horizon_coverage", "rolling share of h-ahead targets inside their "
                                      "forecast's 90% interval", ["horizon"], registry=r)
        self.horizon_scored = Counter("streamer_horizon_scored", "forecasts whose target arrived and was scored",
                                      ["horizon"], registry=r)
        self._mse: dict[int, float] = {}
        self._cov: dict[int, float] = {}
        for h in horizons:
            self.horizon_scored.labels(str(h))
        # Every bounded label value is exported from the start (at 0), so rate() and the alerts
        # see a series before the first event instead of an absent one.
        for reason in REASONS:
            self.dead.labels(reason)
        self.resets.labels(learner)
        self.update.labels(learner)

    def scored(self, scaled_errors: list[float], hits: int, decay: float = 0.01, cap: float = 100.0,
               horizon: int = 1) -> None:
        """Fold a batch's scored ticks into the rolling (exponentially weighted) MSE and coverage.

        The errors are in units of each key's running standard deviation, so keys of any unit weigh
        alike (1.0: as good as predicting the running mean), and each square is capped at `cap` (10
        sd): one wild but finite tick moves the gauge by at most decay * cap and then fades, where on
        the raw scale 1e200 squared made it +Inf for good. `horizon`: which forecasts these are."""
        if not scaled_errors:
            return
        mse = self._mse.get(horizon)
        for e in scaled_errors:
            e2 = min(e * e, cap) if e == e else cap  # NaN (inf / inf) counts as the cap too
            mse = e2 if mse is None else (1 - decay) * mse + decay * e2
        share = hits / len(scaled_errors)
        w = 1 - (1 - decay) ** len(scaled_errors)
        cov = self._cov.get(horizon)
        cov = share if cov is None else (1 - w) * cov + w * share
        self._mse[horizon], self._cov[horizon] = mse or 0.0, cov
        if horizon == 1:
            self.mse.labels(self.learner).set(mse or 0.0)
            self.coverage.labels(self.learner).set(cov)
        label = str(horizon)
        self.horizon_mse.labels(label).set(mse or 0.0)
        self.horizon_coverage.labels(label).set(cov)
        self.horizon_scored.labels(label).inc(len(scaled_errors))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """GET /metrics, /healthz (the loop answers), /readyz (ready() is true)."""

    def __init__(self, metrics: Metrics, ready: Callable[[], bool], host: str, port: int):
        self.metrics, self.ready, self.host, self.port = metrics, ready, host, port
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self.metrics.exposition()
            elif path == "/healthz":
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/readyz":
                ok = self.ready()
                status, ctype = ("200 OK" if ok else "503 Service Unavailable"), "text/plain"
                body = b"ready\n" if ok else b"not ready\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
