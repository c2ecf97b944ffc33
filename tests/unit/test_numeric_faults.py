"""Numeric faults through the pipeline: series that explode (1e30, then 1e300, beyond float32),
flat-line for thousands of ticks, spike by orders of magnitude, or carry NaN features. No NaN or
inf is ever published, the affected key is reset (counted) and recovers, and the other keys'
predictions are exactly what they are without the faulty neighbours."""

from __future__ import annotations

import itertools
import math

import numpy as np
import orjson
import pytest

from streamer.config import Settings
from streamer.pipeline import Pipeline, Record, persistence_forecast

N = {"sgd": 2400, "ekf": 2200, "pf": 2200}  # faults end 600 ticks before the end: the recovery window


def series(kind: str, n: int) -> np.ndarray:
    t = np.arange(n)
    v = np.sin(t / 6.0)
    if kind == "explode":  # grows to 1e30, sits at 1e300 (inf in float32), then comes back
        v[300:400] = 10.0 ** np.linspace(1, 30, 100)
        v[400:420] = 1e300
    elif kind == "flat":  # a frozen sensor for thousands of ticks
        v[100 : n - 600] = 5.0
    elif kind == "spikes":  # single ticks off by orders of magnitude
        v[200::97] *= 1e6
        v[250::89] = -1e12
        v[n - 600 :] = np.sin(t[n - 600 :] / 6.0)
    return v


def run(learner: str, kinds: list[str], n: int, horizons: str = "1") -> tuple[dict[str, list[dict]], int, int]:
    p = Pipeline(Settings(lags=4, hidden=8, learner=learner, particles=16, horizons=horizons))
    data = {k: series(k, n) for k in kinds}
    offsets = itertools.count()
    preds: dict[str, list[dict]] = {k: [] for k in kinds}
    dead = 0
    for t in range(n):
        records = [Record("ticks", 0, next(offsets), None,
                          orjson.dumps({"key": k, "ts": t, "value": float(data[k][t])})) for k in kinds]
        if "normal" in kinds and t % 50 == 7:  # a NaN feature: refused, the key's other ticks go on
            records.append(Record("ticks", 0, next(offsets), None,
                                  b'{"key": "normal", "ts": 0, "value": 1.0, "features": {"f": NaN}}'))
        out = p.process(records)
        dead += len(out.dead)
        for o in out.predictions:
            q = orjson.loads(o.value)
            preds[q["key"]].append(q)
    return preds, p.resets_total, dead


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["sgd", "ekf", "pf"])
def test_faulty_series_never_publish_non_finite_and_recover_without_touching_others(learner):
    n = N[learner]
    kinds = ["normal", "explode", "flat", "spikes"]
    preds, resets, dead = run(learner, kinds, n)
    assert dead == len([t for t in range(n) if t % 50 == 7])  # every NaN-feature tick dead-lettered
    for k in kinds:
        assert len(preds[k]) == n
        for q in preds[k]:
            assert all(isinstance(q[f], float) and math.isfinite(q[f]) for f in ("prediction", "lower", "upper")), q
            assert q["lower"] <= q["prediction"] <= q["upper"]
    assert resets >= 20  # at least the ticks at 1e300 reset their key
    fallbacks = [q for q in preds["explode"] if q["model"] == "persistence"]
    explode = series("explode", n)
    assert fallbacks and all(q["prediction"] == explode[q["seq"] - 1] for q in fallbacks)  # the tick's own value

    # recovery: over the last 300 ticks every affected key beats persistence again
    for k in ("explode", "flat", "spikes"):
        actual = series(k, n)
        pred = np.array([q["prediction"] for q in preds[k]])
        mse = np.mean((pred[-301:-1] - actual[-300:]) ** 2)
        persistence = np.mean((actual[-301:-1] - actual[-300:]) ** 2)
        assert mse < persistence, (k, mse, persistence)

    # isolation: the healthy key's predictions are those of a run without its neighbours (to float32
    # rounding: a batch of 4 and a batch of 1 may take different matrix kernels)
    alone, _, _ = run(learner, ["normal"], n)
    np.testing.assert_allclose([q["prediction"] for q in preds["normal"]], [q["prediction"] for q in alone["normal"]],
                               rtol=1e-4, atol=1e-5)
    assert all(q["model"] != "persistence" for q in preds["normal"][1:])  # the first forecast has no level to scale


@pytest.mark.slow
def test_faulty_series_never_publish_a_non_finite_forecast_at_any_horizon():
    kinds = ["normal", "explode", "flat", "spikes"]
    preds, resets, _ = run("ensemble", kinds, 1500, horizons="1,5,20")
    assert resets >= 20
    for k in kinds:
        assert len(preds[k]) == 1500
        for q in preds[k]:
            assert [h["h"] for h in q["horizons"]] == [1, 5, 20]
            for h in q["horizons"]:
                assert all(isinstance(h[f], float) and math.isfinite(h[f]) for f in ("prediction", "lower", "upper")), q
                assert h["lower"] <= h["prediction"] <= h["upper"], q
    # the healthy key's forecasts 20 ahead beat persistence's over its last 300 targets
    actual = series("normal", 1500)
    f20 = np.array([q["horizons"][2]["prediction"] for q in preds["normal"]])
    mse = np.mean((f20[-320:-20] - actual[-300:]) ** 2)
    persistence = np.mean((actual[-320:-20] - actual[-300:]) ** 2)
    assert mse < persistence, (mse, persistence)


def test_persistence_fallback_stays_in_float_range():
    assert persistence_forecast(2.0, 1.0) == (2.0, 2.0 - 1.645, 2.0 + 1.645)
    v, lo, hi = persistence_forecast(1.7e308, -1.7e308)
    assert v == 1.7e308 and math.isfinite(lo) and math.isfinite(hi) and lo <= v <= hi


def test_one_wild_tick_cannot_poison_the_error_gauge_and_prev_error_stays_a_number():
    """A valid tick of 1e200 among normal ones, later 1e308 then -1e308: the rolling MSE stays finite
    and comes back to where it was, and every prediction after a key's first carries a finite
    prev_error (orjson writes inf as null, which the README keeps for a key's first tick)."""
    from streamer.metrics import Metrics

    p, m = Pipeline(Settings(lags=4, hidden=8)), Metrics("sgd", "lstm", "test")
    values = [math.sin(t / 6.0) for t in range(1500)]
    values[600], values[900], values[901] = 1e200, 1e308, -1e308
    gauge, preds = [], []
    for t, v in enumerate(values):
        out = p.process([Record("ticks", 0, t, b"s", orjson.dumps({"key": "s", "ts": t, "value": v}))])
        m.scored(out.scaled_errors, out.hits)
        gauge.append(m.mse.labels("sgd")._value.get())
        preds += [orjson.loads(o.value) for o in out.predictions]
    assert all(math.isfinite(g) for g in gauge)
    assert all(isinstance(q["prev_error"], float) and math.isfinite(q["prev_error"]) for q in preds[1:])
    assert preds[0]["prev_error"] is None
    before, after = gauge[599], gauge[-1]
    # a capped square moves it by at most decay * cap = 1; a wild tick costs itself and the L = 4 ticks
    # that carry it in their lags, each event at most 5 (the two at 900 and 901 overlap)
    assert max(gauge[600:900]) <= before + 5 and max(gauge[900:]) <= before + 10
    assert after < 2 * before + 0.05, (before, after)  # and it fades: back near the level before
