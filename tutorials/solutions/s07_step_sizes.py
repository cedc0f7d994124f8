"""Solutions to tutorial 7's exercise: a step-size schedule that meets Assumption 3, with the
integral bounds that prove it, checked against ``minilr.optim.robbins_monro`` and numerically.

Run ``check()`` (``python -m pytest tests/test_exercises.py -k s07``).
"""
from __future__ import annotations

import math

import numpy as np

import minilr


def step(k, lam0, k0, p):
    """``lambda_k = lam0 / (1 + k / k0)^p`` (works on arrays of ``k``)."""
    return lam0 / (1.0 + np.asarray(k, dtype=np.float64) / k0) ** p


def squares_bound(lam0, k0, p):
    """An upper bound on ``sum_{k>=0} lambda_k^2`` for ``p > 1/2``: the first term plus
    ``int_0^inf lam0^2 (1 + t/k0)^(-2p) dt = lam0^2 k0 / (2p - 1)`` (the terms decrease, so each
    later term is below the integral over the interval before it)."""
    if p <= 0.5:
        return math.inf          # the integral diverges: p = 1/2 gives a harmonic series of squares
    return lam0 ** 2 * (1.0 + k0 / (2 * p - 1))


def sum_lower_bound(N, lam0, k0, p):
    """A lower bound on ``sum_{k<N} lambda_k``: ``int_0^N lambda(t) dt`` (each term is above the integral
    over the interval after it); it grows without bound in ``N`` for every ``p <= 1``."""
    if p == 1:
        return lam0 * k0 * math.log1p(N / k0)
    return lam0 * k0 * ((1.0 + N / k0) ** (1 - p) - 1.0) / (1 - p)


def check():
    lam0, k0 = 0.1, 100.0
    for p in (1.0, 0.75, 0.6):
        # the formula is minilr's schedule
        lib = minilr.optim.robbins_monro(lam0, decay_steps=k0, power=p)
        for k in (0, 1, 99, 12345, 10**6):
            assert math.isclose(float(step(k, lam0, k0, p)), lib(k), rel_tol=1e-12), (p, k)
        # the bounds hold for the partial sums (the squares' partial sums only increase towards the
        # limit, so each must stay below the bound; the sums of steps must stay above theirs)
        lam = step(np.arange(2_000_000), lam0, k0, p)
        sq = np.cumsum(lam ** 2)
        assert sq[-1] <= squares_bound(lam0, k0, p), (p, sq[-1], squares_bound(lam0, k0, p))
        # the tail beyond 2e6 steps is at most the integral from 2e6 on: the bound is nearly tight
        # for p = 1 and the partial sum must already be within that tail of the bound's integral part
        tail = lam0 ** 2 * k0 / (2 * p - 1) * (1 + 2e6 / k0) ** (1 - 2 * p)
        assert sq[-1] + tail >= squares_bound(lam0, k0, p) - lam0 ** 2, "the bound is far from the sum"
        partial = np.cumsum(lam)
        for N in (10, 1000, 10**5, 2 * 10**6):
            assert partial[N - 1] >= sum_lower_bound(N, lam0, k0, p) * (1 - 1e-12), (p, N)
        # "without bound": the lower bound passes any level for large enough N
        assert sum_lower_bound(10**12, lam0, k0, p) > 10 * sum_lower_bound(10**4, lam0, k0, p) or p == 1.0
    assert sum_lower_bound(10**40, lam0, k0, 1.0) > 5 * sum_lower_bound(10**4, lam0, k0, 1.0)
    # p = 1/2 breaks the square-summability: the library refuses it, the bound is infinite
    assert squares_bound(lam0, k0, 0.5) == math.inf
    try:
        minilr.optim.robbins_monro(lam0, decay_steps=k0, power=0.5)
    except ValueError:
        pass
    else:
        raise AssertionError("robbins_monro accepted power 0.5")


if __name__ == "__main__":
    check()
    print("s07: all checks pass")
