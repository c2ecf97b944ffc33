"""Forecasts beyond the next tick (`models.horizons`, BankConfig.horizons, STREAMER_HORIZONS): learned
from delayed labels only, with no look-ahead, checkpointed with their pending forecasts."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pandas as pd
import pytest
import torch

from models import horizons as hz
from models.bank import BankConfig, ModelBank
from models.cells import NetSpec
from models.learners import BASELINES, LEARNERS, make_learner
from streamer import bench as B
from streamer.config import Settings
from streamer.metrics import Metrics
from streamer.pipeline import Pipeline
from tests.helpers import rec, tick

HS = (1, 3, 7)


def _bank(name: str, p: int, hs=HS, cell_r: float = 0.0) -> ModelBank:
    spec = NetSpec(n_in=p, hidden=4)
    options = {"n_particles": 8} if name == "pf" else {}
    return ModelBank(make_learner(name, spec, **options),
                     BankConfig(horizons=hs, readout=hz.HorizonConfig(cell_r=cell_r)))


def _ar_stream(T: int, K: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K AR(2) series laid out as the bank reads them: x [T, K, 3] (last 3 values), d [T, K] (the next)."""
    rng = np.random.default_rng(seed)
    y = np.zeros((T + 4, K))
    for t in range(2, T + 4):
        y[t] = 1.5 * y[t - 1] - 0.7 * y[t - 2] + rng.standard_normal(K)
    x = np.stack([y[3 - j : T + 3 - j] for j in range(3)], axis=2)  # [T, K, 3]
    return torch.from_numpy(x), torch.from_numpy(y[4 : T + 4].copy())


def _run(bank: ModelBank, x: torch.Tensor, d: torch.Tensor) -> dict[str, np.ndarray]:
    keys = [f"k{i}" for i in range(x.shape[1])]
    out: dict[str, list] = {"mean": [], "ahead_mean": [], "ahead_lower": [], "ahead_upper": []}
    for t in range(len(d)):
        r = bank.step(keys, x[t], d[t])
        for k in out:
            out[k].append(getattr(r, k).numpy().copy())
    return {k: np.stack(v) for k, v in out.items()}


@pytest.mark.parametrize(("name", "cell_r"), [(n, 0.0) for n in LEARNERS + BASELINES] + [(n, 1.0) for n in LEARNERS])
def test_no_look_ahead_forecasts_made_at_t_do_not_depend_on_anything_after_t(name, cell_r):
    """Every horizon's forecast made at row t (from x_t, before its label d_t) is bit-identical whether the
    stream goes on as it did, goes on differently, or stops: it uses nothing after t. `cell_r`: every
    learner's weights learning from the due horizons' errors as well."""
    x, d = _ar_stream(60, 2, seed=1)
    t0 = 40
    x2, d2 = x.clone(), d.clone()
    x2[t0 + 1 :] = torch.randn_like(x2[t0 + 1 :]) * 5
    d2[t0:] = torch.randn_like(d2[t0:]) * 5  # d_t0 too: the target of row t0 must not reach its forecasts
    full, other, cut = (_run(_bank(name, 3, cell_r=cell_r), a, b)
                        for a, b in ((x, d), (x2, d2), (x[: t0 + 1], d[: t0 + 1])))
    for k in full:
        np.testing.assert_array_equal(full[k][: t0 + 1], other[k][: t0 + 1], err_msg=k)
        np.testing.assert_array_equal(full[k][: t0 + 1], cut[k], err_msg=k)
    # and the check can fail: the rows after t0 did see the other stream
    assert not np.array_equal(full["ahead_mean"][t0 + 1 :], other["ahead_mean"][t0 + 1 :])


def test_the_one_step_forecast_is_the_same_with_or_without_further_horizons():
    x, d = _ar_stream(80, 3, seed=2)
    for name in ("ensemble", "ekf"):
        alone, more = _run(_bank(name, 3, (1,)), x, d), _run(_bank(name, 3), x, d)
        np.testing.assert_array_equal(alone["mean"], more["mean"])


@pytest.mark.parametrize("name", ["ekf", "dekf"])
def test_learn_from_is_the_kalman_measurement_update_of_the_weights(name):
    """`learn_from` (the due horizons' errors through the recurrent weights): for the dense EKF, theta moves by
    K e with K = P H^T / (H P H^T + r R) and P loses K H P, the textbook update; a zero row changes nothing."""
    L = make_learner(name, NetSpec(n_in=3, hidden=4), torch.float64)
    st = L.init_state(torch.arange(2))
    g = torch.Generator().manual_seed(0)
    H = torch.randn(2, L.spec.n_theta, generator=g, dtype=torch.float64)
    H[1] = 0.0
    e, r = torch.tensor([0.7, 0.3], dtype=torch.float64), torch.tensor([3.0, 3.0], dtype=torch.float64)
    before = {k: v.clone() for k, v in st.items()}
    R, _ = L._noise(st)
    L.learn_from(st, H, e, r)
    assert torch.equal(st["theta"][1], before["theta"][1])
    if name == "ekf":
        P = before["P"][0]
        PH = P @ H[0]
        S = H[0] @ PH + r[0] * R[0]
        torch.testing.assert_close(st["theta"][0] - before["theta"][0], PH * e[0] / S)
        torch.testing.assert_close(st["P"][0], P - torch.outer(PH, PH) / S)
        assert torch.equal(st["P"][1], before["P"][1])
    else:
        assert not torch.equal(st["theta"][0], before["theta"][0])


@pytest.mark.parametrize("name", LEARNERS)
def test_the_weights_learn_from_the_horizons_only_when_asked_and_keep_their_pending_jacobians(name):
    """cell_r > 0 moves every learner's one-step forecasts (its weights learn from the h-step errors too); the
    pending forecasts' Jacobians are part of the key's state, as wide as the weights they move (a restored
    key goes on identically); a learner with no recurrent weights refuses the setting."""
    x, d = _ar_stream(50, 2, seed=6)
    off, on = _run(_bank(name, 3), x, d), _run(_bank(name, 3, cell_r=1.0), x, d)
    np.testing.assert_array_equal(off["mean"][:3], on["mean"][:3])  # until the first horizon (h = 3) came due
    assert not np.array_equal(off["mean"], on["mean"])
    keys = ["k0", "k1"]
    a = _bank(name, 3, cell_r=1.0)
    for t in range(20):
        a.step(keys, x[t], d[t])
    layout = a.layout()
    assert layout["h.J"][1] == (max(HS), a.learner.n_learned) and "h.Js" in layout
    b = _bank(name, 3, cell_r=1.0)
    for blob in a.snapshot_many(keys):
        b.restore(blob)
    for t in range(20, 50):
        ra, rb = a.step(keys, x[t], d[t]), b.step(keys, x[t], d[t])
        np.testing.assert_array_equal(ra.mean.numpy(), rb.mean.numpy())


@pytest.mark.parametrize("name", BASELINES)
def test_a_learner_without_recurrent_weights_refuses_to_learn_them_from_the_horizons(name):
    with pytest.raises(ValueError, match="recurrent weights"):
        _bank(name, 3, cell_r=1.0)


def _stepped(name: str, T: int = 12, cell: str = "lstm", head: str = "plain", **options):
    """A learner of 2 series (float64) after T ticks of an AR stream, and the next tick's x."""
    L = make_learner(name, NetSpec(n_in=3, hidden=4, cell=cell, head=head), torch.float64, **options)
    st = L.init_state(torch.arange(2))
    x, d = _ar_stream(T + 1, 2, seed=8)
    for t in range(T):
        st = L.update(st, x[t], d[t])
    return L, st, x[T]


def _shifted(L, st, delta: torch.Tensor):
    """The state with the weights `jacobian` is taken against moved by delta [B, n_learned] (every particle's
    cell weights alike, for the PF)."""
    out = {k: v.clone() for k, v in st.items()}
    if L.name == "pf":
        out["cell"] = out["cell"] + delta.unsqueeze(1)
    else:
        out["theta"] = out["theta"] + delta
    return out


@pytest.mark.parametrize(("name", "cell", "head", "options"),
                         [(n, "lstm", "plain", {}) for n in ("ekf", "dekf", "sgd", "pf", "mlp")]
                         + [(n, c, h, {}) for n in ("sgd", "pf") for c, h in (("gru", "plain"), ("lstm", "gated"))]
                         + [("mlp", "lstm", "plain", {"skip": True})])
def test_each_learners_jacobian_is_the_derivative_of_its_published_forecast(name, cell, head, options):
    """J_t from `jacobian` (from the prediction's memo and without one) against central differences of the
    published forecast along random directions of the weights it names (the PF: a shift common to every
    particle, the derivative of the mixture mean); the closed form (LSTM, plain head) and autograd alike."""
    L, st, x = _stepped(name, cell=cell, head=head, **({"n_particles": 8} if name == "pf" else options))
    memo: dict = {}
    L.predict(st, x, memo=memo)
    J = L.jacobian(st, x, memo if getattr(L, "memoises", False) else None)
    assert J.shape == (2, L.n_learned)
    torch.testing.assert_close(J, L.jacobian(st, x))
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(2, L.n_learned, generator=g, dtype=torch.float64)
        eps = 1e-6
        up, down = (L.predict(_shifted(L, st, s * eps * v), x)[0] for s in (1.0, -1.0))
        torch.testing.assert_close((J * v).sum(1), (up - down) / (2 * eps), rtol=1e-5, atol=1e-8)
    # and learned_weights is what the shift moves
    torch.testing.assert_close(L.learned_weights(_shifted(L, st, v)) - L.learned_weights(st), v)


def test_sgd_learns_from_a_horizon_by_a_bounded_descent_step():
    """SGD's `learn_from`: plain SGD moves theta by lr e H / r exactly; Adam moves each weight by at most lr,
    in the direction of e H, and leaves its moments as they were; a zero row changes nothing."""
    g = torch.Generator().manual_seed(2)
    e, r = torch.tensor([0.7, -0.3], dtype=torch.float64), torch.tensor([3.0, 2.0], dtype=torch.float64)
    for optimizer in ("sgd", "adam"):
        L, st, _ = _stepped("sgd", optimizer=optimizer)
        H = 0.05 * torch.randn(2, L.n_learned, generator=g, dtype=torch.float64)
        H[1] = 0.0
        before = {k: v.clone() for k, v in st.items()}
        L.learn_from(st, H, e, r)
        step = st["theta"] - before["theta"]
        assert torch.equal(step[1], torch.zeros_like(step[1]))
        if optimizer == "sgd":
            torch.testing.assert_close(step[0], L.config.lr * e[0] * H[0] / r[0])
        else:
            cell = slice(0, L.spec.n_cell)
            assert step[0, cell].abs().max() <= L.config.lr + 1e-12
            moved = step[0] != 0
            assert moved.any() and torch.equal(torch.sign(step[0][moved]), torch.sign(e[0] * H[0][moved]))
            assert torch.equal(st["m1"], before["m1"]) and torch.equal(st["m2"], before["m2"])


def test_each_particle_takes_a_horizon_through_its_own_diagonal_kalman_filter():
    """The PF's `learn_from`: particle i's cell weights and diagonal P^i take the scalar measurement update
    with S^i = H P^i H^T + r R; the particles' weights stay; a zero row changes nothing."""
    L, st, _ = _stepped("pf", n_particles=8)
    g = torch.Generator().manual_seed(3)
    H = 0.1 * torch.randn(2, L.n_learned, generator=g, dtype=torch.float64)
    H[1] = 0.0
    e, r = torch.tensor([0.4, 0.9], dtype=torch.float64), torch.tensor([2.0, 2.0], dtype=torch.float64)
    before = {k: v.clone() for k, v in st.items()}
    L.learn_from(st, H, e, r)
    P = before["Pcell"][0]  # [N, n]
    PH = P * H[0]
    S = (PH * H[0]).sum(1) + r[0] * L.config.r  # [N]
    torch.testing.assert_close(st["cell"][0] - before["cell"][0], PH * (e[0] / S).unsqueeze(1))
    torch.testing.assert_close(st["Pcell"][0], P - PH * PH / S.unsqueeze(1))
    for k in ("cell", "Pcell"):
        assert torch.equal(st[k][1], before[k][1])
    assert torch.equal(st["logw"], before["logw"])
    # the gradient move (no covariance per particle) takes the fixed step grad_step e H / r, every particle alike
    L, st, _ = _stepped("pf", n_particles=8, move="gradient")
    before = st["cell"].clone()
    L.learn_from(st, H, e, r)
    want = (L.config.grad_step * e / r).view(2, 1, 1) * H.unsqueeze(1)  # [2, 1, n]
    torch.testing.assert_close(st["cell"] - before, want.expand_as(before))


def test_the_ensemble_passes_a_horizon_to_each_learning_expert_weighted_by_its_share():
    """The ensemble's J_t is its learning experts' J_i times their mixture weights, side by side (the
    derivative of sum_i w_i d_hat_i), and `learn_from` gives each expert its part of the row."""
    L, st, x = _stepped("ensemble")
    names = [n for n, e in zip(L.config.experts, L.experts, strict=True) if hasattr(e, "learn_from")]
    assert names == ["sgd", "dekf", "ekf", "mlp"]
    w = L.weights(st)
    J = L.jacobian(st, x)
    parts, at = [], 0
    for i in L._learning:
        e, sub = L.experts[i], L._sub(st, i)
        parts.append((i, slice(at, at + e.n_learned)))
        torch.testing.assert_close(J[:, at : at + e.n_learned], e.jacobian(sub, x) * w[:, i : i + 1])
        at += e.n_learned
    assert at == L.n_learned == J.shape[1]
    g = torch.Generator().manual_seed(4)
    H = 0.1 * torch.randn(2, L.n_learned, generator=g, dtype=torch.float64)
    ev, r = torch.tensor([0.5, -0.2], dtype=torch.float64), torch.tensor([2.0, 4.0], dtype=torch.float64)
    alone = {k: v.clone() for k, v in st.items()}
    L.learn_from(st, H, ev, r)
    for i, cols in parts:
        sub = {k: v.clone() for k, v in L._sub(alone, i).items()}
        L.experts[i].learn_from(sub, H[:, cols], ev, r)
        for k, v in sub.items():
            torch.testing.assert_close(st[f"x{i}.{k}"], v, rtol=0, atol=0)


def test_each_read_out_is_the_least_squares_fit_of_its_delayed_targets():
    """No forgetting: after n targets of horizon h, w_h is the ridge solution (Z^T Z + I / delta)^-1 Z^T y
    over the pairs (z_t, y_{t+h}), z_t pushed h - 1 ticks before its target."""
    rng = np.random.default_rng(3)
    config = hz.HorizonConfig((2, 5), lam=1.0)
    B_, q, T = 2, 4, 50
    st = hz.init_state(B_, q - 2, config, torch.float64)
    Z = rng.standard_normal((T, B_, q))
    w_true = rng.standard_normal((B_, q))
    y = np.zeros((T, B_))
    for t in range(T):
        y[t] = (Z[max(t - 1, 0)] * w_true).sum(-1) + 0.1 * rng.standard_normal(B_)
    for t in range(T):
        hz.step(st, torch.from_numpy(Z[t]), torch.zeros(B_, dtype=torch.float64),
                torch.ones(B_, dtype=torch.float64), torch.from_numpy(y[t]), torch.ones(B_, dtype=torch.bool),
                config, 1.645)
    for j, h in enumerate(config.horizons):
        zs, ys = Z[: T - h + 1], y[h - 1 :]  # the pair of z pushed at t is the d of the push h - 1 later
        for b in range(B_):
            A = zs[:, b].T @ zs[:, b] + np.eye(q) / config.delta
            w = np.linalg.solve(A, zs[:, b].T @ ys[:, b])
            np.testing.assert_allclose(st["w"][b, j].numpy(), w, rtol=1e-6, atol=1e-8)
        assert int(st["scored"][0, j]) == T - h + 1
    # horizon 2 is the one whose pairs were generated: it finds the weights
    np.testing.assert_allclose(st["w"][:, 0].numpy(), w_true, atol=0.1)


def test_a_held_out_target_is_neither_scored_nor_learned():
    config = hz.HorizonConfig((2,))
    st = hz.init_state(1, 1, config, torch.float64)
    z = torch.tensor([[0.5, 0.2, 1.0]], dtype=torch.float64)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    hz.step(st, z, zero, one, one, torch.tensor([True]), config, 1.645)
    w, P = st["w"].clone(), st["P"].clone()
    out = hz.step(st, z, zero, one, 100 * one, torch.tensor([False]), config, 1.645)
    assert torch.equal(st["w"], w) and torch.equal(st["P"], P) and int(st["scored"].sum()) == 0
    assert math.isnan(float(out["error"][0, 0]))
    hz.step(st, z, zero, one, one, torch.tensor([True]), config, 1.645)
    assert int(st["scored"].sum()) == 1 and not torch.equal(st["w"], w)


def test_intervals_are_calibrated_per_horizon():
    x, d = _ar_stream(3000, 4, seed=4)
    bank = _bank("linear", 3, (1, 2, 8))
    _run(bank, x, d)
    cov = bank.state["h.hits"].sum(0).numpy() / bank.state["h.scored"].sum(0).numpy()
    assert ((cov > 0.86) & (cov < 0.94)).all(), cov


def test_pending_forecasts_survive_a_snapshot_and_the_default_state_has_none():
    x, d = _ar_stream(40, 2, seed=5)
    a = _bank("ensemble", 3)
    keys = ["k0", "k1"]
    for t in range(20):
        a.step(keys, x[t], d[t])
    b = _bank("ensemble", 3)
    for blob in a.snapshot_many(keys):
        b.restore(blob)
    for t in range(20, 40):
        ra, rb = a.step(keys, x[t], d[t]), b.step(keys, x[t], d[t])
        np.testing.assert_array_equal(ra.ahead_error.numpy(), rb.ahead_error.numpy())
        np.testing.assert_array_equal(ra.ahead_mean.numpy(), rb.ahead_mean.numpy())
    assert np.isfinite(ra.ahead_error.numpy()).all()  # they came due, on both
    assert not any(k.startswith("h.") for k in _bank("ensemble", 3, (1,)).layout())
    with pytest.raises(ValueError, match="another model"):  # other horizons: another model, not damage
        _bank("ensemble", 3, (1, 3)).restore(a.snapshot("k0"))


def test_horizon_settings_parse_and_refuse():
    assert Settings(horizons="24,6").horizon_list() == (1, 6, 24)
    assert Settings().horizon_list() == (1,)
    for bad in ("0", "a,b", "", "6,-1", "20000"):
        with pytest.raises(ValueError, match="horizons"):
            Settings(horizons=bad)


def _feed(horizons: str, learner: str, n: int):
    p = Pipeline(Settings(lags=3, hidden=4, horizons=horizons, learner=learner, particles=8))
    ticks = [rec(tick(k, 5 * (k == "b") + math.sin(t / 3) + 0.1 * math.cos(t * 1.3), ts=t), offset=2 * t + (k == "b"))
             for t in range(n) for k in ("a", "b")]
    return p.process(ticks), p


@pytest.mark.parametrize("learner", LEARNERS)
def test_the_daemon_publishes_every_horizon_and_none_depends_on_later_ticks(learner):
    full, p = _feed("1,3,6", learner, 40)
    cut, _ = _feed("1,3,6", learner, 25)
    assert [o.value for o in full.predictions[:50]] == [o.value for o in cut.predictions]
    msgs = [orjson.loads(o.value) for o in full.predictions]
    for m in msgs:
        assert [h["h"] for h in m["horizons"]] == [1, 3, 6]
        assert [h["target_seq"] for h in m["horizons"]] == [m["seq"] + h for h in (1, 3, 6)]
        assert m["horizons"][0]["prediction"] == m["prediction"]
        assert all(h["lower"] <= h["prediction"] <= h["upper"] for h in m["horizons"])
    # every forecast whose target arrived was scored: those made at ticks 0..39 - h, per key
    assert len(full.ahead[6][0]) == 2 * (40 - 6) and len(full.ahead[3][0]) == 2 * (40 - 3)
    assert "horizons" not in orjson.loads(_feed("1", learner, 3)[0].predictions[0].value)


def test_horizon_metrics_carry_a_bounded_horizon_label():
    m = Metrics("ensemble", "lstm", "test", (1, 6))
    text = m.exposition().decode()
    assert 'streamer_horizon_scored_total{horizon="6"} 0.0' in text
    m.scored([0.5, -0.5], 1, horizon=6)
    m.scored([1.0], 1)
    text = m.exposition().decode()
    assert 'streamer_horizon_scored_total{horizon="6"} 2.0' in text
    assert 'streamer_horizon_coverage{horizon="6"} 0.5' in text
    assert 'streamer_horizon_mse{horizon="1"} 1.0' in text
    assert 'streamer_prequential_mse{learner="ensemble"} 1.0' in text


def test_bench_scores_each_horizon_when_its_target_arrives_with_literal_baselines():
    rng = np.random.default_rng(6)
    t = np.arange(600)
    df = pd.DataFrame({"a": np.sin(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(600),
                   "b": np.cos(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(600)})
    stream = B.series_stream(df, ["a", "b"], warmup=200, lags=2, start=300, end=None)
    spec = NetSpec(n_in=stream.x.shape[2], hidden=4)
    pers = B.run(stream, "persistence", spec, horizons=(1, 5), period=24)
    rows = {(r.learner, r.horizon): r for r in [pers, *pers.ahead]}
    assert set(rows) == {("persistence", 1), ("persistence", 5), ("seasonal", 1), ("seasonal", 5)}
    # persistence 5 ahead: the value at the row before, against the target 4 rows on
    made = np.arange(len(stream.d)) + 4
    use = (made >= stream.score_from) & (made < len(stream.d))
    rows_used = np.flatnonzero(use)
    e = stream.d[made[use]] - stream.d[rows_used - 1]
    assert rows[("persistence", 5)].mse == pytest.approx(float(np.mean(e**2)), rel=1e-6)
    # on a period-24 wave, seasonal naive beats persistence 5 ahead
    assert rows[("seasonal", 5)].mse < 0.5 * rows[("persistence", 5)].mse
    lin = B.run(stream, "linear", spec, horizons=(1, 5))
    summary = B.summarise([pers, lin])
    assert {(r["learner"], r["horizon"]) for r in summary} >= {("linear", 1), ("linear", 5)}
    lin5 = next(r for r in summary if (r["learner"], r["horizon"]) == ("linear", 5))
    assert lin5["mse"] < rows[("persistence", 5)].mse and 0.8 < lin5["coverage90"] < 0.97


def test_the_conformal_factor_brings_coverage_to_nominal_where_the_variance_alone_misses_it():
    """Student-t(3) noise: an interval of +-1.645 sd covers ~94% of it, and the variance calibration alone
    covers 92% here; with the conformal factor the long-run share inside is the nominal 90%."""
    rng = np.random.default_rng(7)
    B_, T, h = 4, 6000, 3
    Z = rng.standard_normal((T, B_, 3))
    y = np.zeros((T, B_))
    y[h - 1 :] = Z[: T - h + 1, :, 0] + rng.standard_t(3, size=(T - h + 1, B_))
    cover = {}
    for step in (0.0, hz.HorizonConfig().coverage_step):
        config = hz.HorizonConfig((h,), coverage_step=step)
        st = hz.init_state(B_, 1, config, torch.float64)
        for t in range(T):
            hz.step(st, torch.from_numpy(Z[t]), torch.zeros(B_, dtype=torch.float64),
                    torch.ones(B_, dtype=torch.float64), torch.from_numpy(y[t]), torch.ones(B_, dtype=torch.bool),
                    config, 1.6448536269514722)
        cover[step] = float(st["hits"].sum() / st["scored"].sum())
    assert cover[0.0] > 0.912, cover
    assert abs(cover[hz.HorizonConfig().coverage_step] - 0.90) < 0.005, cover


def test_a_long_stretch_of_exact_forecasts_leaves_the_conformal_factor_at_its_bound():
    config = hz.HorizonConfig((2,))
    st = hz.init_state(1, 1, config, torch.float64)
    z = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    for _ in range(30_000):  # a frozen value: every target inside, s falls by gamma * alpha a tick
        hz.step(st, z, zero, one, zero, torch.tensor([True]), config, 1.6448536269514722)
    assert float(st["s"][0, 0]) == pytest.approx(-config.coverage_bound)
