"""decode -> micro-batch -> bank step -> encode, for a batch of Kafka records. No I/O here.

Per key, a tick carries the value v_t (and optional features f_t). The regressor is
x_t = [v_t, v_{t-1}, ..., v_{t-L+1}, f_t]; the target of x_t is v_{t+1}. So at tick t:

    1. if the key has a pending x_{t-1}: step the bank on (x_{t-1}, d = v_t)   (learn)
    2. predict v_{t+1} from x_t and publish it                                 (serve)
    3. keep x_t pending

The prediction published at step 2 is exactly the one step 1 scores at the next tick (the
bank's predict does not mutate state). Keys with the same feature names share one ModelBank
(one tensor batch); a batch holding several ticks of one key is processed in waves (the j-th
tick of every key in wave j), each wave one batched step and one batched predict.
"""

from __future__ import annotations

import gc
import math
import os
import sqlite3
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from models import modelfile, warmstart
from models.bank import OTHER_MODEL, BankConfig, ModelBank
from models.cells import NetSpec
from models.checkpoint import frame, unframe
from models.learners import WARM_STARTABLE, make_learner
from models.seqae import window_scores
from streamer.config import Settings
from streamer.schema import Tick, TickError, dead_letter_key, decode_tick, encode_dead_letter, encode_prediction


class RecordLike(Protocol):
    """One Kafka message as the pipeline reads it; aiokafka's ConsumerRecord is one, so the
    daemon hands its fetched records over without copying them."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Record:
    """A Kafka message built by hand (tests, embedders)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class Outgoing:
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    reason: str


@dataclass
class Plan:
    """One fetched batch, decoded and laid out in waves (the j-th tick of every key in wave j), which
    `Pipeline.run` steps a chunk of waves at a time, so a backlog's predictions flow while it drains.

    Within a partition the waves interleave keys, so the records handled after k waves are not a
    prefix of the partition: the offset safe to commit is the smallest one not yet handled (the
    ticks past it that were handled are skipped on re-delivery: each key's state records the
    offset it has applied). When each key's ticks keep to one partition (the Kafka key decides it)
    that smallest one is in wave k itself: every key of a later wave has a tick in wave k, at a
    smaller offset than its later ones. A batch where some key came on two partitions (`spread`:
    no Kafka key, or another one) is searched through all the waves left."""

    waves: list[list[tuple[RecordLike, Tick]]] = field(default_factory=list)
    next_wave: int = 0
    dead: list[DeadLetter] = field(default_factory=list)  # not yet handed to a result
    skipped: int = 0
    handled: list[RecordLike] = field(default_factory=list)  # dead letters and re-delivered ticks
    unkeyed: int = 0  # ticks without a Kafka key
    unkeyed_new: list[str] = field(default_factory=list)  # series keys seen without a Kafka key for the first time
    ends: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> last offset + 1
    spread: bool = False  # some key's ticks came on more than one partition
    signatures: set[tuple[str, ...]] = field(default_factory=set)  # the feature sets (banks) the waves touch

    @property
    def done(self) -> bool:
        return self.next_wave >= len(self.waves)

    @property
    def left(self) -> int:
        """Ticks not yet stepped."""
        return sum(len(w) for w in self.waves[self.next_wave:])

    def commit_offsets(self) -> dict[tuple[str, int], int]:
        """Per partition, the offset below which every record of the batch is handled."""
        out = dict(self.ends)
        for wave in self.waves[self.next_wave : None if self.spread else self.next_wave + 1]:
            for r, _ in wave:
                tp = (r.topic, r.partition)
                if r.offset < out[tp]:
                    out[tp] = r.offset
        return out


@dataclass
class BatchResult:
    predictions: list[Outgoing] = field(default_factory=list)
    evicted: list[tuple[str, int, bytes]] = field(default_factory=list)  # (key, partition, state) to checkpoint
    dead: list[DeadLetter] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)  # v_t - previous prediction, for scored ticks
    scaled_errors: list[float] = field(default_factory=list)  # the same in units of each key's running sd
    hits: int = 0  # scored ticks inside the previous 90% interval
    resets: int = 0
    skipped: int = 0  # re-delivered ticks whose effect the key's state already holds
    records: list[Any] = field(default_factory=list)  # the records this result handled (RecordLike)
    commit: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> offset to commit
    unkeyed: int = 0  # ticks that came without a Kafka key
    unkeyed_new: list[str] = field(default_factory=list)  # keys first seen without a Kafka key: warned about once each
    # horizons beyond the next (STREAMER_HORIZONS): h -> (errors of the forecasts that came due, in units of
    # each key's running sd at the tick they came due; how many of those targets were inside the interval)
    ahead: dict[int, tuple[list[float], int]] = field(default_factory=dict)
    waves: int = 0  # waves stepped (records / waves: how full they were)


@dataclass(slots=True)
class KeyState:
    """The tick-mode bookkeeping of one key (its model state lives in a ModelBank row)."""

    signature: tuple[str, ...]  # feature names
    lags: list[float]  # [L] v_t, v_{t-1}, ...
    pending: list[float] | None = None  # x of the last tick, waiting for its target
    seq: int = 0
    last_mean: float = math.nan
    last_lower: float = math.nan
    last_upper: float = math.nan
    last_seen: int = 0  # batch number, for idle eviction
    partition: int = -1  # input partition the key's ticks arrive on
    applied: int = 0  # next input offset not yet applied to this key's state
    dirty: bool = False  # changed since its last checkpoint
    recent: list[float] | None = None  # the anomaly model's window of values (refills after a restore)


def wide_wave_threads() -> int:
    """Torch threads for a wave of at least WIDE_WAVE_TICKS ticks (STREAMER_TORCH_THREADS=0): the cores
    this process may use, at most 4; a smaller wave steps on one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


def persistence_forecast(value: float, previous: float, z: float = 1.645) -> tuple[float, float, float]:
    """The fallback when the model cannot give a finite prediction: the next value equals this one,
    with a 90% interval as wide as z times the last change, all within the float range."""
    top = sys.float_info.max
    change = value - previous
    half = z * abs(change) if math.isfinite(change) else top
    return value, max(value - half, -top), min(value + half, top)


TEXT_FEATURE, TEXT_PRIOR = "text_p", 0.5
_FLOAT_MAX = sys.float_info.max
WIDE_WAVE_TICKS = 128  # a wave this big steps on several torch threads (STREAMER_TORCH_THREADS=0)

MAX_KEYS = 100_000  # the default key bound's ceiling, whatever the memory
KEY_OVERHEAD_BYTES = 4096  # a key's bookkeeping beside its model state (KeyState, indexes, caches)
STATE_MAGIC = b"TSCK"  # tick-streamer checkpoint
STATE_VERSION = 1


def _due_forecasts(horizons: tuple[int, ...], res: Any) -> dict[int, tuple[list[float], int]]:
    """The further horizons' forecasts that came due in a bank step: h -> (errors in units of the key's
    running sd at this tick, hits of the interval)."""
    out = {}
    err, hit = res.ahead_error.numpy(), res.ahead_hit.numpy()  # [n, m]
    sd = res.scale.numpy()[:, None]  # [n, 1]
    for j, h in enumerate(horizons[1:]):
        came = np.isfinite(err[:, j])
        if came.any():
            out[h] = ((err[came, j] / sd[came, 0]).tolist(), int(hit[came, j].sum()))
    return out


class OtherModel(ValueError):
    """An intact checkpoint of other model settings: the key starts afresh, its `seq` carried on."""

    def __init__(self, message: str, key: str, seq: int):
        super().__init__(message)
        self.key, self.seq = key, seq


class SpillStore:
    """Evicted keys' state on local disk (SQLite, bytes only), so memory stays bounded."""

    def __init__(self, path: str | None = None):
        if path is None:  # a temporary file on disk, removed with the store: memory stays bounded
            fd, path = tempfile.mkstemp(prefix="streamer-spill-", suffix=".sqlite")
            os.close(fd)
            weakref.finalize(self, os.remove, path)
        self._db = sqlite3.connect(path, check_same_thread=False)
        weakref.finalize(self, self._db.close)
        self._db.execute("CREATE TABLE IF NOT EXISTS spill (key TEXT PRIMARY KEY, state BLOB)")

    def put(self, key: str, state: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO spill VALUES (?, ?)", (key, state))

    def pop(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT state FROM spill WHERE key = ?", (key,)).fetchone()
        if row is not None:
            self._db.execute("DELETE FROM spill WHERE key = ?", (key,))
        return row[0] if row else None

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM spill").fetchone()[0])

    def drop_partition(self, keys: list[str]) -> None:
        self._db.executemany("DELETE FROM spill WHERE key = ?", [(k,) for k in keys])


class Pipeline:
    def __init__(self, settings: Settings, version: str = "0"):
        self.settings, self.version = settings, version
        self.model = settings.model_name()
        self.horizons = settings.horizon_list()
        self.banks: dict[tuple[str, ...], ModelBank] = {}
        self.keys: dict[str, KeyState] = {}
        self.spill = SpillStore(settings.spill_path)  # evicted idle keys (their state is also checkpointed)
        self.spilled_partition: dict[str, int] = {}
        self._unkeyed_seen: set[str] = set()  # series keys already warned about (ticks without a Kafka key)
        self.carried_seq: dict[str, int] = {}  # keys whose checkpoint was of other settings: their seq goes on
        self._wide_threads = wide_wave_threads()
        self.batches = 0
        self.resets_total = 0
        self._learner_options = settings.learner_config()
        self.warm = self._load_warm_start(settings)
        self.warm_banks = 0  # banks whose keys start from the warm start
        self.text_scorer = self._load_text_model(settings)
        self.anomaly = self._load_anomaly_model(settings)  # (model, lookback, threshold) or None
        self.bytes_per_key = self._try_model()
        self.max_keys = settings.max_keys or max(1, min(MAX_KEYS, settings.memory_mb * 2**20 // self.bytes_per_key))

    @staticmethod
    def _load_anomaly_model(s: Settings) -> tuple[Any, int, float] | None:
        if not s.anomaly_model:
            return None
        from models.seqae import autoencoder_from_bytes

        source = f"STREAMER_ANOMALY_MODEL {s.anomaly_model}"
        model, manifest = autoencoder_from_bytes(modelfile.read(s.anomaly_model, source), source)
        if len(manifest.get("columns", [])) != 1:
            raise ValueError(f"{source} reads windows of {len(manifest.get('columns', []))} columns; the daemon "
                             "scores each key's own series: train it on one column (offline train autoencoder "
                             "--columns COL)")
        threshold = float(manifest.get("threshold") or 0.0)
        if not threshold > 0:
            raise ValueError(f"{source} has no threshold (the 99th percentile of normal windows' scores)")
        return model, int(manifest["window"]["lookback"]), threshold

    def _anomalies(self, bank: ModelBank, names: list[str], windows: list[list[float] | None]) -> list[float | None]:
        """Score / threshold of each key's latest window of values (None until it has `lookback` of
        them). The window is put in units of the key's running standard deviation; the model removes
        its level."""
        assert self.anomaly is not None
        model, lookback, threshold = self.anomaly
        full = [i for i, w in enumerate(windows) if w is not None and len(w) == lookback]
        out: list[float | None] = [None] * len(names)
        if full:
            sd = bank.state["n.d_sd"][bank.rows([names[i] for i in full])].to(torch.float32)  # [n]
            w = torch.tensor([windows[i] for i in full], dtype=torch.float32)  # [n, L]
            scores = window_scores(model, (w / sd.unsqueeze(1)).unsqueeze(2))  # [n]
            for i, sc in zip(full, (scores / threshold).tolist(), strict=True):
                out[i] = sc if math.isfinite(sc) else None
        return out

    @staticmethod
    def _load_text_model(s: Settings) -> Any:
        if not s.text_model:
            return None
        from models.textmodels import TextScorer

        source = f"STREAMER_TEXT_MODEL {s.text_model}"
        return TextScorer(modelfile.read(s.text_model, source), source)

    def _with_text_feature(self, ticks: list[tuple[RecordLike, Tick]]) -> list[tuple[RecordLike, Tick]]:
        """Every tick gains the feature text_p: the text model's probability for its text, 0.5 (no
        evidence either way) without one, so a key's feature set does not flip with its texts."""
        has = [i for i, (_, t) in enumerate(ticks) if t.text]
        p = [TEXT_PRIOR] * len(ticks)
        if has:
            scored = self.text_scorer([ticks[i][1].text for i in has])
            for i, v in zip(has, scored, strict=True):
                p[i] = float(v)
        out = []
        for (r, t), v in zip(ticks, p, strict=True):
            feats = dict(t.features)
            feats[TEXT_FEATURE] = v  # the derived feature takes the name over from a tick's own
            names = tuple(sorted(feats))
            out.append((r, Tick(t.key, t.ts, t.value, names, tuple(feats[n] for n in names), t.text)))
        return out

    @staticmethod
    def _load_warm_start(s: Settings) -> warmstart.WarmStart | None:
        """The warm start, checked against these settings, or ValueError saying what does not fit."""
        if not s.warm_start:
            return None
        source = f"STREAMER_WARM_START {s.warm_start}"
        if s.learner not in WARM_STARTABLE:
            raise ValueError(f"{source} holds the recurrent net's weights, which the {s.learner} learner does not "
                             f"have: choose one of {', '.join(WARM_STARTABLE)}, or drop the warm start")
        ws = warmstart.load(s.warm_start, source)
        if ws.keys is not None:
            raise ValueError(f"{source} holds one model per series (layout {ws.layout.get('kind')}); the daemon "
                             "needs one for every new key: train it with `offline train warm-start --layout ticks`")
        features = list(ws.layout.get("features") or [])
        ws.check(NetSpec(n_in=s.lags + len(features), hidden=s.hidden, cell=s.cell, head=s.head),
                 {"kind": "ticks", "lags": s.lags, "features": features}, source)
        return ws

    def _try_model(self) -> int:
        """Step a throwaway bank of the configured model a few ticks, so settings the model cannot run
        with fail at start with their reason, not at the first tick; returns the memory a key takes
        (its state twice, for the step's temporaries and its checkpoint, plus the bookkeeping)."""
        s = self.settings
        spec = NetSpec(n_in=s.lags, hidden=s.hidden, cell=s.cell, head=s.head)
        try:
            learner = make_learner(s.learner, spec, warm=False, **self._learner_options)
            bank = ModelBank(learner, BankConfig(seed=s.seed, horizons=self.horizons))
            names = ["probe-a", "probe-b"]
            for t in range(3):
                x = torch.full((2, spec.n_in), float(t), dtype=torch.float64)  # [2, p]
                bank.step(names, x, torch.tensor([t + 1.0, -t - 1.0], dtype=torch.float64))
            bank.forecast(names, torch.zeros(2, spec.n_in, dtype=torch.float64))
        except Exception as exc:
            raise ValueError(f"the {s.learner} learner cannot run with these settings "
                             f"(STREAMER_LEARNER_OPTIONS={s.learner_options}): {type(exc).__name__}: {exc}") from None
        return 2 * bank.bytes_per_key() + KEY_OVERHEAD_BYTES

    # --------------------------------------------------------------- banks
    def _bank(self, signature: tuple[str, ...]) -> ModelBank:
        bank = self.banks.get(signature)
        if bank is None:
            s = self.settings
            spec = NetSpec(n_in=s.lags + len(signature), hidden=s.hidden, cell=s.cell, head=s.head)
            # keys with the feature set the warm start was trained on start from it; others start cold
            theta0, readout0 = None, None
            if self.warm is not None and list(signature) == list(self.warm.layout.get("features") or []):
                theta0 = self.warm.theta
                # its read-outs too, when they were fitted for these horizons and this learner
                readout0 = self.warm.readout_for(self.horizons, s.learner)
            bank = ModelBank(make_learner(s.learner, spec, warm=theta0 is not None, **self._learner_options),
                             BankConfig(seed=s.seed, horizons=self.horizons), theta0, capacity_hint=self.max_keys,
                             readout0=readout0)
            self.warm_banks += int(theta0 is not None)
            self.banks[signature] = bank
        return bank

    @property
    def live_keys(self) -> int:
        return len(self.keys)

    def expert_weights(self) -> dict[str, float]:
        """The ensemble's mean weight per expert over every live key of every bank (empty for one learner)."""
        total: dict[str, float] = {}
        n = 0
        for bank in self.banks.values():
            if len(bank):
                for name, w in bank.expert_weights().items():
                    total[name] = total.get(name, 0.0) + w * len(bank)
                n += len(bank)
        return {name: w / n for name, w in total.items()} if n else {}

    # ------------------------------------------------------------- process
    def process(self, records: Sequence[RecordLike]) -> BatchResult:
        """A batch of records, every wave of it (tests, embedders; the daemon runs plans in chunks)."""
        return self.run(self.plan(records))

    def plan(self, records: Sequence[RecordLike]) -> Plan:
        """Decode a fetched batch and lay it out in waves. Dead letters and re-delivered ticks are
        handled here; no model state moves until `run`."""
        self.batches += 1
        plan = Plan()
        ticks: list[tuple[RecordLike, Tick]] = []
        ends = plan.ends
        for r in records:
            ends[(r.topic, r.partition)] = r.offset + 1  # a fetch holds each partition's records in order
            try:
                tick = decode_tick(r.value, r.key, self.settings.max_message_bytes)
            except TickError as exc:
                self._dead(plan, r, exc.reason, exc.detail)
                continue
            except Exception as exc:  # a decoder bug met by this message: it alone goes to the DLQ
                self._dead(plan, r, "processing_error", f"{type(exc).__name__}: {exc}")
                continue
            if r.key is None:  # partitioned by nobody: the key's ticks may be spread over partitions
                if self.settings.require_kafka_key:
                    self._dead(plan, r, "missing_kafka_key", "the series key must be the Kafka key (ordering)")
                    continue
                plan.unkeyed += 1
                if tick.key not in self._unkeyed_seen:
                    if len(self._unkeyed_seen) >= self.max_keys:  # bounded like the key set
                        self._unkeyed_seen.clear()
                    self._unkeyed_seen.add(tick.key)
                    plan.unkeyed_new.append(tick.key)
            ticks.append((r, tick))
        if self.text_scorer is not None and ticks:
            try:
                ticks = self._with_text_feature(ticks)
            except Exception:  # one text breaks the scorer: score them one by one, refuse those that raise
                scored = []
                for item in ticks:
                    try:
                        scored += self._with_text_feature([item])
                    except Exception as exc:
                        self._dead(plan, item[0], "processing_error", f"{type(exc).__name__}: {exc}")
                ticks = scored
        count: dict[str, int] = {}
        partition_of: dict[str, int] = {}
        new_keys: dict[str, tuple[str, ...]] = {}  # keys first seen in this batch: their feature names
        if self.spilled_partition:
            self._readmit([t.key for _, t in ticks if t.key in self.spilled_partition and t.key not in self.keys])
        for r, tick in ticks:
            ks = self.keys.get(tick.key)
            if ks is not None and r.offset < ks.applied and r.partition == ks.partition:
                plan.skipped += 1  # re-delivered after a restore: this key's state already holds it
                plan.handled.append(r)
                continue
            signature = ks.signature if ks is not None else new_keys.setdefault(tick.key, tick.feature_names)
            if signature != tick.feature_names:
                self._dead(plan, r, "feature_set_changed",
                           f"key has features {list(signature)}, tick has {list(tick.feature_names)}")
                continue
            j = count.get(tick.key, 0)
            count[tick.key] = j + 1
            if partition_of.setdefault(tick.key, r.partition) != r.partition:
                plan.spread = True
            if j == len(plan.waves):
                plan.waves.append([])
            plan.waves[j].append((r, tick))
            plan.signatures.add(signature)
        return plan

    def run(self, plan: Plan, budget_s: float | None = None) -> BatchResult:
        """Step the plan's next waves: all of them, or (`budget_s`) as many as fit in that many
        seconds, at least one. The result says which records it handled and, per partition, the
        offset below which every record of the batch is handled (the one safe to commit)."""
        out = BatchResult(dead=plan.dead, skipped=plan.skipped, records=plan.handled, unkeyed=plan.unkeyed,
                          unkeyed_new=plan.unkeyed_new)
        plan.dead, plan.skipped, plan.handled, plan.unkeyed, plan.unkeyed_new = [], 0, [], 0, []
        t0 = time.perf_counter()
        while not plan.done:
            wave = plan.waves[plan.next_wave]
            plan.next_wave += 1
            out.waves += 1
            self._threads_for(len(wave))
            out.records += [r for r, _ in wave]
            if len(plan.signatures) == 1:  # one feature set, one bank: the wave as it is
                by_bank = {next(iter(plan.signatures)): wave}
            else:
                by_bank = {}
                for r, tick in wave:
                    by_bank.setdefault(tick.feature_names, []).append((r, tick))
            for signature, items in by_bank.items():
                self._run_wave(signature, items, out)
            if budget_s is not None and time.perf_counter() - t0 >= budget_s:
                break
        out.commit = plan.commit_offsets()
        if plan.done:  # never in the middle of a plan: a key with ticks still to step must stay in memory
            self._evict_idle(out)
        return out

    def _threads_for(self, ticks: int) -> None:
        """STREAMER_TORCH_THREADS=0: one torch thread for a small wave (per-op overhead dominates and
        a second thread only contends), the cores this process may use (at most 4) for a big one."""
        if self.settings.torch_threads:
            return
        want = self._wide_threads if ticks >= WIDE_WAVE_TICKS else 1
        if torch.get_num_threads() != want:  # per OS thread: the daemon steps in worker threads
            torch.set_num_threads(want)

    def _run_wave(self, signature: tuple[str, ...], items: list[tuple[RecordLike, Tick]], out: BatchResult) -> None:
        """A poison-record guard around `_step`: a wave that raises is split in halves and each half
        run again, down to the single ticks that raise, which are dead-lettered (processing_error,
        with the exception) while the rest are predicted; so no tick can crash-loop the daemon. A half
        that ran before its neighbour raised may have stepped the bank once more for its keys' ticks."""
        bank = self._bank(signature)  # outside the guard: a model that cannot be built is no message's fault
        try:
            self._step(bank, items, out)
        except Exception as exc:  # a bug met by some input: find it, keep the rest going
            if len(items) == 1:
                r = items[0][0]
                out.dead.append(self._dead_letter(r, "processing_error", f"{type(exc).__name__}: {exc}"))
                return
            mid = len(items) // 2
            self._run_wave(signature, items[:mid], out)
            self._run_wave(signature, items[mid:], out)

    def _dead(self, plan: Plan, r: RecordLike, reason: str, detail: str) -> None:
        plan.dead.append(self._dead_letter(r, reason, detail))
        plan.handled.append(r)

    @staticmethod
    def _dead_letter(r: RecordLike, reason: str, detail: str) -> DeadLetter:
        value = encode_dead_letter(r.value, reason, detail, r.topic, r.partition, r.offset, r.key)
        return DeadLetter(dead_letter_key(r.key), value, reason)

    def _step(self, bank: ModelBank, items: list[tuple[RecordLike, Tick]], out: BatchResult) -> None:
        """One wave of one bank: distinct keys, learn from the pending regressors, predict the next values.

        Everything that can fail before the bank steps is done before it does, and nothing changes a
        key's bookkeeping or `out` until the end, so a wave that raises can be split and run again
        (`_run_wave`); after the step, a tick whose message cannot be made is dead-lettered alone."""
        L = self.settings.lags
        states, names, lags, xs, learn_names, learn_x, learn_d = [], [], [], [], [], [], []
        fresh: set[str] = set()  # keys first seen here: their first prediction is persistence
        for _, tick in items:
            ks = self.keys.get(tick.key)
            if ks is None:  # a new key: its lags start filled with its first value
                # a key whose checkpoint was of other settings starts afresh, its `seq` going on
                ks = KeyState(tick.feature_names, [tick.value] * L, seq=self.carried_seq.get(tick.key, 0))
                fresh.add(tick.key)
            if ks.pending is not None:
                learn_names.append(tick.key)
                learn_x.append(ks.pending)
                learn_d.append(tick.value)
            lag = [tick.value, *ks.lags[: L - 1]]
            states.append(ks)
            names.append(tick.key)
            lags.append(lag)
            xs.append(lag + list(tick.feature_values) if tick.feature_values else lag)
        x_now = torch.from_numpy(np.array(xs, dtype=np.float64))  # [n, p], before the bank moves
        scale: dict[str, float] = {}
        resets = 0
        ahead = len(self.horizons) > 1
        due: dict[int, tuple[list[float], int]] = {}
        if learn_names:
            x_prev = torch.from_numpy(np.array(learn_x, dtype=np.float64))  # [n_learn, p]
            res = bank.step(learn_names, x_prev, torch.tensor(learn_d, dtype=torch.float64))
            scale = dict(zip(learn_names, res.scale.tolist(), strict=True))
            resets = int(res.reset.numpy().sum())
            if ahead:
                due = _due_forecasts(self.horizons, res)
        if ahead:
            fc = bank.forecast(names, x_now)
            mean, var = fc.mean, fc.var
            a_lower, a_upper = bank.interval(fc.ahead_mean, fc.ahead_var)  # [n, m]
            a_mean_l, a_lo_l, a_hi_l = fc.ahead_mean.tolist(), a_lower.tolist(), a_upper.tolist()
        else:
            mean, var = bank.predict(names, x_now)
        lower, upper = bank.interval(mean, var)
        mean_l, lo_l, hi_l = mean.tolist(), lower.tolist(), upper.tolist()
        leaders = bank.leaders(names)  # an ensemble: its heaviest expert per key names the model
        models = [f"{self.model}/{lead}" for lead in leaders] if leaders else [self.model] * len(items)
        broken = np.flatnonzero(~(np.isfinite(lower.numpy()) & np.isfinite(upper.numpy()))).tolist()
        if broken:  # a value beyond the model's float range: reset the key, publish persistence instead
            bank.reset([names[i] for i in broken])
            resets += len(broken)
            for i in broken:
                mean_l[i], lo_l[i], hi_l[i] = persistence_forecast(lags[i][0], lags[i][1] if L > 1 else lags[i][0])
                models[i] = "persistence"
        for i, (_, tick) in enumerate(items if fresh else ()):
            if tick.key in fresh and models[i] != "persistence":
                # a key's first tick: its normaliser has no level until the second, so the model's
                # output would be on no scale at all; publish persistence, as wide as the value itself
                v = tick.value
                mean_l[i], lo_l[i], hi_l[i] = persistence_forecast(v, v - abs(v) if v else 1.0)
                models[i] = "persistence"
        windows: list[list[float] | None] = [None] * len(items)
        anomalies: list[float | None] = [None] * len(items)
        if self.anomaly is not None:
            windows = [[*(ks.recent or []), t.value][-self.anomaly[1]:] for ks, (_, t) in zip(states, items,
                                                                                              strict=True)]
            anomalies = self._anomalies(bank, names, windows)
        outgoing, errors, scaled, hits = [], [], [], 0
        for i, (_, tick) in enumerate(items):
            ks = states[i]
            horizons = None
            if ahead:
                horizons = [{"h": 1, "target_seq": ks.seq + 2, "prediction": mean_l[i], "lower": lo_l[i],
                             "upper": hi_l[i]}]
                for j, h in enumerate(self.horizons[1:]):
                    f = (a_mean_l[i][j], a_lo_l[i][j], a_hi_l[i][j])
                    if models[i] == "persistence" or not all(map(math.isfinite, f)):
                        f = (mean_l[i], lo_l[i], hi_l[i])  # no model forecast: persistence, as for h = 1
                    horizons.append({"h": h, "target_seq": ks.seq + 1 + h, "prediction": f[0], "lower": f[1],
                                     "upper": f[2]})
            prev_error = None
            if ks.seq > 0 and math.isfinite(ks.last_mean):
                prev_error = tick.value - ks.last_mean
                if not -_FLOAT_MAX <= prev_error <= _FLOAT_MAX:
                    # within the float range, so always a number: -1e308 after a prediction of 1e308 is -inf
                    prev_error = _FLOAT_MAX if prev_error > 0 else -_FLOAT_MAX
                errors.append(prev_error)
                scaled.append(prev_error / scale.get(tick.key, 1.0))
                if ks.last_lower <= tick.value <= ks.last_upper:
                    hits += 1
            try:  # the bank has stepped: from here a failure costs this tick's message, not the key's state
                value = encode_prediction(tick.key, tick.ts, ks.seq + 1, mean_l[i], lo_l[i], hi_l[i], models[i],
                                          prev_error, self.version, anomalies[i], horizons)
                outgoing.append(Outgoing(tick.key.encode(), value))
            except Exception as exc:
                out.dead.append(self._dead_letter(items[i][0], "processing_error", f"{type(exc).__name__}: {exc}"))
        # nothing above failed: the keys' bookkeeping moves (only now does a key's state hold its tick,
        # so a checkpoint taken in the middle of a plan claims no more than was stepped)
        for i, (r, tick) in enumerate(items):
            ks = self.keys.setdefault(tick.key, states[i])
            if tick.key in fresh:
                self.carried_seq.pop(tick.key, None)
            ks.partition, ks.applied, ks.dirty = r.partition, r.offset + 1, True
            ks.lags, ks.pending, ks.seq, ks.last_seen = lags[i], xs[i], ks.seq + 1, self.batches
            ks.last_mean, ks.last_lower, ks.last_upper = mean_l[i], lo_l[i], hi_l[i]
            if windows[i] is not None:
                ks.recent = windows[i]
        out.predictions += outgoing
        out.errors += errors
        out.scaled_errors += scaled
        out.hits += hits
        out.resets += resets
        self.resets_total += resets
        for h, (errs, n_in) in due.items():
            have = out.ahead.setdefault(h, ([], 0))
            out.ahead[h] = (have[0] + errs, have[1] + n_in)

    # ------------------------------------------------------------ eviction
    def _evict_idle(self, out: BatchResult) -> None:
        """Beyond max_keys, checkpoint the idlest tenth of keys and move them out of memory."""
        limit = self.max_keys
        if len(self.keys) <= limit:
            return
        n = len(self.keys) - limit + max(1, limit // 10)
        idlest = sorted(self.keys, key=lambda k: self.keys[k].last_seen)[:n]
        for k, blob in zip(idlest, self.snapshot_keys(idlest), strict=True):
            out.evicted.append((k, self.keys[k].partition, blob))
            self.spill.put(k, blob)
            self.spilled_partition[k] = self.keys[k].partition
        self._forget(idlest)

    def _readmit(self, keys: list[str]) -> None:
        """Bring evicted keys back from the spill file, all in one restore."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return
        blobs = [self.spill.pop(k) for k in keys]
        for k in keys:
            del self.spilled_partition[k]
        self.restore_keys([b for b in blobs if b is not None])

    def _forget(self, keys: list[str]) -> None:
        """Drop keys from memory (banks and bookkeeping)."""
        for signature, bank in self.banks.items():
            bank.drop([k for k in keys if self.keys[k].signature == signature])
        for k in keys:
            del self.keys[k]

    # --------------------------------------------------------- checkpoints
    def snapshot_key(self, key: str) -> bytes:
        """A key's whole state as bytes: header, JSON of its bookkeeping, then its bank row. No pickle."""
        return self.snapshot_keys([key])[0]

    def snapshot_keys(self, keys: list[str]) -> list[bytes]:
        """`snapshot_key` for many keys, each bank's rows serialised in one pass."""
        by_bank: dict[tuple[str, ...], list[str]] = {}
        for k in keys:
            by_bank.setdefault(self.keys[k].signature, []).append(k)
        bank_blobs: dict[str, bytes] = {}
        for signature, names in by_bank.items():
            bank_blobs.update(zip(names, self.banks[signature].snapshot_many(names), strict=True))
        out = []
        for key in keys:
            ks = self.keys[key]
            last = [None if math.isnan(v) else v for v in (ks.last_mean, ks.last_lower, ks.last_upper)]
            out.append(frame(STATE_MAGIC, STATE_VERSION, {
                "key": key, "signature": list(ks.signature), "lags": ks.lags, "pending": ks.pending,
                "seq": ks.seq, "last": last, "partition": ks.partition, "applied": ks.applied, "model": self.model,
            }) + bank_blobs[key])
        return out

    def restore_key(self, blob: bytes) -> KeyState:
        """Load a key from `snapshot_key` bytes (replacing any state it had here); ValueError, and
        nothing changed, when the bytes are not an intact checkpoint of this daemon's model."""
        restored, refused = self.restore_keys([blob])
        if refused:
            raise ValueError(refused[0])
        return restored[0]

    def restore_keys(self, blobs: Sequence[bytes | memoryview]) -> tuple[list[KeyState], dict[int, str]]:
        """Load many keys at once, in time linear in their number. Every blob is checked whole
        (bookkeeping and model state) before anything is written; a refused one (by position: why)
        changes nothing, so a key already in memory keeps its state. Returns the restored keys'
        bookkeeping and the refusals."""
        # the cyclic collector would scan every key's bookkeeping again and again while thousands are
        # created (none of them forms a cycle): off for the load, on again after
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._restore_keys(blobs)
        finally:
            if enabled:
                gc.enable()

    def _restore_keys(self, blobs: Sequence[bytes | memoryview]) -> tuple[list[KeyState], dict[int, str]]:
        parsed: dict[tuple[str, ...], list[tuple[int, str, KeyState, memoryview]]] = {}
        refused: dict[int, str] = {}
        for i, blob in enumerate(blobs):
            try:
                key, ks, bank_blob = self._parse_checkpoint(blob)
            except OtherModel as exc:
                refused[i] = str(exc)
                self.carried_seq[exc.key] = exc.seq
                continue
            except ValueError as exc:
                refused[i] = str(exc)
                continue
            parsed.setdefault(ks.signature, []).append((i, key, ks, bank_blob))
        restored: list[KeyState] = []
        for signature, items in parsed.items():
            try:
                keys, bad = self._bank(signature).restore_many([b for *_, b in items], [k for _, k, _, _ in items])
            except (KeyError, TypeError, IndexError, AttributeError, RuntimeError) as exc:
                keys, bad = [], {j: f"key checkpoint's model state is malformed ({type(exc).__name__}: {exc})"
                                 for j in range(len(items))}
            for j, reason in bad.items():
                refused[items[j][0]] = reason
                if reason.startswith(OTHER_MODEL):
                    self.carried_seq[items[j][1]] = items[j][2].seq
            done = set(keys)
            for j, (_, key, ks, _) in enumerate(items):
                if key not in done or j in bad:
                    continue
                old = self.keys.get(key)
                if old is not None and old.signature != signature:  # it moved banks: the old row goes
                    self.banks[old.signature].drop([key])
                self.keys[key] = ks
                restored.append(ks)
        return restored, refused

    def _parse_checkpoint(self, blob: bytes | memoryview) -> tuple[str, KeyState, memoryview]:
        meta, off = unframe(blob, STATE_MAGIC, STATE_VERSION, "key checkpoint")
        try:
            key, signature = str(meta["key"]), tuple(str(n) for n in meta["signature"])
            if meta["model"] != self.model:
                raise OtherModel(f"{OTHER_MODEL}checkpoint of a {meta['model']} model, this daemon runs {self.model}",
                                 key, int(meta["seq"]))
            last = [math.nan if v is None else float(v) for v in meta["last"]]
            lags = [float(v) for v in meta["lags"]]
            pending = None if meta["pending"] is None else [float(v) for v in meta["pending"]]
            if len(lags) != self.settings.lags:
                raise OtherModel(f"{OTHER_MODEL}checkpoint has {len(lags)} lags, this daemon uses {self.settings.lags}",
                                 key, int(meta["seq"]))
            if len(last) != 3:
                raise ValueError(f"checkpoint's last prediction has {len(last)} numbers, not 3")
            if pending is not None and len(pending) != self.settings.lags + len(signature):
                raise ValueError(f"checkpoint's pending regressor has {len(pending)} values, not "
                                 f"{self.settings.lags + len(signature)}")
            ks = KeyState(signature, lags, pending, int(meta["seq"]), last[0], last[1], last[2], self.batches,
                          int(meta["partition"]), int(meta["applied"]), False)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"key checkpoint is malformed ({type(exc).__name__}: {exc})") from None
        return key, ks, memoryview(blob)[off:]  # no copy: a restore of 100k keys holds their bytes once

    def forget_keys(self, keys: list[str]) -> None:
        """Drop these keys from memory, those that are here (a tombstone or an unusable newest record)."""
        self._forget([k for k in dict.fromkeys(keys) if k in self.keys])

    def dirty(self, partitions: set[int]) -> list[str]:
        """Keys of these partitions changed since their last checkpoint."""
        return [k for k, ks in self.keys.items() if ks.dirty and ks.partition in partitions]

    def mark_clean(self, keys: list[str]) -> None:
        for k in keys:
            if k in self.keys:
                self.keys[k].dirty = False

    def drop_partitions(self, partitions: set[int]) -> list[str]:
        """Forget every key of these partitions (after they were checkpointed and revoked); returns the
        keys that were in memory."""
        dropped = [k for k, ks in self.keys.items() if ks.partition in partitions]
        self._forget(dropped)
        gone = [k for k, p in self.spilled_partition.items() if p in partitions]
        self.spill.drop_partition(gone)
        for k in gone:
            del self.spilled_partition[k]
        return dropped
