"""A per-key online ensemble: several learners stepped side by side, mixed by exponential weights.

No single learner is best on every stream: "next = last" wins on a slow random walk, recursive
least squares on a stream that is linear in its regressor, a recurrent net where there is
structure in time. Each key therefore runs E experts (each a batched learner over all keys,
with its own state rows) and mixes their predictions with weights it learns online:

    d_hat_t  = sum_i w_i,t d_hat_i,t                          (before the label)
    loss_i,t = (d_t - d_hat_i,t)^2 / min(1, s_t / s_ref)      squared error, normalised scale, relative
                                                              to the experts' typical one s_t below s_ref
    v_i      = w_i,t exp(-eta loss_i,t) / Z                   exponentially weighted average
    w_i,t+1  = (1 - alpha) v_i + alpha / E                    fixed share

The exponentially weighted average forecaster has regret O(log E / eta) against the best expert
for an exp-concave loss such as the squared error on a bounded range (Kivinen & Warmuth 1999;
Cesa-Bianchi & Lugosi 2006, ch. 3); fixed share (Herbster & Warmuth 1998) keeps every weight at
least alpha / E, so the ensemble can switch to another expert when the stream changes regime, with
regret against the best *sequence* of experts. `rule="likelihood"` replaces the squared error by
the negative log predictive likelihood -log N(d; d_hat_i, v_i) (Bayesian model averaging with the
same forgetting), which trusts an expert's own variance.

Each expert's variance is calibrated inside the ensemble (lam_i = running mean of e_i^2 / var_i,
as the ModelBank does for a lone learner) so that the mixture's variance, by the law of total
variance

    var_t = sum_i w_i (lam_i var_i + d_hat_i^2) - d_hat_t^2,

weighs like with like; the bank calibrates the mixture once more. Cost: the sum of the experts'.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from models.cells import NetSpec
from models.jit import Kernel
from models.learners.base import (
    NP_FLOAT,
    FiniteTensors,
    Learner,
    LearnsFromHorizons,
    NonNegative,
    Positive,
    Share,
    State,
    added_state,
    uses_autograd,
)

# Chosen by measurement (benchmarks/RESULTS.md, "How the defaults were chosen"): persistence and RLS
# win where the stream is a random walk or linear, the recurrent experts where it is not. A full EKF
# at m=6 beside a DEKF at m=8: 2-4% lower error on every stream than the DEKF at the model's 16 alone,
# in 0.84x its memory at the daemon's 4 lags (1.07x at 8 inputs; the full EKF's covariance grows as
# (m (m + p))^2, the DEKF's blocks as m (m + p)^2). The EKF-trained feed-forward net (`mlp`, m=16, skip
# path) beside them: 8-14% lower error on the regression streams, where the target is a function of the
# regressor now, level on ETTh1 ("The feed-forward expert").
DEFAULT_EXPERTS = ("persistence", "linear", "sgd", "dekf", "ekf", "mlp")
DEFAULT_EXPERT_HIDDEN_MAX = {"dekf": 8, "ekf": 6}
SCALE_PRIOR_TICKS = 10.0
_SEED_STRIDE = 0x5DEECE66D  # expert i's keys draw from seed ^ (i * stride): duplicates start apart


@dataclass(frozen=True)
class EnsembleConfig:
    experts: tuple[str, ...] = DEFAULT_EXPERTS
    rule: Literal["squared", "likelihood"] = "squared"
    eta: Positive = 0.5  # exponential-weights rate, per unit of squared error on the normalised scale
    # On a smooth tick stream every normalised error is tiny, so a rate per unit of squared error barely
    # moves the weights, and the fixed share keeps a poor expert near 40% for good (a sine: the ensemble's
    # MAE 40x its DEKF's). "relative" measures the loss against the experts' typical (median) squared error
    # lately (a running mean, weight max(1/n, scale_decay)) once that is below scale_ref: there eta grows as
    # the errors shrink, as a scale-free Hedge's does; at or above it (noisy streams) nothing changes.
    # Measured (RESULTS "How the defaults were chosen"): the same NMSE to 4 digits on every regression
    # stream and ETTh1, +6 and +11 points of skill on the demo's Demand and Temperature, the same on BE, FR.
    # "fixed": per unit of squared error at every scale (the previous default); scale_ref 0: relative always.
    eta_scale: Literal["fixed", "relative"] = "relative"
    scale_decay: Share = 0.01
    scale_ref: NonNegative = 0.05
    share: Share = 0.01  # fixed share alpha: the weight spread back evenly over the experts each tick
    var_decay: Share = 0.02  # weight of the newest e^2 / var in each expert's calibration
    expert_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # expert -> its config fields
    min_var: NonNegative = 1e-6
    # The recurrent experts' head when the keys start cold (a warm start brings its own, the model's):
    # "plain", since the RLS expert already is the linear path; None keeps the model's head.
    expert_head: Literal["plain", "skip", "gated"] | None = "plain"
    # The largest cell size m of each recurrent expert named here (learner -> m; the others take the
    # model's): an expert runs at min(model's m, this). It bounds a key's state whatever STREAMER_HIDDEN
    # says, the Kalman experts' covariance growing as m^3 (DEKF) and m^4 (EKF). An expert smaller than
    # the model cannot take a warm start's theta, so it starts cold (the SGD expert takes it).
    expert_hidden_max: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_EXPERT_HIDDEN_MAX))


def expert_labels(experts: tuple[str, ...]) -> list[str]:
    """Names for the experts that are unique: a repeated learner gets its position (dekf, dekf2)."""
    seen: dict[str, int] = {}
    out = []
    for name in experts:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}{seen[name]}")
    return out


class EnsembleLearner(FiniteTensors):
    name = "ensemble"
    memoises = True  # on behalf of the experts that do (a memo holds one sub-memo per expert)

    def __init__(self, spec: NetSpec, config: EnsembleConfig = EnsembleConfig(), dtype: torch.dtype = torch.float32,
                 warm: bool = False):
        from models.learners import RECURRENT, make_learner  # the registry imports this module

        if not config.experts:
            raise ValueError("an ensemble needs at least one expert")
        if "ensemble" in config.experts:
            raise ValueError("an ensemble cannot hold an ensemble")
        self.spec, self.config, self.dtype = spec, config, dtype
        options = config.expert_options
        caps = config.expert_hidden_max
        bad = sorted(f"{n}={m!r}" for n, m in caps.items()
                     if n not in RECURRENT or not isinstance(m, int) or isinstance(m, bool) or m < 1)
        if bad:
            raise ValueError(f"expert_hidden_max wants recurrent learners ({', '.join(RECURRENT)}) and sizes >= 1, "
                             f"got {', '.join(bad)}")
        cold_head = spec.head if config.expert_head is None else config.expert_head
        # the recurrent experts at the model's size take a warm start's theta, laid out for the model's head
        self.expert_spec = dataclasses.replace(spec, head=spec.head if warm else cold_head)
        self._takes_theta: list[bool] = []  # which experts a warm start's theta is for
        self.experts: list[Learner] = []
        for n in config.experts:
            m = min(spec.hidden, caps.get(n, spec.hidden))
            takes_theta = n in RECURRENT and m == spec.hidden
            own = (self.expert_spec if takes_theta else dataclasses.replace(spec, hidden=m, head=cold_head)
                   ) if n in RECURRENT else spec
            self._takes_theta.append(takes_theta)
            self.experts.append(make_learner(n, own, dtype, warm=warm and (takes_theta or n not in RECURRENT),
                                             **dict(options.get(n, {}))))
        self.labels = expert_labels(config.experts)
        # the experts whose weights can learn from the horizons, in order (`learn_from`)
        self._learning = [i for i, e in enumerate(self.experts) if isinstance(e, LearnsFromHorizons)]
        # the loss scale is the squared-error rule's (the likelihood is scale-free already): no state otherwise
        self._relative = config.rule == "squared" and config.eta_scale == "relative"
        c = config
        self._mix_cfg = np.array([c.eta, c.share, c.var_decay, c.min_var, c.scale_decay, c.scale_ref])
        self._names: dict[tuple[int, int], list[tuple[str, str]]] = {}

    @property
    def autograd(self) -> bool:
        """Whether any expert records an autograd graph (`models.learners.base.uses_autograd`)."""
        return any(uses_autograd(e) for e in self.experts)

    @property
    def added_state(self) -> tuple[str, ...]:
        """The experts' `added_state`, as named in this state (`models.learners.base.added_state`)."""
        return tuple(f"x{i}.{k}" for i, e in enumerate(self.experts) for k in added_state(e))

    # ------------------------------------------------------------ state layout
    def _sub(self, state: State, i: int) -> State:
        names = self._names.get((i, len(state)))
        if names is None:  # which of the state's keys are expert i's, worked out once per layout
            prefix = f"x{i}."
            names = self._names[(i, len(state))] = [(k, k[len(prefix):]) for k in state if k.startswith(prefix)]
        return {sub: state[k] for k, sub in names}

    @staticmethod
    def _put(state: State, i: int, sub: State) -> None:
        for k, v in sub.items():
            state[f"x{i}.{k}"] = v

    def init_state(self, seeds: torch.Tensor, theta0: torch.Tensor | None = None) -> State:
        B, E = seeds.shape[0], len(self.experts)
        state: State = {
            "logw": torch.full((B, E), -math.log(E), dtype=self.dtype),  # [B, E]  log mixture weights
            "lam": torch.ones(B, E, dtype=self.dtype),  # [B, E]  each expert's variance calibration
            "seed": seeds.clone(),
        }
        if self._relative:
            # (typical squared error, ticks seen), from a prior of the target's variance on the normalised
            # scale counted as SCALE_PRIOR_TICKS ticks: a key's first errors, when every expert still predicts
            # the level its first tick set, are near 0 and alone would make the rate huge for hundreds of ticks
            prior = torch.tensor([1.0, SCALE_PRIOR_TICKS], dtype=self.dtype)
            state["lscale"] = prior.repeat(B, 1)  # [B, 2]
        for i, (expert, takes_theta) in enumerate(zip(self.experts, self._takes_theta, strict=True)):
            sub = expert.init_state(seeds ^ (i * _SEED_STRIDE), theta0 if takes_theta else None)
            self._put(state, i, sub)
        return state

    # ---------------------------------------------------------------- mixture
    # The mixture's bookkeeping is a few dozen operations on [B, E] numbers a wave: in numpy, whose cost per
    # operation is a third of torch's (for a few keys at a high rate that cost is the wave's), as the bank's own.
    def _mixture(self, state: State, means: np.ndarray, variances: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean [B], var [B], calibrated expert variances [B, E]) from means, variances [B, E]."""
        min_var = self.config.min_var
        with np.errstate(all="ignore"):  # a broken expert's inf or NaN comes out non-finite: the bank resets the key
            w = _softmax(_array(state["logw"]))  # [B, E]
            v = np.maximum(_array(state["lam"]) * variances, min_var)  # [B, E]
            mean = (w * means).sum(axis=1)  # [B]
            var = (w * (v + means * means)).sum(axis=1) - mean * mean  # [B]  law of total variance
        return mean, np.maximum(var, min_var), v

    def _expert_columns(self, out: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
        """Each expert's (mean [B], var [B]) as columns: means, variances [B, E], in the ensemble's float width."""
        dt = NP_FLOAT[self.dtype]
        means = np.stack([_array(m) for m, _ in out], axis=1).astype(dt, copy=False)  # [B, E]
        variances = np.stack([_array(v) for _, v in out], axis=1).astype(dt, copy=False)  # [B, E]
        return means, variances

    def predict(self, state: State, x: torch.Tensor, memo: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = [e.predict(self._sub(state, i), x, memo=memo.setdefault(i, {}))  # type: ignore[call-arg]
                   if memo is not None and getattr(e, "memoises", False) else e.predict(self._sub(state, i), x)
                   for i, e in enumerate(self.experts)]
        mean, var, _ = self._mixture(state, *self._expert_columns(out))
        return torch.from_numpy(mean), torch.from_numpy(var)

    def step(self, state: State, x: torch.Tensor, d: torch.Tensor, memo: dict | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, State]:
        c = self.config
        out = []
        for i, expert in enumerate(self.experts):
            sub_memo = memo.get(i) if memo else None
            if sub_memo:
                m, v, sub = expert.step(self._sub(state, i), x, d, memo=sub_memo)  # type: ignore[call-arg]
            else:
                m, v, sub = expert.step(self._sub(state, i), x, d)
            self._put(state, i, sub)
            out.append((m, v))
        M, V = self._expert_columns(out)  # [B, E] each expert's prediction before the label, and its variance
        E = M.shape[1]
        if self._relative and M.shape[0] <= MIX_MAX_ROWS and MIX.usable(self.dtype):  # one compiled call
            logw, lam, lscale = (np.empty(state[k].shape, M.dtype) for k in ("logw", "lam", "lscale"))
            mean, var = np.empty(M.shape[0], M.dtype), np.empty(M.shape[0], M.dtype)
            before = (np.ascontiguousarray(_array(state[k])) for k in ("logw", "lam", "lscale"))
            MIX.compiled()(M, V, np.ascontiguousarray(_array(d)).astype(M.dtype, copy=False), *before, self._mix_cfg,
                           mean, var, logw, lam, lscale)
            state["logw"], state["lam"], state["lscale"] = (torch.from_numpy(a) for a in (logw, lam, lscale))
            return torch.from_numpy(mean), torch.from_numpy(var), state
        mean, var, v_cal = self._mixture(state, M, V)
        with np.errstate(all="ignore"):
            e2 = (_array(d).astype(M.dtype, copy=False)[:, None] - M) ** 2  # [B, E]
            e2 = np.nan_to_num(e2, nan=1e6, posinf=1e6)  # an expert that broke loses its weight, not the key
            if self._relative:
                lscale = _array(state["lscale"])  # [B, 2]  (typical squared error, ticks seen)
                typical = np.minimum(np.sort(e2, axis=1)[:, (E - 1) // 2], 1e6)  # [B]  the (lower) median
                n = lscale[:, 1] + 1  # [B]
                a = np.maximum(1.0 / n, c.scale_decay).astype(M.dtype)  # [B]
                scale = (1 - a) * lscale[:, 0] + a * typical  # [B]
                state["lscale"] = torch.from_numpy(np.stack([scale, n], axis=1).astype(M.dtype, copy=False))
                unit = np.maximum(scale, c.min_var)  # [B]
                if c.scale_ref > 0:
                    unit = np.minimum(unit / c.scale_ref, 1.0)
                loss = c.eta * np.minimum(e2, 1e6) / unit[:, None]  # [B, E]
            elif c.rule == "squared":
                loss = c.eta * np.minimum(e2, 1e6)  # [B, E]
            else:
                loss = 0.5 * (np.log(2 * math.pi * v_cal) + e2 / v_cal)  # [B, E]  -log N(d; m_i, v_i)
            logw = _array(state["logw"]) - loss
            logw = logw - _logsumexp(logw)
            w = (1 - c.share) * np.exp(logw) + c.share / E  # [B, E]  fixed share
            state["logw"] = torch.from_numpy(np.log(w).astype(M.dtype, copy=False))
            ratio = np.minimum(e2 / np.maximum(V, c.min_var), 1e6)  # [B, E]
            lam = (1 - c.var_decay) * _array(state["lam"]) + c.var_decay * ratio
            state["lam"] = torch.from_numpy(lam.astype(M.dtype, copy=False))
        return torch.from_numpy(mean), torch.from_numpy(var), state

    def update(self, state: State, x: torch.Tensor, d: torch.Tensor) -> State:
        return self.step(state, x, d)[2]

    def health_tensors(self, state: State) -> tuple[torch.Tensor, ...]:
        """The mixture's weights and calibration, and every expert's own (`base.FiniteTensors`): one check of all."""
        parts = [state["logw"], state["lam"]]
        for i, expert in enumerate(self.experts):
            parts += expert.health_tensors(self._sub(state, i))  # type: ignore[attr-defined]
        return tuple(parts)

    # --------------------------------------------- the horizons' errors (`base.LearnsFromHorizons`)
    @property
    def n_learned(self) -> int:
        return sum(self.experts[i].n_learned for i in self._learning)  # type: ignore[attr-defined]

    def jacobian(self, state: State, x: torch.Tensor, memo: dict | None = None) -> torch.Tensor:
        """[B, n_learned]: the learning experts' Jacobians, each times its mixture weight, side by side. The
        published forecast is sum_i w_i d_hat_i, so w_i J_i is its derivative in expert i's weights."""
        w = torch.softmax(state["logw"], dim=1)  # [B, E]
        parts = [self.experts[i].jacobian(self._sub(state, i), x,  # type: ignore[attr-defined]
                                          memo.get(i) if memo else None) * w[:, i : i + 1]
                 for i in self._learning]
        return torch.cat(parts, dim=1) if parts else x.new_zeros(x.shape[0], 0)

    def learned_weights(self, state: State) -> torch.Tensor:
        parts = [self.experts[i].learned_weights(self._sub(state, i)) for i in self._learning]  # type: ignore
        return torch.cat(parts, dim=1) if parts else state["logw"].new_zeros(state["logw"].shape[0], 0)

    def learn_from(self, state: State, H: torch.Tensor, e: torch.Tensor, r_scale: torch.Tensor) -> None:
        """Each learning expert takes the measurement through its part of the row H [B, n_learned], its own way
        and with its own noise: a block-diagonal approximation of one joint update (the experts share no
        covariance, so each sees only its own share w_i J_i of the forecast's sensitivity)."""
        at = 0
        for i in self._learning:
            expert = self.experts[i]
            n = expert.n_learned  # type: ignore[attr-defined]
            sub = self._sub(state, i)
            expert.learn_from(sub, H[:, at : at + n], e, r_scale)  # type: ignore[attr-defined]
            self._put(state, i, sub)
            at += n

    # ------------------------------------------------------------- read-outs
    def weights(self, state: State) -> torch.Tensor:
        """Mixture weights [B, E] (columns in the order of `labels`)."""
        return torch.softmax(state["logw"], dim=1)

    def leader(self, state: State) -> torch.Tensor:
        """Index [B] of each key's heaviest expert."""
        return torch.argmax(state["logw"], dim=1)


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


# A wave of at most this many keys takes the compiled mixture update (`_mix_rows`); wider, numpy's vectorised
# passes over [B, E] win (benchmarks/speed.py).
MIX_MAX_ROWS = 64


def _mix_rows(M, V, d, logw, lam, lscale, cfg, mean, var, logw_out, lam_out, lscale_out):  # pragma: no cover
    """`EnsembleLearner.step`'s mixture and weight update (the squared-error rule, relative scale) one key at a time:
    M, V [B, E] the experts' means and variances, d [B]; logw, lam [B, E], lscale [B, 2] read; writes the mixture's
    mean, var [B] and the state after the label. cfg: eta, share, var_decay, min_var, scale_decay, scale_ref."""
    B, E = M.shape
    eta, share, var_decay, min_var, scale_decay, scale_ref = cfg[0], cfg[1], cfg[2], cfg[3], cfg[4], cfg[5]
    e2 = np.empty(E, M.dtype)
    for b in range(B):
        top = logw[b, 0]
        for i in range(1, E):
            top = max(top, logw[b, i])
        z = 0.0
        for i in range(E):
            z += math.exp(logw[b, i] - top)
        mu = 0.0
        second = 0.0
        for i in range(E):  # the mixture before the label, by the law of total variance
            w = math.exp(logw[b, i] - top) / z
            v = max(lam[b, i] * V[b, i], min_var)
            mu += w * M[b, i]
            second += w * (v + M[b, i] * M[b, i])
        mean[b] = mu
        var[b] = max(second - mu * mu, min_var)
        for i in range(E):
            err = d[b] - M[b, i]
            sq = err * err
            e2[i] = 1e6 if math.isnan(sq) or math.isinf(sq) else sq  # a broken expert loses its weight, not the key
        typical = min(np.sort(e2)[(E - 1) // 2], 1e6)  # the (lower) median
        n = lscale[b, 1] + 1
        a = max(1.0 / n, scale_decay)
        scale = (1 - a) * lscale[b, 0] + a * typical
        lscale_out[b, 0] = scale
        lscale_out[b, 1] = n
        unit = max(scale, min_var)
        if scale_ref > 0:
            unit = min(unit / scale_ref, 1.0)
        top = -math.inf
        for i in range(E):
            logw_out[b, i] = logw[b, i] - eta * min(e2[i], 1e6) / unit
            top = max(top, logw_out[b, i])
        if math.isnan(top) or math.isinf(top):
            top = 0.0
        z = 0.0
        for i in range(E):
            z += math.exp(logw_out[b, i] - top)
        lse = top + math.log(z)
        for i in range(E):
            logw_out[b, i] = math.log((1 - share) * math.exp(logw_out[b, i] - lse) + share / E)  # fixed share
            ratio = min(e2[i] / max(V[b, i], min_var), 1e6)
            lam_out[b, i] = (1 - var_decay) * lam[b, i] + var_decay * ratio


def _warm_up_mix(dtype: torch.dtype) -> None:
    """Run the loop once for this float width, on one key of two experts (compiling or loading it)."""
    dt = NP_FLOAT[dtype]
    two, one = (lambda: np.zeros((1, 2), dt)), (lambda: np.zeros(1, dt))
    MIX.compiled()(two(), two(), one(), two(), two(), two(), np.zeros(6), one(), one(), two(), two(), two())


MIX = Kernel(_mix_rows, _warm_up_mix, "ensemble's mixture")


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """log sum_j exp(a_ij) [B, 1], shifted by each row's largest entry (a row of -inf stays -inf)."""
    top = a.max(axis=1, keepdims=True)  # [B, 1]
    top = np.where(np.isfinite(top), top, 0)
    return top + np.log(np.exp(a - top).sum(axis=1, keepdims=True))


def _softmax(a: np.ndarray) -> np.ndarray:
    """exp(a_ij) / sum_j exp(a_ij) [B, E], as torch.softmax."""
    z = np.exp(a - a.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
