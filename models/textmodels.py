"""Text classifiers as numerics: tokens, vocabulary, the two networks, and a model file as a
scorer (texts -> probability), loaded without pickle or scikit-learn. Trained by `offline.text`;
the daemon turns a tick's `text` into the feature text_p with `TextScorer`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.modelfile import decode, load_state

KINDS = ("tfidf_lr", "embed_lstm", "embed_conv")
_WORD = re.compile(r"[a-z0-9']+")
WORD_PATTERN = _WORD.pattern


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class TextConfig:
    max_len: int = 48  # tokens per text (longer are cut, shorter padded)
    min_count: int = 2  # words seen fewer times in train map to <unk>
    max_vocab: int = 20_000
    embed: int = 64
    hidden: int = 64
    epochs: int = 8
    batch: int = 64
    lr: float = 2e-3
    dropout: float = 0.4
    patience: int = 2
    C: float = 4.0  # logistic regression's inverse regularisation
    seed: int = 0


class Vocab:
    """Word -> index; 0 is padding, 1 is unknown."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self.index = {w: i + 2 for i, w in enumerate(self.words)}

    @staticmethod
    def build(texts: Sequence[str], cfg: TextConfig) -> Vocab:
        counts = Counter(w for t in texts for w in tokens(t))
        kept = [w for w, c in counts.most_common(cfg.max_vocab) if c >= cfg.min_count]
        return Vocab(kept)

    def __len__(self) -> int:
        return len(self.words) + 2

    def encode(self, texts: Sequence[str], max_len: int) -> torch.Tensor:
        out = torch.zeros(len(texts), max_len, dtype=torch.int64)  # [N, max_len]
        for i, t in enumerate(texts):
            ids = [self.index.get(w, 1) for w in tokens(t)][:max_len]
            if ids:
                out[i, : len(ids)] = torch.tensor(ids)
        return out


class EmbedLSTM(nn.Module):
    def __init__(self, vocab: int, cfg: TextConfig):
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.embed, padding_idx=0)
        self.rnn = nn.LSTM(cfg.embed, cfg.hidden, batch_first=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids [B, L] -> logit [B]
        y, _ = self.rnn(self.drop(self.embed(ids)))  # [B, L, H]
        mask = (ids > 0).unsqueeze(2).to(y.dtype)  # [B, L, 1] padding does not count
        pooled = (y * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [B, H]
        return self.out(self.drop(pooled)).squeeze(1)


class EmbedConv(nn.Module):
    def __init__(self, vocab: int, cfg: TextConfig):
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.embed, padding_idx=0)
        self.conv = nn.Conv1d(cfg.embed, cfg.hidden, 5, padding=2)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.conv(self.drop(self.embed(ids)).transpose(1, 2)))  # [B, H, L]
        f = f.masked_fill((ids == 0).unsqueeze(1), -1e4)  # padding never wins the max
        return self.out(self.drop(f.amax(dim=2))).squeeze(1)


def build(kind: str, vocab: int, cfg: TextConfig) -> nn.Module:
    torch.manual_seed(cfg.seed)
    if kind == "embed_lstm":
        return EmbedLSTM(vocab, cfg)
    if kind == "embed_conv":
        return EmbedConv(vocab, cfg)
    raise ValueError(f"unknown text model {kind!r} (have {', '.join(KINDS)})")


@torch.no_grad()
def probabilities(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([torch.sigmoid(model(b)) for b in ids.split(512)])


class TextScorer:
    """A text model file as a function: texts -> P(positive) [N]. Loads without pickle or sklearn."""

    def __init__(self, blob: bytes, source: str = "text model file"):
        manifest, tensors = decode(blob, source)
        if manifest.get("kind") != "text":
            raise ValueError(f"{source} is a model file of kind {manifest.get('kind')!r}, not a text model")
        self.kind, self.manifest = str(manifest.get("model")), manifest
        fields = {f.name for f in TextConfig.__dataclass_fields__.values()}
        self.cfg = TextConfig(**{k: v for k, v in dict(manifest.get("config", {})).items() if k in fields})
        words = [str(w) for w in manifest.get("vocab", [])]
        if self.kind == "tfidf_lr":
            self.terms = {t: i for i, t in enumerate(words)}
            need = {"idf": (len(words),), "coef": (len(words),), "intercept": (1,)}
            if any(k not in tensors or tuple(tensors[k].shape) != s for k, s in need.items()):
                raise ValueError(f"{source}: TF-IDF weights do not fit its vocabulary")
            self.idf, self.coef, self.intercept = tensors["idf"], tensors["coef"], float(tensors["intercept"][0])
        else:
            self.vocab = Vocab(words)
            self.model = build(self.kind, len(self.vocab), self.cfg)
            load_state(self.model, tensors, source)
            self.model.eval()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if self.kind != "tfidf_lr":
            return probabilities(self.model, self.vocab.encode(texts, self.cfg.max_len)).numpy().astype(np.float64)
        out = np.empty(len(texts))
        for i, t in enumerate(texts):
            words = tokens(t)
            counts = Counter(words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)])
            idx = [self.terms[w] for w in counts if w in self.terms]
            if not idx:
                out[i] = 1 / (1 + math.exp(-self.intercept))
                continue
            tf = torch.tensor([1 + math.log(counts[w]) for w in counts if w in self.terms], dtype=torch.float64)
            v = tf * self.idf[idx]
            v = v / v.norm()  # sublinear tf * idf, l2-normalised: TfidfVectorizer's defaults as trained
            out[i] = 1 / (1 + math.exp(-(float((v * self.coef[idx]).sum()) + self.intercept)))
        return out
