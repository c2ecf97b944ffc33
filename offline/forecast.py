"""Forecasting baselines trained in batch on history, each scored against persistence.

    persistence   the next value equals the last one (the common-sense baseline; not trained)
    linear        one linear map of the flattened window, fitted in closed form (ridge least
                  squares over every train window): the exact optimum, no epochs to tune
    dense         flattened window -> ReLU layer -> value
    gru           torch GRU over the window, read-out of its last output
    lstm          the LSTM of `models.cells` (the daemon's parameterisation) with variational
                  input and recurrent dropout (Gal & Ghahramani 2016): one mask per sequence on
                  x_t and on y_{t-1}, so the same connections are dropped at every step
    stacked       two GRU layers, dropout between them
    bidirectional a GRU read both ways, both last outputs to the read-out
    conv_gru      Conv1D (kernel 5) + max-pool shorten the window, a GRU reads the result

Training: Adam on MSE (or MAE, `loss="mae"`) of the normalised target, early stopping on the
same loss over the validation windows (patience
epochs without improvement; the best weights are kept), a progress bar per run, and the losses
per epoch for the loss-curve plot. Scores are on the normalised scale (the ETT literature's).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from models.cells import NetSpec, cell_step, init_theta, split_state, unpack
from models.heads import estimate
from offline.data import Windows
from offline.training import EarlyStopping

KINDS = ("persistence", "linear", "dense", "gru", "lstm", "stacked", "bidirectional", "conv_gru")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch: int = 64
    lr: float = 1e-3
    patience: int = 4  # epochs without a better validation loss before stopping
    hidden: int = 32
    dropout: float = 0.2  # input and recurrent (lstm), between layers (stacked), dense layer
    max_batches: int | None = None  # per epoch: cap for quick runs and tests
    residual: bool = True  # learn the change from the window's last target value, not the value itself
    loss: str = "mse"  # or "mae": the median change, robust to the rare large jumps of a sensor
    seed: int = 0


class Linear(nn.Module):
    def __init__(self, lookback: int, channels: int):
        super().__init__()
        self.out = nn.Linear(lookback * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, L, C] -> [B]
        return self.out(x.flatten(1)).squeeze(1)


class Dense(nn.Module):
    def __init__(self, lookback: int, channels: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(lookback * channels, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class Recurrent(nn.Module):
    """torch's GRU: one layer, stacked layers, or both directions."""

    def __init__(self, channels: int, hidden: int, layers: int = 1, bidirectional: bool = False, dropout: float = 0.0):
        super().__init__()
        self.rnn = nn.GRU(channels, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
                          dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), 1)
        self.bidirectional = bidirectional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, h = self.rnn(x)  # y [B, L, H*dirs], h [layers*dirs, B, H]
        last = torch.cat([h[-2], h[-1]], dim=1) if self.bidirectional else h[-1]  # [B, H*dirs]
        return self.out(last).squeeze(1)


class ConvGRU(nn.Module):
    def __init__(self, channels: int, hidden: int, filters: int = 32):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(channels, filters, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
                                  nn.Conv1d(filters, filters, 5, padding=2), nn.ReLU())
        self.rnn = nn.GRU(filters, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x.transpose(1, 2)).transpose(1, 2)  # [B, L/2, F]
        _, h = self.rnn(f)
        return self.out(h[-1]).squeeze(1)


class CellRegressor(nn.Module):
    """One regressor of `models/`: theta [1, n_theta] in the cells' flat layout, run over the window.

    d_hat = head(y_L, y_{L-1}, x_L) after the cell has read x_1..x_L from a zero state, which is what
    an online learner computes at a tick with the same theta. The exported theta is the warm start.
    With `groups` > 1 it holds one theta per series (rows of theta), trained side by side."""

    def __init__(self, spec: NetSpec, dropout: float = 0.0, seed: int = 0, groups: int = 1):
        super().__init__()
        self.spec, self.dropout = spec, dropout
        g = torch.Generator().manual_seed(seed)
        # one theta per group: 1 for a global model, one per series for per-series warm starts
        self.theta = nn.Parameter(init_theta(spec, torch.randn(groups, spec.n_theta, generator=g)))  # [G, n_theta]

    def run(self, x: torch.Tensor, group: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, p] (group [B]: whose theta reads each sequence; None: the first) -> d_hat at every step [B, L]."""
        B, L, p = x.shape
        spec = self.spec
        params = unpack(spec, self.theta[group] if group is not None else self.theta[:1].expand(B, -1))
        h = x.new_zeros(B, spec.state_dim)  # [B, S]
        keep = 1.0 - self.dropout
        mx: torch.Tensor | None = None
        my: torch.Tensor | None = None
        if self.training and self.dropout > 0:  # one mask per sequence, scaled to keep the expectation
            mx = torch.bernoulli(x.new_full((B, p), keep)) / keep  # [B, p]
            my = torch.bernoulli(x.new_full((B, spec.hidden), keep)) / keep  # [B, m]
        out = []
        for t in range(L):
            xt = x[:, t] if mx is None else x[:, t] * mx  # [B, p]
            c, y_prev = split_state(spec, h)
            if my is not None:  # recurrent dropout: the cell sees a thinned y_{t-1}
                y_in = y_prev * my
                h_in = y_in if c is None else torch.cat([c, y_in], dim=1)
            else:
                h_in = h
            h = cell_step(spec, params.cell, h_in, xt)  # [B, S]
            out.append(estimate(spec, params, split_state(spec, h)[1], y_prev, x[:, t]))  # [B]
        return torch.stack(out, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[:, -1]


class Residual(nn.Module):
    """d_hat = last target value in the window + inner(window): the network learns the change.

    Persistence is then the all-zero network, so a learned model starts from the common-sense
    baseline instead of having to rediscover it (at horizon 1 on ETTh1 the change is ~100 times
    smaller than the level)."""

    def __init__(self, inner: nn.Module, target: int):
        super().__init__()
        self.inner, self.target = inner, target

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, L, C] -> [B]
        return x[:, -1, self.target] + self.inner(x)


def build(kind: str, lookback: int, channels: int, cfg: TrainConfig, target: int = 0) -> nn.Module | None:
    """The model for `kind` over windows [lookback, channels] whose column `target` is forecast
    (None for persistence, which is not trained)."""
    if kind == "persistence":
        return None
    model = _build(kind, lookback, channels, cfg)
    return Residual(model, target) if cfg.residual else model


def _build(kind: str, lookback: int, channels: int, cfg: TrainConfig) -> nn.Module:
    torch.manual_seed(cfg.seed)
    if kind == "linear":
        return Linear(lookback, channels)
    if kind == "dense":
        return Dense(lookback, channels, cfg.hidden, cfg.dropout)
    if kind == "gru":
        return Recurrent(channels, cfg.hidden)
    if kind == "lstm":
        return CellRegressor(NetSpec(n_in=channels, hidden=cfg.hidden, cell="lstm", head="skip"), cfg.dropout,
                             cfg.seed)
    if kind == "stacked":
        return Recurrent(channels, cfg.hidden, layers=2, dropout=cfg.dropout)
    if kind == "bidirectional":
        return Recurrent(channels, cfg.hidden, bidirectional=True)
    if kind == "conv_gru":
        return ConvGRU(channels, cfg.hidden)
    raise ValueError(f"unknown forecasting model {kind!r} (have {', '.join(KINDS)})")


@dataclass
class FitResult:
    kind: str
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    test_mse: float = math.nan
    test_mae: float = math.nan
    parameters: int = 0

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items()}


def _batches(data: Windows, cfg: TrainConfig, shuffle: bool) -> DataLoader:
    g = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(data, batch_size=cfg.batch, shuffle=shuffle, generator=g if shuffle else None)


@torch.no_grad()
def predict(model: nn.Module | None, data: Windows, batch: int = 512) -> torch.Tensor:
    """Predictions for every window of `data` [N] (persistence: the last target value)."""
    if model is None:
        return data.last_values().clone()
    model.eval()
    return torch.cat([model(x) for x, _ in DataLoader(data, batch_size=batch)]) if len(data) else torch.empty(0)


def evaluate(model: nn.Module | None, data: Windows) -> tuple[float, float]:
    """(MSE, MAE) on the normalised scale."""
    e = predict(model, data) - data.targets()
    return float((e**2).mean()), float(e.abs().mean())


def _fit_linear(model: nn.Module, train: Windows, val: Windows, cfg: TrainConfig, res: FitResult, t0: float,
                ridge: float = 1e-3) -> FitResult:
    """Ridge least squares of the target (or, residual, its change from the last value) on the
    flattened window: w = (X^T X + ridge N I)^-1 X^T y, intercept unpenalised. X^T X and X^T y
    are summed batch by batch, so the windows are never stacked into one array."""
    inner = model.inner if isinstance(model, Residual) else model
    k = train.window_length * train.z.shape[1] + 1  # weights and intercept
    XtX = torch.zeros(k, k, dtype=torch.float64)  # [k, k]
    Xty = torch.zeros(k, dtype=torch.float64)  # [k]
    for x, y in DataLoader(train, batch_size=1024):  # x [B, L, C], y [B]
        X = torch.cat([x.flatten(1).double(), x.new_ones(len(x), 1, dtype=torch.float64)], dim=1)  # [B, k]
        yb = y.double() - (x[:, -1, model.target].double() if isinstance(model, Residual) else 0.0)  # [B]
        XtX += X.T @ X
        Xty += X.T @ yb
    pen = ridge * len(train) * torch.eye(k, dtype=torch.float64)
    pen[-1, -1] = 0.0
    w = torch.linalg.solve(XtX + pen, Xty)  # [k]
    out = inner.out
    assert isinstance(out, nn.Linear)
    with torch.no_grad():
        out.weight.copy_(w[:-1].view(1, -1))
        out.bias.copy_(w[-1:])
    res.train_loss = [evaluate(model, train)[0]]
    res.val_loss = [evaluate(model, val)[0]]
    res.seconds = time.perf_counter() - t0
    return res


def fit(kind: str, model: nn.Module | None, train: Windows, val: Windows, cfg: TrainConfig,
        progress: Callable[[str, int, int], None] | None = None) -> FitResult:
    """Train with Adam and early stopping on validation MSE; the best epoch's weights are restored."""
    res = FitResult(kind)
    t0 = time.perf_counter()
    if model is None:
        res.val_loss = [evaluate(None, val)[0]]
        res.seconds = time.perf_counter() - t0
        return res
    res.parameters = sum(p.numel() for p in model.parameters())
    if kind == "linear":
        return _fit_linear(model, train, val, cfg, res, t0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    stop = EarlyStopping(model, cfg.patience)
    n_batches = len(_batches(train, cfg, True))
    if cfg.max_batches is not None:
        n_batches = min(n_batches, cfg.max_batches)
    for epoch in range(cfg.epochs):
        model.train()
        losses = []
        for b, (x, y) in enumerate(_batches(train, cfg, True)):
            if b >= n_batches:
                break
            opt.zero_grad()
            e = model(x) - y
            loss = (e**2).mean() if cfg.loss == "mse" else e.abs().mean()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(loss.item())
            if progress is not None:
                progress(kind, epoch * n_batches + b + 1, cfg.epochs * n_batches)
        res.train_loss.append(float(np.mean(losses)))
        v = evaluate(model, val)[0 if cfg.loss == "mse" else 1]
        res.val_loss.append(v)
        if stop.step(v, epoch):
            res.stopped_early = epoch < cfg.epochs - 1
            break
    stop.restore()
    res.best_epoch = stop.best_epoch
    res.seconds = time.perf_counter() - t0
    return res
