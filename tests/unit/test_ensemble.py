"""The ensemble learner against its equations: fixed-share exponential weights, the mixture's moments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.bank import ModelBank
from models.cells import NetSpec
from models.learners import make_learner
from models.learners.ensemble import EnsembleConfig, expert_labels

D = torch.float64
SPEC = NetSpec(n_in=2, hidden=3)
EXPERTS = ("mean", "persistence", "linear")  # deterministic experts: their predictions are easy to replay


def replay_experts(x: torch.Tensor, d: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each expert run alone over the stream: predictions and raw variances [T, B, E]."""
    means, variances = [], []
    for name in EXPERTS:
        L = make_learner(name, SPEC, D)
        st = L.init_state(torch.arange(x.shape[1]))
        m_t, v_t = [], []
        for t in range(len(x)):
            m, v, st = L.step(st, x[t], d[t])
            m_t.append(m.numpy())
            v_t.append(v.numpy())
        means.append(np.stack(m_t))
        variances.append(np.stack(v_t))
    return np.stack(means, axis=2), np.stack(variances, axis=2)


@pytest.mark.parametrize(("rule", "eta_scale"), [("squared", "fixed"), ("likelihood", "fixed"),
                                                ("squared", "relative")])
def test_weights_and_moments_follow_fixed_share_exponential_weights(rule, eta_scale):
    T, B = 60, 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, 2, generator=g, dtype=D)
    d = 0.8 * x[..., 0] - 0.3 * x[..., 1] + 0.2 * torch.randn(T, B, generator=g, dtype=D)
    c = EnsembleConfig(experts=EXPERTS, rule=rule, eta=0.7, share=0.05, var_decay=0.1, eta_scale=eta_scale,
                       scale_decay=0.05, scale_ref=0.8)  # the typical error here (0.4-1.2) crosses 0.8: both branches
    L = make_learner("ensemble", SPEC, D, **vars(c))
    st = L.init_state(torch.arange(B) + 100)  # the experts' seeds differ from the stand-alone runs' (no use here)
    M, V = replay_experts(x, d)
    E = len(EXPERTS)
    w, lam, scale = np.full((B, E), 1 / E), np.ones((B, E)), np.ones(B)  # the scale's prior: 1, as 10 ticks
    for t in range(T):
        mean, var, st = L.step(st, x[t], d[t])
        v = lam * V[t]
        ref_mean = (w * M[t]).sum(1)
        ref_var = (w * (v + M[t] ** 2)).sum(1) - ref_mean**2  # law of total variance
        np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(var.numpy(), ref_var, rtol=1e-8, atol=1e-10)
        e2 = (d[t].numpy()[:, None] - M[t]) ** 2
        if eta_scale == "relative":  # squared errors in units of the running median expert's (weight max(1/n, decay))
            a = max(1.0 / (t + 11), c.scale_decay)
            scale = (1 - a) * scale + a * np.sort(e2, axis=1)[:, (E - 1) // 2]  # torch's median: the lower middle
            loss = c.eta * e2 / np.minimum(scale / c.scale_ref, 1.0)[:, None]  # relative only below scale_ref
        else:
            loss = c.eta * e2 if rule == "squared" else 0.5 * (np.log(2 * math.pi * v) + e2 / v)
        w = w * np.exp(-loss)
        w = (1 - c.share) * w / w.sum(1, keepdims=True) + c.share / E
        lam = (1 - c.var_decay) * lam + c.var_decay * e2 / V[t]
        np.testing.assert_allclose(L.weights(st).numpy(), w, rtol=1e-9, atol=1e-12)
    assert (w.min(axis=1) >= c.share / E - 1e-12).all()  # fixed share: no expert's weight reaches 0


def test_leader_follows_a_change_of_regime():
    """First a random walk ('next = last' is right), then a target linear in x (RLS is right): the
    heaviest expert switches from persistence to linear within a few dozen ticks of the change."""
    g = torch.Generator().manual_seed(1)
    T1, T2 = 300, 300
    walk = torch.cumsum(torch.randn(T1, 1, generator=g, dtype=D), 0)
    x = torch.randn(T1 + T2, 1, 2, generator=g, dtype=D)
    lin = 3 * x[T1:, :, 0] - 2 * x[T1:, :, 1] + walk[-1] + 0.01 * torch.randn(T2, 1, generator=g, dtype=D)
    d = torch.cat([walk, lin])
    # RLS that forgets (lam 0.98), or its fit of the first regime would take 100+ ticks to unlearn
    L = make_learner("ensemble", SPEC, D, experts=EXPERTS, expert_options={"linear": {"lam": 0.98}})
    bank = ModelBank(L)
    leaders = []
    for t in range(T1 + T2):
        bank.step(["k"], x[t], d[t])
        leaders.append(bank.leaders(["k"])[0])
    assert leaders[T1 - 1] == "persistence"
    switched = next(t for t in range(T1, T1 + T2) if leaders[t] == "linear")
    assert switched - T1 < 60 and set(leaders[switched + 20 :]) == {"linear"}
    assert bank.expert_weights()["linear"] > 0.9


def test_recurrent_experts_take_the_warm_start_and_baselines_ignore_it():
    theta0 = torch.linspace(-0.1, 0.1, SPEC.n_theta, dtype=D)
    L = make_learner("ensemble", SPEC, D, warm=True, experts=("persistence", "sgd", "dekf"))
    st = L.init_state(torch.arange(2), theta0)
    assert torch.equal(st["x1.theta"], theta0.expand(2, -1)) and torch.equal(st["x2.theta"], theta0.expand(2, -1))
    assert L.experts[1].config.lr == L.experts[1].config.lr_warm  # each expert fine-tunes as it would alone
    cold_learner = make_learner("ensemble", SPEC, D, experts=("persistence", "sgd", "dekf", "dekf"))
    cold = cold_learner.init_state(torch.arange(2))
    assert not torch.equal(cold["x2.theta"], cold["x3.theta"])  # the same learner twice: two seeds
    # cold, the recurrent experts use the plain head (RLS is the linear path); warm, the model's head
    assert cold_learner.expert_spec.head == "plain" and cold["x1.theta"].shape[1] == SPEC.n_theta - SPEC.n_in
    assert L.expert_spec == SPEC


def test_the_kalman_experts_sizes_are_capped_and_a_smaller_expert_starts_cold():
    """The default caps the DEKF expert at m=8 and the full EKF at m=6 (their covariances grow as m^3
    and m^4) whatever the model's size; an expert below the model's size cannot take a warm start's
    theta, so it starts cold while the SGD expert fine-tunes from it."""
    spec = NetSpec(n_in=2, hidden=16)
    theta0 = torch.linspace(-0.1, 0.1, spec.n_theta, dtype=D)
    L = make_learner("ensemble", spec, D, warm=True)
    sizes = {label: e.spec.hidden for label, e in zip(L.labels, L.experts, strict=True)}
    assert {k: sizes[k] for k in ("sgd", "dekf", "ekf")} == {"sgd": 16, "dekf": 8, "ekf": 6}
    st = L.init_state(torch.arange(2), theta0)
    sgd, dekf, ekf = (L.labels.index(n) for n in ("sgd", "dekf", "ekf"))
    assert torch.equal(st[f"x{sgd}.theta"], theta0.expand(2, -1)) and L.experts[sgd].spec == spec
    for i, m in ((dekf, 8), (ekf, 6)):
        cold = L.experts[i]
        assert st[f"x{i}.theta"].shape == (2, cold.spec.n_theta) and cold.spec.hidden == m
        assert cold.spec.head == "plain"  # a cold expert's head, as when every key starts cold
        assert float(st[f"x{i}.P"][0, 0, 0] if f"x{i}.P" in st else st[f"x{i}.Pc"][0, 0, 0, 0]) == cold.config.p0
    small = make_learner("ensemble", SPEC, D)  # a model below the caps: every expert at its size
    assert all(e.spec.hidden == SPEC.hidden for e in small.experts)
    uncapped = make_learner("ensemble", spec, D, expert_hidden_max={})
    assert all(e.spec.hidden == 16 for e in uncapped.experts)
    for bad in ({"lstm": 4}, {"persistence": 4}, {"dekf": 0}, {"ekf": 2.5}):
        with pytest.raises(ValueError, match="expert_hidden_max"):
            make_learner("ensemble", spec, D, expert_hidden_max=bad)


@pytest.mark.parametrize("previous", [
    {"experts": ("persistence", "linear", "sgd", "dekf"), "expert_hidden_max": {}},  # four experts, DEKF at m=16
    {"experts": ("persistence", "linear", "sgd", "dekf", "ekf")},  # five, before the feed-forward net
])
def test_a_checkpoint_of_a_previous_default_ensemble_is_another_model(previous):
    """Upgrading from an earlier default ensemble: its snapshot is intact but of another model, so the
    bank refuses it as such (the daemon starts the key afresh), and the previous default, named in full
    as the README says, restores it."""
    from models.bank import OTHER_MODEL

    spec = NetSpec(n_in=2, hidden=16)
    old = ModelBank(make_learner("ensemble", spec, **previous))
    old.step(["k"], torch.ones(1, 2), torch.ones(1))
    blob = old.snapshot("k")
    with pytest.raises(ValueError) as refused:
        ModelBank(make_learner("ensemble", spec)).restore(blob)
    assert str(refused.value).startswith(OTHER_MODEL)
    again = ModelBank(make_learner("ensemble", spec, **previous))
    again.restore(blob)
    assert again.snapshot("k") == blob


def test_expert_labels_and_bad_expert_lists():
    assert expert_labels(("dekf", "linear", "dekf")) == ["dekf", "linear", "dekf2"]
    with pytest.raises(ValueError, match="unknown learner"):
        make_learner("ensemble", SPEC, experts=("persistence", "lstm"))
    with pytest.raises(ValueError, match="cannot hold an ensemble"):
        make_learner("ensemble", SPEC, experts=("ensemble",))


def test_on_a_smooth_stream_the_relative_rate_leaves_a_poor_expert_sooner():
    """A sine, where every normalised error is tiny: per unit of squared error ("fixed") the weights
    barely move and the fixed share holds persistence at a large weight for good; relative to the
    experts' typical error (the default) the exact expert (RLS: a sine's next value is linear in its
    last two) takes the weight, and the mixture's error falls with it."""
    t = torch.arange(802, dtype=D)
    s = torch.sin(t / 8)
    out = {}
    for rule in ("fixed", "relative"):
        bank = ModelBank(make_learner("ensemble", SPEC, D, experts=EXPERTS, eta_scale=rule))
        errors = []
        for i in range(1, 801):
            res = bank.step(["k"], torch.stack([s[i], s[i - 1]]).reshape(1, 2), s[i + 1].reshape(1))
            errors.append(abs(float(res.mean[0] - s[i + 1])))
        out[rule] = (float(np.mean(errors[-300:])), bank.expert_weights())
    assert EnsembleConfig().eta_scale == "relative"
    assert out["relative"][0] < 0.6 * out["fixed"][0], out
    assert out["relative"][1]["linear"] > out["fixed"][1]["linear"] + 0.1, out
    assert out["relative"][1]["persistence"] < 0.5 * out["fixed"][1]["persistence"], out
