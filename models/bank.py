"""ModelBank: K series' learner state stacked in tensors, stepped in one batched call.

Per series (a row of every tensor):
    learner state     whatever the learner keeps (theta, P blocks, particles, window, ...)
    normaliser        running mean/variance of x and d (`models.normalize`)
    calibration       lam = running mean of e^2 / var_raw, so that lam * var_raw matches the
                      errors actually seen (EKF/PF variances carry the arbitrary scale of their
                      P0/Q/R), and s, the log of a factor that adaptive conformal inference tunes
                      until the interval covers its nominal share whatever the errors' shape:
                      the published variance is lam * exp(2 s) * var_raw, the interval
                      mean +- z sqrt(var)
    counters          ticks seen, interval hits, resets

`step(keys, x, d)` takes a batch of ticks that may hold several ticks of one key: they are
split into waves (the j-th tick of every key in wave j), processed in order, each wave one
batched learner call. A key whose state turns non-finite is reset to its initial (cold or
warm-start) state and counted in `resets`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models import bank_kernel, normalize, rng
from models import horizons as hz
from models.checkpoint import frame, unframe
from models.learners.base import Learner, LearnsFromHorizons, State, added_state, memo_rows, uses_autograd
from models.normalize import NormConfig, norm_init

Z90 = 1.6448536269514722  # two-sided 90% normal quantile

# A refusal that starts with this says the snapshot is intact but of another model (settings changed):
# no retry can use it, and no learned state of this model is lost by starting the key afresh.
OTHER_MODEL = "another model: "
LARGE_ROW_BYTES = 64 << 10  # a key state this big is reserved up to the key bound (see _reserve)
_RESTORE_SLICE = 4096  # snapshots copied into the bank per pass
_MAGIC = b"TSKS"  # tick-streamer key state
FORMAT_VERSION = 2  # 2: a CRC-32 of the payload


@dataclass(frozen=True)
class BankConfig:
    seed: int = 0
    norm: NormConfig = field(default_factory=NormConfig)
    calib_decay: float = 0.02  # weight of the newest e^2/var in the calibration factor
    # The calibration matches the errors' second moment, which gives 90% only for Gaussian errors
    # (0.932 for the running mean on puma8nh). So the half-width also carries a factor exp(s) that
    # adaptive conformal inference tunes to the interval's nominal coverage (`models.horizons.conformal`,
    # as every further horizon's does): gamma, and the bound on |s| (the factor within 1/10..10).
    coverage_step: float = 0.01
    coverage_bound: float = hz.HorizonConfig.coverage_bound
    z: float = Z90  # interval half-width in predictive standard deviations
    # A new level (a frozen sensor coming back, a re-scaled or re-based series) leaves the target
    # more than shift_z standard deviations from the key's running mean tick after tick, and the
    # slowly forgetting normalisation would take thousands of ticks to catch up. shift_ticks such
    # ticks in a row reset the key, which re-learns at the new level. One spike does not count.
    shift_z: float = 8.0
    shift_ticks: int = 3
    # Ticks ahead to forecast: 1 is the learner's own forecast, each further one a read-out learned from
    # delayed labels (`models.horizons`; its state, the pending forecasts included, is the key's h.* rows).
    horizons: tuple[int, ...] = (1,)
    readout: hz.HorizonConfig = field(default_factory=hz.HorizonConfig)  # their settings (horizons from above)

    def __post_init__(self) -> None:
        if self.horizons != hz.parse_horizons(self.horizons):
            raise ValueError(f"horizons are distinct and increasing from 1: got {self.horizons}")

    @property
    def ahead(self) -> hz.HorizonConfig | None:
        """The read-outs' config (the horizons beyond the next tick), None when there are none."""
        return dataclasses.replace(self.readout, horizons=self.horizons[1:]) if len(self.horizons) > 1 else None


@dataclass
class StepResult:
    """Predictions made before the labels, on the original scale, one per input tick."""

    mean: torch.Tensor  # [T]
    var: torch.Tensor  # [T]
    lower: torch.Tensor  # [T]
    upper: torch.Tensor  # [T]
    reset: torch.Tensor  # [T] bool: the key's state was reset after this tick
    scale: torch.Tensor  # [T] the key's running sd at this tick: its errors in these units compare across keys
    # horizons beyond the next tick (BankConfig.horizons[1:], m of them; [T, 0] when there are none):
    # the forecasts made from this tick's x, and the scoring of those whose target was this tick's d
    ahead_mean: torch.Tensor | None = None  # [T, m]
    ahead_lower: torch.Tensor | None = None  # [T, m]
    ahead_upper: torch.Tensor | None = None  # [T, m]
    ahead_error: torch.Tensor | None = None  # [T, m] d - the forecast made h - 1 ticks before; NaN: none came due
    ahead_hit: torch.Tensor | None = None  # [T, m] bool: d was inside that forecast's 90% interval


@dataclass
class Forecast:
    """`ModelBank.forecast`: the next value and every further horizon, original scale."""

    mean: torch.Tensor  # [T]
    var: torch.Tensor  # [T]
    ahead_mean: torch.Tensor  # [T, m]
    ahead_var: torch.Tensor  # [T, m]


class ModelBank:
    # a step of some of the rows just predicted takes their part of the memo (`_memo_for`); False: only a step
    # of exactly those rows does (the A/B of benchmarks/batches.py)
    memo_subsets = True

    def __init__(self, learner: Learner, config: BankConfig = BankConfig(),
                 theta0: torch.Tensor | Mapping[str, torch.Tensor] | None = None, capacity_hint: int = 0,
                 readout0: Mapping[str, torch.Tensor] | None = None):
        """`theta0`: the warm start of every new key, [n_theta] for all of them or one per key name
        (a model trained offline per series); None starts keys cold. `capacity_hint`: the most keys it
        will hold (the replica's key bound), reserved at once when a key's state is large. `readout0`:
        where every new key's read-outs beyond the next tick start (`models.warmstart`: w, P, lam, s)."""
        self.capacity_hint = capacity_hint
        self.learner, self.config = learner, config
        self.theta0 = theta0 if not isinstance(theta0, Mapping) else None
        # per-key warm starts are looked up by the key's seed, which is all a reset knows of a row
        self._theta0_by_seed = ({rng.key_seed(k, config.seed): t for k, t in theta0.items()}
                                if isinstance(theta0, Mapping) else None)
        self.index: dict[str, int] = {}
        self.names: list[str] = []  # row i holds key names[i]; rows 0..len-1 are live, the rest spare
        # Every tensor has `capacity` rows, grown geometrically (x1.5), so admitting n keys one call at a
        # time costs O(n) amortised; dropped rows are filled from the end (swap-remove), so the live
        # rows stay 0..len-1 and a wave of every key reads them in place.
        self._buf: State = {}
        self._view: State | None = None  # the live rows of every tensor, rebuilt when they move
        self._book_view: dict[str, np.ndarray] | None = None  # the bank's own part of _view, as numpy arrays
        self._learner_view: State | None = None  # the learner's part of _view (`_learner_part`)
        # A learner that memoises (`models.learners.base`) leaves its prediction's intermediates in a memo,
        # which the next step of the same rows uses if nothing moved them and x is the same: (which rows,
        # the normalised x, the memo). Whatever writes state clears it (`_forget_memo`).
        self._memoise = bool(getattr(learner, "memoises", False))
        self._fast = not uses_autograd(learner)  # the learner may run under inference mode (`_lean`)
        self._memo: tuple[np.ndarray, np.ndarray, dict] | None = None
        self._layout: dict[str, tuple[torch.dtype, tuple[int, ...]]] | None = None
        self.resets_total = 0
        self._dtype = getattr(learner, "dtype", torch.float32)
        self._ahead = config.ahead
        if self._ahead is not None and self._ahead.cell_r and not isinstance(learner, LearnsFromHorizons):
            raise ValueError(f"readout cell_r > 0 needs a learner with recurrent weights (ekf, dekf, pf, sgd, "
                             f"ensemble): {learner.name} has none")
        # the width of the pending forecasts' Jacobians (cell_r > 0): the weights the horizons' errors move
        self._n_learned = getattr(learner, "n_learned", 0) if self._ahead is not None and self._ahead.cell_r else 0
        self._readout0 = dict(readout0) if readout0 is not None else None
        if self._readout0 is not None:
            layout = self.layout()
            want = {k: layout[f"h.{k}"][1] for k in self._readout0 if f"h.{k}" in layout}
            if len(want) != len(self._readout0) or any(tuple(v.shape) != want[k] for k, v in self._readout0.items()):
                got = {k: tuple(v.shape) for k, v in self._readout0.items()}
                raise ValueError(f"the read-outs' warm start {got} does not fit this bank's horizons {config.horizons}")

    # ----------------------------------------------------------------- keys
    def __len__(self) -> int:
        return len(self.names)

    def _fresh(self, seeds: torch.Tensor, cold: bool = False) -> State:
        p = self.learner.spec.n_in
        theta0 = None if cold else self.theta0
        if self._theta0_by_seed is not None and not cold:
            missing = [int(s) for s in seeds.tolist() if int(s) not in self._theta0_by_seed]
            if missing:
                raise ValueError(f"the per-key warm start has no model for {len(missing)} new key(s)")
            theta0 = torch.stack([self._theta0_by_seed[int(s)] for s in seeds.tolist()])  # [B, n_theta]
        st = {f"l.{k}": v for k, v in self.learner.init_state(seeds, theta0).items()}
        st.update({f"n.{k}": v for k, v in norm_init(len(seeds), p, self._dtype).items()})
        B = len(seeds)
        st["b.lam"] = torch.ones(B, dtype=self._dtype)
        st["b.s"] = torch.zeros(B, dtype=self._dtype)  # log of the interval's conformal factor
        st["b.ticks"] = torch.zeros(B, dtype=torch.int64)
        st["b.hits"] = torch.zeros(B, dtype=torch.int64)
        st["b.resets"] = torch.zeros(B, dtype=torch.int64)
        st["b.shift"] = torch.zeros(B, dtype=torch.int64)  # consecutive ticks beyond shift_z
        if self._ahead is not None:
            st.update({f"h.{k}": v for k, v in hz.init_state(B, p, self._ahead, self._dtype,
                                                              self._n_learned).items()})
            if self._readout0 is not None and not cold:
                for k, v in self._readout0.items():
                    st[f"h.{k}"] = v.to(self._dtype).expand(B, *v.shape).clone()
        return st

    @property
    def state(self) -> State:
        """Every state tensor's live rows [K, ...] (views: writing into them writes the bank, and whoever
        does so outside the bank's own methods calls `_forget_memo()`: a memo assumes the rows unmoved)."""
        if self._view is None:
            n = len(self.names)
            with torch.inference_mode(False):  # plain views, whoever asks first (see `_lean`)
                self._view = {k: v[:n] for k, v in self._buf.items()}
            self._book_view = self._learner_view = None
        return self._view

    @property
    def capacity(self) -> int:
        return len(next(iter(self._buf.values()))) if self._buf else 0

    def layout(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Name -> (dtype, per-row shape) of every state tensor, from one fresh row."""
        if self._layout is None:
            one = self._fresh(torch.zeros(1, dtype=torch.int64), cold=True)  # a warm start has the same shapes
            self._layout = {k: (v.dtype, tuple(v.shape[1:])) for k, v in one.items()}
        return self._layout

    def bytes_per_key(self) -> int:
        return sum(torch.empty((), dtype=dt).element_size() * int(np.prod(shape))
                   for dt, shape in self.layout().values())

    def _reserve(self, names: list[str]) -> torch.Tensor:
        """Rows for new keys at the end of the live ones, growing every tensor geometrically when
        full; their contents are for the caller to write."""
        n, extra = len(self.names), len(names)
        if n + extra > self.capacity:
            # x1.5: amortised O(1) per key, and a restore's peak (old and new tensors at the last growth,
            # or the slack after it) stays within 1.7x of the state it rebuilds
            cap = max(n + extra, self.capacity + self.capacity // 2, 16)
            if self.bytes_per_key() >= LARGE_ROW_BYTES:
                # Large rows (particles, covariance blocks): reserve the key bound at once. Spare rows are
                # allocated, not written (torch.empty), so the OS lends them no memory until a key lands
                # there, and no growth ever holds old and new tensors at once.
                cap = max(cap, self.capacity_hint)
            grown = {}
            with torch.inference_mode(False):  # the bank's own tensors stay normal ones (see `_lean`)
                for k, (dt, shape) in self.layout().items():
                    t = torch.empty((cap, *shape), dtype=dt)  # rows are written before they are live
                    if k in self._buf:
                        t[:n] = self._buf[k][:n]
                    grown[k] = t
            self._buf = grown
        for i, name in enumerate(names):
            self.index[name] = n + i
        self.names.extend(names)
        self._view = None
        return torch.arange(n, n + extra, dtype=torch.int64)

    def add(self, names: list[str]) -> None:
        """Admit new keys (cold or from the bank's warm start); known keys are ignored."""
        new = [n for n in dict.fromkeys(names) if n not in self.index]
        if not new:
            return
        seeds = torch.tensor([rng.key_seed(n, self.config.seed) for n in new], dtype=torch.int64)
        fresh = self._fresh(seeds)
        rows = self._reserve(new)
        for k, v in fresh.items():
            self._buf[k][rows] = v

    def drop(self, names: list[str]) -> None:
        """Forget keys: the last live rows move into their places (O(dropped), not O(keys))."""
        self._forget_memo()
        gone = sorted({self.index[n] for n in names if n in self.index})
        if not gone:
            return
        n = len(self.names)
        keep_n = n - len(gone)
        gone_set = set(gone)
        holes = [r for r in gone if r < keep_n]  # rows to fill
        movers = [r for r in range(keep_n, n) if r not in gone_set]  # live rows past the new end
        if holes:
            dst, src = torch.tensor(holes), torch.tensor(movers)
            for t in self._buf.values():
                t[dst] = t[src]
        for r in gone:
            del self.index[self.names[r]]
        for h, m in zip(holes, movers, strict=True):
            self.names[h] = self.names[m]
            self.index[self.names[h]] = h
        del self.names[keep_n:]
        self._view = None

    def rows(self, names: list[str]) -> torch.Tensor:
        self.add(names)
        return torch.tensor([self.index[n] for n in names], dtype=torch.int64)

    # ---------------------------------------------------------------- state rows
    def _take(self, rows: torch.Tensor | None) -> State:
        if rows is None:
            return self.state
        return {k: v.index_select(0, rows) for k, v in self.state.items()}

    def _put(self, rows: torch.Tensor | None, sub: State) -> None:
        self._forget_memo()
        if rows is None:  # every live row, in order
            for k, v in sub.items():
                view = self.state[k]
                if v.data_ptr() != view.data_ptr():  # a learner that updated in place wrote the bank already
                    view.copy_(v)
            return
        for k, v in sub.items():
            self.state[k][rows] = v

    def _learner_part(self, st: State) -> State:
        """The learner's part of a state (l.*, named as the learner names it): of every live row, the names worked
        out once per layout (an ensemble's state has dozens), and a fresh dict each time (a learner's step
        puts its new tensors into the dict it is given)."""
        if st is self._view:
            if self._learner_view is None:
                self._learner_view = {k[2:]: v for k, v in st.items() if k.startswith("l.")}
            return dict(self._learner_view)
        return {k[2:]: v for k, v in st.items() if k.startswith("l.")}

    def interval(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The published central interval: mean +- z sqrt(var)."""
        lower, upper = self._interval(mean.numpy(), var.numpy())
        return torch.from_numpy(lower), torch.from_numpy(upper)

    def _interval(self, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(all="ignore"):
            half = self.config.z * np.sqrt(var)
            return mean - half, mean + half

    # ------------------------------------------------------------------ predict
    def _book(self, st: State | None) -> dict[str, np.ndarray]:
        """The bank's own part of a state (normaliser n.*, calibration and counters b.*; None: every live
        row) as numpy arrays sharing the tensors' memory: this bookkeeping is a few dozen operations on
        tiny arrays a wave, where numpy's per-operation cost is a quarter of torch's (`models.normalize`)."""
        if st is None:
            live = self.state
            if self._book_view is None:
                self._book_view = {k: v.numpy() for k, v in live.items() if k[0] in "nb"}
            return self._book_view
        return {k: v.numpy() for k, v in st.items() if k[0] in "nb"}

    def predict(self, names: list[str], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and calibrated variance [T] of the next target, original scale; state untouched.
        Keys must be distinct (it is a read of the current state)."""
        f = self._predict(names, x, ahead=False)
        return f.mean, f.var

    def forecast(self, names: list[str], x: torch.Tensor) -> Forecast:
        """`predict`, with the forecasts of every further horizon (`BankConfig.horizons`) from the same x."""
        return self._predict(names, x, ahead=True)

    def _lean(self) -> contextlib.AbstractContextManager:
        """Where the learner runs: under `torch.inference_mode` when it records no autograd graph, which
        skips autograd's bookkeeping on each of the few hundred torch calls a few-keys wave makes
        (a median +13% ticks/s at one and four keys, `benchmarks/ab.py`; RESULTS). The tensors made
        there are inference tensors, so they stay inside: the bank's own tensors are allocated outside
        it (`_reserve`) and written by copy, and what a method returns is made from numpy after it."""
        return torch.inference_mode() if self._fast else contextlib.nullcontext()

    def _predict(self, names: list[str], x: torch.Tensor, ahead: bool) -> Forecast:
        if len(set(names)) != len(names):
            raise ValueError("predict takes each key once; use step for sequences of ticks")
        rows, order, full = self._sorted(self._wave_rows(names))
        with self._lean():
            mean, var, a_mean, a_var = self._predict_rows(rows, order, full, x, ahead)
        if order is not None:  # back to the caller's order
            inverse = _inverse(order)
            mean, var, a_mean, a_var = mean[inverse], var[inverse], a_mean[inverse], a_var[inverse]
        return Forecast(torch.from_numpy(mean), torch.from_numpy(var), torch.from_numpy(a_mean),
                        torch.from_numpy(a_var))

    def _predict_rows(self, rows: np.ndarray, order: np.ndarray | None, full: bool, x: torch.Tensor,
                      ahead: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        xs = x.to(self._dtype)
        if order is not None:  # rows in increasing order, as a step of them reads them
            xs = xs[torch.from_numpy(order)]
        st = self.state if full else self._take(torch.from_numpy(rows))  # all keys: read in place, no copy
        book = self._book(None if full else st)
        nst = {k[2:]: v for k, v in book.items() if k[0] == "n"}
        xn = normalize.apply(nst, xs.numpy(), self.config.norm)
        if self._memoise:
            memo: dict = {}
            mean_n, var_n = self.learner.predict(self._learner_part(st), torch.from_numpy(xn),  # type: ignore[call-arg]
                                                 memo=memo)
            self._memo = (self._memo_rows(None if full else rows), xn.copy(), memo)
        else:
            mean_n, var_n = self.learner.predict(self._learner_part(st), torch.from_numpy(xn))
        sd = nst["d_sd"]
        with np.errstate(all="ignore"):
            mean = nst["d_mean"] + sd * mean_n.detach().numpy()
            var = book["b.lam"] * np.exp(2 * book["b.s"]) * var_n.detach().numpy() * sd * sd
            m = len(self.config.horizons) - 1
            a_mean = a_var = np.full((len(mean), m), np.nan, dtype=mean.dtype)
            if ahead and m:
                hst = {k[2:]: v for k, v in st.items() if k[0] == "h"}
                z = hz.regressor(torch.from_numpy(xn), mean_n.detach())  # [T, q]
                h_mean, h_var, _ = hz.forecast(hst, z)  # [T, m] normalised
                a_mean = nst["d_mean"][:, None] + sd[:, None] * h_mean.numpy()
                a_var = h_var.numpy() * (sd * sd)[:, None]
        return mean, var, a_mean, a_var

    def _memo_rows(self, rows: np.ndarray | None) -> np.ndarray:
        return np.arange(len(self.names)) if rows is None else rows

    def _memo_for(self, memo: tuple[np.ndarray, np.ndarray, dict], rows: torch.Tensor | None,
                  xn: np.ndarray) -> dict | None:
        """The memo's intermediates for a step of `rows` (sorted; None: every live row) at `xn`: all of
        them when the step is of the rows predicted, their part when the step is of some of them (a wave
        of the keys with one more tick in the batch than the next ones), None when a row or its x differs."""
        predicted, x_then, inner = memo
        want = self._memo_rows(None if rows is None else rows.numpy())
        if len(want) == len(predicted):
            return inner if np.array_equal(want, predicted) and np.array_equal(x_then, xn) else None
        if not self.memo_subsets:
            return None
        pos = np.searchsorted(predicted, want)  # both sorted: where each row of the step was predicted
        if len(want) > len(predicted) or not np.array_equal(predicted[np.minimum(pos, len(predicted) - 1)], want):
            return None
        if not np.array_equal(x_then[pos], xn):
            return None
        part = memo_rows(inner, torch.from_numpy(pos), len(predicted))
        return part if isinstance(part, dict) else None

    def _forget_memo(self) -> None:
        self._memo = None

    def _wave_rows(self, names: list[str]) -> np.ndarray:
        """Rows of these keys, admitting new ones (`rows`, without a tensor)."""
        try:
            return np.fromiter(map(self.index.__getitem__, names), dtype=np.int64, count=len(names))
        except KeyError:  # new keys
            self.add(names)
            return np.fromiter(map(self.index.__getitem__, names), dtype=np.int64, count=len(names))

    def _sorted(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """Distinct rows in increasing order, the order that sorts them (None: they were), and whether
        they are every live row (then a wave reads the state in place)."""
        in_order = len(rows) < 2 or bool((rows[1:] > rows[:-1]).all())
        order = None if in_order else np.argsort(rows, kind="stable")
        # distinct sorted rows in [0, n) are 0..n-1 exactly when there are n of them
        return (rows if order is None else rows[order]), order, len(rows) == len(self.names)

    def _step_wave(self, rows: np.ndarray, x: torch.Tensor, d: torch.Tensor) -> dict[str, np.ndarray]:
        """`_step_rows` on distinct rows in any order, results in that order."""
        rows, order, full = self._sorted(rows)
        if order is not None:
            idx = torch.from_numpy(order)
            x, d = x[idx], d[idx]
        res = self._step_rows(None if full else torch.from_numpy(rows), x, d)
        if order is None:
            return res
        inverse = _inverse(order)
        return {k: v[inverse] for k, v in res.items()}

    # --------------------------------------------------------------------- step
    def step(self, names: list[str], x: torch.Tensor, d: torch.Tensor) -> StepResult:
        """Test-then-train on a batch of ticks: x [T, p], d [T]; repeated keys in order."""
        T = len(names)
        if x.shape != (T, self.learner.spec.n_in) or d.shape != (T,):
            want = f"x [{T}, {self.learner.spec.n_in}] and d [{T}]"
            raise ValueError(f"want {want}, got {tuple(x.shape)}, {tuple(d.shape)}")
        x, d = x.to(self._dtype), d.to(self._dtype)
        rows = self._wave_rows(names)
        if len(set(names)) == T:  # distinct keys, one wave: the few-keys-at-a-high-rate case costs no more
            return _result(self._step_wave(rows, x, d))
        out: dict[str, np.ndarray] = {}
        for wave in _waves(rows):
            idx = torch.from_numpy(wave)
            res = self._step_wave(rows[wave], x.index_select(0, idx), d.index_select(0, idx))
            for k, v in res.items():
                if k not in out:
                    out[k] = np.empty((T, *v.shape[1:]), dtype=v.dtype)
                out[k][wave] = v
        return _result(out)

    def _step_rows(self, rows: torch.Tensor | None, x: torch.Tensor, d: torch.Tensor) -> dict[str, np.ndarray]:
        with self._lean():
            return self._step_rows_lean(rows, x, d)

    def _step_rows_lean(self, rows: torch.Tensor | None, x: torch.Tensor, d: torch.Tensor) -> dict[str, np.ndarray]:
        c = self.config
        st = self._take(rows)
        book = self._book(None if rows is None else st)
        nst = {k[2:]: v for k, v in book.items() if k[0] == "n"}
        xa, da = x.numpy(), d.numpy()
        online = c.norm.mode == "online"
        first = nst["n"] == 0  # [B] a new key, or one just reset: its next tick sets the level
        if online and first.any():
            # a key's first tick sets its level before it is standardised
            seeded = normalize.update(nst, xa, da, c.norm)
            nst = _where_arrays(first, seeded, nst)
            nst["n"] = np.where(first, 0, nst["n"])
        xn = normalize.apply(nst, xa, c.norm)  # [B, p]
        sd, mu = nst["d_sd"].copy(), nst["d_mean"].copy()  # [B] at this tick (the state's own move on below)
        # A tick far from the running level is held out (statistics, model, calibration) until it proves to be
        # a new level: shift_ticks in a row, then the key is reset below. One spike cannot inflate the variance
        # or throw the weights, and a real shift stays "far" long enough to be recognised. The ticks after a
        # spike carry it in their lags: no learning from a regressor that far out either.
        compiled = bank_kernel.serves(da.dtype, len(da))  # a few keys: this bookkeeping as two compiled calls
        if compiled:
            dn, far, hold = bank_kernel.before(da, mu, sd, xn, first, online, c)
        else:
            with np.errstate(all="ignore"):
                dn = (da - mu) / sd  # [B]
                far = hold = np.zeros_like(first)  # [B]; without normalisation there is no running level
                if online:
                    settled = ~first
                    far = (np.abs(dn) > c.shift_z) & settled
                    hold = far | ((np.abs(xn) >= c.norm.clip).any(axis=1) & settled)
        held_rows = np.flatnonzero(hold)
        learner_st = self._learner_part(st)
        saved: State = {}
        if len(held_rows):  # learners update in place: keep the held rows' state aside (those rows only)
            at = torch.from_numpy(held_rows)
            saved = {k: v.index_select(0, at) for k, v in learner_st.items()}
        memo, self._memo = self._memo, None  # a step moves these rows: no memo outlives it
        inner = None if memo is None else self._memo_for(memo, rows, xn)
        jac = None
        if self._ahead is not None and self._ahead.cell_r:  # H_t and theta_t, before the step moves theta
            if inner is None:  # a memo of this state at xn, so the step below does not compute H_t again
                inner = {}
                self.learner.predict(learner_st, torch.from_numpy(xn), memo=inner)  # type: ignore[call-arg]
            jac = (self.learner.jacobian(learner_st, torch.from_numpy(xn), inner),  # type: ignore[attr-defined]
                   self.learner.learned_weights(learner_st))  # type: ignore[attr-defined]
        if inner is not None:
            mean_t, var_t, lst = self.learner.step(learner_st, torch.from_numpy(xn), torch.from_numpy(dn),
                                                   memo=inner)  # type: ignore[call-arg]
        else:
            mean_t, var_t, lst = self.learner.step(learner_st, torch.from_numpy(xn), torch.from_numpy(dn))
        for k, v in saved.items():
            lst[k].index_copy_(0, at, v)
        mean_n, var_raw = mean_t.detach().numpy(), var_t.detach().numpy()
        none = np.empty((len(da), 0), dtype=da.dtype)
        ahead: dict[str, np.ndarray] = {"ahead_mean": none, "ahead_lower": none, "ahead_upper": none,
                                        "ahead_error": none, "ahead_hit": none.astype(bool)}
        hst: State = {}
        if self._ahead is not None:
            # the horizons beyond the next: forecast from x_t with the read-outs as they were before this
            # tick (what `forecast` published), keep it pending, learn the ones whose target is d
            hst = {k[2:]: v for k, v in st.items() if k[0] == "h"}
            z = hz.regressor(torch.from_numpy(xn), mean_t.detach())  # [B, q]
            h = hz.step(hst, z, torch.from_numpy(mu), torch.from_numpy(sd), d, torch.from_numpy(~far),
                        self._ahead, c.z, jac)
            if jac is not None:  # the due horizons' errors, through the recurrent weights too (not a held row's)
                keep = torch.from_numpy(~hold).to(self._dtype).unsqueeze(1)  # [B, 1]
                for j in range(len(self._ahead.horizons)):  # sequentially: each sees the theta the one before left
                    H, e, r = hz.cell_measurement(h, j, self.learner.learned_weights(lst),  # type: ignore
                                                  self._ahead)
                    self.learner.learn_from(lst, H * keep, e, r)  # type: ignore[attr-defined]
            a_lower, a_upper = self._interval(h["mean"].numpy(), h["var"].numpy())
            ahead = {"ahead_mean": h["mean"].numpy(), "ahead_lower": a_lower, "ahead_upper": a_upper,
                     "ahead_error": h["error"].numpy(), "ahead_hit": h["hit"].numpy()}
        with np.errstate(all="ignore"):
            updated = normalize.update(nst, xa, da, c.norm)
            if len(held_rows):
                updated = _where_arrays(far, nst, updated)
        new_book = {f"n.{k}": v for k, v in updated.items()}
        if compiled:
            out, counters, bad = bank_kernel.after(book, mu, sd, dn, da, xa, mean_n, var_raw, first, hold, far, c)
            mean, var, lower, upper = out["mean"], out["var"], out["lower"], out["upper"]
            new_book.update(counters)
            bad |= ~self.learner.healthy(lst).numpy()
        else:
            with np.errstate(all="ignore"):
                lam = book["b.lam"]
                var_n = lam * np.exp(2 * book["b.s"]) * var_raw  # [B] calibrated, and widened to the coverage
                mean, var = mu + sd * mean_n, var_n * sd * sd
                lower, upper = self._interval(mean, var)
                e_n = dn - mean_n
                new_book["b.shift"] = np.where(far, book["b.shift"] + 1, 0)
                ratio = np.minimum(e_n * e_n / var_raw, 1e6)
                new_book["b.lam"] = np.where(first | hold, lam, (1 - c.calib_decay) * lam + c.calib_decay * ratio)
                new_book["b.ticks"] = book["b.ticks"] + 1
                inside = (da >= lower) & (da <= upper)
                s = book["b.s"]
                aci = hz.conformal(s, (~inside).astype(s.dtype), c.z, c.coverage_step, c.coverage_bound)
                new_book["b.s"] = np.where(first | hold, s, aci)
                new_book["b.hits"] = book["b.hits"] + inside
                new_book["b.resets"] = book["b.resets"]
                finite = np.isfinite(mean_n) & np.isfinite(var_n) & np.isfinite(new_book["b.lam"])
            bad = ~(self.learner.healthy(lst).numpy() & finite)
            bad |= ~np.isfinite(xa).all(axis=1) | ~np.isfinite(da) | (new_book["b.shift"] >= c.shift_ticks)
        new: State = {f"l.{k}": v for k, v in lst.items()}
        if hst:
            bad |= ~hz.healthy(hst).numpy()
            new.update({f"h.{k}": v for k, v in hst.items()})
        if bad.any():
            new.update({k: torch.from_numpy(v) for k, v in new_book.items()})  # views: a reset writes new_book
            self._reset_rows(new, torch.from_numpy(bad))
            # a non-finite prediction is never handed out: fall back to the key's running mean
            mean = np.where(np.isfinite(mean), mean, mu)
            var = np.where(np.isfinite(var), var, sd * sd)
            lower, upper = self._interval(mean, var)
            new = {k: v for k, v in new.items() if k[0] in "lh"}
        self._put(rows, new)
        if rows is None:  # every live row in order: write the bank's arrays in place
            for k, arr in new_book.items():
                book[k][...] = arr
        else:
            live, where = self._book(None), rows.numpy()
            for k, arr in new_book.items():
                live[k][where] = arr
        return {"mean": mean, "var": var, "lower": lower, "upper": upper, "reset": bad, "scale": sd, **ahead}

    def reset(self, names: list[str]) -> None:
        """Start these keys afresh (model and normalisation; their counters survive), e.g. after
        their prediction came out non-finite although their state looked healthy."""
        if not names:
            return
        rows = self.rows(names)
        st = self._take(rows)
        self._reset_rows(st, torch.ones(len(names), dtype=torch.bool))
        self._put(rows, st)

    def _reset_rows(self, st: State, bad: torch.Tensor) -> None:
        self._forget_memo()
        idx = torch.nonzero(bad).squeeze(1)
        fresh = self._fresh(st["l.seed"][idx])
        for k, v in fresh.items():
            if k not in _SURVIVE_RESET:
                st[k][idx] = v
        st["b.resets"][idx] += 1
        self.resets_total += int(idx.numel())

    # ---------------------------------------------------------- snapshot/restore
    def snapshot(self, name: str) -> bytes:
        """One key's whole state as bytes: header, JSON manifest, raw little-endian tensors.
        No pickle: restoring never executes code."""
        return self.snapshot_many([name])[0]

    def _added(self) -> set[str]:
        """State rows that a snapshot written before they existed lacks: restored, they start at zero, as a
        new key's do (so an upgrade keeps the rest of every key's learned state)."""
        return {*_ADDED, *(f"l.{k}" for k in added_state(self.learner))}

    def _head(self) -> dict[str, Any]:
        """The manifest every snapshot of this bank shares (all but the key and the checksum)."""
        manifest = []
        for k, (dt, shape) in self.layout().items():
            a = np.empty(0, dtype=torch.empty((), dtype=dt).numpy().dtype)
            manifest.append({"name": k, "dtype": a.dtype.newbyteorder("<").str, "shape": list(shape)})
        return {"learner": self.learner.name, "spec": repr(self.learner.spec), "tensors": manifest}

    def snapshot_many(self, names: list[str], extra: Mapping[str, Any] | None = None) -> list[bytes]:
        """`snapshot` for many keys at once: each tensor is gathered once, and a key's bytes are one row
        of a single byte matrix (a checkpoint of thousands of keys costs microseconds per key).
        `extra`: more JSON fields for the manifest (`read_manifest` returns them; `restore` ignores them)."""
        if not names:
            return []
        rows = torch.tensor([self.index[n] for n in names], dtype=torch.int64)
        parts = []
        for k in self.layout():
            a = self.state[k].index_select(0, rows).contiguous().numpy()
            a = a.astype(a.dtype.newbyteorder("<"), copy=False)
            parts.append(np.ascontiguousarray(a).view(np.uint8).reshape(len(names), -1))
        payload = np.concatenate(parts, axis=1)  # [K, bytes per key]
        head = {**(extra or {}), **self._head()}
        out = []
        for i, name in enumerate(names):
            row = payload[i].tobytes()
            out.append(frame(_MAGIC, FORMAT_VERSION, {"key": name, **head, "crc32": zlib.crc32(row)}) + row)
        return out

    def restore(self, blob: bytes, name: str | None = None) -> str:
        """Load a snapshot into the bank (adding the key if new); returns the key. A blob that is not a
        whole, intact snapshot of this bank's model raises ValueError and changes nothing."""
        keys, refused = self.restore_many([blob], None if name is None else [name])
        if refused:
            raise ValueError(refused[0])
        return keys[0]

    def restore_many(self, blobs: Sequence[bytes | memoryview], names: Sequence[str] | None = None
                     ) -> tuple[list[str], dict[int, str]]:
        """Load many snapshots: every blob is checked whole (frame, model, layout, length, checksum)
        before any row is written, and the good ones are written in one pass per tensor. Returns the
        keys restored and, for each refused blob (by position), why: a refused blob changes nothing,
        so a key already here keeps the state it had. Cost: O(keys), with no per-key tensor copy."""
        self._forget_memo()
        head = self._head()
        want_tensors = head["tensors"]
        added = self._added()
        before_added = [t for t in want_tensors if t["name"] not in added]
        sizes = {False: self.bytes_per_key(), True: sum(_width(t) for t in before_added)}
        good: list[tuple[str, int, bytes | memoryview, bool]] = []  # key, payload offset, blob, older layout
        refused: dict[int, str] = {}
        for i, blob in enumerate(blobs):
            try:
                meta, off = unframe(blob, _MAGIC, FORMAT_VERSION, "key-state snapshot", older=(1,))
                if meta.get("learner") != head["learner"] or meta.get("spec") != head["spec"]:
                    raise ValueError(f"{OTHER_MODEL}snapshot is for {meta.get('learner')} {meta.get('spec')}, "
                                     f"bank runs {head['learner']} {head['spec']}")
                tensors = meta.get("tensors")
                older = tensors == before_added  # written before the bank kept its newer rows: those start fresh
                if tensors != want_tensors and not older:
                    # the same learner and net with other state (a version of it, or an option, that keeps
                    # more or less): an intact snapshot of another model, not a damaged one
                    raise ValueError(f"{OTHER_MODEL}snapshot's state tensors are another layout than this bank's "
                                     f"({self.learner.name} with other options or of another version)")
                want = sizes[older]
                if len(blob) - off != want:
                    what = "truncated" if len(blob) - off < want else "has trailing bytes"
                    raise ValueError(f"snapshot {what} ({len(blob) - off} payload bytes, want {want})")
                # format 1 (before checksums) is read as it is: a changelog written by an earlier build restores
                if meta.get("__format__") != 1 and zlib.crc32(memoryview(blob)[off:]) != meta.get("crc32"):
                    raise ValueError("snapshot checksum does not match its bytes (corrupted)")
                key = names[i] if names is not None else meta.get("key")
                if not isinstance(key, str):
                    raise ValueError("snapshot names no key")
            except ValueError as exc:
                refused[i] = str(exc)
                continue
            good.append((key, off, blob, older))
        if not good:
            return [], refused
        last = {g[0]: j for j, g in enumerate(good)}  # a key twice: its last snapshot wins
        good = [g for j, g in enumerate(good) if last[g[0]] == j]
        keys = [g[0] for g in good]
        new = [k for k in keys if k not in self.index]
        if new:  # reserved up front, so the bank grows once (exactly, when it was empty)
            self._reserve(new)
        for older in (False, True):
            group = [g for g in good if g[3] == older]
            tensors = before_added if older else want_tensors
            rows = torch.tensor([self.index[g[0]] for g in group], dtype=torch.int64)
            for start in range(0, len(group), _RESTORE_SLICE):  # a slice at a time: peak memory ~ blobs + bank
                part = group[start : start + _RESTORE_SLICE]
                payload = np.frombuffer(b"".join(memoryview(blob)[off:] for _, off, blob, _ in part),
                                        dtype=np.uint8).reshape(len(part), sizes[older])  # [b, bytes per key]
                col = 0
                for t in tensors:
                    dt, width = np.dtype(t["dtype"]), _width(t)
                    a = np.ascontiguousarray(payload[:, col : col + width]).view(dt).astype(dt.newbyteorder("="))
                    block = torch.from_numpy(a.reshape(len(part), *t["shape"]))  # [b, ...]
                    self._buf[t["name"]][rows[start : start + len(part)]] = block
                    col += width
            if older and len(group):
                for name in added:
                    self._buf[name][rows] = 0
        return keys, refused

    # ---------------------------------------------------------------- metrics
    def _live_learner_state(self) -> State:
        return {k[2:]: v for k, v in self.state.items() if k.startswith("l.")}  # views, no copy

    def leaders(self, names: list[str]) -> list[str] | None:
        """For an ensemble, the name of each key's heaviest expert (None for a single learner)."""
        labels = getattr(self.learner, "labels", None)
        if labels is None or not names:
            return None
        rows = torch.tensor([self.index[n] for n in names], dtype=torch.int64)
        best = self.learner.leader(self._live_learner_state()).index_select(0, rows)  # type: ignore[attr-defined]
        return [labels[i] for i in best.tolist()]

    def expert_weights(self) -> dict[str, float]:
        """For an ensemble, each expert's mixture weight averaged over the live keys (empty otherwise)."""
        labels = getattr(self.learner, "labels", None)
        if labels is None or not self.names:
            return {}
        w = self.learner.weights(self._live_learner_state()).mean(dim=0)  # type: ignore[attr-defined]  # [E]
        return dict(zip(labels, w.tolist(), strict=True))

    def coverage(self) -> float:
        ticks = int(self.state["b.ticks"].sum()) if self.state else 0
        return float(self.state["b.hits"].sum()) / ticks if ticks else float("nan")


# The bank's own rows added since snapshots of format 2 were first written (the learner's: its added_state).
_ADDED = ("b.s",)  # the log of the interval's conformal factor


def _width(tensor: Mapping[str, Any]) -> int:
    """Bytes a row of a snapshot manifest's tensor takes."""
    return np.dtype(tensor["dtype"]).itemsize * (int(np.prod(tensor["shape"])) if tensor["shape"] else 1)


_SURVIVE_RESET = ("b.ticks", "b.hits", "b.resets", "h.hits", "h.scored")  # a key's counters outlive its model


def read_manifest(blob: bytes | memoryview) -> dict[str, Any]:
    """The JSON manifest of a key-state snapshot (key, learner, spec, tensor layout and any `extra`
    fields), or ValueError when the bytes are not one; the payload is not checked here (`restore` does)."""
    return unframe(blob, _MAGIC, FORMAT_VERSION, "key-state snapshot", older=(1,))[0]


def _inverse(order: np.ndarray) -> np.ndarray:
    """The permutation that undoes `order`."""
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return inverse


def _result(arrays: dict[str, np.ndarray]) -> StepResult:
    return StepResult(**{k: torch.from_numpy(v) for k, v in arrays.items()})


def _where_arrays(mask: np.ndarray, if_true: dict[str, np.ndarray], if_false: dict[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
    """Row-wise choice between two sets of arrays: row b from `if_true` where mask[b], else from `if_false`."""
    return {k: np.where(mask.reshape(-1, *([1] * (v.ndim - 1))), if_true[k], v) for k, v in if_false.items()}


def _waves(rows: np.ndarray) -> list[np.ndarray]:
    """Positions of a batch split so that wave j holds the j-th occurrence of each row."""
    T = len(rows)
    if T == 0:
        return []
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_rows)) + 1]  # group starts in sorted order
    group_start = np.repeat(starts, np.diff(np.r_[starts, T]))
    rank = np.empty(T, dtype=np.int64)
    rank[order] = np.arange(T) - group_start
    if rank.max() == 0:
        return [np.arange(T)]
    return [np.flatnonzero(rank == j) for j in range(int(rank.max()) + 1)]
