"""The compiled loops of few-key waves (`models.jit`): each agrees with its torch path within float rounding,
carries a broken row through without touching its neighbours, serves the waves it is meant for, and falls back
to torch, warning once, where it cannot compile. (The window BPTT's kernel has its tests in test_numerics.)"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch

from models import jit, kalman, kalman_kernel
from models.cells import NetSpec
from models.learners import adam_kernel, mlp
from models.learners.sgd import SGDConfig, SGDLearner

DTYPES = [torch.float32, torch.float64]


def covariance(g: torch.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    """Symmetric positive definite matrices [*shape, n, n] (n = shape[-1])."""
    n = shape[-1]
    A = torch.randn(*shape, n, generator=g, dtype=dtype)
    return A @ A.transpose(-1, -2) / n + torch.eye(n, dtype=dtype)


def filter_update(batch: tuple[int, ...], sizes: list[tuple[tuple[int, ...], int]], dtype: torch.dtype,
                  compiled: bool, monkeypatch: pytest.MonkeyPatch, seed: int = 0) -> list[torch.Tensor]:
    """`kalman.innovation` then `kalman.correct` on blocks of (inner shape, n), one way; every output and P after."""
    g = torch.Generator().manual_seed(seed)
    blocks = [(covariance(g, *batch, *inner, n, dtype=dtype), torch.randn(*batch, *inner, n, generator=g, dtype=dtype))
              for inner, n in sizes]
    R = torch.rand(*batch, generator=g, dtype=dtype) + 1
    e = torch.randn(*batch, generator=g, dtype=dtype)
    with monkeypatch.context() as m:
        if not compiled:
            m.setattr(kalman_kernel, "serves", lambda *a: False)
        PH, S = kalman.innovation(blocks, R)
        steps = kalman.correct([P for P, _ in blocks], PH, e, S)
    return [*PH, S, *steps, *(P for P, _ in blocks)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, sizes", [
    ((3,), [((), 5)]),  # RLS-like: one small block a key
    ((2,), [((), 40)]),  # the EKF's one dense block
    ((2,), [((4,), 9), ((), 6)]),  # the DEKF's: a block per neuron, summed into S, and the head's
    ((2, 5), [((), 4)]),  # the particle filter's read-out: a block per key and particle
])
def test_compiled_kalman_update_agrees_with_torch_within_rounding(batch, sizes, dtype, monkeypatch):
    eps = torch.finfo(dtype).eps
    compiled = filter_update(batch, sizes, dtype, True, monkeypatch)
    reference = filter_update(batch, sizes, dtype, False, monkeypatch)
    for a, b in zip(compiled, reference, strict=True):
        assert a.dtype == b.dtype == dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=64 * eps, atol=64 * eps * float(b.abs().max()))


def test_compiled_kalman_update_carries_a_broken_row_through_and_leaves_the_others():
    g = torch.Generator().manual_seed(1)
    P, H = covariance(g, 3, 6, dtype=torch.float32), torch.randn(3, 6, generator=g)
    P[1, 2, 3] = float("nan")
    R, e = torch.ones(3), torch.randn(3, generator=g)
    reference = P[[0, 2]].clone()
    (PH,), S = kalman.innovation([(P, H)], R)
    (step,) = kalman.correct([P], [PH], e, S)
    assert not torch.isfinite(S[1]) and not torch.isfinite(step[1]).all() and not torch.isfinite(P[1]).all()
    (PH_ref,), S_ref = kalman.innovation([(reference, H[[0, 2]])], R[[0, 2]])
    (step_ref,) = kalman.correct([reference], [PH_ref], e[[0, 2]], S_ref)
    torch.testing.assert_close(S[[0, 2]], S_ref)
    torch.testing.assert_close(step[[0, 2]], step_ref)
    torch.testing.assert_close(P[[0, 2]], reference)


def test_the_kalman_update_takes_the_loops_where_they_serve_and_torch_elsewhere(monkeypatch):
    """innovation: the loop up to MAX_WORK entries of P, torch beyond; correct: the loop at every width; torch for
    the Joseph form, a P that is not laid out flat, and anything autograd is to differentiate through."""
    calls: list[str] = []
    for name in ("innovation", "correct"):
        real = getattr(kalman_kernel, name)
        monkeypatch.setattr(kalman_kernel, name, lambda *a, _f=real, _n=name: calls.append(_n) or _f(*a))
    n = 50
    most = kalman_kernel.MAX_WORK // (n * n)  # the most rows of this filter the innovation loop takes

    def update(B: int, joseph: bool = False, flat: bool = True) -> None:
        P = torch.eye(n).repeat(B, 1, 1) if flat else torch.eye(n).repeat(1, B, 1).view(n, B, n).transpose(0, 1)
        PH, S = kalman.innovation([(P, torch.ones(B, n))], torch.ones(B))
        kalman.correct([P], PH, torch.ones(B), S, joseph=joseph)

    update(most)
    assert calls == ["innovation", "correct"]
    calls.clear()
    update(most + 1)
    assert calls == ["correct"]
    calls.clear()
    update(2, joseph=True)
    assert calls == ["innovation"]
    calls.clear()
    update(2, flat=False)
    assert calls == []
    H = torch.ones(2, n, requires_grad=True)
    PH, S = kalman.innovation([(torch.eye(n).repeat(2, 1, 1), H)], torch.ones(2))
    S.sum().backward()  # differentiated through: the torch path
    assert calls == [] and H.grad is not None


def memo_run(learner, keys: int, T: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, dict]:  # noqa: ANN001
    """A learner on 4 inputs, predict-then-step (the memo the daemon hands on) over T ticks of `keys` keys of a
    noisy sine: its predictions [T, keys] and its final state."""
    g = torch.Generator().manual_seed(seed)
    state = learner.init_state(torch.arange(keys))
    means = []
    for _ in range(T):
        x = torch.randn(keys, 4, generator=g, dtype=dtype)
        d = torch.sin(x.sum(1)) + 0.1 * torch.randn(keys, generator=g, dtype=dtype)
        memo: dict = {}
        learner.predict(state, x, memo=memo)
        mean, _, state = learner.step(state, x, d, memo=memo)
        means.append(mean)
    return torch.stack(means), state


def sgd_run(options: dict, dtype: torch.dtype, compiled: bool, monkeypatch: pytest.MonkeyPatch,
            head: str = "plain") -> tuple[torch.Tensor, dict]:
    """SGD learner over 200 ticks of 3 keys, one way: its predictions [T, 3] and final state."""
    learner = SGDLearner(NetSpec(n_in=4, hidden=6, head=head), SGDConfig(**options), dtype)
    with monkeypatch.context() as m:
        if not compiled:
            m.setattr(SGDLearner, "_compiled_step", lambda *a: False)
        return memo_run(learner, 3, 200, 2, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options, head", [
    ({}, "plain"),  # the default: Adam, the read-out's variable NLMS step
    ({"head_step_max": 0.1}, "plain"),  # a fixed read-out step
    ({"head_step": 0.0}, "plain"),  # Adam on every weight
    ({"schedule": "inverse"}, "plain"),
    ({"window": 3}, "plain"),
    ({}, "skip"),
])
def test_compiled_sgd_step_follows_the_torch_step_within_rounding(options, head, dtype, monkeypatch):
    """Over 200 ticks, so that a different step anywhere (the clip, Adam's bias corrections, the read-out's step
    and its size, the running variance) would show; float32 drifts by its rounding through Adam's division."""
    compiled, state = sgd_run(options, dtype, True, monkeypatch, head)
    reference, ref_state = sgd_run(options, dtype, False, monkeypatch, head)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(compiled, reference, rtol=tol, atol=tol)
    assert state.keys() == ref_state.keys()
    for k, v in state.items():
        torch.testing.assert_close(v, ref_state[k], rtol=tol, atol=tol)


def test_the_sgd_step_takes_the_loop_for_few_rows_and_torch_for_a_wide_wave(monkeypatch):
    calls: list[int] = []
    real = adam_kernel.step
    monkeypatch.setattr(adam_kernel, "step", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    learner = SGDLearner(NetSpec(n_in=4, hidden=6))
    most = adam_kernel.MAX_WORK // learner.spec.n_theta
    for B in (most, most + 1):
        state = learner.init_state(torch.arange(B))
        learner.step(state, torch.randn(B, 4), torch.randn(B))
    assert calls == [most]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("skip", [True, False])
def test_compiled_feed_forward_pass_agrees_with_torch_within_rounding(skip, dtype, monkeypatch):
    learner = mlp.MLPLearner(NetSpec(n_in=4, hidden=7), mlp.MLPConfig(skip=skip), dtype)
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(5, learner.n_learned, generator=g, dtype=dtype)
    x = torch.randn(5, 4, generator=g, dtype=dtype)
    compiled = learner._forward(theta, x)
    monkeypatch.setattr(mlp, "MAX_ROWS", 0)  # every wave wider than the loop serves: the torch pass
    reference = learner._forward(theta, x)
    eps = torch.finfo(dtype).eps
    for a, b in zip(compiled, reference, strict=True):
        assert a.dtype == b.dtype == dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=16 * eps, atol=16 * eps)


def test_a_kernel_that_cannot_compile_warns_once_and_torch_does_its_work(monkeypatch):
    def broken() -> None:
        raise ImportError("no numba here")

    for kernel in kalman_kernel.KERNELS:
        monkeypatch.setattr(kernel, "compiled", broken)
        monkeypatch.setattr(kernel, "_usable", {})
    P, H, R = torch.eye(3).repeat(2, 1, 1), torch.ones(2, 3), torch.ones(2)
    with pytest.warns(RuntimeWarning, match="no numba here"):
        (PH,), S = kalman.innovation([(P, H)], R)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the next update says nothing
        kalman.correct([P], [PH], torch.ones(2), S)
    assert torch.equal(S, torch.full((2,), 4.0)) and bool((P == torch.eye(3) - 0.25).all())  # P - P H H^T P / S


def test_every_kernel_compiles_here():
    """What the daemon does while it joins its group: every loop compiled (or loaded) at both float widths."""
    assert jit.warm_up(torch.float32) and jit.warm_up(torch.float64)


def ensemble_run(dtype: torch.dtype, compiled: bool, monkeypatch: pytest.MonkeyPatch, T: int = 150
                 ) -> tuple[torch.Tensor, dict]:
    """The default ensemble, step and predict over T ticks of 3 keys through a bank, one way; a spike now and then
    (held out) and one expert broken after tick 40 (its weights NaN: its error counts as 1e6, then the key resets)."""
    from models.bank import ModelBank
    from models.learners import ensemble, make_learner

    bank = ModelBank(make_learner("ensemble", NetSpec(n_in=4, hidden=8), dtype))
    g = torch.Generator().manual_seed(4)
    keys = ["a", "b", "c"]
    out = []
    with monkeypatch.context() as m:
        m.setattr(ensemble, "MIX_MAX_ROWS", 64 if compiled else 0)
        for t in range(T):
            x = torch.randn(3, 4, generator=g, dtype=torch.float64)
            d = torch.sin(x.sum(1)) + 0.1 * torch.randn(3, generator=g, dtype=torch.float64)
            if t % 11 == 5:
                d[1] = 50.0
            res = bank.step(keys, x, d)
            out.append(torch.stack([res.mean, res.lower, res.upper, res.reset.to(res.mean.dtype)]))
            if t == 40:  # before the prediction the next step learns from: that expert's d_hat is NaN there
                sgd = bank.learner.labels.index("sgd")
                bank.state[f"l.x{sgd}.theta"][2] = float("nan")
            bank.predict(keys, x)
    return torch.stack(out), {k: v.clone() for k, v in bank.state.items()}


@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_ensemble_mixture_follows_numpy_within_rounding(dtype, monkeypatch):
    compiled, state = ensemble_run(dtype, True, monkeypatch)
    reference, ref_state = ensemble_run(dtype, False, monkeypatch)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(compiled, reference, rtol=tol, atol=tol, equal_nan=True)
    for k in ("l.logw", "l.lam", "l.lscale"):
        torch.testing.assert_close(state[k], ref_state[k], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_ensemble_mixture_gives_a_broken_expert_the_largest_loss_not_nan(dtype, monkeypatch):
    """An expert whose prediction is NaN or inf loses its weight, as in numpy's update (its error counts as 1e6),
    and every weight of the key stays finite."""
    from models.learners import ensemble, make_learner

    learner = make_learner("ensemble", NetSpec(n_in=3, hidden=4), dtype)
    sgd = learner.labels.index("sgd")
    real = learner.experts[sgd].step

    def broken(state, x, d, memo=None):  # noqa: ANN001, ANN202
        mean, var, state = real(state, x, d, memo)
        mean = mean.clone()
        mean[0], mean[1] = float("nan"), float("inf")
        return mean, var, state

    monkeypatch.setattr(learner.experts[sgd], "step", broken)
    state = learner.init_state(torch.arange(3))
    x, d = torch.randn(3, 3, dtype=dtype), torch.randn(3, dtype=dtype)
    outs = []
    for rows in (64, 0):  # compiled, then numpy
        monkeypatch.setattr(ensemble, "MIX_MAX_ROWS", rows)
        st = {k: v.clone() for k, v in state.items()}
        _, _, st = learner.step(st, x, d)
        outs.append(st)
    for k in ("logw", "lam", "lscale"):
        assert torch.isfinite(outs[0][k]).all()
        torch.testing.assert_close(outs[0][k], outs[1][k])
    assert (outs[0]["logw"][:2, sgd] < outs[0]["logw"][:2].max(dim=1).values - 1).all()  # its weight fell


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_normaliser_follows_numpy_within_rounding(dtype, monkeypatch):
    """400 ticks of 5 keys through `apply` and `update` both ways, with a NaN, an inf and a spike on the way."""
    from models import normalize as nz

    c = nz.NormConfig()
    rng = np.random.default_rng(0)
    init = {k: v.numpy() for k, v in nz.norm_init(5, 4, torch.float32).items()}
    st = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in init.items()}
    ref = {k: v.copy() for k, v in st.items()}
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for t in range(400):
        x, d = (rng.normal(size=(5, 4)) * 3 + 10).astype(dtype), rng.normal(size=5).astype(dtype)
        if t == 50:
            x[1, 2], d[2] = np.nan, np.inf
        if t == 60:
            d[3] = 1e6
        xn, new = nz.apply(st, x, c), nz.update(st, x, d, c)
        with monkeypatch.context() as m:
            m.setattr(nz, "MAX_ROWS", 0)
            xn_ref, new_ref = nz.apply(ref, x, c), nz.update(ref, x, d, c)
        np.testing.assert_allclose(xn, xn_ref, rtol=tol, atol=tol)  # NaN where numpy has NaN
        for k in new:
            assert new[k].dtype == new_ref[k].dtype
            np.testing.assert_allclose(new[k], new_ref[k], rtol=tol, atol=tol)
        st, ref = new, {k: np.ascontiguousarray(v) for k, v in new_ref.items()}


def test_the_kernels_flags_keep_nan_and_inf_checks_and_fold_isfinite():
    """Why the kernels ask isnan or isinf: under the reassociation they are compiled with, isfinite of an
    expression is folded to True. If numba or LLVM ever stop folding it, this says so (and isfinite may return)."""
    import math

    import numba

    @numba.njit(fastmath=jit.FLAGS, error_model="numpy")
    def checks(a: float, b: float) -> tuple[bool, bool, bool]:
        v = a - b
        return math.isnan(v), math.isinf(v), math.isfinite(v)

    assert checks(np.nan, 1.0)[0] and checks(np.inf, 1.0)[1] and not checks(1.0, 2.0)[0]
    assert checks(np.nan, 1.0)[2], "isfinite holds again under these flags: the kernels' isnan-or-isinf may go"


@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_particle_move_follows_torch_within_rounding(dtype, monkeypatch):
    """The particle filter's EKF move (each particle's diagonal filter over its cell weights), 100 ticks of 2 keys
    of 16 particles both ways: the predictions and every state tensor alike."""
    from models.learners import make_learner, pf

    def run(rows: int) -> tuple[torch.Tensor, dict]:
        learner = make_learner("pf", NetSpec(n_in=4, hidden=6), dtype, n_particles=16)
        with monkeypatch.context() as m:
            m.setattr(pf, "MOVE_MAX_ROWS", rows)
            return memo_run(learner, 2, 100, 5, dtype)

    (compiled, state), (reference, ref_state) = run(32), run(0)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(compiled, reference, rtol=tol, atol=tol)
    for k, v in state.items():
        torch.testing.assert_close(v, ref_state[k], rtol=tol, atol=tol)


def test_a_float_width_without_loops_takes_torch_quietly():
    """float16 (or any width the loops are not compiled for) is no failure to warn of: every loop says no, and
    a filter update on it is torch's."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not any(k.usable(torch.float16) for k in jit.kernels())
        half = torch.ones(2, 3, dtype=torch.half)
        assert not kalman_kernel.serves([torch.eye(3, dtype=torch.half).repeat(2, 1, 1)], [half], half[:, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_random_walk_adds_the_same_pool_slices_as_torch(dtype, monkeypatch):
    """The particle filter's random walk (`rng.add_normal_rows`): the loop hashes each row's offset as numpy's
    splitmix64 does (seeds over all 62 bits, counters up to 2^40) and adds the same slices, within one rounding;
    a wave wider than its limit takes torch, and so does any wave asked for torch's path (`compiled=False`)."""
    from models import rng

    seeds = torch.tensor([rng.key_seed(f"key{i}", 7) for i in range(5)])
    counter = torch.tensor([0, 1, 977, 2**31 + 5, 2**40 + 3])
    base = torch.randn(5, 9, 37, generator=torch.Generator().manual_seed(0), dtype=dtype)
    noise = rng.normal_rows(seeds, counter, rng.STREAM_WALK, 9, 37, dtype)
    compiled = base.clone()
    rng.add_normal_rows(compiled, seeds, counter, rng.STREAM_WALK, 0.5)
    torch.testing.assert_close(compiled, base + 0.5 * noise, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-14)
    assert not torch.equal(compiled, base + 0.5 * rng.normal_rows(seeds, counter, rng.STREAM_WALK + 1, 9, 37, dtype))
    called = []
    monkeypatch.setattr(rng, "normal_rows", lambda *a: called.append(a) or noise)
    monkeypatch.setattr(rng, "WALK_MAX_ROWS", 5 * 9 - 1)
    wide = base.clone()
    rng.add_normal_rows(wide, seeds, counter, rng.STREAM_WALK, 0.5)
    assert len(called) == 1 and torch.equal(wide, base.add(noise, alpha=0.5))
    monkeypatch.setattr(rng, "WALK_MAX_ROWS", 5 * 9)  # a wave the loop would take
    asked = base.clone()
    rng.add_normal_rows(asked, seeds, counter, rng.STREAM_WALK, 0.5, compiled=False)
    assert len(called) == 2 and torch.equal(asked, wide)


def bank_run(name: str, dtype: torch.dtype, config: Any, rows: int, monkeypatch: pytest.MonkeyPatch
             ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], int]:
    """300 ticks of 3 keys through a bank, the bookkeeping's loops serving waves of up to `rows` keys: a NaN, an
    inf, a spike and a level shift among them. Every step's and predict's outputs, the state after, the resets."""
    from models import bank_kernel
    from models.bank import ModelBank
    from models.learners import make_learner

    g = torch.Generator().manual_seed(1)
    d = torch.cumsum(torch.randn(304, 3, generator=g, dtype=torch.float64), 0) * 0.3 + 5
    d[50, 0], d[200, 0], d[80, 1] = float("nan"), float("inf"), 1e4
    d[120:160, 2] += 50
    x, y = torch.stack([d[i : i + 300] for i in range(4)], -1), d[4:]  # [T, K, 4], [T, K]
    keys, out = ["a", "b", "c"], []
    with monkeypatch.context() as m:
        m.setattr(bank_kernel, "MAX_ROWS", rows)
        bank = ModelBank(make_learner(name, NetSpec(n_in=4, hidden=5), dtype=dtype), config)
        for t in range(300):
            r = bank.step(keys, x[t], y[t])
            out += [r.mean, r.var, r.lower, r.upper, torch.as_tensor(r.reset), *bank.predict(keys, x[(t + 1) % 300])]
    return out, {k: v.clone() for k, v in bank.state.items()}, bank.resets_total


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,mode", [("persistence", "online"), ("sgd", "online"), ("sgd", "none")])
def test_compiled_bank_bookkeeping_gives_numpys_numbers_to_the_bit(name, mode, dtype, monkeypatch):
    """The bank's own bookkeeping of a wave (`models.bank_kernel`: standardised target, held-out ticks, calibration,
    interval, conformal factor, counters, what broke) gives exactly numpy's outputs and state, resets included,
    over a stream that holds ticks out and resets keys."""
    from models.bank import BankConfig
    from models.normalize import NormConfig

    config = BankConfig(norm=NormConfig(mode=mode))
    (out, state, resets), (ref, ref_state, ref_resets) = (bank_run(name, dtype, config, rows, monkeypatch)
                                                          for rows in (64, 0))
    assert resets == ref_resets and resets >= 2
    assert all(torch.equal(a, b) or torch.equal(a.isnan(), b.isnan()) and torch.equal(a[~a.isnan()], b[~b.isnan()])
               for a, b in zip(out, ref, strict=True))
    assert state.keys() == ref_state.keys() and all(torch.equal(v, ref_state[k]) for k, v in state.items())
    if mode == "online":
        assert int(state["b.hits"].sum()) < int(state["b.ticks"].sum())  # the interval missed some ticks too


@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_health_check_flags_the_rows_numpy_flags(dtype, monkeypatch):
    """`rows_finite` for a few rows (one compiled call a tensor) and numpy's row sums agree on every row: NaN, +-inf,
    inf and -inf in one row, a finite row whose sum overflows, over [B], [B, n], [B, N, n], a strided diagonal and a
    [B, 0] tensor; an all-finite batch is all True."""
    from models.learners import base

    g = torch.Generator().manual_seed(0)
    big = torch.finfo(dtype).max / 2
    vec, mat, cube = (torch.randn(*s, generator=g, dtype=dtype) for s in ((6,), (6, 5), (6, 3, 4)))
    P = torch.eye(4, dtype=dtype).repeat(6, 1, 1)
    vec[1], mat[2, 3], cube[3, 1, 2], mat[4, 0], mat[4, 1], P[5, 2, 2] = (
        float("nan"), float("inf"), -float("inf"), float("inf"), -float("inf"), float("nan"))
    mat[0, :3] = big  # finite entries, an overflowing sum
    P[1, 0, 3] = float("nan")  # off the diagonal: not checked
    tensors = (vec, mat, cube, P.diagonal(dim1=1, dim2=2), torch.empty(6, 0, dtype=dtype))
    results = {}
    for rows in (64, 0):
        with monkeypatch.context() as m:
            m.setattr(base, "FINITE_MAX_ROWS", rows)
            results[rows] = [base.rows_finite(t) for t in tensors] + [base.rows_finite(*tensors)]
            healthy = base.rows_finite(*(torch.ones_like(t) for t in tensors[:4]))
            assert healthy.all() and healthy.shape == (6,)
    for a, b in zip(results[64], results[0], strict=True):
        assert torch.equal(a, b)
    assert results[64][-1].tolist() == [False, False, False, False, False, False]
    assert results[64][1].tolist() == [False, True, False, True, False, True]
    assert results[64][3].tolist() == [True, True, True, True, True, False]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lam", [1.0, 0.98])
def test_compiled_rls_follows_torch_within_rounding(lam, dtype, monkeypatch):
    """RLS (the ensemble's linear expert) by its two loops and by torch, 200 ticks of 3 keys, with and without
    forgetting: predictions, variances, and beta, P and r2 alike; a step without a memo is the one with it."""
    from models.learners import baselines
    from models.learners.baselines import RLSConfig, RLSLearner

    def run(rows: int, memo: bool = True) -> tuple[list[torch.Tensor], dict]:
        learner = RLSLearner(NetSpec(n_in=4), RLSConfig(lam=lam), dtype)
        g, w = torch.Generator().manual_seed(3), torch.tensor([0.5, -1.0, 0.2, 0.0], dtype=dtype)
        state, out = learner.init_state(torch.arange(3)), []
        with monkeypatch.context() as m:
            m.setattr(baselines, "RLS_MAX_ROWS", rows)
            for _ in range(200):
                x = torch.randn(3, 4, generator=g, dtype=dtype)
                d = x @ w + 0.1 * torch.randn(3, generator=g, dtype=dtype)
                held: dict | None = {} if memo else None
                out += list(learner.predict(state, x, memo=held))
                mean, var, state = learner.step(state, x, d, memo=held)
                out += [mean, var]
        return out, state

    (compiled, state), (reference, ref_state) = run(64), run(0)
    tol = dict(rtol=2e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    for a, b in zip(compiled, reference, strict=True):
        torch.testing.assert_close(a, b, **tol)
    for k in ("beta", "P", "r2"):
        torch.testing.assert_close(state[k], ref_state[k], **tol)
    assert float(ref_state["beta"][:, 1].mean()) < -0.9  # it learned the weights
    unmemoised, _ = run(64, memo=False)
    assert all(torch.equal(a, b) for a, b in zip(compiled, unmemoised, strict=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, window", [("ekf", 10), ("ekf", 1), ("dekf", 10), ("dekf", 1), ("mlp", 0)])
def test_compiled_kalman_filter_step_follows_torch_within_rounding(name, window, dtype, monkeypatch):
    """The EKF's, the DEKF's and the feed-forward net's step after predict in one loop (`ekf_kernel`) and by torch,
    200 ticks of 3 keys: predictions, theta, every covariance block, the window and the tick counter alike; a step
    without a memo takes the loop too and is the one with it (to the bit)."""
    from models.learners import ekf_kernel
    from models.learners.ekf import DEKFConfig, DEKFLearner, EKFConfig, EKFLearner
    from models.learners.mlp import MLPLearner

    def run(rows: int, memo: bool = True, width: torch.dtype = dtype) -> tuple[torch.Tensor, dict]:
        spec = NetSpec(n_in=4, hidden=5)
        learner = (EKFLearner(spec, EKFConfig(window=window), width) if name == "ekf"
                   else DEKFLearner(spec, DEKFConfig(window=window), width) if name == "dekf"
                   else MLPLearner(spec, dtype=width))
        with monkeypatch.context() as m:
            m.setattr(ekf_kernel, "MAX_ROWS", rows)
            if memo:
                return memo_run(learner, 3, 200, 4, width)
            g = torch.Generator().manual_seed(4)
            state, means = learner.init_state(torch.arange(3)), []
            for _ in range(200):  # memo_run's ticks, each stepped without predict's memo
                x = torch.randn(3, 4, generator=g, dtype=width)
                d = torch.sin(x.sum(1)) + 0.1 * torch.randn(3, generator=g, dtype=width)
                mean, _, state = learner.step(state, x, d)
                means.append(mean)
            return torch.stack(means), state

    (compiled, state), (reference, ref_state) = run(64), run(0)
    assert state.keys() == ref_state.keys()
    if dtype == torch.float64:
        torch.testing.assert_close(compiled, reference, rtol=1e-9, atol=1e-10)
        for k, v in state.items():
            torch.testing.assert_close(v, ref_state[k], rtol=1e-9, atol=1e-10)
    else:  # float32: 200 rank-1 downdates of P carry each path's rounding on (the loop contracts multiply-adds), so
        # the loop is held to torch's own float32 error: no further from torch than torch is from float64
        exact, exact_state = run(0, width=torch.float64)
        for a, b, c in [(compiled, reference, exact), *((v, ref_state[k], exact_state[k]) for k, v in state.items())]:
            if a.dtype == torch.int64 or not a.numel():  # the tick counter, a window of one tick's empty buffer
                assert torch.equal(a, b)
                continue
            own = float((b.double() - c).abs().max())
            assert float((a.double() - b.double()).abs().max()) <= max(own, 1e-6), own
    assert int(state["t"][0]) == 200 and float((compiled[-50:] - reference[-50:]).abs().max()) < 0.05
    unmemoised, plain_state = run(64, memo=False)
    assert torch.equal(unmemoised, compiled) and all(torch.equal(v, state[k]) for k, v in plain_state.items())


def test_the_kalman_filter_step_takes_the_loop_for_few_rows_and_torch_otherwise(monkeypatch):
    from models.learners import ekf_kernel
    from models.learners.ekf import DEKFLearner, EKFConfig, EKFLearner

    calls: list[int] = []
    real = ekf_kernel.step
    monkeypatch.setattr(ekf_kernel, "step", lambda *a: calls.append(a[6].shape[0]) or real(*a))
    spec = NetSpec(n_in=4, hidden=3)
    for learner, B in ((DEKFLearner(spec), ekf_kernel.MAX_ROWS), (DEKFLearner(spec), ekf_kernel.MAX_ROWS + 1),
                       (EKFLearner(spec, EKFConfig(joseph=True)), 2), (EKFLearner(spec), 2)):
        state = learner.init_state(torch.arange(B))
        learner.step(state, torch.randn(B, 4), torch.randn(B))
    x = torch.randn(2, 4, dtype=torch.float64)  # an input of another float width than the filter's
    learner = EKFLearner(spec)
    learner.step(learner.init_state(torch.arange(2)), x, torch.randn(2))
    assert calls == [ekf_kernel.MAX_ROWS, 2]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["ekf", "dekf"])
def test_compiled_filter_innovation_reads_h_as_laid_out_in_theta(name, dtype):
    """`ekf_kernel.innovation` (H in theta's order, both of the DEKF's kinds of block in one call) against
    `kalman.innovation` of the blocks as `_blocks` lays them out, on covariances that are not the identity."""
    from models.learners import ekf_kernel
    from models.learners.ekf import DEKFLearner, EKFLearner

    spec = NetSpec(n_in=3, hidden=4)
    learner = EKFLearner(spec, dtype=dtype) if name == "ekf" else DEKFLearner(spec, dtype=dtype)
    g = torch.Generator().manual_seed(6)
    state = learner.init_state(torch.arange(3))
    for k in ("P", "Pc", "Ph"):
        if k in state:
            state[k].copy_(covariance(g, *state[k].shape[:-1], dtype=dtype))
    H = torch.randn(3, spec.n_theta, generator=g, dtype=dtype)
    R = torch.rand(3, generator=g, dtype=dtype) + 1
    PH, S = kalman.innovation(learner._blocks(state, H), R)
    Pc, Ph, G = learner._layout(state)
    PHc, PHh, S_loop = ekf_kernel.innovation(Pc, Ph, H, G, R)
    eps = torch.finfo(dtype).eps
    got = [PHc.view(PH[0].shape)] + ([] if PHh is None else [PHh])
    for a, b in zip([*got, S_loop], [*PH, S], strict=True):
        torch.testing.assert_close(a, b, rtol=64 * eps, atol=64 * eps * float(b.abs().max()))
