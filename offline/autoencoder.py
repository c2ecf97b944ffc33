"""Autoencoders: reconstruction error as an anomaly score, the code as features.

    SeqAutoencoder   LSTM encoder reads a window [L, C]; its last state, through a linear layer,
                     is the code [k]; an LSTM decoder fed the code at every step rebuilds the
                     window (the classic sequence-to-sequence autoencoder of Srivastava et al.)
    denoising        the same model trained on corrupted windows (salt-and-pepper spikes, Gaussian
                     noise, and one stretch blanked to the window's mean, as a masked autoencoder)
                     to rebuild the clean ones: it learns what a normal window looks like rather
                     than to copy its input, so faults stand out more
    DenseImageAE     784 -> 128 -> 10-unit code -> 128 -> 784, sigmoid output (Fashion-MNIST)
    ConvDenoisingAE  two stride-2 convolutions down, two transposed up, trained on noisy images

Anomaly score of a window: the largest per-step reconstruction error (mean over channels), so
one spike in 48 steps is not averaged away. `inject_faults` plants the three faults a sensor
fleet sees (spikes, level shifts, frozen stretches) for the detection benchmark; `roc_auc` is
scikit-learn's (the Mann-Whitney statistic, ties counted half).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from models.seqae import SeqAutoencoder
from offline.training import EarlyStopping

__all__ = ["SeqAutoencoder"]  # re-exported: trained here, defined with the numerics


@dataclass(frozen=True)
class AEConfig:
    hidden: int = 32
    code: int = 8
    epochs: int = 20
    batch: int = 64
    lr: float = 2e-3
    patience: int = 4
    max_batches: int | None = None
    denoising: bool = False
    spike_rate: float = 0.02  # salt and pepper: share of values replaced by +-spike_size
    spike_size: float = 4.0  # in train standard deviations
    noise_sd: float = 0.1  # Gaussian noise on every value
    blank: int = 12  # denoising windows: one stretch this long replaced by the window's mean (0: none)
    images: bool = False  # values in [0, 1]: salt and pepper sets pixels to 0 or 1, noise is clipped
    seed: int = 0


class DenseImageAE(nn.Module):
    def __init__(self, pixels: int = 784, hidden: int = 128, code: int = 10):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, code))
        self.decoder = nn.Sequential(nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, pixels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, 1, 28, 28] -> same
        return self.decoder(self.encoder(x)).view_as(x)


class ConvDenoisingAE(nn.Module):
    def __init__(self, filters: int = 32):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, filters, 3, 2, 1), nn.ReLU(),  # [B, F, 14, 14]
                                     nn.Conv2d(filters, filters, 3, 2, 1), nn.ReLU())  # [B, F, 7, 7]
        self.decoder = nn.Sequential(nn.ConvTranspose2d(filters, filters, 3, 2, 1, output_padding=1), nn.ReLU(),
                                     nn.ConvTranspose2d(filters, 1, 3, 2, 1, output_padding=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def corrupt(x: torch.Tensor, cfg: AEConfig, g: torch.Generator) -> torch.Tensor:
    """Salt-and-pepper spikes (+-spike_size at a share spike_rate of the values) and Gaussian noise."""
    noisy = x + cfg.noise_sd * torch.randn(x.shape, generator=g)
    hit = torch.rand(x.shape, generator=g) < cfg.spike_rate
    salt = torch.rand(x.shape, generator=g) < 0.5
    if cfg.images:
        return torch.where(hit, salt.to(x.dtype), noisy.clamp(0.0, 1.0))
    out = torch.where(hit, x + torch.where(salt, 1.0, -1.0) * cfg.spike_size, noisy)
    if cfg.blank > 0 and x.dim() == 3 and x.shape[1] > cfg.blank:
        # a masked autoencoder's lesson: rebuild a stretch from its context, not copy it
        B, L, _ = x.shape
        start = torch.randint(0, L - cfg.blank + 1, (B, 1), generator=g)  # [B, 1]
        steps = torch.arange(L).unsqueeze(0)  # [1, L]
        gap = ((steps >= start) & (steps < start + cfg.blank)).unsqueeze(2)  # [B, L, 1]
        rest = (~gap).to(x.dtype)
        level = (x * rest).sum(1, keepdim=True) / rest.sum(1, keepdim=True)  # [B, 1, C]
        out = torch.where(gap, level, out)
    return out


class _Inputs(Dataset):
    """A windows dataset's inputs only (an autoencoder's target is its input)."""

    def __init__(self, windows: Dataset):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.windows[i][0]


@dataclass
class AEFit:
    kind: str
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


@torch.no_grad()
def step_errors(model: nn.Module, windows: Dataset, batch: int = 256) -> torch.Tensor:
    """Squared reconstruction error per window and step, mean over channels [N, L]."""
    model.eval()
    out = [((model(x) - x) ** 2).mean(dim=2) for x in DataLoader(_Inputs(windows), batch_size=batch)]
    return torch.cat(out) if out else torch.empty(0, 0)


def anomaly_scores(model: nn.Module, windows: Dataset) -> torch.Tensor:
    """A window's score: its worst step's reconstruction error [N]."""
    return step_errors(model, windows).amax(dim=1)


@torch.no_grad()
def codes(model: SeqAutoencoder, windows: Dataset, batch: int = 256) -> torch.Tensor:
    """The encoder's code of each window [N, k]: features for a downstream model."""
    model.eval()
    return torch.cat([model.encode(x) for x in DataLoader(_Inputs(windows), batch_size=batch)])


def fit(model: nn.Module, train: Dataset | torch.Tensor, val: Dataset | torch.Tensor, cfg: AEConfig, kind: str,
        progress: Callable[[int, int], None] | None = None, inputs: bool = True) -> AEFit:
    """Adam on reconstruction MSE (of the clean input, from a corrupted one when denoising), early
    stopping on the validation MSE of clean windows. `inputs`: the datasets yield (x, y) pairs of
    which x is used (windows); False: they yield x alone."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tr = _Inputs(train) if inputs else train  # type: ignore[arg-type]
    va = _Inputs(val) if inputs else val  # type: ignore[arg-type]
    loader = DataLoader(tr, batch_size=cfg.batch, shuffle=True, generator=g)  # type: ignore[arg-type]
    n_batches = min(len(loader), cfg.max_batches or len(loader))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    res, stop = AEFit(kind), EarlyStopping(model, cfg.patience, min_delta=1e-7)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        losses = []
        for b, x in enumerate(loader):
            if b >= n_batches:
                break
            x_in = corrupt(x, cfg, g) if cfg.denoising else x
            opt.zero_grad()
            loss = ((model(x_in) - x) ** 2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if progress is not None:
                progress(epoch * n_batches + b + 1, cfg.epochs * n_batches)
        model.eval()
        with torch.no_grad():
            val_batches = DataLoader(va, batch_size=512)  # type: ignore[arg-type]
            v = float(np.mean([((model(x) - x) ** 2).mean().item() for x in val_batches]))
        res.train_loss.append(float(np.mean(losses)))
        res.val_loss.append(v)
        if stop.step(v, epoch):
            break
    stop.restore()
    res.best_epoch = stop.best_epoch
    res.seconds = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------ Fashion-MNIST
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist


def load_idx_images(folder: str = FASHION_MNIST, part: str = "train") -> torch.Tensor:
    """Images of an MNIST-format set as [N, 1, 28, 28] floats in [0, 1] (the idx3 gzip files)."""
    import gzip
    from pathlib import Path

    name = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}[part]
    path = Path(folder) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: install the Debian package dataset-fashion-mnist")
    raw = gzip.decompress(path.read_bytes())
    magic, n, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051 or len(raw) != 16 + n * rows * cols:
        raise ValueError(f"{path} is not an idx3 image file")
    arr = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols)
    return torch.from_numpy(arr.astype(np.float32) / 255.0)


def image_grid(rows: list[torch.Tensor], labels: list[str], path: str, title: str) -> None:
    """A PNG with one row of images per tensor [n, 1, H, W] (original / noisy / reconstructed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 1.0, len(rows) * 1.1))
    for r, (imgs, label) in enumerate(zip(rows, labels, strict=True)):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(imgs[c, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ fault injection and scoring
FAULTS = ("spike", "level_shift", "frozen")


def inject_faults(z: np.ndarray, lo: int, hi: int, every: int = 96, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, int]]]:
    """Plant one fault in each block of `every` rows of [lo, hi), kinds in turn: a spike (one row,
    +-6 sd in one column), a level shift (+3 sd on all columns for 12 rows), a frozen stretch (every
    column held at its value for 24 rows). Returns the faulty copy, a per-row fault mask [T] and
    the faults (kind, first row, end row). Faults sit in the middle half of a block, so clean
    blocks separate them."""
    rng = np.random.default_rng(seed)
    out, mask, faults = z.copy(), np.zeros(len(z), dtype=bool), []
    for i, start in enumerate(range(lo, hi - every + 1, every)):
        kind = FAULTS[i % len(FAULTS)]
        length = {"spike": 1, "level_shift": 12, "frozen": 24}[kind]
        a = start + every // 4 + int(rng.integers(0, every // 2 - length + 1))
        b = a + length
        if kind == "spike":
            out[a, int(rng.integers(0, z.shape[1]))] += 6.0 * float(rng.choice([-1.0, 1.0]))
        elif kind == "level_shift":
            out[a:b] += 3.0
        else:
            out[a:b] = out[a - 1]
        mask[a:b] = True
        faults.append((kind, a, b))
    return out, mask, faults


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative (ties half)."""
    from sklearn.metrics import roc_auc_score

    if labels.all() or not labels.any():
        raise ValueError("ROC AUC needs both positive and negative windows")
    return float(roc_auc_score(labels, scores))


def detection(model: nn.Module, z: np.ndarray, lo: int, hi: int, lookback: int, seed: int = 0) -> dict:
    """Plant faults in rows [lo, hi) of z [T, C] and score every window ending there.

    A window is positive when it holds a whole fault, negative when it holds no faulty row; the
    windows that cut a fault are left out (a frozen stretch two rows into a window is not yet a
    frozen stretch). Returns ROC AUC overall and per fault kind, and the counts."""
    from offline.data import Windows

    faulty, mask, faults = inject_faults(z, lo, hi, seed=seed)
    w = Windows(faulty, lo, hi, lookback, 1, 1, 0)
    ends = np.arange(w.first, w.first + len(w))  # [N] the row each window ends at
    scores = anomaly_scores(model, w).numpy()  # [N]
    starts = ends - lookback + 1
    hit = np.array([mask[s : e + 1].any() for s, e in zip(starts, ends, strict=True)])
    kind_of = np.full(len(ends), "", dtype=object)
    for kind, a, b in faults:
        whole = (starts <= a) & (ends >= b - 1)
        kind_of[whole] = kind
    positive = kind_of != ""
    keep = positive | ~hit
    out = {"windows": int(keep.sum()), "positive": int(positive.sum()), "faults": len(faults),
           "auc": roc_auc(scores[keep], positive[keep])}
    for kind in FAULTS:
        sel = (kind_of == kind) | ~hit
        out[f"auc_{kind}"] = roc_auc(scores[sel], (kind_of == kind)[sel])
    return out
