"""Solutions to tutorial 1's exercises: the score of a Gaussian, and the antithetic LR estimator.

1. For :math:`z \\sim \\mathcal{N}(\\mu, \\sigma^2)`, :math:`\\log p = -\\log\\sigma - (z-\\mu)^2/(2\\sigma^2) + c`, so
   :math:`\\partial_\\mu \\log p = (z-\\mu)/\\sigma^2 = \\varepsilon/\\sigma` and
   :math:`\\partial_\\sigma \\log p = -1/\\sigma + (z-\\mu)^2/\\sigma^3 = (\\varepsilon^2-1)/\\sigma`.
2. With mirrored pairs and the squared loss, :math:`\\mathcal{L}^\\pm = \\tfrac12\\lVert r \\pm \\sigma\\varepsilon\\rVert^2`
   (:math:`r = \\mu - y`), so :math:`(\\mathcal{L}^+-\\mathcal{L}^-)/(2\\sigma) = r\\cdot\\varepsilon`: the pair's estimate
   :math:`(r\\cdot\\varepsilon)\\,\\varepsilon\\,\\tilde x^\\top` has mean :math:`r\\,\\tilde x^\\top` and no :math:`\\sigma` in it.
"""
from __future__ import annotations

import numpy as np


def score_mu(z, mu, sigma):
    """d log N(z; mu, sigma^2) / d mu."""
    return (z - mu) / sigma ** 2


def score_sigma(z, mu, sigma):
    """d log N(z; mu, sigma^2) / d sigma."""
    return ((z - mu) ** 2 / sigma ** 2 - 1.0) / sigma


def antithetic_lr(W, b, x, y, sigma, pairs, rng):
    """LR gradient of the mean squared loss 0.5 ||x W^T + b + sigma eps - y||^2 with mirrored noise.

    Every sample gets ``pairs`` pairs ``+eps, -eps``; each pair contributes
    ``(L+ - L-) / (2 sigma) * eps`` times the layer's input (and 1 for the bias).
    Returns ``(grad_W, grad_b)``.
    """
    mu = x @ W.T + b
    eps = rng.standard_normal((pairs,) + mu.shape)
    loss_plus = 0.5 * np.sum((mu + sigma * eps - y) ** 2, axis=-1)
    loss_minus = 0.5 * np.sum((mu - sigma * eps - y) ** 2, axis=-1)
    wts = ((loss_plus - loss_minus) / (2 * sigma))[..., None] * eps        # (pairs, samples, m)
    n = x.shape[0]
    return np.einsum("kni,nj->ij", wts, x) / (pairs * n), wts.sum(axis=(0, 1)) / (pairs * n)


def _log_density(z, mu, sigma):
    return -np.log(sigma) - 0.5 * ((z - mu) / sigma) ** 2 - 0.5 * np.log(2 * np.pi)


def check():
    """Compare each function with an independent answer; AssertionError if they disagree."""
    rng = np.random.default_rng(0)
    # 1a. the derivation against central differences of log p (no sampling: a deterministic check;
    # the O(h^2) error of a central difference with h=1e-5 is far below the 1e-6 tolerance)
    z, mu, sigma, h = rng.standard_normal(50) * 2, 0.3, 0.7, 1e-5
    fd_mu = (_log_density(z, mu + h, sigma) - _log_density(z, mu - h, sigma)) / (2 * h)
    fd_sigma = (_log_density(z, mu, sigma + h) - _log_density(z, mu, sigma - h)) / (2 * h)
    assert np.allclose(score_mu(z, mu, sigma), fd_mu, rtol=1e-6, atol=1e-6)
    assert np.allclose(score_sigma(z, mu, sigma), fd_sigma, rtol=1e-6, atol=1e-6)

    # 1b. by sampling: both scores have mean zero, and E[f(z) s(z)] is the derivative of E[f(z)] =
    # mu^2 + sigma^2 for f(z) = z^2, i.e. 2 mu and 2 sigma. Each mean is compared with its target
    # within 5 standard errors (estimated from the same draws): a false alarm has probability
    # below 1e-6 per comparison, while a wrong score (e.g. a missing 1/sigma) misses by hundreds.
    z = mu + sigma * rng.standard_normal(1_000_000)
    for values, target in ((score_mu(z, mu, sigma), 0.0), (score_sigma(z, mu, sigma), 0.0),
                           (z ** 2 * score_mu(z, mu, sigma), 2 * mu), (z ** 2 * score_sigma(z, mu, sigma), 2 * sigma)):
        se = values.std() / np.sqrt(values.size)
        assert abs(values.mean() - target) < 5 * se, (values.mean(), target, se)

    # 2. the antithetic estimator on a linear layer with squared loss
    n, d, m = 64, 5, 3
    x = rng.standard_normal((n, d))
    W, b, y = rng.standard_normal((m, d)), rng.standard_normal(m), rng.standard_normal((n, m))
    r = x @ W.T + b - y
    exact = np.concatenate([(r.T @ x / n).ravel(), r.mean(axis=0)])   # closed form (tutorial 1)
    # (a) the pair's weight is r . eps whatever sigma: the same noise gives the same estimate
    # (up to float64 rounding of the (L+ - L-) difference, relative 1e-9 at these sizes)
    gW1, gb1 = antithetic_lr(W, b, x, y, 0.1, 10, np.random.default_rng(1))
    gW2, gb2 = antithetic_lr(W, b, x, y, 1.0, 10, np.random.default_rng(1))
    assert np.allclose(gW1, gW2, rtol=1e-6, atol=1e-9) and np.allclose(gb1, gb2, rtol=1e-6, atol=1e-9)
    # (b) unbiased: the mean of R independent estimates is off the closed form by about its standard
    # error se = sqrt(trace of the covariance / R) (18 numbers: the norm of the error over se is
    # about 1 for an unbiased estimator, above 2 with probability below 1e-3)
    R = 400
    est = np.array([np.concatenate([gW.ravel(), gb]) for gW, gb in
                    (antithetic_lr(W, b, x, y, 0.1, 5, rng) for _ in range(R))])
    se = np.sqrt(np.sum(est.var(axis=0, ddof=1)) / R)
    assert np.linalg.norm(est.mean(axis=0) - exact) < 2 * se, (np.linalg.norm(est.mean(axis=0) - exact), se)


if __name__ == "__main__":
    check()
    print("s01: all checks passed")
