"""Trained offline models to and from model files (`models.modelfile`): no pickle, no code on load.

A forecasting file holds the model's kind and TrainConfig, its window (lookback, horizon, step),
columns and target, the train-only normalisation, what data it was trained on, its training
figures, and its weights (the module's state_dict as raw tensors). Loading rebuilds the module
from the manifest with `forecast.build` and copies the tensors in; a file that names another
kind of model, or whose tensors do not fit what the manifest describes, is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.modelfile import decode, encode, load_state, read
from offline.data import Normaliser, SeriesData
from offline.forecast import FitResult, TrainConfig, build


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float32) if v.is_floating_point() else v.detach() for k, v in
            model.state_dict().items()}


@dataclasses.dataclass
class ForecastFile:
    kind: str
    model: nn.Module | None
    lookback: int
    horizon: int
    step: int
    columns: list[str]
    target: str
    norm: Normaliser
    manifest: dict[str, Any]


def forecast_bytes(kind: str, model: nn.Module, data: SeriesData, lookback: int, horizon: int, step: int,
                   cfg: TrainConfig, fit: FitResult) -> bytes:
    manifest = {
        "kind": "forecast",
        "model": kind,
        "config": dataclasses.asdict(cfg),
        "window": {"lookback": lookback, "horizon": horizon, "step": step},
        "columns": data.columns,
        "target": data.target,
        "norm": data.norm.to_dict(),
        "data": {"source": data.source, "rows": {"train": [0, data.splits.train],
                                                 "val": list(data.splits.bounds("val")),
                                                 "test": list(data.splits.bounds("test"))}},
        "training": fit.summary(),
    }
    return encode(manifest, state_tensors(model))


def forecast_from_bytes(blob: bytes, source: str = "forecast model file") -> ForecastFile:
    manifest, tensors = decode(blob, source)
    if manifest.get("kind") != "forecast":
        raise ValueError(f"{source} is a model file of kind {manifest.get('kind')!r}, not a forecasting model")
    try:
        kind = str(manifest["model"])
        window = manifest["window"]
        lookback, horizon, step = int(window["lookback"]), int(window["horizon"]), int(window["step"])
        columns = [str(c) for c in manifest["columns"]]
        target = str(manifest["target"])
        cfg_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in dict(manifest["config"]).items() if k in cfg_fields})
        norm = Normaliser.from_dict(manifest["norm"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: malformed manifest: {exc!r}") from None
    if target not in columns:
        raise ValueError(f"{source}: target {target!r} is not among its columns {columns}")
    model = build(kind, len(range(0, lookback, step)), len(columns), cfg, columns.index(target))
    if model is None:
        raise ValueError(f"{source}: {kind} is not a trained model")
    load_state(model, tensors, source)
    model.eval()
    return ForecastFile(kind, model, lookback, horizon, step, columns, target, norm, manifest)


def load_forecast(path: str | Path) -> ForecastFile:
    source = f"model file {Path(path)}"
    return forecast_from_bytes(read(path, source), source)


def autoencoder_bytes(model: nn.Module, data: SeriesData, lookback: int, cfg: Any, fit: Any,
                      detection: dict[str, Any] | None = None, threshold: float | None = None) -> bytes:
    """A sequence autoencoder (`models.seqae.SeqAutoencoder`) with what it needs to score windows.
    `threshold`: the 99th percentile of the scores of clean validation windows; the daemon publishes
    score / threshold, so 1 means "as odd as the oddest 1% of normal windows"."""
    manifest = {
        "kind": "autoencoder",
        "model": "seq_denoising" if cfg.denoising else "seq",
        "config": dataclasses.asdict(cfg),
        "window": {"lookback": lookback},
        "columns": data.columns,
        "norm": data.norm.to_dict(),
        "center": bool(getattr(model, "center", True)),
        "data": {"source": data.source, "rows": {"train": [0, data.splits.train],
                                                 "val": list(data.splits.bounds("val")),
                                                 "test": list(data.splits.bounds("test"))}},
        "training": {"train_loss": fit.train_loss, "val_loss": fit.val_loss, "best_epoch": fit.best_epoch},
        "detection": detection,
        "threshold": threshold,
    }
    return encode(manifest, state_tensors(model))




def image_autoencoder_bytes(name: str, model: nn.Module, cfg: Any, fit: Any, scores: dict[str, Any]) -> bytes:
    manifest = {"kind": "image_autoencoder", "model": name, "config": dataclasses.asdict(cfg),
                "data": {"source": "Fashion-MNIST (Debian dataset-fashion-mnist)", "pixels": [1, 28, 28]},
                "training": {"train_loss": fit.train_loss, "val_loss": fit.val_loss, "best_epoch": fit.best_epoch},
                "scores": scores}
    return encode(manifest, state_tensors(model))


def image_autoencoder_from_bytes(blob: bytes, source: str = "image autoencoder file") -> tuple[nn.Module, dict]:
    from offline.autoencoder import ConvDenoisingAE, DenseImageAE

    manifest, tensors = decode(blob, source)
    if manifest.get("kind") != "image_autoencoder":
        raise ValueError(f"{source} is a model file of kind {manifest.get('kind')!r}, not an image autoencoder")
    builders = {"dense": DenseImageAE, "conv_denoising": ConvDenoisingAE}
    if manifest.get("model") not in builders:
        raise ValueError(f"{source}: unknown image autoencoder {manifest.get('model')!r}")
    model = builders[manifest["model"]]()
    load_state(model, tensors, source)
    model.eval()
    return model, manifest
