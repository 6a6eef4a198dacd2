"""Fréchet distance and KID: closed forms, streaming statistics, and the reference packages' own functions."""

import warnings

import numpy as np
import pytest
import torch

from fsgan_fast.metrics.frechet import FeatureStats, fid_from_stats, frechet_distance
from fsgan_fast.metrics.kid import kid, mmd2_unbiased


def _spd(d, rng):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_diagonal_gaussians_closed_form():
    # diagonal covariances commute: tr sqrt(S1 S2) = sum sqrt(s1 s2), so d² = |dmu|² + sum (sqrt s1 - sqrt s2)²
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)


def test_random_spd_closed_forms():
    rng = np.random.default_rng(0)
    s = _spd(16, rng)
    mu = rng.standard_normal(16)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9  # identical Gaussians
    # scaled covariance: sqrt(S * c²S) = c S, so d² = tr S (1 - c)²
    assert frechet_distance(mu, s, mu + 1, 4 * s) == pytest.approx(16 + np.trace(s), rel=1e-10)


def test_matches_scipy_sqrtm_and_pytorch_fid():
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    rng = np.random.default_rng(1)
    a = rng.standard_normal((400, 32)) @ rng.standard_normal((32, 32))
    b = rng.standard_normal((300, 32)) * 1.5 + 0.3
    mine = fid_from_stats(FeatureStats.of(a), FeatureStats.of(b))
    ref = fid_score.calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert mine == pytest.approx(float(ref), rel=1e-6)


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((250, 8)) * 3 + 100  # a large mean: the shifted sums must not cancel badly
    stream = FeatureStats()
    for chunk in np.array_split(x, 7):
        stream.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(stream.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stream.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    assert stream.n == 250


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_stats(FeatureStats.of(np.ones((1, 4))), FeatureStats.of(np.ones((5, 4))))
    with pytest.raises(ValueError, match="dimensions"):
        FeatureStats.of(np.ones((3, 4))).update(np.ones((3, 5)))
    with pytest.raises(ValueError, match="differ"):
        fid_from_stats(FeatureStats.of(np.ones((3, 4))), FeatureStats.of(np.ones((3, 5))))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        FeatureStats().update(np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        FeatureStats().update(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="different sizes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    rng = np.random.default_rng(3)
    with pytest.warns(RuntimeWarning, match="singular"):  # N <= D
        fid_from_stats(FeatureStats.of(rng.standard_normal((5, 10))), FeatureStats.of(rng.standard_normal((6, 10))))


def _direct_mmd2(x, y):
    # the textbook O(n²) U-statistic, term by term
    k = lambda a, b: (a @ b / x.shape[1] + 1) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_unbiased_matches_direct_computation():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((20, 6)), rng.standard_normal((20, 6)) + 0.5
    assert mmd2_unbiased(x, y) == pytest.approx(_direct_mmd2(x, y), rel=1e-10)


def test_kid_matches_torch_fidelity():
    metric_kid = pytest.importorskip("torch_fidelity.metric_kid")
    rng = np.random.default_rng(5)
    a = torch.from_numpy(rng.standard_normal((120, 64)))
    b = torch.from_numpy(rng.standard_normal((90, 64)) * 1.2 + 0.1)
    ref = metric_kid.kid_features_to_metric(a, b, kid_subsets=10, kid_subset_size=50, rng_seed=7, verbose=False,
                                            kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                            kid_kernel_poly_coef0=1)
    mine = kid(a, b, subsets=10, subset_size=50, seed=7)
    assert mine["kid_mean"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)
    assert mine["kid_std"] == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-6)


def test_kid_bad_input():
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match="subset_size 20 exceeds"):
        kid(x, x, subset_size=20)
    with pytest.raises(ValueError, match="differ"):
        kid(x, np.zeros((10, 5)), subset_size=5)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        kid(np.zeros(10), x, subset_size=5)


def test_no_warning_when_well_conditioned():
    rng = np.random.default_rng(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fid_from_stats(FeatureStats.of(rng.standard_normal((50, 4))), FeatureStats.of(rng.standard_normal((50, 4))))
