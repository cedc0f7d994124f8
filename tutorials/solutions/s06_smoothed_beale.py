"""Solution to tutorial 6's exercise 1: LR on Beale's function estimates the smoothed gradient.

LR perturbs the point p = (x, y) by sigma eps and weighs the noise by the function value, so its
mean is the gradient of F(p) = E[f(p + sigma eps)], not of f. F's gradient is E[grad f(p + sigma
eps)], a polynomial's expectation, which Gauss-Hermite quadrature with enough nodes computes
exactly; at f's minimum (3, 1/2) it is not zero, so LR and ALR stop elsewhere.
"""
from __future__ import annotations

import numpy as np

C = (1.5, 2.25, 2.625)


def beale(x, y):
    return sum((c - x + x * y ** (k + 1)) ** 2 for k, c in enumerate(C))


def lr_gradient(f, p, sigma, copies, rng):
    """LR estimate of grad E[f(p + sigma eps)] from ``copies`` evaluations, leave-one-out baseline."""
    eps = rng.standard_normal((copies, 2))
    values = f(p[0] + sigma * eps[:, 0], p[1] + sigma * eps[:, 1])
    centred = values - (values.sum() - values) / (copies - 1)   # baseline: the other copies' mean
    return centred @ eps / (copies * sigma)


def _beale_grad(x, y):
    """Hand-written gradient of f (as in tutorial 6), vectorised."""
    gx = gy = 0.0
    for k, c in enumerate(C, start=1):
        r = c - x + x * y ** k
        gx = gx + 2 * r * (y ** k - 1)
        gy = gy + 2 * r * x * k * y ** (k - 1)
    return gx, gy


def _smoothed_gradient(p, sigma, nodes=16):
    """E[grad f(p + sigma eps)] by Gauss-Hermite quadrature: the gradient is a polynomial of degree
    at most 6 in y and 2 in x, and n nodes per axis are exact to degree 2n - 1, so 16 give it exactly."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    X, Y = p[0] + sigma * z[:, None], p[1] + sigma * z[None, :]
    gx, gy = _beale_grad(X, Y)
    W = w[:, None] * w[None, :]
    return np.array([np.sum(gx * W), np.sum(gy * W)])


def check():
    """Compare the LR estimate with the exact smoothed gradient; AssertionError if they disagree."""
    rng = np.random.default_rng(0)
    sigma, K, R = 0.1, 200, 300
    # the quadrature itself against central differences of f at sigma -> 0 (a sanity check of the
    # independent answer: with sigma = 1e-8 the smoothing is negligible)
    p = np.array([2.0, 0.3])
    h = 1e-6
    fd = np.array([(beale(*(p + h * e)) - beale(*(p - h * e))) / (2 * h) for e in np.eye(2)])
    assert np.allclose(_smoothed_gradient(p, 1e-8), fd, rtol=1e-5, atol=1e-5)
    for p in (np.array([2.0, 0.3]), np.array([3.0, 0.5])):
        exact = _smoothed_gradient(p, sigma)
        est = np.array([lr_gradient(beale, p, sigma, K, rng) for _ in range(R)])
        se = est.std(axis=0, ddof=1) / np.sqrt(R)
        # each coordinate of the mean of R estimates within 5 standard errors of the exact value
        # (false alarm below 1e-5 per coordinate, 4 coordinates)
        assert np.all(np.abs(est.mean(axis=0) - exact) < 5 * se), (p, est.mean(axis=0), exact, se)
    # at f's minimum the true gradient is zero but the smoothed one is not: the estimate's mean is
    # many standard errors away from zero (here more than 10), so LR keeps moving there
    p = np.array([3.0, 0.5])
    assert np.allclose(_beale_grad(*p), 0.0)
    assert np.linalg.norm(est.mean(axis=0)) > 10 * np.linalg.norm(se)


if __name__ == "__main__":
    check()
    print("s06: all checks passed")
