"""The LSTM sequence autoencoder as numerics (trained by `offline.autoencoder`): its model file
read back without pickle, and the anomaly score the daemon publishes with each prediction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.modelfile import decode, load_state


class SeqAutoencoder(nn.Module):
    """`center`: each window is rebuilt around its own per-channel mean, so the model learns shapes,
    not levels; a series that drifts from its training level (ETTh1's does) is not an anomaly."""

    def __init__(self, channels: int, hidden: int, code: int, center: bool = True):
        super().__init__()
        self.center = center
        self.encoder = nn.LSTM(channels, hidden, batch_first=True)
        self.to_code = nn.Linear(hidden, code)
        self.decoder = nn.LSTM(code, hidden, batch_first=True)
        self.out = nn.Linear(hidden, channels)

    def _level(self, x: torch.Tensor) -> torch.Tensor:  # [B, 1, C]
        return x.mean(dim=1, keepdim=True) if self.center else x.new_zeros(x.shape[0], 1, x.shape[2])

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # x [B, L, C] -> code [B, k]
        _, (h, _) = self.encoder(x - self._level(x))  # h [1, B, H]
        return torch.tanh(self.to_code(h[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # -> reconstruction [B, L, C]
        z = self.encode(x)  # [B, k]
        y, _ = self.decoder(z.unsqueeze(1).expand(-1, x.shape[1], -1))  # [B, L, H]
        return self.out(y) + self._level(x)


def autoencoder_from_bytes(blob: bytes, source: str = "autoencoder file") -> tuple[nn.Module, dict[str, Any]]:
    manifest, tensors = decode(blob, source)
    if manifest.get("kind") != "autoencoder":
        raise ValueError(f"{source} is a model file of kind {manifest.get('kind')!r}, not an autoencoder")
    try:
        config = dict(manifest["config"])
        hidden, code = int(config["hidden"]), int(config["code"])
        channels = len(manifest["columns"])
        center = bool(manifest.get("center", True))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: malformed manifest: {exc!r}") from None
    model = SeqAutoencoder(channels, hidden, code, center)
    load_state(model, tensors, source)
    model.eval()
    return model, manifest


@torch.no_grad()
def window_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x [B, L, C] -> each window's worst step's squared reconstruction error (mean over channels) [B]."""
    model.eval()
    return ((model(x) - x) ** 2).mean(dim=2).amax(dim=1)
