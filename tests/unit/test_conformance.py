"""One conformance suite, run against every learner and baseline (River's check_estimator idea)."""

from __future__ import annotations

import os

import pytest
import torch

from models.bank import ModelBank
from models.cells import NetSpec
from models.learners import BASELINES, LEARNERS, RECURRENT, make_learner
from models.learners.base import uses_autograd

SPEC = NetSpec(n_in=3, hidden=4)
SMALL = {"pf": {"n_particles": 16}, "sgd": {"window": 3}, "ekf": {"window": 3}, "dekf": {"window": 3}}
SMALL["ensemble"] = {"expert_options": {k: SMALL[k] for k in ("sgd", "dekf", "ekf")}}
ALL = LEARNERS + BASELINES


def learner(name: str, spec: NetSpec = SPEC):
    return make_learner(name, spec, **SMALL.get(name, {}))


def stream(T: int, K: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, K, SPEC.n_in, generator=g)
    d = torch.sin(x.sum(-1)) + 0.1 * torch.randn(T, K, generator=g)
    return x, d


def copy_state(st):
    return {k: v.clone() for k, v in st.items()}


@pytest.mark.parametrize("name", ALL)
def test_predict_does_not_mutate_and_step_predicts_first(name):
    L = learner(name)
    st = L.init_state(torch.arange(5))
    x, d = stream(20, 5)
    for t in range(10):
        st = L.update(st, x[t], d[t])
    before = copy_state(st)
    mean, var = L.predict(st, x[10])
    for k, v in st.items():
        assert torch.equal(v, before[k]), f"predict changed {k}"
    m2, v2, _ = L.step(copy_state(st), x[10], d[10])
    torch.testing.assert_close(m2, mean)
    torch.testing.assert_close(v2, var)
    assert (var > 0).all() and torch.isfinite(mean).all()


@pytest.mark.parametrize("name", ALL)
def test_snapshot_restore_gives_same_next_prediction(name):
    bank = ModelBank(learner(name))
    x, d = stream(30, 3)
    keys = ["a", "b", "c"]
    for t in range(25):
        bank.step(keys, x[t], d[t])
    blob = bank.snapshot("b")
    other = ModelBank(learner(name))
    other.restore(blob)
    m1, v1 = bank.predict(["b"], x[25, 1:2])
    m2, v2 = other.predict(["b"], x[25, 1:2])
    assert torch.equal(m1, m2) and torch.equal(v1, v2)
    # and the restored key keeps learning identically
    r1 = bank.step(["b"] * 3, x[25:28, 1], d[25:28, 1])
    r2 = other.step(["b"] * 3, x[25:28, 1], d[25:28, 1])
    assert torch.equal(r1.mean, r2.mean)


@pytest.mark.parametrize("name", ALL)
def test_two_seeded_runs_are_bit_identical(name):
    x, d = stream(40, 4)
    outs = []
    for _ in range(2):
        bank = ModelBank(learner(name))
        outs.append(torch.stack([bank.step(list("wxyz"), x[t], d[t]).mean for t in range(40)]))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("name", ALL)
def test_bank_of_k_equals_k_banks_of_one(name):
    keys = [f"k{i}" for i in range(6)]
    x, d = stream(30, 6)
    bank = ModelBank(learner(name))
    together = torch.stack([bank.step(keys, x[t], d[t]).mean for t in range(30)])  # [T, K]
    for i, k in enumerate(keys):
        alone = ModelBank(learner(name))
        single = torch.stack([alone.step([k], x[t, i : i + 1], d[t, i : i + 1]).mean for t in range(30)])[:, 0]
        torch.testing.assert_close(single, together[:, i], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_repeated_keys_in_one_batch_are_processed_in_order(name):
    x, d = stream(8, 1)
    seq = ModelBank(learner(name))
    one_by_one = torch.cat([seq.step(["k"], x[t], d[t]).mean for t in range(8)])
    batched = ModelBank(learner(name)).step(["k"] * 8, x[:, 0], d[:, 0]).mean
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_drop_and_readd_key_starts_cold(name):
    bank = ModelBank(learner(name))
    x, d = stream(10, 2)
    first = bank.step(["a", "b"], x[0], d[0]).mean
    for t in range(1, 10):
        bank.step(["a", "b"], x[t], d[t])
    bank.drop(["a"])
    assert bank.names == ["b"]
    again = bank.step(["a"], x[0, :1], d[0, :1]).mean
    torch.testing.assert_close(again, first[:1])


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_memory_flat_over_10k_ticks(name):
    bank = ModelBank(learner(name))
    x, d = stream(500, 4)
    keys = list("abcd")
    sizes = None
    for t in range(10_000):
        bank.step(keys, x[t % 500], d[t % 500])
        if t == 1000:
            sizes = {k: v.shape for k, v in bank.state.items()}
            rss = _rss_mb()
    assert {k: v.shape for k, v in bank.state.items()} == sizes
    assert _rss_mb() - rss < 20, "resident memory grew by more than 20 MiB over 9k ticks"


@pytest.mark.parametrize("name", LEARNERS)
def test_non_finite_state_is_reset_and_counted(name):
    bank = ModelBank(learner(name))
    x, d = stream(10, 2)
    for t in range(5):
        bank.step(["a", "b"], x[t], d[t])
    healthy_b = bank.snapshot("b")
    field = {"pf": "l.cell", "ensemble": "l.x3.theta"}.get(name, "l.theta")  # the ensemble's DEKF expert
    bank.state[field][bank.index["a"]] = float("nan")
    res = bank.step(["a", "b"], x[5], d[5])
    assert bool(res.reset[0]) and not bool(res.reset[1])
    assert bank.resets_total == 1 and int(bank.state["b.resets"][bank.index["a"]]) == 1
    assert torch.isfinite(res.mean).all() and torch.isfinite(res.lower).all()
    later = bank.step(["a", "b"], x[6], d[6])
    assert torch.isfinite(later.mean).all()
    other = ModelBank(learner(name))
    other.restore(healthy_b)
    assert torch.equal(other.step(["b"], x[5, 1:], d[5, 1:]).mean, res.mean[1:])


def test_snapshot_refuses_wrong_spec_and_garbage():
    bank = ModelBank(learner("sgd"))
    bank.step(["a"], torch.zeros(1, 3), torch.zeros(1))
    blob = bank.snapshot("a")
    with pytest.raises(ValueError, match="snapshot is for"):
        ModelBank(make_learner("sgd", NetSpec(n_in=3, hidden=5))).restore(blob)
    with pytest.raises(ValueError, match="bad magic"):
        bank.restore(b"\x80\x04pickle")
    with pytest.raises(ValueError):
        bank.restore(blob[:-4])


MEMOISING = [n for n in ALL if getattr(learner(n), "memoises", False)]


def _predict_then_learn(bank: ModelBank, x: torch.Tensor, d: torch.Tensor, keys: list[str]) -> list[torch.Tensor]:
    """The daemon's pattern: predict each key's next value, learn from it when the label comes; now and then
    a subset of the keys in another order, which a memo of all of them must not serve."""
    out = []
    for t in range(len(x) - 1):
        r = bank.step(keys, x[t], d[t])
        out += [r.mean, r.var, r.lower]
        ks = keys if t % 5 else keys[::-1][:2]
        pos = [keys.index(k) for k in ks]
        out += list(bank.predict(ks, x[t + 1][pos]))
    return out + [v.clone() for v in bank.state.values()]


@pytest.mark.parametrize("name", MEMOISING)
def test_memo_of_a_prediction_changes_no_step(name):
    """A memoising learner (`models.learners.base`): the step that uses the prediction's intermediates is
    bit-identical to the one that recomputes them, states included."""
    x, d = stream(40, 3)
    runs = []
    for memo in (True, False):
        bank = ModelBank(learner(name))
        bank._memoise = memo
        runs.append(_predict_then_learn(bank, x, d, ["a", "b", "c"]))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


@pytest.mark.parametrize("name", MEMOISING)
def test_a_step_of_some_predicted_keys_uses_their_part_of_the_memo(name):
    """The daemon's waves within a batch: every key of a wave is predicted, and the next wave steps those
    with another tick in the batch, some of them (b and c of a, b, c; in either order). Their part of the
    memo serves that step, except the particle filter's, whose intermediates are [B * N] (it recomputes);
    either way it is the step a bank that never memoises makes, up to a batch's float rounding."""
    x, d = stream(30, 3)
    keys = ["a", "b", "c"]
    waves = [keys, ["c", "b"], ["b"], keys, ["a", "c"], ["c"], keys, ["b", "a"]]
    runs, served = [], []
    for memo in (True, False):
        bank = ModelBank(learner(name))
        bank._memoise = memo
        step = bank.learner.step

        def counted(st, xx, dd, memo=None, _step=step):
            served.append(memo is not None)
            return _step(st, xx, dd, memo=memo) if memo is not None else _step(st, xx, dd)

        bank.learner.step = counted  # type: ignore[method-assign]
        t = {k: 0 for k in keys}  # each key's own tick
        out = []
        for wave in waves * 3:
            pos = [keys.index(k) for k in wave]
            r = bank.step(wave, torch.stack([x[t[k], i] for k, i in zip(wave, pos, strict=True)]),
                          torch.stack([d[t[k], i] for k, i in zip(wave, pos, strict=True)]))
            out += [r.mean, r.var]
            for k in wave:
                t[k] += 1
            out += list(bank.predict(wave, torch.stack([x[t[k], i] for k, i in zip(wave, pos, strict=True)])))
        runs.append(out + [bank.state[k][[bank.index[n] for n in keys]] for k in sorted(bank.state)])
        if memo:  # the steps of fewer keys than the wave before them predicted
            of_some = [used for used, wave in zip(served, waves * 3, strict=True) if len(wave) < len(keys)]
            assert of_some == [name != "pf"] * len(of_some), served
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MEMOISING)
def test_memo_is_not_used_after_the_state_moved(name):
    """predict, then the rows change (restore of an older snapshot, a reset, a key dropped, another x):
    the next step is the one a bank that never predicted makes."""
    x, d = stream(12, 2)
    keys = ["a", "b"]

    def fresh(blobs: list[bytes]) -> ModelBank:
        b = ModelBank(learner(name))
        for blob in blobs:
            b.restore(blob)
        return b

    bank = ModelBank(learner(name))
    for t in range(4):
        bank.step(keys, x[t], d[t])
    old = [bank.snapshot(k) for k in keys]
    for t in range(4, 8):
        bank.step(keys, x[t], d[t])
    cases = {
        "restore": lambda b: b.restore(old[0]),
        "reset": lambda b: b.reset(["a"]),
        "drop": lambda b: (b.drop(["a"]), b.restore(old[0])),
        "other x": lambda b: None,
    }
    for case, move in cases.items():
        blobs = [bank.snapshot(k) for k in keys]
        a = fresh(blobs)
        a.predict(keys, x[8])
        move(a)
        b = fresh(blobs)
        move(b)
        xs = x[9] if case == "other x" else x[8]
        ra, rb = a.step(keys, xs, d[8]), b.step(keys, xs, d[8])
        assert torch.equal(ra.mean, rb.mean) and torch.equal(ra.var, rb.var), case
        for k in a.state:
            assert torch.equal(a.state[k][[a.index[n] for n in keys]], b.state[k][[b.index[n] for n in keys]]), \
                (case, k)


@pytest.mark.parametrize("name", ALL)
def test_a_held_out_spike_moves_no_state_and_its_neighbours_learn(name):
    """A tick far from its key's running level is held out: that key's learner state is what it was, and
    the other keys of the same wave learn as they would alone (up to a batch's float rounding)."""
    x, d = stream(40, 2)
    bank, alone = ModelBank(learner(name)), ModelBank(learner(name))
    for t in range(30):
        bank.step(["a", "b"], x[t], d[t])
        alone.step(["b"], x[t, 1:], d[t, 1:])
    before = {k: v[bank.index["a"]].clone() for k, v in bank.state.items() if k.startswith("l.")}
    spike = d[30].clone()
    spike[0] = 1e4  # key a: far beyond shift_z running standard deviations
    bank.step(["a", "b"], x[30], spike)
    alone.step(["b"], x[30, 1:], d[30, 1:])
    for k, v in before.items():
        assert torch.equal(bank.state[k][bank.index["a"]], v), k
        torch.testing.assert_close(bank.state[k][bank.index["b"]], alone.state[k][alone.index["b"]], rtol=1e-4,
                                   atol=1e-5, msg=k)


@pytest.mark.parametrize("cell,head", [("lstm", "skip"), ("gru", "skip"), ("lstm", "gated")])
@pytest.mark.parametrize("name", ALL)
def test_the_bank_runs_a_learner_without_autograd_in_inference_mode_and_keeps_its_tensors_normal(name, cell, head):
    """A learner that records no autograd graph (`uses_autograd`) runs under torch.inference_mode in
    the bank, one that does (GRU, gated head: the Jacobian by autograd) outside it. Either way the
    results equal a bank that never uses inference mode, to the bit, and nothing inference-only
    leaks: the bank's tensors, what it returns and its snapshots stay writable outside."""
    spec = NetSpec(n_in=3, hidden=4, cell=cell, head=head)
    L = learner(name, spec)
    lean, plain = ModelBank(L), ModelBank(learner(name, spec))
    plain._fast = False
    assert lean._fast == (not uses_autograd(L))
    if (name not in RECURRENT and name != "ensemble") or (cell, head) == ("lstm", "skip"):
        assert lean._fast, "closed-form learners (the baselines and mlp, whatever the cell) run lean"
    elif name != "ensemble":  # the ensemble's experts may take another head (`EnsembleConfig.expert_head`)
        assert not lean._fast, "an autograd learner runs outside inference mode"
    modes: list[bool] = []
    step = L.step
    L.step = lambda *a, **k: (modes.append(torch.is_inference_mode_enabled()), step(*a, **k))[1]  # type: ignore[method-assign]
    x, d = stream(12, 4, seed=3)
    for t in range(12):
        keys = [f"k{i}" for i in range(2 + (t >= 4) + (t >= 8))]  # keys arrive: the bank grows mid-stream
        n = len(keys)
        a, b = lean.step(keys, x[t, :n], d[t, :n]), plain.step(keys, x[t, :n], d[t, :n])
        assert torch.equal(a.mean, b.mean) and torch.equal(a.var, b.var)
        pa, pb = lean.predict(keys, x[t, :n]), plain.predict(keys, x[t, :n])
        assert torch.equal(pa[0], pb[0]) and torch.equal(pa[1], pb[1])
    assert modes and all(m == lean._fast for m in modes)
    for k, v in lean.state.items():
        assert not v.is_inference(), k
        torch.testing.assert_close(v, plain.state[k], rtol=0, atol=0, equal_nan=True)
    a.mean.add_(1.0)  # what a step and a predict return is writable outside
    pa[0].add_(1.0)
    blob = lean.snapshot("k0")
    fresh = ModelBank(learner(name, spec))
    fresh.restore(blob)
    for k, v in fresh.state.items():
        assert not v.is_inference(), k
        torch.testing.assert_close(v[0], lean.state[k][0], rtol=0, atol=0, equal_nan=True)
    lean.state["b.lam"][0] = 2.0  # the bank's own tensors take writes outside its methods,
    lam = lean.state["b.lam"]
    lam.copy_(torch.full_like(lam, 2.0, requires_grad=True) * 1.0)  # a tracked value's too (autograd's rule)


def test_the_interval_covers_its_nominal_90_percent_where_the_errors_are_not_gaussian():
    """Uniform targets: an interval of +-1.645 sd covers 95% of them, so the variance calibration alone
    over-covers; with the bank's conformal factor the share inside is the nominal 90% (RESULTS: the
    running mean covered 93.2% of puma8nh before it)."""
    from models.bank import BankConfig

    g = torch.Generator().manual_seed(3)
    T, K = 4000, 4
    x = torch.randn(T, K, SPEC.n_in, generator=g)
    d = torch.rand(T, K, generator=g) * 2 - 1
    cover = {}
    for step in (0.0, BankConfig().coverage_step):
        bank = ModelBank(make_learner("mean", SPEC), BankConfig(coverage_step=step))
        names = [f"k{i}" for i in range(K)]
        for t in range(T):
            bank.step(names, x[t], d[t])
        cover[step] = bank.coverage()
    assert cover[0.0] > 0.935, cover
    assert abs(cover[BankConfig().coverage_step] - 0.90) < 0.006, cover
