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

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from models.bank import BankConfig, ModelBank
from models.cells import NetSpec
from models.learners import make_learner
from streamer.config import Settings
from streamer.schema import Tick, TickError, decode_tick, encode_dead_letter, encode_prediction


@dataclass(frozen=True, slots=True)
class Record:
    """What the consumer hands over: one Kafka message."""

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
class BatchResult:
    predictions: list[Outgoing] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)  # v_t - previous prediction, for scored ticks
    hits: int = 0  # scored ticks inside the previous 90% interval
    resets: int = 0


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


class Pipeline:
    def __init__(self, settings: Settings, version: str = "0"):
        self.settings, self.version = settings, version
        self.model = settings.model_name()
        self.banks: dict[tuple[str, ...], ModelBank] = {}
        self.keys: dict[str, KeyState] = {}
        self.evicted: dict[str, tuple[KeyState, bytes]] = {}  # idle keys: bookkeeping + bank snapshot
        self.batches = 0
        self.resets_total = 0
        self._learner_options = settings.learner_config()
        if settings.warm_start:
            raise ValueError("STREAMER_WARM_START: warm-start files come with the offline package, not built yet")

    # --------------------------------------------------------------- banks
    def _bank(self, signature: tuple[str, ...]) -> ModelBank:
        bank = self.banks.get(signature)
        if bank is None:
            s = self.settings
            spec = NetSpec(n_in=s.lags + len(signature), hidden=s.hidden, cell=s.cell, head=s.head)
            bank = ModelBank(make_learner(s.learner, spec, **self._learner_options), BankConfig(seed=s.seed))
            self.banks[signature] = bank
        return bank

    @property
    def live_keys(self) -> int:
        return len(self.keys)

    # ------------------------------------------------------------- process
    def process(self, records: list[Record]) -> BatchResult:
        self.batches += 1
        out = BatchResult()
        ticks: list[tuple[Record, Tick]] = []
        for r in records:
            try:
                tick = decode_tick(r.value, r.key, self.settings.max_message_bytes)
            except TickError as exc:
                self._dead(out, r, exc.reason, exc.detail)
                continue
            ticks.append((r, tick))
        waves: list[list[tuple[Record, Tick]]] = []
        count: dict[str, int] = {}
        for r, tick in ticks:
            ks = self.keys.get(tick.key)
            if ks is None and tick.key in self.evicted:
                ks = self._readmit(tick.key)
            if ks is not None and ks.signature != tick.feature_names:
                self._dead(out, r, "feature_set_changed",
                           f"key has features {list(ks.signature)}, tick has {list(tick.feature_names)}")
                continue
            if ks is None:  # a new key: its lags start filled with its first value
                ks = KeyState(tick.feature_names, [tick.value] * self.settings.lags)
                self.keys[tick.key] = ks
            j = count.get(tick.key, 0)
            count[tick.key] = j + 1
            if j == len(waves):
                waves.append([])
            waves[j].append((r, tick))
        for wave in waves:
            by_bank: dict[tuple[str, ...], list[tuple[Record, Tick]]] = {}
            for r, tick in wave:
                by_bank.setdefault(tick.feature_names, []).append((r, tick))
            for signature, items in by_bank.items():
                self._step(self._bank(signature), items, out)
        self._evict_idle()
        return out

    def _dead(self, out: BatchResult, r: Record, reason: str, detail: str) -> None:
        value = encode_dead_letter(r.value, reason, detail, r.topic, r.partition, r.offset)
        out.dead.append(DeadLetter(r.key, value, reason))

    def _step(self, bank: ModelBank, items: list[tuple[Record, Tick]], out: BatchResult) -> None:
        """One wave of one bank: distinct keys, learn from the pending regressors, predict the next values."""
        L = self.settings.lags
        names, xs, learn_names, learn_x, learn_d = [], [], [], [], []
        for _, tick in items:
            ks = self.keys[tick.key]
            if ks.pending is not None:
                learn_names.append(tick.key)
                learn_x.append(ks.pending)
                learn_d.append(tick.value)
            ks.lags = [tick.value, *ks.lags[: L - 1]]
            names.append(tick.key)
            xs.append(ks.lags + list(tick.feature_values) if tick.feature_values else ks.lags)
        if learn_names:
            x_prev, d = torch.from_numpy(np.array(learn_x)), torch.tensor(learn_d, dtype=torch.float64)
            res = bank.step(learn_names, x_prev, d)
            resets = int(res.reset.sum())
            out.resets += resets
            self.resets_total += resets
        mean, var = bank.predict(names, torch.from_numpy(np.array(xs)))
        half = bank.config.z * var.sqrt()
        mean_l, lo_l, hi_l = mean.tolist(), (mean - half).tolist(), (mean + half).tolist()
        for i, (_, tick) in enumerate(items):
            ks = self.keys[tick.key]
            prev_error = None
            if ks.seq > 0 and math.isfinite(ks.last_mean):
                prev_error = tick.value - ks.last_mean
                out.errors.append(prev_error)
                out.hits += int(ks.last_lower <= tick.value <= ks.last_upper)
            ks.seq += 1
            ks.pending = xs[i]
            ks.last_mean, ks.last_lower, ks.last_upper = mean_l[i], lo_l[i], hi_l[i]
            ks.last_seen = self.batches
            value = encode_prediction(tick.key, tick.ts, ks.seq, mean_l[i], lo_l[i], hi_l[i], self.model,
                                      prev_error, self.version)
            out.predictions.append(Outgoing(tick.key.encode(), value))

    # ------------------------------------------------------------ eviction
    def _evict_idle(self) -> None:
        """Beyond max_keys, move the idlest tenth of keys out of the banks (their state kept as bytes)."""
        limit = self.settings.max_keys
        if len(self.keys) <= limit:
            return
        n = len(self.keys) - limit + max(1, limit // 10)
        idlest = sorted(self.keys, key=lambda k: self.keys[k].last_seen)[:n]
        for signature, bank in self.banks.items():
            gone = [k for k in idlest if self.keys[k].signature == signature]
            for k in gone:
                self.evicted[k] = (self.keys[k], bank.snapshot(k))
            bank.drop(gone)
        for k in idlest:
            del self.keys[k]

    def _readmit(self, key: str) -> KeyState:
        ks, blob = self.evicted.pop(key)
        self._bank(ks.signature).restore(blob, key)
        self.keys[key] = ks
        return ks
