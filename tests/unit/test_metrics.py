"""The daemon's metrics helpers against prometheus_client's own behaviour."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from streamer.metrics import LATENCY_BUCKETS, observe_many


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    one, many = CollectorRegistry(), CollectorRegistry()
    return (one, Histogram("lat_seconds", "latency", buckets=LATENCY_BUCKETS, registry=one),
            many, Histogram("lat_seconds", "latency", buckets=LATENCY_BUCKETS, registry=many))


def test_observe_many_scrapes_as_one_observe_each():
    """Bucket bounds themselves (a <= bound falls in that bucket), values past the last finite bound, zero,
    a negative value, an empty batch and NaN (sum only) read back exactly as observe-per-value would."""
    rng = np.random.default_rng(0)
    batches = [np.array(LATENCY_BUCKETS), np.array([0.0, -1.0, 1e6, np.nextafter(0.001, 1.0)]),
               np.array([]), rng.exponential(0.05, size=1000), np.array([np.nan, 0.5])]
    one_reg, one, many_reg, many = _pair()
    for i, batch in enumerate(batches):
        for a in batch.tolist():
            one.observe(a)
        observe_many(many, batch)
        got, want = _samples(many_reg), _samples(one_reg)
        assert {k: v for k, v in got.items() if k != "sum"} == {k: v for k, v in want.items() if k != "sum"}
        if i < len(batches) - 1:  # summed in another order: equal to rounding
            assert np.isclose(got["sum"], want["sum"], rtol=1e-12, atol=0)
        else:
            assert np.isnan(got["sum"]) and np.isnan(want["sum"])


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    """Bucket counts (cumulative, by bound), the count and the sum of the one histogram in registry."""
    out = {}
    for sample in next(iter(registry.collect())).samples:
        if sample.name.endswith("_bucket"):
            out[sample.labels["le"]] = sample.value
        elif sample.name.endswith("_count"):
            out["count"] = sample.value
        elif sample.name.endswith("_sum"):
            out["sum"] = sample.value
    return out


def test_observe_many_without_the_client_internals_falls_back_to_observe():
    class Plain:  # a histogram-like object with observe only (another client version)
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, a: float) -> None:
            self.seen.append(a)

    h = Plain()
    observe_many(h, np.array([0.1, 0.2]))  # type: ignore[arg-type]
    assert h.seen == [0.1, 0.2]
