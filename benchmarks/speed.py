"""Throughput of the batched ModelBank against a per-key Python loop, memory per key, and few keys.

1. Bank of K keys (default 1,000), LSTM m=16, p=8, one tick per key per step. For each case:
   ticks/s of `ModelBank.step` over all keys (steady state, after warm-up steps; this includes the
   per-key normaliser, calibration and health checks), ticks/s of the bare batched `learner.step`,
   ticks/s of a naive loop that calls the same learner once per key (on a subset of keys, since it
   is slow), the speed-up batched learner / per-key loop (like for like), and the bytes of state
   per key.
2. Few keys (K = 1, 4, 16, 1000), every learner with its defaults and the daemon's model (4 lags,
   m=16), one tick per key per wave, the daemon's work per tick: the bank learning from the
   previous tick and predicting the next (`ModelBank.step` + `ModelBank.predict`), and the
   daemon's whole `Pipeline.process` on records
   built in memory (decode, lags, the bank, the message; no Kafka). For few keys at a high rate
   each wave's fixed cost is the cost, so ticks/s per key is given too. Torch threads as the
   daemon sets them (one for a wave under `WIDE_WAVE_TICKS` ticks).
3. The DEKF's innovation product P H^T on its default covariance blocks, for 1, 4 and 1,000 keys,
   as a matrix times a column and as (H P)^T, the row-vector product `models.kalman.innovation`
   uses (P is symmetric): microseconds each, one thread.
4. Where a wave of 1 and of 4 keys of the default learner goes: each expert's predict and step, the bank's
   own work (its wave on persistence, the cheapest learner), and the rest (the mixture's bookkeeping).
5. The window BPTT both ways: the compiled kernel that waves of few rows take and the torch pass of wide
   ones (`models.learners.window.lstm_bptt`), microseconds a call by rows, at the learners' shapes; and
   every other compiled loop (`models.jit`: the Kalman update, SGD's step, the feed-forward pass, the
   ensemble's mixture, the normaliser, the particle filter's move) against its torch or numpy path by keys.
6. The garbage collector: the pipeline at 4 and 1,000 keys (default learner and sgd) with the
   collector as the CLI tunes it (`streamer.runtime.tune_gc`) and as Python has it, alternating.

Ratios are what to read: the machine is shared and noisy.

    python benchmarks/speed.py [--keys 1000] [--steps 20] [--few-keys 1,4,16,1000] [--json benchmarks/out/speed.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from models import defaults
from models.bank import ModelBank
from models.cells import NetSpec
from models.learners import LEARNERS, bptt_kernel, make_learner
from streamer.config import Settings
from streamer.pipeline import WIDE_WAVE_TICKS, Pipeline, Record, wide_wave_threads
from streamer.runtime import GC_YOUNG_THRESHOLD, tune_allocator, tune_gc

# the default ensemble before the feed-forward expert joined: the few-keys table runs it too
PREVIOUS_ENSEMBLE: dict[str, Any] = {"experts": ("persistence", "linear", "sgd", "dekf", "ekf")}
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("ensemble", {}, "ensemble (the default: persistence, RLS, sgd, dekf at m=8, ekf at m=6, mlp)"),
    ("ensemble", PREVIOUS_ENSEMBLE, "ensemble (the previous default: persistence, RLS, sgd, dekf at m=8, ekf at m=6)"),
    ("mlp", {}, "mlp (the feed-forward net, EKF)"),
    ("sgd", {}, "sgd (default: Adam, window 1)"),
    ("sgd", {"window": 1, "optimizer": "sgd"}, "sgd (plain step, window 1)"),
    ("sgd", {"window": 10, "optimizer": "sgd"}, "sgd (plain step, window 10)"),
    ("dekf", {"window": 1}, "dekf (window 1)"),
    ("dekf", {"window": 10}, "dekf (window 10)"),
    ("pf", {"n_particles": 64}, "pf (N=64)"),
    ("pf", {"n_particles": 64, "move": "gradient"}, "pf (N=64, gradient move)"),
    ("pf", {"n_particles": 64, "move": "gradient", "grad_step": 0.0}, "pf (N=64, no move)"),
]


def bank_rate(name: str, opts: dict, spec: NetSpec, K: int, steps: int) -> tuple[float, float, float]:
    """(ticks/s through ModelBank.step, ticks/s of the bare batched learner.step, bytes of state per key)."""
    bank = ModelBank(make_learner(name, spec, **opts))
    keys = [f"k{i}" for i in range(K)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps + 3, K, spec.n_in, generator=g)
    d = torch.randn(steps + 3, K, generator=g)
    for t in range(3):  # warm-up: allocations, first-tick paths
        bank.step(keys, x[t], d[t])
    t0 = time.perf_counter()
    for t in range(3, steps + 3):
        bank.step(keys, x[t], d[t])
    rate = K * steps / (time.perf_counter() - t0)
    per_key = sum(v.element_size() * v[0].numel() for v in bank.state.values())
    learner, state = bank.learner, bank._learner_part(bank.state)
    t0 = time.perf_counter()
    for t in range(3, steps + 3):
        state = learner.step(state, x[t], d[t])[2]
    bare = K * steps / (time.perf_counter() - t0)
    return rate, bare, per_key


def naive_rate(name: str, opts: dict, spec: NetSpec, K: int, steps: int) -> float:
    """The same learner called once per key with batch size 1, as a per-key loop would."""
    learner = make_learner(name, spec, **opts)
    states = [learner.init_state(torch.tensor([i])) for i in range(K)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps + 1, K, spec.n_in, generator=g)
    d = torch.randn(steps + 1, K, generator=g)
    for k in range(K):
        learner.step(states[k], x[0, k : k + 1], d[0, k : k + 1])
    t0 = time.perf_counter()
    for t in range(1, steps + 1):
        for k in range(K):
            learner.step(states[k], x[t, k : k + 1], d[t, k : k + 1])
    return K * steps / (time.perf_counter() - t0)


def daemon_threads(K: int) -> int:
    """The torch threads the daemon steps a wave of K ticks with (STREAMER_TORCH_THREADS=0)."""
    return wide_wave_threads() if K >= WIDE_WAVE_TICKS else 1


def timed_waves(wave, seconds: float, least: int = 5) -> float:
    """Seconds per wave of `wave(t)` over at least `least` waves and about `seconds` (after 3 warm-up waves)."""
    for t in range(3):
        wave(t)
    n, t0 = 0, time.perf_counter()
    while n < least or time.perf_counter() - t0 < seconds:
        wave(3 + n)
        n += 1
    return (time.perf_counter() - t0) / n


def bank_wave(bank: ModelBank, K: int) -> Callable[[int], None]:
    """Wave t of K keys through a bank: learn from the previous tick, predict the next (the daemon's bank calls)."""
    keys = [f"k{i}" for i in range(K)]
    g = torch.Generator().manual_seed(0)
    n_in = bank.learner.spec.n_in
    x = torch.randn(64, K, n_in, generator=g, dtype=torch.float64)
    d = torch.randn(64, K, generator=g, dtype=torch.float64)

    def wave(t: int) -> None:
        bank.step(keys, x[t % 63], d[t % 63])
        bank.predict(keys, x[t % 63 + 1])

    return wave


def few_keys_bank(name: str, spec: NetSpec, K: int, seconds: float, opts: dict[str, Any] | None = None) -> float:
    """Seconds per wave of K keys through a bank of this learner (`bank_wave`)."""
    return timed_waves(bank_wave(ModelBank(make_learner(name, spec, **(opts or {}))), K), seconds)


def few_keys_pipeline(name: str, K: int, seconds: float, horizons: str = "1",
                      opts: dict[str, Any] | None = None) -> tuple[float, int]:
    """Seconds per wave of the daemon's Pipeline.process on K records, one per key (no Kafka), and the
    default memory budget's key bound (raised to K for the run if below: this measures a wave, not
    the eviction of idle keys that a budget too small for the key set causes)."""
    options = dict(opts or {})
    bound = Pipeline(Settings(learner=name, horizons=horizons, learner_options=options)).max_keys
    p = Pipeline(Settings(learner=name, max_keys=max(K, bound), horizons=horizons, learner_options=options))
    offsets = itertools.count()
    values = [[orjson.dumps({"key": f"k{k}", "ts": t, "value": math.sin(t / 7 + k) + 0.01 * k})
               for k in range(K)] for t in range(64)]
    names = [f"k{k}".encode() for k in range(K)]

    def wave(t: int) -> None:
        p.process([Record("ticks", 0, next(offsets), names[k], values[t % 64][k]) for k in range(K)])

    return timed_waves(wave, seconds), bound


def bptt_kernel_rows(hidden: int = 16, window: int = 10) -> int:
    """The most rows of a net of this size and window that take the compiled window BPTT (`bptt_kernel.most_rows`)."""
    return bptt_kernel.most_rows(hidden, window)


def daemon_spec() -> NetSpec:
    """The model a key gets in the daemon with its defaults (lags, hidden size, cell, head)."""
    s = Settings()
    return NetSpec(n_in=s.lags, hidden=s.hidden, cell=s.cell, head=s.head)


def few_keys(counts: list[int], seconds: float, console: Console) -> list[dict]:
    spec = daemon_spec()
    rows = []
    learners: list[tuple[str, str, dict[str, Any]]] = [(n, n, {}) for n in LEARNERS]
    learners.insert(1, ("ensemble (previous default)", "ensemble", PREVIOUS_ENSEMBLE))
    cases = [(row, K) for row in learners for K in counts]
    for (label, name, opts), K in track(cases, description="few keys", console=console):
        per_key = ModelBank(make_learner(name, spec, **opts)).bytes_per_key()
        if per_key * K > 4 << 30:  # the global EKF's dense P: 10 MiB a key
            rows.append({"learner": label, "keys": K, "skipped": f"state {per_key * K / 2**30:.1f} GiB"})
            continue
        torch.set_num_threads(daemon_threads(K))
        bank_s = few_keys_bank(name, spec, K, seconds, opts)
        pipe_s, bound = few_keys_pipeline(name, K, seconds, opts=opts)  # its own threads per wave, as the daemon
        rows.append({"learner": label, "keys": K, "default_key_bound": bound, "bytes_per_key": per_key,
                     "bank_ticks_per_s": K / bank_s, "pipeline_ticks_per_s": K / pipe_s,
                     "pipeline_ticks_per_s_per_key": 1 / pipe_s, "bank_ms_per_wave": bank_s * 1e3,
                     "pipeline_ms_per_wave": pipe_s * 1e3})
    return rows


def bptt_paths(rows: list[int], seconds: float) -> list[dict]:
    """The closed-form window BPTT both ways (`models.learners.window.lstm_bptt`): the compiled kernel and the
    torch pass, at the shapes the learners run it (the ensemble's DEKF at m=8 and EKF at m=6 with window 10,
    SGD at m=16 with window 1; the daemon's 4 lags), for a growing number of rows, on one torch thread (the
    daemon's for a wave under 128 ticks). Microseconds a call; where the kernel stops winning sets
    `bptt_kernel.MAX_WORK`."""
    from models.learners.window import lstm_bptt

    torch.set_num_threads(1)
    bptt_kernel.warm_up()
    out = []
    for m, window, head, who in ((8, 10, "plain", "the ensemble's dekf"), (6, 10, "plain", "the ensemble's ekf"),
                                 (16, 1, "skip", "sgd, pf (per particle)"), (16, 10, "skip", "dekf, ekf alone")):
        spec = NetSpec(n_in=daemon_spec().n_in, hidden=m, head=head)  # type: ignore[arg-type]
        for B in rows:
            g = torch.Generator().manual_seed(0)
            theta = 0.3 * torch.randn(B, spec.n_theta, generator=g)
            h0 = 0.3 * torch.randn(B, spec.state_dim, generator=g)
            xbuf, x = torch.randn(B, window - 1, spec.n_in, generator=g), torch.randn(B, spec.n_in, generator=g)
            timed = {}
            for way, compiled in (("kernel", True), ("torch", False)):
                def call(t: int, s: NetSpec = spec, a: tuple = (theta, h0, xbuf, x), c: bool = compiled) -> None:
                    lstm_bptt(s, a[0], a[1], a[2], a[3], compiled=c)

                with torch.inference_mode():
                    timed[way] = timed_waves(call, seconds / 8, least=10)
            out.append({"learner": who, "hidden": m, "window": window, "rows": B,
                        "kernel_us": timed["kernel"] * 1e6, "torch_us": timed["torch"] * 1e6,
                        "speedup": timed["torch"] / timed["kernel"]})
    return out


def wave_parts(K: int, seconds: float) -> dict[str, Any]:
    """Where a wave of K keys of the default learner goes: the bank's step + predict timed whole, each expert's
    predict and step timed inside it, and the bank alone on the cheapest learner (persistence: its normaliser,
    calibration and checks) as its floor. Milliseconds a wave, one torch thread."""
    torch.set_num_threads(daemon_threads(K))
    spec = daemon_spec()
    bank = ModelBank(make_learner(defaults.LEARNER, spec))
    learner: Any = bank.learner
    spent: dict[str, float] = {}
    for label, expert in zip(learner.labels, learner.experts, strict=True):
        for method in ("predict", "step"):
            inner = getattr(expert, method)

            def timed(*a: Any, _f: Any = inner, _k: str = f"{label} {method}", **kw: Any) -> Any:
                t0 = time.perf_counter()
                out = _f(*a, **kw)
                spent[_k] = spent.get(_k, 0.0) + time.perf_counter() - t0
                return out

            setattr(expert, method, timed)
    wave = bank_wave(bank, K)
    measured = []  # the waves timed_waves times, after its 3 warm-up waves

    def counted(t: int) -> None:
        if t == 3:
            spent.clear()
        measured.append(t >= 3)
        wave(t)

    whole = timed_waves(counted, seconds)
    n = sum(measured)
    parts = {k: v / n * 1e3 for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
    floor = few_keys_bank("persistence", spec, K, seconds)
    return {"keys": K, "wave_ms": whole * 1e3, "experts_ms": parts, "bank_floor_ms": floor * 1e3,
            "mixture_ms": whole * 1e3 - sum(parts.values()) - floor * 1e3}


def kernel_paths(keys: list[int], seconds: float) -> list[dict]:
    """Every other compiled loop of few-key waves (`models.jit`) against its torch or numpy path, at the daemon's
    shapes (4 lags; the default ensemble's experts), by keys, on one torch thread (the daemon's for a wave under
    128 ticks). Microseconds a call, the loop taken at every width here (and torch's path), so that the table shows
    where each stops winning; in the daemon a loop serves waves up to its own limit (each module's MAX_*), named."""
    from unittest import mock

    from models import bank_kernel, kalman, kalman_kernel, normalize, rng
    from models.learners import adam_kernel, baselines, ekf_kernel, ensemble, mlp, pf
    from models.learners.ensemble import EnsembleConfig, EnsembleLearner
    from models.learners.pf import PFLearner
    from models.learners.sgd import SGDLearner

    torch.set_num_threads(1)
    spec = daemon_spec()
    ens = make_learner(defaults.LEARNER, spec)
    Case = tuple[Callable[[], None], Callable[[], Any], Callable[[], Any]]  # the call, torch's path, the loop's
    by_label = dict(zip(ens.labels, ens.experts, strict=True))  # type: ignore[attr-defined]
    n_particles = PFLearner(spec).config.n_particles
    out = []

    def bound(module: Any, name: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
        """(torch's path, the loop's at every width): the module's limit `name` patched to 0, then to none."""
        return lambda: mock.patch.object(module, name, 0), lambda: mock.patch.object(module, name, 1 << 30)

    def kalman_case(B: int, n_or_blocks: NetSpec | int) -> Case:
        if isinstance(n_or_blocks, int):  # one dense block (the EKF's, the feed-forward net's)
            blocks = [(torch.eye(n_or_blocks).repeat(B, 1, 1), torch.randn(B, n_or_blocks))]
        else:  # the DEKF's: a block per neuron and the head's
            s = n_or_blocks
            blocks = [(torch.eye(s.block_size).repeat(B, s.hidden, 1, 1), torch.randn(B, s.hidden, s.block_size)),
                      (torch.eye(s.n_head).repeat(B, 1, 1), torch.randn(B, s.n_head))]
        R, e = torch.full((B,), 30.0), torch.randn(B)

        def call() -> None:
            PH, S = kalman.innovation(blocks, R)
            kalman.correct([P for P, _ in blocks], PH, e, S)
            for P, _ in blocks:  # back to where it started, so every call does the same work
                P.copy_(torch.eye(P.shape[-1]))
        return call, lambda: mock.patch.object(kalman_kernel, "serves", lambda *a: False), \
            lambda: mock.patch.object(kalman_kernel, "MAX_WORK", math.inf)

    def sgd_case(B: int) -> Case:
        learner: Any = by_label["sgd"]
        state = learner.init_state(torch.arange(B))
        x, d = torch.randn(B, spec.n_in), torch.randn(B)
        memo: dict = {}
        learner.predict(state, x, memo=memo)
        def call() -> None:
            learner.step(state, x, d, memo=memo)
        return call, lambda: mock.patch.object(SGDLearner, "_compiled_step", lambda *a: False), \
            lambda: mock.patch.object(adam_kernel, "MAX_WORK", math.inf)

    def mlp_case(B: int) -> Case:
        learner: Any = by_label["mlp"]
        theta, x = 0.3 * torch.randn(B, learner.n_learned), torch.randn(B, spec.n_in)
        def call() -> None:
            learner._forward(theta, x)
        return (call, *bound(mlp, "MAX_ROWS"))

    def mixture_case(B: int) -> Case:
        learner = EnsembleLearner(spec, EnsembleConfig(experts=("persistence",) * len(ens.labels)))  # type: ignore
        state = learner.init_state(torch.arange(B))
        x, d = torch.randn(B, spec.n_in), torch.randn(B)
        def call() -> None:
            learner.step(dict(state), x, d)
        return (call, *bound(ensemble, "MIX_MAX_ROWS"))

    def norm_case(B: int) -> Case:
        c = normalize.NormConfig()
        st = {k: v.numpy() for k, v in normalize.norm_init(B, spec.n_in, torch.float32).items()}
        st["n"] += 50
        x, d = np.random.default_rng(0).normal(size=(B, spec.n_in)).astype(np.float32), np.ones(B, np.float32)
        def call() -> None:
            normalize.update(st, x, d, c)
            normalize.apply(st, x, c)
        return (call, *bound(normalize, "MAX_ROWS"))

    def move_case(B: int) -> Case:
        learner: Any = make_learner("pf", spec)
        state, N, s = learner.init_state(torch.arange(B)), learner.config.n_particles, learner.spec
        u, g = torch.randn(B, N, s.q), 0.1 * torch.randn(B, N, s.hidden * s.n_gates)
        innov, var = torch.randn(B, N), torch.ones(B, N)
        def call() -> None:
            learner._ekf_move_blocked(state, innov, var, u, g)
        return (call, *bound(pf, "MOVE_MAX_ROWS"))

    def walk_case(B: int) -> Case:
        learner: Any = make_learner("pf", spec)
        state = learner.init_state(torch.arange(B))
        def call() -> None:
            rng.add_normal_rows(state["cell"], state["seed"], state["t"], rng.STREAM_WALK, learner.config.theta_noise)
        return (call, *bound(rng, "WALK_MAX_ROWS"))

    def predict_step_case(label: str, module: Any, limit: str) -> Callable[[int], Case]:
        """An expert's predict and the step after it with predict's memo, the loops bounded by `module.limit`."""
        def make(B: int) -> Case:
            learner: Any = by_label[label]
            state = learner.init_state(torch.arange(B))
            x, d = torch.randn(B, spec.n_in), torch.randn(B)
            def call() -> None:
                memo: dict = {}
                learner.predict(state, x, memo=memo)
                learner.step(state, x, d, memo=memo)
            return (call, *bound(module, limit))
        return make

    rls_case = predict_step_case("linear", baselines, "RLS_MAX_ROWS")

    def book_case(B: int) -> Case:
        wave = bank_wave(ModelBank(make_learner("persistence", spec)), B)
        ticks = itertools.count()
        def call() -> None:
            wave(next(ticks))
        return (call, *bound(bank_kernel, "MAX_ROWS"))

    dekf_spec: NetSpec = by_label["dekf"].spec  # type: ignore[attr-defined]
    kalman_limit = f"innovation up to {kalman_kernel.MAX_WORK:,} entries of P, correct always"
    def keys_of(n: int) -> str:  # the widest wave a loop serves, in keys
        return f"{n} keys"

    cases: list[tuple[str, str, Callable[[int], Case], str]] = [  # label, shape, the case, the widest wave served
        ("Kalman update, the ensemble's EKF", f"n={by_label['ekf'].spec.n_theta}",  # type: ignore[attr-defined]
         lambda B: kalman_case(B, by_label["ekf"].spec.n_theta), kalman_limit),  # type: ignore[attr-defined]
        ("Kalman update, the ensemble's DEKF", f"{dekf_spec.hidden} blocks of {dekf_spec.block_size} + "
         f"{dekf_spec.n_head}", lambda B: kalman_case(B, dekf_spec), kalman_limit),
        ("Kalman update, the feed-forward net's", f"n={by_label['mlp'].n_learned}",  # type: ignore[attr-defined]
         lambda B: kalman_case(B, by_label["mlp"].n_learned), kalman_limit),  # type: ignore[attr-defined]
        ("the ensemble's EKF: predict + step (the innovation and the step in one call each; else one Kalman "
         "loop per block and torch)", f"n={by_label['ekf'].spec.n_theta}",  # type: ignore[attr-defined]
         predict_step_case("ekf", ekf_kernel, "MAX_ROWS"), keys_of(ekf_kernel.MAX_ROWS)),
        ("the ensemble's DEKF: predict + step (as the EKF's)", f"{dekf_spec.hidden} blocks of {dekf_spec.block_size} "
         f"+ {dekf_spec.n_head}", predict_step_case("dekf", ekf_kernel, "MAX_ROWS"), keys_of(ekf_kernel.MAX_ROWS)),
        ("SGD's step after the BPTT (Adam)", f"{spec.n_theta} weights", sgd_case,
         keys_of(adam_kernel.MAX_WORK // spec.n_theta)),
        ("the feed-forward pass and its H", f"m={by_label['mlp'].spec.hidden}", mlp_case,  # type: ignore
         keys_of(mlp.MAX_ROWS)),
        ("the ensemble's mixture update", f"{len(ens.labels)} experts", mixture_case,  # type: ignore
         keys_of(ensemble.MIX_MAX_ROWS)),
        ("the normaliser (update + apply)", f"p={spec.n_in}", norm_case, keys_of(normalize.MAX_ROWS)),
        ("the particle filter's EKF move", f"{n_particles} particles a key", move_case,
         keys_of(pf.MOVE_MAX_ROWS // n_particles)),
        ("the particle filter's random walk", f"{n_particles} particles of {spec.n_cell} weights a key", walk_case,
         keys_of(rng.WALK_MAX_ROWS // n_particles)),
        ("RLS, the linear expert (predict + step)", f"{spec.n_in + 1} weights", rls_case,
         keys_of(baselines.RLS_MAX_ROWS)),
        ("the bank's bookkeeping: a whole wave (step + predict) of the persistence learner", f"p={spec.n_in}",
         book_case, keys_of(bank_kernel.MAX_ROWS)),
    ]
    for label, shape, make, limit in cases:
        for B in keys:
            call, slow, fast = make(B)
            timed = {}
            with torch.inference_mode():
                with fast():  # the loop whatever the width: where it stops winning is the point of the table
                    timed["kernel"] = timed_waves(lambda t, f=call: f(), seconds / 8, least=10)
                with slow():
                    timed["torch"] = timed_waves(lambda t, f=call: f(), seconds / 8, least=10)
            out.append({"loop": label, "shape": shape, "keys": B, "limit": limit, "kernel_us": timed["kernel"] * 1e6,
                        "torch_us": timed["torch"] * 1e6, "speedup": timed["torch"] / timed["kernel"]})
    return out


def collector_ab(counts: list[int], seconds: float, repeat: int, console: Console) -> list[dict]:
    """The daemon's pipeline (`few_keys_pipeline`) with the collector as the CLI tunes it (`streamer.runtime.tune_gc`)
    and as Python has it, the two alternating run by run; the median run of each."""
    rows = []
    cases = [(name, K) for name in (defaults.LEARNER, "sgd") for K in counts]
    for name, K in track(cases, description="collector", console=console):
        torch.set_num_threads(daemon_threads(K))
        runs: dict[str, list[float]] = {"tuned": [], "python": []}
        for _ in range(repeat):
            for mode in runs:
                tune_gc(GC_YOUNG_THRESHOLD if mode == "tuned" else 0)
                runs[mode].append(K / few_keys_pipeline(name, K, seconds)[0])
        tune_gc()
        med = {mode: float(np.median(v)) for mode, v in runs.items()}
        rows.append({"learner": name, "keys": K, "tuned_ticks_per_s": med["tuned"],
                     "python_ticks_per_s": med["python"], "change": med["tuned"] / med["python"] - 1,
                     "tuned_all": runs["tuned"], "python_all": runs["python"]})
    return rows


def covariance_products(counts: list[int], seconds: float) -> list[dict]:
    """The DEKF's innovation product P H^T two ways, on its default covariance blocks (one torch thread):
    as P times a column (`matmul(P, H[..., None])`) and, P being symmetric, as the row H times P
    (`matmul(H[..., None, :], P)`, what `models.kalman.innovation` does). Same numbers, another kernel."""
    torch.set_num_threads(1)
    state = make_learner("dekf", daemon_spec()).init_state(torch.arange(1))
    rows = []
    for K in counts:
        g = torch.Generator().manual_seed(0)
        for name in ("Pc", "Ph"):
            n = state[name].shape[-1]
            inner = state[name].shape[1:-2]
            a = torch.randn(K, *inner, n, n, generator=g, dtype=torch.float64)
            P = a @ a.transpose(-1, -2)  # [K, *inner, n, n] symmetric
            H = torch.randn(K, *inner, n, generator=g, dtype=torch.float64)  # [K, *inner, n]

            def column_product(t: int, P: torch.Tensor = P, H: torch.Tensor = H) -> torch.Tensor:
                return torch.matmul(P, H.unsqueeze(-1)).squeeze(-1)  # [K, *inner, n]

            def row_product(t: int, P: torch.Tensor = P, H: torch.Tensor = H) -> torch.Tensor:
                return torch.matmul(H.unsqueeze(-2), P).squeeze(-2)  # [K, *inner, n]

            column = timed_waves(column_product, seconds / 4, least=20)
            row = timed_waves(row_product, seconds / 4, least=20)
            diff = column_product(0) - row_product(0)
            rows.append({"keys": K, "block": name, "shape": list(P.shape[1:]), "column_us": column * 1e6,
                         "row_us": row * 1e6, "speedup": column / row,
                         "max_rel_diff": float(diff.abs().max() / P.abs().max())})
    return rows


def compile_times(repeat: int) -> list[dict]:
    """Seconds `models.jit.warm_up()` takes (float32, every loop) in a fresh process: into an empty NUMBA_CACHE_DIR
    (a fresh container: every loop compiles), then again from what that left there (a restart). `repeat` pairs,
    each in its own empty directory."""
    import os
    import subprocess
    import sys
    import tempfile

    code = ("import time; t = time.perf_counter(); from models import jit; ok = jit.warm_up(); "
            "print(time.perf_counter() - t, ok, len(jit.kernels()))")
    out = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache}
            for state in ("empty", "filled"):
                seconds, ok, loops = subprocess.run([sys.executable, "-c", code], env=env, check=True, text=True,
                                                    capture_output=True, cwd=Path(__file__).resolve().parent.parent
                                                    ).stdout.split()
                out.append({"cache": state, "seconds": float(seconds), "all_usable": ok == "True",
                            "loops": int(loops)})
    return out


def revision() -> str:
    """The checked-out commit, short, with "+" where the tree has uncommitted changes ("unknown" outside git)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, check=True,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--naive-keys", type=int, default=50)
    ap.add_argument("--naive-steps", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--few-keys", default="1,4,16,1000", help="key counts of the few-keys table ('' skips it)")
    ap.add_argument("--few-seconds", type=float, default=2.0, help="seconds measured per few-keys case and path")
    ap.add_argument("--bptt-rows", default="1,4,16,64,256,1000",
                    help="rows of the window BPTT table, the kernel against the torch pass ('' skips it)")
    ap.add_argument("--kernel-keys", default="1,4,16,64,256",
                    help="key counts of the compiled loops' table, each against its torch path ('' skips it)")
    ap.add_argument("--collector-keys", default="4,1000",
                    help="key counts of the collector A/B, tuned against Python's ('' skips it)")
    ap.add_argument("--collector-repeat", type=int, default=3, help="runs per mode of the collector A/B")
    ap.add_argument("--compile-repeat", type=int, default=2,
                    help="fresh processes compiling every loop into an empty cache, each then loading it (0 skips)")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/speed.json"))
    args = ap.parse_args()
    tune_allocator()  # as the daemon's process has it (`streamer.runtime`)
    tune_gc()
    threads = torch.get_num_threads()
    spec = NetSpec(n_in=args.inputs, hidden=args.hidden)
    console = Console()
    rows = []
    for name, opts, label in CASES:
        steps = args.steps if name != "pf" else max(3, args.steps // 4)
        rate, bare, per_key = bank_rate(name, opts, spec, args.keys, steps)
        naive = naive_rate(name, opts, spec, args.naive_keys, args.naive_steps)
        rows.append({"case": label, "learner": name, "options": opts, "keys": args.keys, "ticks_per_s": rate,
                     "learner_ticks_per_s": bare, "naive_ticks_per_s": naive, "speedup": bare / naive,
                     "bytes_per_key": per_key})
        console.print(f"{label}: bank {rate:,.0f} ticks/s, batched learner {bare:,.0f}, per-key loop {naive:,.0f}")
    table = Table(title=f"bank of {args.keys} keys, {spec.describe()}, {torch.get_num_threads()} threads")
    cols = ("case", "ticks/s (bank)", "ticks/s (batched learner)", "ticks/s (per-key loop)", "speed-up", "state/key")
    for col in cols:
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        rates = (r["ticks_per_s"], r["learner_ticks_per_s"], r["naive_ticks_per_s"])
        table.add_row(r["case"], *(f"{v:,.0f}" for v in rates), f"{r['speedup']:.0f}x",
                      f"{r['bytes_per_key'] / 1024:,.1f} KiB")
    console.print(table)
    counts = [int(k) for k in args.few_keys.split(",") if k]
    few = few_keys(counts, args.few_seconds, console) if counts else []
    table = Table(title=f"few keys: the daemon's work per wave of K keys (one tick each), {daemon_spec().describe()}")
    few_cols = ("learner", "keys", "bank ticks/s", "pipeline ticks/s", "pipeline ticks/s per key",
                "pipeline ms/wave", "keys in 1536 MB")
    for col in few_cols:
        table.add_column(col, justify="left" if col == "learner" else "right")
    for r in few:
        if "skipped" in r:
            table.add_row(r["learner"], str(r["keys"]), "-", "-", "-", "-", f"skipped: {r['skipped']}")
            continue
        table.add_row(r["learner"], str(r["keys"]), f"{r['bank_ticks_per_s']:,.0f}",
                      f"{r['pipeline_ticks_per_s']:,.0f}", f"{r['pipeline_ticks_per_s_per_key']:,.0f}",
                      f"{r['pipeline_ms_per_wave']:.2f}", f"{r['default_key_bound']:,}")
    if few:
        console.print(table)
    products = covariance_products([1, 4, 1000], args.few_seconds) if counts else []
    table = Table(title="the DEKF's P H^T: matrix x column against (row x matrix)^T, 1 thread")
    for col in ("keys", "block", "column us", "row us", "speed-up", "max rel. diff"):
        table.add_column(col, justify="right")
    for r in products:
        table.add_row(str(r["keys"]), f"{r['block']} {'x'.join(map(str, r['shape']))}", f"{r['column_us']:,.1f}",
                      f"{r['row_us']:,.1f}", f"{r['speedup']:.1f}x", f"{r['max_rel_diff']:.1e}")
    if products:
        console.print(table)
    parts = [wave_parts(K, args.few_seconds) for K in (1, 4)] if counts else []
    for p in parts:
        table = Table(title=f"a wave of {p['keys']} key(s) of the default learner ({defaults.LEARNER}), "
                            f"{p['wave_ms']:.2f} ms: where it goes")
        table.add_column("part")
        table.add_column("ms a wave", justify="right")
        for k, ms in p["experts_ms"].items():
            table.add_row(f"expert {k}", f"{ms:.3f}")
        table.add_row("the bank's own work (its wave on persistence alone)", f"{p['bank_floor_ms']:.3f}")
        table.add_row("the rest: the mixture, the experts' health checks, their state in and out",
                      f"{p['mixture_ms']:.3f}")
        console.print(table)
    bptt_rows = [int(k) for k in args.bptt_rows.split(",") if k]
    bptt = bptt_paths(bptt_rows, args.few_seconds) if bptt_rows else []
    table = Table(title=f"the window BPTT: the compiled kernel against the torch pass, 1 thread (the kernel up to "
                        f"{bptt_kernel_rows(16)} rows at m=16, {bptt_kernel_rows(8)} at m=8, window 10; "
                        f"{bptt_kernel_rows(16, 1)} at m=16, window 1)")
    for col in ("learner", "m", "window", "rows", "kernel us", "torch us", "kernel speed-up"):
        table.add_column(col, justify="left" if col == "learner" else "right")
    for r in bptt:
        table.add_row(r["learner"], str(r["hidden"]), str(r["window"]), str(r["rows"]), f"{r['kernel_us']:,.0f}",
                      f"{r['torch_us']:,.0f}", f"{r['speedup']:.1f}x")
    if bptt:
        console.print(table)
    loop_keys = [int(k) for k in args.kernel_keys.split(",") if k]
    loops = kernel_paths(loop_keys, args.few_seconds) if loop_keys else []
    table = Table(title="the other compiled loops of few-key waves against their torch (numpy) paths, 1 thread")
    for col in ("loop", "shape", "keys", "loop us", "torch us", "loop speed-up", "the loop serves"):
        table.add_column(col, justify="left" if col in ("loop", "shape", "the loop serves") else "right")
    for r in loops:
        table.add_row(r["loop"], r["shape"], str(r["keys"]), f"{r['kernel_us']:,.0f}", f"{r['torch_us']:,.0f}",
                      f"{r['speedup']:.1f}x", r["limit"])
    if loops:
        console.print(table)
    compiles = compile_times(args.compile_repeat)
    table = Table(title="compiling the loops (float32, all of them): a fresh process, its NUMBA_CACHE_DIR empty, "
                        "then one that finds what it left")
    for col in ("cache", "loops", "seconds", "all usable"):
        table.add_column(col, justify="left" if col == "cache" else "right")
    for r in compiles:
        table.add_row(r["cache"], str(r["loops"]), f"{r['seconds']:.1f}", str(r["all_usable"]))
    if compiles:
        console.print(table)
    gc_counts = [int(k) for k in args.collector_keys.split(",") if k]
    collector = collector_ab(gc_counts, args.few_seconds, args.collector_repeat, console) if gc_counts else []
    table = Table(title=f"the pipeline with the collector tuned (young threshold {GC_YOUNG_THRESHOLD:,}, start-up "
                        "frozen) and as Python has it, runs alternating")
    for col in ("learner", "keys", "tuned ticks/s", "Python's ticks/s", "change"):
        table.add_column(col, justify="left" if col == "learner" else "right")
    for r in collector:
        table.add_row(r["learner"], str(r["keys"]), f"{r['tuned_ticks_per_s']:,.0f}", f"{r['python_ticks_per_s']:,.0f}",
                      f"{r['change']:+.0%}")
    if collector:
        console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"revision": revision(), "spec": spec.describe(), "threads": threads, "rows": rows,
                                     "few_keys": few,
                                     "covariance_products": products, "collector": collector, "bptt": bptt,
                                     "kernels": loops, "compile_times": compiles,
                                     "wave_parts": parts,
                                     "bptt_kernel_max_work": bptt_kernel.MAX_WORK,
                                     "gc_young_threshold": GC_YOUNG_THRESHOLD,
                                     "few_keys_spec": daemon_spec().describe()}, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
