"""Counter-based Gaussian noise (minilr.noise): determinism, counters, accuracy, statistics.

Statistical checks use a fixed key and sample size, exact targets (moments of N(0, 1)) and a
tolerance of 4.0 standard errors, a two-sided false-failure probability of 6e-5 per check under
a normal approximation (with n = 2^22 the sample moments are very close to normal).
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilr import noise

from strategies import seeds

KEY = noise.key_from_seed(np.random.SeedSequence(2024))
Z = 4.0  # standard errors; two-sided P(|N(0,1)| > 4) = 6.3e-5


def test_key_is_a_pure_function_of_the_seed():
    a = noise.key_from_seed(np.random.SeedSequence(5))
    b = noise.key_from_seed(np.random.SeedSequence(5))
    assert (a.origin, a.gamma) == (b.origin, b.gamma)
    assert int(a.gamma) & 1 == 1
    assert (a.origin, a.gamma) != (noise.key_from_seed(np.random.SeedSequence(6)).origin, noise.key_from_seed(np.random.SeedSequence(6)).gamma)


@settings(deadline=None, max_examples=40)
@given(seeds, st.integers(0, 10_000), st.integers(1, 300))
def test_values_depend_on_counter_only(seed, start, n):
    """Any window of counters gives the same values as the corresponding slice of a longer fill."""
    key = noise.key_from_seed(np.random.SeedSequence(seed))
    whole = noise.normal(key, (start + n,))
    np.testing.assert_array_equal(noise.normal(key, (n,), start=start), whole[start:])
    np.testing.assert_array_equal(noise.normal_reference(key, range(start, start + n)), whole[start:])


def test_threads_do_not_change_values(monkeypatch):
    n = 3 * noise._PARALLEL_MIN + 5
    monkeypatch.setenv("MINILR_NOISE_THREADS", "1")
    one = noise.normal(KEY, (n,), start=1)
    monkeypatch.setenv("MINILR_NOISE_THREADS", "3")
    three = noise.normal(KEY, (n,), start=1)
    np.testing.assert_array_equal(one, three)


def test_float64_is_the_same_numbers():
    np.testing.assert_array_equal(noise.normal(KEY, (100,), dtype=np.float64),
                                  noise.normal(KEY, (100,)).astype(np.float64))


def _quantile(u):
    """The standard normal quantile by bisection on math.erfc (float64, no SciPy)."""
    lo, hi = -9.0, 9.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < u:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def test_inverse_cdf_is_accurate_and_exactly_symmetric():
    """The 24-bit level j maps to the quantile of u = (j + 1/2) / 2^24, level 2^24-1-j to minus it."""
    js = np.unique(np.concatenate([np.arange(0, 40), 2**23 + np.arange(-20, 20),
                                   np.geomspace(1, 2**23, 200).astype(np.int64)]))
    with np.errstate(over="ignore"):
        for j in js:
            z = float(noise._gauss_py(np.uint64(int(j) << 8)))
            zm = float(noise._gauss_py(np.uint64((2**24 - 1 - int(j)) << 8)))
            assert zm == -z
            want = _quantile((j + 0.5) / 2**24)
            assert abs(z - want) <= 4e-7 * max(1.0, abs(want)), (j, z, want)


@pytest.fixture(scope="module")
def sample():
    return noise.normal(KEY, (1 << 22,)).astype(np.float64)


def test_moments(sample):
    n = sample.size
    assert abs(sample.mean()) <= Z / math.sqrt(n)
    m2 = (sample ** 2).mean()
    assert abs(m2 - 1) <= Z * math.sqrt(2 / n)  # Var(z^2) = 2
    m4 = (sample ** 4).mean()
    assert abs(m4 - 3) <= Z * math.sqrt(96 / n)  # Var(z^4) = 105 - 9
    assert np.abs(sample).max() < 5.6  # 24-bit levels: the tails end at |z| = 5.54


def test_cdf_at_fixed_points(sample):
    """P(z <= q) at 9 points, each within 4.6 binomial SEs (9 checks x 4.2e-6 each: 4e-5 in all)."""
    n = sample.size
    for q in (-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0):
        p = 0.5 * math.erfc(-q / math.sqrt(2))
        frac = float((sample <= q).mean())
        assert abs(frac - p) <= 4.6 * math.sqrt(p * (1 - p) / n), q  # 4.6 SE: 9 checks, 4e-5 total


def test_streams_of_different_keys_are_uncorrelated(sample):
    other = noise.normal(noise.key_from_seed(np.random.SeedSequence(2025)), (sample.size,))
    r = float(np.mean(sample * other))
    assert abs(r) <= Z / math.sqrt(sample.size)
    lag = float(np.mean(sample[1:] * sample[:-1]))  # neighbours share a hash: still independent
    assert abs(lag) <= Z / math.sqrt(sample.size)
