"""The public API (`models.api`): its doctests, River's own estimator checks, and that it is the
daemon's model (the bank's numbers, its snapshot format) with River's conventions on top."""

from __future__ import annotations

import copy
import doctest
import importlib.util
import math
import pickle
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import models.api as api
from models import defaults
from models.api import KeyedRegressor, OnlineRegressor
from models.bank import BankConfig, ModelBank, read_manifest
from models.cells import NetSpec
from models.learners import BASELINES, LEARNERS, make_learner

ALL = LEARNERS + BASELINES


def ticks(T: int, seed: int = 0) -> list[tuple[dict[str, float], float]]:
    g = np.random.default_rng(seed)
    out, v = [], 0.0
    for _ in range(T):
        a, b = g.normal(size=2)
        v = 0.8 * v + 0.5 * a - 0.3 * b + 0.1 * g.normal()
        out.append(({"a": float(a), "b": float(b), "c": float(v)}, float(0.8 * v + a)))
    return out


def test_docstring_examples_run():
    result = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 20
    assert result.failed == 0


@pytest.mark.parametrize("name", ALL)
def test_river_estimator_checks(name):
    """River's own suite (`river.checks.yield_checks`), every check of it, for every learner."""
    from river import checks

    model = OnlineRegressor(learner=name)
    ran = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the feature checks drop and add features on purpose
        for check in checks.yield_checks(model):
            assert check.__name__ not in model._unit_test_skips()
            check(model.clone())
            ran.append(check.__name__)
    assert {"check_shuffle_features_no_impact", "check_pickling", "check_emerging_features",
            "check_bounded_memory_growth", "check_predict_one_before_any_learn"} <= set(ran)


def test_river_pipeline_and_progressive_val_score_beat_river_linear_regression():
    from river import datasets, evaluate, linear_model, metrics, preprocessing

    ours = evaluate.progressive_val_score(datasets.TrumpApproval(), preprocessing.StandardScaler() | OnlineRegressor(),
                                          metrics.MAE())
    theirs = evaluate.progressive_val_score(datasets.TrumpApproval(),
                                            preprocessing.StandardScaler() | linear_model.LinearRegression(),
                                            metrics.MAE())
    assert ours.get() < 0.5 * theirs.get()


def test_no_arguments_is_the_daemons_default_model():
    from streamer.config import Settings

    model = OnlineRegressor()
    model.learn_one({"v": 1.0}, 2.0)
    s = Settings()
    spec = model.bank_.learner.spec
    assert (model.bank_.learner.name, spec.cell, spec.head, spec.hidden) == (s.learner, s.cell, s.head, s.hidden)
    assert model.bank_.config == BankConfig(seed=s.seed)  # the daemon's banks: its seed, online normalisation
    assert s.learner == defaults.LEARNER


@pytest.mark.parametrize("name", ["ensemble", "sgd", "pf"])
def test_online_regressor_is_the_bank_step_for_step(name):
    """predict_one / learn_one give the numbers of a ModelBank of the same model, bit for bit."""
    model = OnlineRegressor(learner=name)
    bank = ModelBank(make_learner(name, NetSpec(n_in=3)), BankConfig())
    for x, y in ticks(60):
        xt = torch.tensor([[x["a"], x["b"], x["c"]]], dtype=torch.float64)
        mean, var = bank.predict(["series"], xt)
        lower, upper = bank.interval(mean, var)
        assert model.predict_one(x) == float(mean[0])
        assert model.predict_interval_one(x) == pytest.approx((float(lower[0]), float(upper[0])), rel=1e-5, abs=1e-6)
        bank.step(["series"], xt, torch.tensor([y], dtype=torch.float64))
        model.learn_one(x, y)
    for k, v in bank.state.items():
        assert torch.equal(model.bank_.state[k], v), k


def test_interval_alpha():
    model = OnlineRegressor(learner="sgd")
    for x, y in ticks(50):
        model.learn_one(x, y)
    x = ticks(1, seed=1)[0][0]
    i90, i99 = model.predict_interval_one(x, 0.1), model.predict_interval_one(x, 0.01)
    mean = model.predict_one(x)
    assert i90.lower < mean < i90.upper
    assert i99.width / i90.width == pytest.approx(2.5758293035489 / 1.6448536269514722, rel=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        model.predict_interval_one(x, 1.5)


def test_feature_order_missing_and_unseen_features():
    data = ticks(40)
    one, other = OnlineRegressor(learner="sgd"), OnlineRegressor(learner="sgd")
    for x, y in data:
        one.learn_one(x, y)
        other.learn_one(dict(reversed(list(x.items()))), y)  # the order of a dict's keys does not matter
    assert one.features_ == ("a", "b", "c")
    x = {"a": 0.3, "b": -0.2, "c": 0.1}
    assert one.predict_one(x) == other.predict_one(dict(reversed(list(x.items()))))
    # a missing (or None, or NaN) feature is the key's running mean of it
    running = float(one.bank_.state["n.x_mean"][0, 1])
    filled = one.predict_one({"a": 0.3, "b": running, "c": 0.1})
    assert one.predict_one({"a": 0.3, "c": 0.1}) == pytest.approx(filled, rel=1e-6)
    assert one.predict_one({"a": 0.3, "b": None, "c": 0.1}) == pytest.approx(filled, rel=1e-6)
    assert one.predict_one({"a": 0.3, "b": math.nan, "c": 0.1}) == pytest.approx(filled, rel=1e-6)
    # a feature outside the set is ignored, with one warning naming it
    with pytest.warns(UserWarning, match="'z'"):
        assert one.predict_one({**x, "z": 5.0}) == one.predict_one(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one.predict_one({**x, "z": 6.0})  # only once


def test_user_errors_are_value_errors():
    model = OnlineRegressor(learner="sgd")
    with pytest.raises(ValueError, match="at least one feature"):
        model.predict_one({})
    with pytest.raises(ValueError, match="'a' is not a number"):
        model.learn_one({"a": "high"}, 1.0)
    model.learn_one({"a": 1.0}, 1.0)
    for bad in (math.nan, math.inf, "x", None):
        with pytest.raises(ValueError, match="target"):
            model.learn_one({"a": 1.0}, bad)
    with pytest.raises(ValueError, match="unknown learner"):
        OnlineRegressor(learner="lstm").learn_one({"a": 1.0}, 1.0)
    with pytest.raises(TypeError):
        OnlineRegressor(learner="sgd", no_such_option=1).learn_one({"a": 1.0}, 1.0)


def test_snapshot_is_the_daemons_key_state_and_restores():
    data = ticks(80)
    model = OnlineRegressor()
    for x, y in data[:50]:
        model.learn_one(x, y)
    blob = model.snapshot()
    meta = read_manifest(blob)
    assert meta["features"] == ["a", "b", "c"] and meta["learner"] == "ensemble"
    # the bank (and so the daemon's checkpoint code) reads it as a key state of the same model
    bank = ModelBank(make_learner("ensemble", NetSpec(n_in=3)), BankConfig())
    assert bank.restore(blob) == "series"
    # a fresh model takes its features from the snapshot and carries on exactly as the original
    copy_ = OnlineRegressor()
    copy_.restore(blob)
    for x, y in data[50:]:
        assert copy_.predict_one(x) == model.predict_one(x)
        copy_.learn_one(x, y)
        model.learn_one(x, y)
    # another model's state, or damaged bytes, are refused and change nothing
    sgd = OnlineRegressor(learner="sgd")
    for x, y in data[:5]:
        sgd.learn_one(x, y)
    before = sgd.predict_one(data[5][0])
    with pytest.raises(ValueError, match="another model"):
        sgd.restore(blob)
    damaged = bytearray(sgd.snapshot())
    damaged[-3] ^= 0xFF
    with pytest.raises(ValueError, match="checksum"):
        sgd.restore(bytes(damaged))
    with pytest.raises(ValueError, match="not a key-state snapshot"):
        sgd.restore(b"junk")
    assert sgd.predict_one(data[5][0]) == before
    with pytest.raises(ValueError, match="no x yet"):
        OnlineRegressor().snapshot()


def test_pickle_and_deepcopy_carry_on_exactly():
    data = ticks(60)
    model = OnlineRegressor(learner="dekf")
    for x, y in data[:30]:
        model.learn_one(x, y)
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        probe = OnlineRegressor(learner="dekf")
        probe.restore(model.snapshot())
        for x, y in data[30:40]:
            assert twin.predict_one(x) == probe.predict_one(x)
            twin.learn_one(x, y)
            probe.learn_one(x, y)
    assert pickle.dumps(model) == pickle.dumps(model)  # deterministic: River compares pickles


def test_keyed_learn_many_equals_learning_tick_by_tick():
    """A batch with repeated keys (learned in order) = the same ticks one call each."""
    g = np.random.default_rng(3)
    keys = ["k0", "k1", "k2", "k1", "k0", "k1", "k3"] * 6
    X = g.normal(size=(len(keys), 2))
    y = X @ np.array([0.5, -1.0]) + 0.1 * g.normal(size=len(keys))
    batched, single = KeyedRegressor(learner="dekf"), KeyedRegressor(learner="dekf")
    batched.learn_many(keys, X, y)
    for i, k in enumerate(keys):
        single.learn_many([k], X[i : i + 1], y[i : i + 1])
    probe = g.normal(size=(4, 2))
    names = ["k0", "k1", "k2", "k3"]
    np.testing.assert_allclose(batched.predict_many(names, probe), single.predict_many(names, probe), rtol=1e-5,
                               atol=1e-6)
    assert batched.features_ == ("x0", "x1")


def test_keyed_frames_dicts_and_arrays_agree():
    g = np.random.default_rng(4)
    keys = ["a", "b", "c"] * 10
    X = pd.DataFrame(g.normal(size=(30, 3)), columns=["u", "v", "w"])
    y = X.sum(axis=1).to_numpy()
    from_frame, from_dicts, from_array = (KeyedRegressor(learner="sgd"), KeyedRegressor(learner="sgd"),
                                          KeyedRegressor(learner="sgd", features=("u", "v", "w")))
    from_frame.learn_many(keys, X[["w", "u", "v"]], y)  # columns by name, in any order
    from_dicts.learn_many(keys, X.to_dict("records"), y)
    from_array.learn_many(keys, X.to_numpy(), y)
    probe = pd.DataFrame([[0.1, 0.2, 0.3], [1.0, 0.0, -1.0]], columns=["u", "v", "w"])
    want = from_frame.predict_many(["a", "b"], probe)
    np.testing.assert_array_equal(from_dicts.predict_many(["a", "b"], probe.to_dict("records")), want)
    np.testing.assert_array_equal(from_array.predict_many(["a", "b"], probe.to_numpy()), want)
    lower, upper = from_frame.predict_interval_many(["a", "b"], probe)
    assert (lower < want).all() and (want < upper).all()
    # a missing column is each key's running mean of it
    means = from_frame.bank_.state["n.x_mean"].numpy()
    rows = [from_frame.bank_.index[k] for k in ("a", "b")]
    filled = probe.assign(v=means[rows, 1].astype(np.float64))
    np.testing.assert_allclose(from_frame.predict_many(["a", "b"], probe.drop(columns="v")),
                               from_frame.predict_many(["a", "b"], filled), rtol=1e-6)
    with pytest.raises(ValueError, match="3 keys but 2 rows"):
        from_frame.predict_many(["a", "b", "c"], probe)
    with pytest.raises(ValueError, match="each key once"):
        from_frame.predict_many(["a", "a"], probe)
    with pytest.raises(ValueError, match="not all finite"):
        from_frame.learn_many(["a", "b"], probe, [1.0, math.nan])
    # an empty batch is a no-op, and keys are names (an int key is its str)
    from_frame.learn_many([], probe.iloc[:0], [])
    assert from_frame.predict_many([], probe.iloc[:0]).shape == (0,)
    assert [len(a) for a in from_frame.predict_interval_many([], [])] == [0, 0]
    from_frame.learn_many([7], probe.iloc[:1], [1.0])
    assert "7" in from_frame.keys


def test_keyed_snapshot_restore_and_refusals():
    g = np.random.default_rng(5)
    keys = [f"s{i}" for i in range(5)] * 8
    X, y = g.normal(size=(40, 2)), g.normal(size=40)
    model = KeyedRegressor()
    model.learn_many(keys, X, y)
    blobs = model.snapshot()
    assert sorted(blobs) == [f"s{i}" for i in range(5)]
    other = KeyedRegressor()
    assert sorted(other.restore(blobs)) == sorted(blobs)
    again = KeyedRegressor()
    assert sorted(again.restore(list(blobs.values()))) == sorted(blobs)  # bare bytes: named by their manifest
    probe = g.normal(size=(5, 2))
    np.testing.assert_array_equal(other.predict_many(model.keys, probe), model.predict_many(model.keys, probe))
    np.testing.assert_array_equal(again.predict_many(model.keys, probe), model.predict_many(model.keys, probe))
    with pytest.raises(KeyError):
        model.snapshot(["nope"])
    bad = dict(blobs)
    bad["s1"] = bad["s1"][:-10]
    fresh = KeyedRegressor()
    with pytest.raises(ValueError, match="1 snapshot.* refused, 4 restored.*truncated"):
        fresh.restore(bad)
    assert "s1" not in fresh.keys


def test_without_river_nothing_imports_it(monkeypatch):
    """With river hidden (as when the extra is not installed), the module loads, its classes keep
    River's conventions themselves, and nothing imports river."""
    monkeypatch.setitem(sys.modules, "river", None)  # `import river` now raises ImportError
    for name in [m for m in sys.modules if m.startswith("river.")]:
        monkeypatch.delitem(sys.modules, name)
    spec = importlib.util.spec_from_file_location("api_without_river", api.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module._Regressor is module._Params
    assert not any(m.startswith("river.") for m in sys.modules)
    model = module.OnlineRegressor(learner="sgd", hidden=8, lr=0.02)
    assert repr(model) == repr(model.clone()) and "lr=0.02" in repr(model)
    assert model.clone({"hidden": 4}).hidden == 4
    for x, y in ticks(20):
        model.learn_one(x, y)
    assert math.isfinite(model.predict_one(ticks(1)[0][0]))
