"""Copy chunking (``chunk=``): deterministic per seed, the same noise as unchunked, unbiased,
and peak memory flat in the number of copies.

The statistical test has an exact target: for a single Linear layer with squared loss the
smoothed loss ``E_eps[L]`` differs from the noiseless loss by a constant, so LR and ES are
unbiased for the exact gradient (``minilr.reference``). The mean of R = 300 independent chunked
estimates must lie within T = 4.8 estimated standard errors of it, per coordinate: with 8
coordinates x 3 configurations (Bonferroni) and the t-distribution with 299 degrees of freedom,
the false-failure probability is below 1e-4.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import minilr

EST = ("lr", "alr", "es", "aes", "hybrid", "a-hybrid")


def _mlp(dtype=np.float32, learn_sigma=False):
    return minilr.MLP([6, 9, 7, 3], seed=1, dtype=dtype, learn_sigma=learn_sigma)


def _batch(B=5):
    rng = np.random.default_rng(0)
    return rng.standard_normal((B, 6)), rng.integers(0, 3, B)


@pytest.mark.parametrize("est", EST)
@pytest.mark.parametrize("chunk", [None, 6])
def test_same_seed_same_bits(est, chunk):
    model, (x, y) = _mlp(), _batch()
    kw = dict(estimator=est, copies=20, seed=11, chunk=chunk, antithetic=True)
    g1 = minilr.estimate_gradient(model, x, y, **kw)
    g2 = minilr.estimate_gradient(model, x, y, **kw)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])
    g3 = minilr.estimate_gradient(model, x, y, **dict(kw, seed=12))
    assert any(not np.array_equal(g1[k], g3[k]) for k in g1)


@pytest.mark.parametrize("est", EST)
@pytest.mark.parametrize("antithetic", [False, True])
def test_chunks_see_the_same_noise_as_unchunked(est, antithetic):
    """Without the baseline (the only per-chunk quantity) chunked == unchunked up to rounding."""
    model, (x, y) = _mlp(np.float64, learn_sigma=True), _batch()
    kw = dict(estimator=est, copies=30, seed=4, baseline=False, antithetic=antithetic)
    whole = minilr.estimate_gradient(model, x, y, **kw)
    for chunk in (2, 8, 14):
        part = minilr.estimate_gradient(model, x, y, chunk=chunk, **kw)
        for k in whole:
            np.testing.assert_allclose(part[k], whole[k], rtol=1e-10, atol=1e-12, err_msg=f"{k} chunk={chunk}")


def test_alr_regenerated_sigma_score_matches_lr():
    """ALR keeps no |eps|; it draws eps again for the sigma gradient. LR kept it: same numbers."""
    model, (x, y) = _mlp(np.float64, learn_sigma=True), _batch()
    for chunk in (None, 8):
        lr = minilr.estimate_gradient(model, x, y, estimator="lr", copies=40, seed=2, chunk=chunk)
        alr = minilr.estimate_gradient(model, x, y, estimator="alr", copies=40, seed=2, chunk=chunk)
        for k in lr:
            if k.endswith("sigma"):
                np.testing.assert_allclose(alr[k], lr[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("est,copies,chunk,antithetic", [
    ("lr", 10, 4, False),
    ("lr", 12, 4, True),
    ("es", 10, 4, False),
])
def test_chunked_estimate_is_unbiased(est, copies, chunk, antithetic):
    rng = np.random.default_rng(7)
    model = minilr.Sequential([minilr.Linear(3, 2)], sigma=0.3, seed=3, dtype=np.float64)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    exact = minilr.reference.gradient(model, x, y, loss="mse")
    R = 300
    draws = {k: [] for k in ("0.weight", "0.bias")}
    for s in range(R):
        g = minilr.estimate_gradient(model, x, y, estimator=est, copies=copies, chunk=chunk, seed=s,
                                     loss="mse", antithetic=antithetic)
        for k in draws:
            draws[k].append(g[k])
    for k, v in draws.items():
        v = np.array(v)
        se = v.std(axis=0, ddof=1) / np.sqrt(R)
        assert np.all(np.abs(v.mean(axis=0) - exact[k]) <= 4.8 * se), (k, v.mean(axis=0), exact[k], se)


def _peak(model, x, y, est, copies, chunk):
    minilr.estimate_gradient(model, x, y, estimator=est, copies=8, seed=0)  # compile, warm caches
    tracemalloc.start()
    try:
        minilr.estimate_gradient(model, x, y, estimator=est, copies=copies, chunk=chunk, seed=0)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("est", ["lr", "alr", "a-hybrid"])
def test_peak_memory_is_flat_in_copies(est):
    """NumPy reports its allocations to tracemalloc; 8x the copies in chunks of 200: <= 1.2x peak."""
    model = minilr.MLP([20, 32, 32, 4], seed=0)
    x, y = np.random.default_rng(0).standard_normal((10, 20)), np.arange(10) % 4
    small = _peak(model, x, y, est, 200, 200)
    big = _peak(model, x, y, est, 1600, 200)
    assert big <= 1.2 * small, (big, small)
