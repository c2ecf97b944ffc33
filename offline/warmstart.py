"""Train the online regressor itself on history, for every new key to start from.

The model is `forecast.CellRegressor`: theta in the layout of `models.cells`, with the head the
daemon uses. It reads the same regressors the online run will see (`layout`), one key's stream
at a time, over sequences of `seq_len` ticks from a zero state; the loss counts the steps after
`burn_in`, when the state has filled as it would have online.

`per_key` False: one theta shared by all series of the history (a global model), which is what a
key the daemon has never seen can use, provided its regressor says which value is its own (the
daemon's "ticks" layout does). `per_key` True: one theta per series, for runs that meet the same
series again; `streamer bench`'s multi-series layout needs it, since there key k's own current
value sits in column k of "every column at t" and a shared model cannot tell which column that is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models import defaults, warmstart
from models.cells import NetSpec
from models.normalize import NormConfig, norm_apply, norm_init, norm_update
from offline.data import SeriesData
from offline.forecast import CellRegressor, FitResult
from offline.training import EarlyStopping

# What `offline train warm-start` uses when a flag is not given, by layout. "ticks" (the daemon's) is
# the daemon's model and regressor, trained without dropout at a larger step: with the series layout's
# dropout 0.5 and step 3e-3 the warm start of Victoria's demand and temperature (60 epochs) was worse
# than persistence frozen and made every learner worse than starting cold (DEKF MAE 109 against 66 on
# Demand); with these it is as good as a cold DEKF after 1,000 ticks frozen (65 against 66), and on
# ETTh1's HUFL, MUFL and OT the warm ensemble is within 2% of dropout 0.5's (examples/history_to_daemon.py,
# RESULTS "The daemon's warm start").
# "series" keeps what was measured on ETTh1 (RESULTS, "Warm start"): dropout is what kept it good on
# the later, shifted rows there.
LAYOUT_DEFAULTS: dict[str, dict[str, float | int]] = {
    "ticks": {"lags": defaults.LAGS, "dropout": 0.0, "lr": 1e-2},
    "series": {"lags": defaults.LAGS - 1, "dropout": 0.5, "lr": 3e-3},
}


@dataclass(frozen=True)
class WarmConfig:
    hidden: int = 8
    cell: str = "lstm"
    head: str = "skip"
    lags: int = 3
    seq_len: int = 48
    burn_in: int = 8
    epochs: int = 60
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0  # AdamW's decoupled L2 pull towards 0
    patience: int = 5
    dropout: float = 0.5  # variational input + recurrent: what keeps it good on later, shifted data
    per_key: bool = True
    layout: str = "series"  # "series": streamer bench's multi-series regressors; "ticks": the daemon's
    seed: int = 0
    # ticks layout: the daemon's STREAMER_HORIZONS and learner, for which the read-outs beyond the next
    # tick are fitted too (`fit_readouts`); (1,) fits none
    horizons: tuple[int, ...] = (1,)
    learner: str = defaults.LEARNER


def series_regressors(z: np.ndarray, lags: int) -> tuple[np.ndarray, np.ndarray]:
    """The `streamer bench` multi-series layout. z [R, K] -> x [T, K, K + lags], d [T, K] for rows lags..R-2:
    key k's regressor at row t is every column at t, then its own values at t-1 .. t-lags; d is its value at t+1."""
    R, K = z.shape
    t = np.arange(lags, R - 1)
    own = np.stack([z[t - j] for j in range(1, lags + 1)], axis=2) if lags else np.zeros((len(t), K, 0))
    x = np.concatenate([np.repeat(z[t][:, None, :], K, axis=1), own], axis=2)  # [T, K, K + lags]
    return x.astype(np.float32), z[t + 1].astype(np.float32)


def tick_windows(values: np.ndarray, lags: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The daemon's raw regressors: values [R, K] -> (v [R, K], X [R, K, lags]) with X_t = [v_t .. v_t-lags+1],
    a key's first value standing in before its first tick, as `Pipeline` fills its lags."""
    v = torch.from_numpy(np.asarray(values, dtype=np.float64))  # [R, K]
    R, K = v.shape
    padded = torch.cat([v[:1].expand(lags - 1, K), v])  # [R + lags - 1, K]
    return v, torch.stack([padded[lags - 1 - j : lags - 1 - j + R] for j in range(lags)], dim=2)  # [R, K, lags]


def tick_regressors(values: np.ndarray, lags: int, norm: NormConfig | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The daemon's regressors, as its model bank sees them. values [R, K] (each column one key's
    ticks) -> x [R-1, K, lags], d [R-1, K]: x_t = [v_t, v_{t-1}, .., v_{t-lags+1}] (before a key's first
    tick its first value, as `Pipeline` fills it), d_t = v_{t+1}, both standardised by the bank's
    online per-key normalisation replayed tick by tick (the first tick sets the level)."""
    norm = norm or NormConfig()  # the daemon's banks use the default
    v, X = tick_windows(values, lags)
    R, K = v.shape
    st = norm_init(K, lags, torch.float64)
    xs, ds, mus, sds = [], [], [], []
    for t in range(R - 1):
        x, d = X[t], v[t + 1]  # [K, lags], [K]
        if t == 0:
            st = {**norm_update(st, x, d, norm), "n": st["n"]}
        xs.append(norm_apply(st, x, norm))
        ds.append((d - st["d_mean"]) / st["d_sd"])
        mus.append(st["d_mean"])
        sds.append(st["d_sd"])
        st = norm_update(st, x, d, norm)
    return (torch.stack(xs).numpy().astype(np.float32), torch.stack(ds).numpy().astype(np.float32),
            torch.stack(mus).numpy(), torch.stack(sds).numpy())


def sequences(x: np.ndarray, d: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every key's stream cut into overlapping sequences (stride seq_len/2):
    x [N, seq_len, p], d [N, seq_len], key [N] (the column each sequence comes from)."""
    T, K, p = x.shape
    starts = range(0, max(1, T - seq_len + 1), max(1, seq_len // 2))
    xs = [x[s : s + seq_len, k] for s in starts for k in range(K)]
    ds = [d[s : s + seq_len, k] for s in starts for k in range(K)]
    ks = [k for _ in starts for k in range(K)]
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ds)), torch.tensor(ks)


def train(data: SeriesData, cfg: WarmConfig, progress: Callable[[int, int], None] | None = None
          ) -> tuple[CellRegressor, FitResult, dict]:
    """Fit on the train rows, stop early on the validation rows. Returns (model, fit, layout)."""
    if cfg.layout == "ticks":
        if cfg.per_key:
            raise ValueError("a warm start for the daemon is one model shared by every new key (per_key False)")
        raw = data.norm.invert_all(data.z)  # the daemon sees raw values and standardises them itself
        x, d, _, _ = tick_regressors(raw[: data.splits.val], cfg.lags)  # row r of the regressors is data row r
        lo_val, hi_val = data.splits.train, data.splits.val - 1
    elif cfg.layout == "series":
        x, d = series_regressors(data.z, cfg.lags)  # row r of the regressors is data row r + lags
        lo_val, hi_val = data.splits.train - cfg.lags, data.splits.val - cfg.lags
    else:
        raise ValueError(f"layout must be series or ticks, got {cfg.layout!r}")
    xt, dt, kt = sequences(x[:lo_val], d[:lo_val], cfg.seq_len)
    xv, dv, kv = sequences(x[lo_val - cfg.burn_in : hi_val], d[lo_val - cfg.burn_in : hi_val], cfg.seq_len)
    if not cfg.per_key:
        kt, kv = torch.zeros_like(kt), torch.zeros_like(kv)
    spec = NetSpec(n_in=x.shape[2], hidden=cfg.hidden, cell=cfg.cell, head=cfg.head)  # type: ignore[arg-type]
    model = CellRegressor(spec, cfg.dropout, cfg.seed, groups=x.shape[1] if cfg.per_key else 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    res = FitResult("warm_start", parameters=spec.n_theta)
    stop = EarlyStopping(model, cfg.patience)
    n_batches = math.ceil(len(xt) / cfg.batch)
    t0 = time.perf_counter()

    def loss_of(xb: torch.Tensor, db: torch.Tensor, kb: torch.Tensor) -> torch.Tensor:
        return ((model.run(xb, kb) - db)[:, cfg.burn_in :] ** 2).mean()

    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(xt), generator=g)
        losses = []
        for b in range(n_batches):
            idx = order[b * cfg.batch : (b + 1) * cfg.batch]
            opt.zero_grad()
            loss = loss_of(xt[idx], dt[idx], kt[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(loss.item())
            if progress is not None:
                progress(epoch * n_batches + b + 1, cfg.epochs * n_batches)
        model.eval()
        with torch.no_grad():
            v = float(loss_of(xv, dv, kv))
        res.train_loss.append(float(np.mean(losses)))
        res.val_loss.append(v)
        if stop.step(v, epoch):
            res.stopped_early = epoch < cfg.epochs - 1
            break
    stop.restore()
    res.best_epoch = stop.best_epoch
    res.seconds = time.perf_counter() - t0
    layout = ({"kind": "series", "columns": list(data.columns), "lags": cfg.lags} if cfg.layout == "series"
              else {"kind": "ticks", "lags": cfg.lags, "features": []})
    return model, res, layout


def fit_readouts(theta: torch.Tensor, spec: NetSpec, values: np.ndarray, horizons: tuple[int, ...], learner: str,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """The read-outs beyond the next tick (`models.horizons`) a new key of the daemon should start from:
    replay each column of `values` [R, K] (raw, one key's ticks each) through the daemon's bank (this
    learner warm-started from theta, these horizons), tick by tick as `Pipeline` feeds it, and average
    the keys' read-outs (w, P), calibration (lam) and conformal factor (s) at the end."""
    from models.bank import BankConfig, ModelBank
    from models.learners import make_learner

    bank = ModelBank(make_learner(learner, spec, warm=True), BankConfig(horizons=tuple(horizons)), theta)
    v, X = tick_windows(values, spec.n_in)  # [R, K], [R, K, lags]
    R, K = v.shape
    keys = [f"history-{k}" for k in range(K)]
    for t in range(R - 1):
        bank.step(keys, X[t], v[t + 1])
        if progress is not None:
            progress(t + 1, R - 1)
    return {k: bank.state[f"h.{k}"].to(torch.float64).mean(0) for k in ("w", "P", "lam", "s")}


def export(model: CellRegressor, layout: dict, data: SeriesData, fit: FitResult, cfg: WarmConfig,
           progress: Callable[[int, int], None] | None = None) -> bytes:
    """The warm-start file; for the ticks layout with horizons beyond 1, with their read-outs fitted on
    the train rows (`fit_readouts`)."""
    theta = model.theta.detach()  # [G, n_theta]
    per_key = theta.shape[0] > 1 or cfg.per_key
    readout, readout_meta = None, None
    if cfg.layout == "ticks" and len(cfg.horizons) > 1:
        raw = data.norm.invert_all(data.z)[: data.splits.train]
        readout = fit_readouts(theta[0], model.spec, raw, cfg.horizons, cfg.learner, progress)
        readout_meta = {"horizons": list(cfg.horizons), "learner": cfg.learner, "train_rows": [0, data.splits.train]}
    return warmstart.to_bytes(
        model.spec, theta if per_key else theta[0], layout, keys=list(data.columns) if per_key else None,
        readout_state=readout, **({"readout": readout_meta} if readout_meta else {}),
        norm=data.norm.to_dict(),
        data={"source": data.source, "train_rows": [0, data.splits.train], "val_rows": list(data.splits.bounds("val")),
              "columns": data.columns},
        training={"config": cfg.__dict__, "best_epoch": fit.best_epoch, "val_loss": min(fit.val_loss),
                  "epochs_run": len(fit.val_loss)})
