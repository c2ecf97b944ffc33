"""The learners as a Python library, behind River's API: what a notebook measures is what the daemon runs.

    OnlineRegressor   one series:   learn_one(x, y), predict_one(x), predict_interval_one(x, alpha)
    KeyedRegressor    many series, each key its own model, stepped as one batch:
                                    learn_many(keys, X, y), predict_many(keys, X), predict_interval_many(...)

Both run a `models.bank.ModelBank` of the daemon's model (`models.defaults`: the per-key ensemble over
an LSTM of 16, online normalisation of inputs and target, calibrated 90% intervals), so with no
arguments they are the model `streamer run` gives every key. `x` is a dict of numeric features, as in
River. The feature set is fixed by the first x a model sees (or by `features=`), sorted by name so
the order of a dict's keys never matters; a feature missing from a later x (or None, NaN) is filled
with that key's running mean of it (0 after normalisation), and one that was not in the set is
ignored, with a warning naming it once.

`snapshot()` gives bytes in the format of the daemon's key state (the model part of every changelog
record, `ModelBank.snapshot`), with the feature names in the manifest; `restore(blob)` loads them
into a model of the same settings. Pickling (and so `copy.deepcopy` and River's `clone` checks) goes
through the same bytes.

With the `river` extra installed, `OnlineRegressor` is a `river.base.Regressor`: it works in
`river.compose` pipelines and `river.evaluate.progressive_val_score` and passes River's estimator
checks (`tests/unit/test_api.py` names the ones that cannot apply). Without it nothing here imports
river, and the two classes keep River's conventions on their own (`clone`, parameters as attributes,
a repr of them).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np
import torch

from models import defaults
from models.bank import BankConfig, ModelBank, read_manifest
from models.cells import NetSpec
from models.learners import make_learner
from models.normalize import NormConfig


class Interval(NamedTuple):
    """A central predictive interval on the target's scale."""

    lower: float
    upper: float

    @property
    def width(self) -> float:
        return self.upper - self.lower


class _Params:
    """River's estimator conventions for when river is not installed: every constructor argument is an
    attribute of the same name, `clone()` builds a fresh model from them, the repr lists them."""

    def _get_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, p in inspect.signature(type(self).__init__).parameters.items():
            if name == "self":
                continue
            if p.kind == p.VAR_KEYWORD:
                params.update(getattr(self, name))
            else:
                params[name] = getattr(self, name)
        return params

    def clone(self, new_params: dict[str, Any] | None = None) -> Any:
        """A fresh model with the same parameters (and `new_params` on top), nothing learned."""
        return type(self)(**{**self._get_params(), **(new_params or {})})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({args})"


try:  # the river extra: OnlineRegressor is then one of River's regressors
    from river import base as _river_base

    _Regressor: type = _river_base.Regressor
except ImportError:  # pragma: no cover - exercised by a test that hides river
    _Regressor = _Params


def _number(name: str, value: Any) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"feature {name!r} is not a number: {value!r}") from None


def _target(y: Any) -> float:
    try:
        v = float(y)
    except (TypeError, ValueError):
        raise ValueError(f"the target is not a number: {y!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"the target is not finite: {y!r}")
    return v


def _z(alpha: float) -> float:
    """The standard normal quantile of a central (1 - alpha) interval."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def _interval(mean: torch.Tensor, var: torch.Tensor, z: float) -> tuple[np.ndarray, np.ndarray]:
    """mean +- z sqrt(var) [T], in float64."""
    m = mean.numpy().astype(np.float64)
    half = z * np.sqrt(np.maximum(var.numpy().astype(np.float64), 0.0))
    return m - half, m + half


class _BankModel:
    """What both regressors share: the settings, the bank built at the first x, x dicts and frames as
    matrices, missing values filled, snapshots. The bank holds one row per key (`models.bank`)."""

    bank_: ModelBank | None
    features_: tuple[str, ...] | None

    def __init__(self, learner: str = defaults.LEARNER, cell: str = defaults.CELL, head: str = defaults.HEAD,
                 hidden: int = defaults.HIDDEN, normalize: str = defaults.NORMALIZE, seed: int = 0,
                 features: tuple[str, ...] | None = None, **learner_options: Any):
        # River's convention: every argument an attribute of its name; the bank is built at the first x
        # (or here, when the features are given)
        self.learner, self.cell, self.head, self.hidden = learner, cell, head, hidden
        self.normalize, self.seed, self.features = normalize, seed, features
        self.learner_options = learner_options
        self.bank_ = None
        self.features_ = None
        self._column: dict[str, int] = {}
        self._ignored: set[str] = set()
        if self.features is not None:
            self._build(tuple(self.features))

    def _build(self, features: tuple[str, ...]) -> ModelBank:
        if not features:
            raise ValueError(f"{type(self).__name__} needs at least one feature in x")
        spec = NetSpec(n_in=len(features), hidden=self.hidden, cell=self.cell, head=self.head)  # type: ignore[arg-type]
        model = make_learner(self.learner, spec, **self.learner_options)
        self.bank_ = ModelBank(model, BankConfig(seed=self.seed, norm=NormConfig(mode=self.normalize)))  # type: ignore[arg-type]
        self.features_ = features
        self._column = {f: i for i, f in enumerate(features)}
        return self.bank_

    def _bank_for(self, names: Iterable[str]) -> ModelBank:
        return self.bank_ if self.bank_ is not None else self._build(tuple(sorted(names)))

    def _warn_ignored(self, names: Iterable[str]) -> None:
        new = sorted(set(names) - self._column.keys() - self._ignored)
        if new:
            self._ignored.update(new)
            warnings.warn(f"{type(self).__name__}: features {new} were not in its feature set "
                          f"{list(self.features_ or ())} and are ignored", stacklevel=4)

    def _dict_rows(self, xs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """x dicts -> [T, p] float64, NaN where a feature is missing."""
        if not xs:
            raise ValueError("no rows")
        self._bank_for(xs[0])
        out = np.full((len(xs), len(self._column)), np.nan)
        for i, x in enumerate(xs):
            for name, value in x.items():
                j = self._column.get(name)
                if j is None:
                    self._warn_ignored([name])
                else:
                    out[i, j] = _number(name, value)
        return out

    def _matrix(self, X: Any) -> np.ndarray:
        """A DataFrame (columns by name), a sequence of x dicts, or an array [T, p] (columns in the order
        of `features`, or named x0, x1, ...) -> [T, p] float64, NaN where a value is missing."""
        if hasattr(X, "columns") and hasattr(X, "reindex"):  # a pandas DataFrame
            cols = [str(c) for c in X.columns]
            self._bank_for(cols)
            self._warn_ignored(cols)
            frame = X.set_axis(cols, axis=1).reindex(columns=list(self.features_ or ()))
            try:
                return np.array(frame.to_numpy(dtype=np.float64, na_value=np.nan))  # a copy, writable
            except (TypeError, ValueError) as exc:
                raise ValueError(f"the features are not all numbers: {exc}") from None
        if isinstance(X, np.ndarray) or (isinstance(X, Sequence) and X and not isinstance(X[0], Mapping)):
            a = np.array(X, dtype=np.float64)  # a copy: nothing of the caller's is kept or written
            if a.ndim != 2:
                raise ValueError(f"X as an array is [rows, features], got shape {a.shape}")
            if self.bank_ is None:
                self._build(tuple(f"x{i}" for i in range(a.shape[1])))
            if a.shape[1] != len(self._column):
                raise ValueError(f"X has {a.shape[1]} columns, the model has {len(self._column)} features")
            return a
        return self._dict_rows(list(X))

    def _filled(self, bank: ModelBank, names: list[str], x: np.ndarray) -> np.ndarray:
        """x [T, p] with each missing value replaced by its key's running mean of that feature."""
        gaps = ~np.isfinite(x)
        if not gaps.any():
            return x
        means = bank.state["n.x_mean"].numpy()[bank.rows(names).numpy()].astype(np.float64)  # [T, p]
        return np.where(gaps, means, x)

    def _snapshots(self, names: list[str]) -> list[bytes]:
        if self.bank_ is None:
            raise ValueError(f"{type(self).__name__} has seen no x yet: there is no state to snapshot")
        return self.bank_.snapshot_many(names, extra={"features": list(self.features_ or ())})

    def _load(self, blobs: Sequence[bytes], names: Sequence[str] | None) -> list[str]:
        if not blobs:
            return []
        try:
            meta = read_manifest(blobs[0])
        except ValueError as exc:
            raise ValueError(f"cannot restore: {exc}") from None
        features = meta.get("features")
        if self.bank_ is None:
            if not features:
                raise ValueError("cannot restore: the snapshot names no features (a daemon key's state: its inputs "
                                 "are the key's lags, then its features); pass features=(...) to the model")
            self._build(tuple(features))
        elif features and tuple(features) != self.features_:
            raise ValueError(f"cannot restore: the snapshot's features {features} are not this model's "
                             f"{list(self.features_ or ())}")
        assert self.bank_ is not None
        keys, refused = self.bank_.restore_many(blobs, names)
        if refused:
            why = "; ".join(f"#{i}: {reason}" for i, reason in sorted(refused.items()))
            raise ValueError(f"{len(refused)} snapshot(s) refused, {len(keys)} restored: {why}")
        return keys

    # pickling (copy.deepcopy, River's checks) goes through the snapshot bytes, not torch's pickles
    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "bank_"}
        bank = self.bank_
        state["_blobs"] = (list(bank.names), self._snapshots(list(bank.names))) if bank is not None else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        blobs = state.pop("_blobs")
        self.__dict__.update(state)
        self.bank_ = None
        if self.features_ is not None:
            bank = self._build(self.features_)
            if blobs is not None and blobs[0]:
                bank.restore_many(blobs[1], blobs[0])


_KEY = "series"  # the one key of an OnlineRegressor's bank (its seed is drawn from this name)


class OnlineRegressor(_BankModel, _Regressor):  # type: ignore[misc,valid-type]
    """One series' online regressor: a recurrent net updated on every `learn_one`, with calibrated intervals.

    Parameters
    ----------
    learner
        `ensemble` (the default: persistence, RLS, SGD and a decoupled EKF mixed by fixed-share
        weights), `sgd`, `ekf`, `dekf`, `pf`, or a baseline: `mean`, `persistence`, `linear`.
    cell, head, hidden
        the recurrent net: `lstm` or `gru`, read-out `plain`, `skip` or `gated`, cell size m.
    normalize
        `online` (running standardisation of x and y, as the daemon does) or `none`.
    seed
        the key's initial weights and the particle filter's draws are a function of it.
    features
        fix the feature names and their order up front (otherwise: the first x's, sorted).
    learner_options
        fields of the learner's config dataclass (`models.learners`), e.g. `eta=0.3` for the
        ensemble or `lr=0.005` for SGD.

    Examples
    --------
    A sine wave, each value predicted (with its 90% interval) before it is learned; the last 500
    predictions against persistence (next = now):

    >>> import math
    >>> from models.api import OnlineRegressor
    >>> model = OnlineRegressor()
    >>> errors, naive, inside = [], [], []
    >>> for t in range(1000):
    ...     x = {"now": math.sin(t / 8), "before": math.sin((t - 1) / 8)}
    ...     y = math.sin((t + 1) / 8)
    ...     lower, upper = model.predict_interval_one(x, alpha=0.1)
    ...     errors.append(abs(model.predict_one(x) - y))
    ...     naive.append(abs(x["now"] - y))
    ...     inside.append(lower <= y <= upper)
    ...     model.learn_one(x, y)
    >>> print(f"MAE {sum(errors[500:]) / 500:.3f}, persistence {sum(naive[500:]) / 500:.3f}, "
    ...       f"90% interval covers {sum(inside[500:]) / 500:.0%}")
    MAE 0.004, persistence 0.079, 90% interval covers 91%

    Its state as bytes (the daemon's key-state format), loaded into a fresh model of the same settings:

    >>> blob = model.snapshot()
    >>> copy = OnlineRegressor()
    >>> copy.restore(blob)
    >>> copy.predict_one(x) == model.predict_one(x)
    True

    With the river extra, in a River pipeline and River's own evaluation:

    >>> from river import datasets, evaluate, metrics, preprocessing
    >>> from river import linear_model
    >>> evaluate.progressive_val_score(datasets.TrumpApproval(), preprocessing.StandardScaler() | OnlineRegressor(),
    ...                                metrics.MAE())
    MAE: 0.203164
    >>> evaluate.progressive_val_score(datasets.TrumpApproval(),
    ...                                preprocessing.StandardScaler() | linear_model.LinearRegression(), metrics.MAE())
    MAE: 1.314548
    """

    def _x(self, x: Mapping[str, Any]) -> tuple[ModelBank, torch.Tensor]:
        row = self._dict_rows([x])  # [1, p]
        assert self.bank_ is not None
        return self.bank_, torch.from_numpy(self._filled(self.bank_, [_KEY], row))

    def learn_one(self, x: Mapping[str, Any], y: float) -> None:
        """Update the model with one (x, y): the prediction it would have made is computed first and
        the update uses it, so `predict_one(x)` then `learn_one(x, y)` costs one pass, not two."""
        y_value = _target(y)
        bank, xt = self._x(x)
        bank.step([_KEY], xt, torch.tensor([y_value], dtype=torch.float64))

    def predict_one(self, x: Mapping[str, Any]) -> float:
        """The mean of the next target given x (before any learn_one: the untrained model's guess)."""
        bank, xt = self._x(x)
        mean, _ = bank.predict([_KEY], xt)
        return float(mean[0])

    def predict_interval_one(self, x: Mapping[str, Any], alpha: float = 0.1) -> Interval:
        """The central (1 - alpha) predictive interval: mean +- z sqrt(var), the variance calibrated
        online to the errors seen (alpha 0.1: the daemon's 90% interval). The variance carries the conformal
        factor that brings the 90% interval to its nominal coverage (`models.bank`); another alpha scales the
        same variance, so its coverage is nominal only as far as the errors are Gaussian."""
        z = _z(alpha)
        bank, xt = self._x(x)
        mean, var = bank.predict([_KEY], xt)
        lower, upper = _interval(mean, var, z)
        return Interval(float(lower[0]), float(upper[0]))

    def snapshot(self) -> bytes:
        """The model's whole state as bytes (`ModelBank.snapshot`'s format, no pickle)."""
        if self.bank_ is not None:
            self.bank_.add([_KEY])  # features given up front, nothing seen yet: the untrained state
        return self._snapshots([_KEY])[0]

    def restore(self, blob: bytes) -> None:
        """Load `snapshot()` bytes; ValueError, and nothing changed, if they are not an intact snapshot
        of a model with these settings."""
        self._load([blob], [_KEY])

    @classmethod
    def _unit_test_params(cls) -> Iterable[dict[str, Any]]:
        yield {}
        yield {"learner": "sgd"}

    def _unit_test_skips(self) -> set[str]:
        return set()


class KeyedRegressor(_BankModel, _Params):
    """Many series at once, each key with its own model, all stepped in one batched call per wave.

    `learn_many(keys, X, y)` takes a batch of ticks in which a key may appear more than once (its ticks
    are learned in order); X is a pandas DataFrame, a sequence of x dicts, or an array [rows, features].
    The parameters are OnlineRegressor's; a key's model is the one an OnlineRegressor would have if
    its initial weights were drawn from the key's name (as the daemon draws them).

    Examples
    --------
    >>> import numpy as np
    >>> from models.api import KeyedRegressor
    >>> model = KeyedRegressor()
    >>> keys = ["a", "b", "c"]
    >>> level = np.array([1.0, 50.0, -200.0])  # three series, each on its own scale
    >>> errors, naive = [], []
    >>> for t in range(400):
    ...     now, before = np.sin(t / 6 + np.arange(3)), np.sin((t - 1) / 6 + np.arange(3))
    ...     X = np.stack([level + now, level + before], axis=1)  # [3 keys, 2 features]
    ...     y = level + np.sin((t + 1) / 6 + np.arange(3))
    ...     errors.append(np.abs(model.predict_many(keys, X) - y))
    ...     naive.append(np.abs(X[:, 0] - y))
    ...     model.learn_many(keys, X, y)
    >>> np.round(np.mean(errors[200:], axis=0), 3)  # MAE per key over the last 200 ticks
    array([0.013, 0.018, 0.057])
    >>> np.round(np.mean(naive[200:], axis=0), 3)  # persistence (next = now)
    array([0.108, 0.106, 0.104])
    >>> sorted(model.snapshot())
    ['a', 'b', 'c']
    """

    def _batch(self, keys: Sequence[str], X: Any) -> tuple[ModelBank, list[str], torch.Tensor]:
        names = [str(k) for k in keys]
        x = self._matrix(X)  # [T, p]
        if len(x) != len(names):
            raise ValueError(f"{len(names)} keys but {len(x)} rows of X")
        assert self.bank_ is not None
        return self.bank_, names, torch.from_numpy(self._filled(self.bank_, names, x))

    def learn_many(self, keys: Sequence[str], X: Any, y: Any) -> None:
        """Learn a batch of ticks: row i is (X[i], y[i]) of series keys[i]; a key's rows in order."""
        if len(keys) == 0:  # an empty batch (a quiet second in a stream) learns nothing
            return
        bank, names, x = self._batch(keys, X)
        d = np.array(y, dtype=np.float64).reshape(-1)  # a copy (a pandas Series gives a read-only view)
        if len(d) != len(names):
            raise ValueError(f"{len(names)} keys but {len(d)} targets")
        if not np.isfinite(d).all():
            raise ValueError(f"targets are not all finite (rows {np.flatnonzero(~np.isfinite(d))[:5].tolist()}...)")
        bank.step(names, x, torch.from_numpy(d))

    def predict_many(self, keys: Sequence[str], X: Any) -> np.ndarray:
        """Each key's mean next target given its row of X [T]; each key at most once."""
        if len(keys) == 0:
            return np.empty(0)
        bank, names, x = self._batch(keys, X)
        mean, _ = bank.predict(names, x)
        return mean.numpy().astype(np.float64)

    def predict_interval_many(self, keys: Sequence[str], X: Any, alpha: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """(lower [T], upper [T]): each key's central (1 - alpha) interval."""
        z = _z(alpha)
        if len(keys) == 0:
            return np.empty(0), np.empty(0)
        bank, names, x = self._batch(keys, X)
        return _interval(*bank.predict(names, x), z)

    @property
    def keys(self) -> list[str]:
        return list(self.bank_.names) if self.bank_ is not None else []

    def snapshot(self, keys: Sequence[str] | None = None) -> dict[str, bytes]:
        """Key -> its state as bytes (the daemon's key-state format, one record each on its changelog)."""
        names = self.keys if keys is None else [str(k) for k in keys]
        missing = [k for k in names if self.bank_ is None or k not in self.bank_.index]
        if missing:
            raise KeyError(f"no such keys: {missing[:5]}")
        return dict(zip(names, self._snapshots(names), strict=True)) if names else {}

    def restore(self, blobs: Mapping[str, bytes] | Iterable[bytes]) -> list[str]:
        """Load snapshots (a mapping names them; bare bytes are named by their manifest); returns the keys.
        A refused blob changes nothing and is named in the ValueError, after the good ones are loaded."""
        if isinstance(blobs, Mapping):
            return self._load(list(blobs.values()), [str(k) for k in blobs])
        return self._load(list(blobs), None)
