"""Solution to tutorial 4's exercise 1: antithetic ES and its dimension law.

On f(theta) = 0.5 ||theta - theta*||^2 (gradient g = theta - theta*), a mirrored pair gives
(f(theta + s E) - f(theta - s E)) / (2 s) = g . E exactly, so each copy contributes (g . E) E.
Its mean is E[E E^T] g = g, and with E[E_i E_j E_k E_l] = d_ij d_kl + d_ik d_jl + d_il d_jk,

    E ||(g . E) E||^2 = E[(g . E)^2 ||E||^2] = (D + 2) ||g||^2,

so the squared error of one copy is (D + 1) ||g||^2, and over K copies the mean squared relative
error is (D + 1) / K.
"""
from __future__ import annotations

import numpy as np


def es_gradient(f, theta, sigma, copies, rng):
    """Antithetic ES estimate of grad f at ``theta`` (a vector) from ``copies`` mirrored pairs."""
    E = rng.standard_normal((copies, theta.size))
    diff = np.array([f(theta + sigma * e) - f(theta - sigma * e) for e in E]) / (2 * sigma)
    return diff @ E / copies


def mean_squared_relative_error(D, copies, reps, rng, *, sigma=0.1):
    """Average over ``reps`` of ||g_hat - g||^2 / ||g||^2 on a random quadratic in D dimensions,
    with the per-repetition values (to compute a standard error)."""
    theta_star = rng.standard_normal(D)
    theta = rng.standard_normal(D)
    g = theta - theta_star

    def f(t):
        return 0.5 * np.sum((t - theta_star) ** 2)

    vals = np.array([np.sum((es_gradient(f, theta, sigma, copies, rng) - g) ** 2) / np.sum(g ** 2)
                     for _ in range(reps)])
    return float(vals.mean()), vals


def check():
    """Compare with the closed form (D + 1) / K and the exact gradient; AssertionError if they disagree."""
    rng = np.random.default_rng(0)
    K, R = 20, 300
    for D in (1, 10, 100):
        mse, vals = mean_squared_relative_error(D, K, R, rng)
        se = vals.std(ddof=1) / np.sqrt(R)
        # a mean of R = 300 values: within 5 standard errors of the closed form (false alarm below
        # 1e-5 per D); a forgotten "+1" (D/K) misses at D = 1 by 1/K = 0.05, about 6 se there
        assert abs(mse - (D + 1) / K) < 5 * se, (D, mse, (D + 1) / K, se)
    # unbiased: the mean of many estimates approaches the exact gradient. In D = 5 with K = 20
    # copies, each estimate's error has covariance (||g||^2 I + g g^T) / K, so the mean of R of them
    # has squared error about 6 ||g||^2 / (K R) in expectation: allow 4x that (chi-square with 5
    # degrees of freedom, weighted; exceeded with probability below 1e-3)
    D, R = 5, 400
    theta_star, theta = rng.standard_normal(D), rng.standard_normal(D)
    g = theta - theta_star
    est = np.mean([es_gradient(lambda t: 0.5 * np.sum((t - theta_star) ** 2), theta, 0.1, K, rng)
                   for _ in range(R)], axis=0)
    assert np.sum((est - g) ** 2) < 4 * 6 * np.sum(g ** 2) / (K * R), (est, g)


if __name__ == "__main__":
    check()
    print("s04: all checks passed")
