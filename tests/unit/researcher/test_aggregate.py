import numpy as np
import pytest

from researcher.aggregate import FedAvg


def test_fedavg_is_the_sample_weighted_mean():
    rng = np.random.default_rng(0)
    sites = [(n, {"w": rng.normal(size=(3, 4)).astype(np.float32),
                  "b": rng.normal(size=(4,)).astype(np.float32)}) for n in (10, 30, 60)]
    out = FedAvg().aggregate(sites)
    for name in ("w", "b"):
        expected = sum(n * p[name].astype(np.float64) for n, p in sites) / 100.0
        np.testing.assert_allclose(out[name], expected.astype(np.float32), rtol=1e-6)
        assert out[name].dtype == np.float32


def test_fedavg_accumulates_in_float64():
    # float32 accumulation of a large and many small terms loses the small ones
    big = {"w": np.array([1e8], dtype=np.float32)}
    small = {"w": np.array([1.0], dtype=np.float32)}
    out = FedAvg().aggregate([(1, big)] + [(1, small)] * 9)
    assert out["w"][0] == pytest.approx((1e8 + 9) / 10, rel=1e-7)


def test_fedavg_refuses_nothing_to_aggregate():
    with pytest.raises(ValueError):
        FedAvg().aggregate([])
