"""Warm starts: a regressor trained offline on history, from which every new key starts.

The file is a model file (`models.modelfile`) of kind "warm_start" holding theta in the exact
layout of `models.cells` (so SGD starts from it, EKF/DEKF put a small covariance around it, PF
draws its particles around it): [n_theta], one global model for every new key, or [K, n_theta]
with the K key names (`keys`), one model per series the history holds. It also names the NetSpec
it fits and the regressor layout it was trained on:

    {"kind": "series", "columns": [...], "lags": L}   streamer bench's multi-series stream: x_k,t =
                                                      [every column at t, L past values of column k]
    {"kind": "ticks", "lags": L, "features": [...]}   the daemon's regressor: [value_t .. value_t-L+1,
                                                      the tick's features in this order]

A file that does not fit the run (cell, size, head, regressor) is refused with both sides named.

A "ticks" warm start may also carry the read-outs of horizons beyond the next tick
(`models.horizons`), fitted by replaying the history through the daemon's bank with that learner:
`readout` {"w" [m, q], "P" [m, q, q], "lam" [m], "s" [m]} and the manifest's
{"readout": {"horizons": [1, h...], "learner": name}}. A daemon with those horizons and that learner
starts every new key's read-outs there; any other run starts them cold (the theta still applies).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.cells import NetSpec
from models.modelfile import decode, encode, read

KIND = "warm_start"


@dataclass(frozen=True)
class WarmStart:
    spec: NetSpec
    theta: torch.Tensor  # [n_theta] global, or [K, n_theta] per key
    layout: dict[str, Any]
    manifest: dict[str, Any]  # everything else the file says: norm, data, training figures
    keys: list[str] | None = None  # names of theta's rows when per key
    readout: dict[str, torch.Tensor] | None = None  # read-outs beyond the next tick (see the module doc)

    def readout_for(self, horizons: tuple[int, ...], learner: str) -> dict[str, torch.Tensor] | None:
        """The read-outs' warm start when they were fitted for these horizons and this learner, else None."""
        meta = self.manifest.get("readout") or {}
        if self.readout is None or meta.get("learner") != learner:
            return None
        if tuple(meta.get("horizons") or ()) != tuple(horizons):
            return None
        return self.readout

    def for_bank(self, keys: list[str] | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """What `ModelBank(theta0=...)` takes: the global theta, or {key: theta} (all of `keys` covered)."""
        if self.keys is None:
            return self.theta
        missing = [k for k in (keys or []) if k not in self.keys]
        if missing:
            raise ValueError(f"the per-key warm start has no model for {missing} (it has {self.keys})")
        return {k: self.theta[i] for i, k in enumerate(self.keys)}

    def check(self, spec: NetSpec, layout: dict[str, Any], source: str = "warm-start file") -> None:
        """ValueError unless this warm start fits a run of `spec` over regressors laid out as `layout`."""
        problems = []
        if (self.spec.cell, self.spec.hidden, self.spec.head, self.spec.gate) != (spec.cell, spec.hidden, spec.head,
                                                                                  spec.gate):
            problems.append(f"it holds {self.spec.describe()}, this run builds {spec.describe()}")
        elif self.spec.n_in != spec.n_in:
            problems.append(f"its regressor has {self.spec.n_in} inputs, this run's has {spec.n_in}")
        if self.layout != layout:
            problems.append(f"it was trained on regressors {self.layout}, this run makes {layout}")
        if problems:
            raise ValueError(f"{source} does not fit: " + "; ".join(problems))


def _theta_ok(theta: torch.Tensor, spec: NetSpec, keys: list[str] | None) -> bool:
    want = (spec.n_theta,) if keys is None else (len(keys), spec.n_theta)
    return tuple(theta.shape) == want


def to_bytes(spec: NetSpec, theta: torch.Tensor, layout: dict[str, Any], keys: list[str] | None = None,
             readout_state: dict[str, torch.Tensor] | None = None, **manifest: Any) -> bytes:
    """`readout_state` (with the manifest's `readout` {"horizons", "learner"}): the read-outs' warm start."""
    if not _theta_ok(theta, spec, keys):
        raise ValueError(f"theta has shape {tuple(theta.shape)}; {spec.describe()} needs ({spec.n_theta},), or "
                         f"(K, {spec.n_theta}) with K key names")
    spec_d = {"n_in": spec.n_in, "hidden": spec.hidden, "cell": spec.cell, "head": spec.head, "gate": spec.gate}
    tensors = {"theta": theta.detach().to(torch.float64)}
    if readout_state is not None:
        if not manifest.get("readout"):
            raise ValueError("a read-out warm start needs the manifest's readout {horizons, learner}")
        tensors.update({f"readout.{k}": v.detach().to(torch.float64) for k, v in readout_state.items()})
    return encode({"kind": KIND, "spec": spec_d, "layout": layout, "keys": keys, **manifest}, tensors)


def from_bytes(blob: bytes, source: str = "warm-start file") -> WarmStart:
    manifest, tensors = decode(blob, source)
    if manifest.get("kind") != KIND:
        raise ValueError(f"{source} is a model file of kind {manifest.get('kind')!r}, not a warm start")
    try:
        spec = NetSpec(**manifest.pop("spec"))
        layout = dict(manifest.pop("layout"))
        keys = manifest.pop("keys", None)
        if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise ValueError("keys must be a list of names")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: bad spec, layout or keys: {exc}") from None
    theta = tensors.get("theta")
    if theta is None or not _theta_ok(theta, spec, keys) or not bool(torch.isfinite(theta).all()):
        raise ValueError(f"{source}: theta missing, of the wrong size for {spec.describe()}, or not finite")
    readout = {k[8:]: v for k, v in tensors.items() if k.startswith("readout.")} or None
    if readout is not None:
        hs = (manifest.get("readout") or {}).get("horizons") or []
        m, q = len(hs) - 1, spec.n_in + 2
        want = {"w": (m, q), "P": (m, q, q), "lam": (m,), "s": (m,)}
        if ({k: tuple(v.shape) for k, v in readout.items()} != want
                or not all(bool(torch.isfinite(v).all()) for v in readout.values())):
            raise ValueError(f"{source}: the read-outs' warm start is not {want} of finite numbers for horizons {hs}")
    return WarmStart(spec, theta, layout, manifest, keys, readout)


def load(path: str | Path, source: str | None = None) -> WarmStart:
    """The warm start in a file; `source` names it in errors (default: "warm-start file PATH")."""
    source = source or f"warm-start file {Path(path)}"
    return from_bytes(read(path, source), source)
