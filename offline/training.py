"""What every offline training loop shares: early stopping on the validation loss."""

from __future__ import annotations

import math

import torch
from torch import nn


class EarlyStopping:
    """Keeps the weights of the epoch with the lowest validation loss and says when `patience`
    epochs in a row brought no loss lower than the best by more than `min_delta`.

        stop = EarlyStopping(model, patience)
        for epoch in range(epochs):
            ...train...
            if stop.step(val_loss, epoch):
                break
        stop.restore()   # the best epoch's weights back in the model
    """

    def __init__(self, model: nn.Module, patience: int, min_delta: float = 1e-6):
        self.model, self.patience, self.min_delta = model, patience, min_delta
        self.best, self.best_epoch, self.waited = math.inf, 0, 0
        self._state: dict[str, torch.Tensor] | None = None

    def step(self, loss: float, epoch: int) -> bool:
        """Record this epoch's validation loss; True when training should stop."""
        if loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.waited = loss, epoch, 0
            self._state = {k: t.detach().clone() for k, t in self.model.state_dict().items()}
            return False
        self.waited += 1
        return self.waited >= self.patience

    def restore(self) -> None:
        if self._state is not None:
            self.model.load_state_dict(self._state)
