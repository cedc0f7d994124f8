"""Solution to tutorial 2's exercise 1: the sigma that minimises LR's error at a fixed number of copies.

The problem: estimate f'(0) = 1 for f(z) = exp(z) from K noisy evaluations f(sigma eps_k).

* Without a baseline, g = mean_k f(sigma eps_k) eps_k / sigma. Its bias is exp(sigma^2/2) - 1 (LR
  estimates the smoothed derivative), growing with sigma; its variance is about f(0)^2 / (sigma^2 K),
  exploding as sigma shrinks. The mean squared error bias^2 + variance has a minimum in between.
* With the leave-one-out baseline the estimate is K/(K-1) times the sample covariance of f and eps,
  over sigma. The loss's constant part no longer multiplies the noise: the variance tends to
  2 f'(0)^2 / K as sigma -> 0 while the bias still vanishes, so (in exact arithmetic) smaller is better.
"""
from __future__ import annotations

import numpy as np


def lr_estimates(sigma, copies, reps, rng, *, baseline):
    """``reps`` independent K-copy LR estimates of d/dz exp(z) at z = 0."""
    eps = rng.standard_normal((reps, copies))
    f = np.exp(sigma * eps)
    if baseline:
        # leave-one-out: subtract the mean of the other copies' values
        f = f - (f.sum(axis=1, keepdims=True) - f) / (copies - 1)
    return np.mean(f * eps, axis=1) / sigma


def simulated_mse(sigma, copies, reps, rng, *, baseline):
    """Mean squared error of the estimate against the true derivative 1, and its standard error."""
    sq = (lr_estimates(sigma, copies, reps, rng, baseline=baseline) - 1.0) ** 2
    return float(sq.mean()), float(sq.std(ddof=1) / np.sqrt(reps))


def best_sigma(sigmas, copies, reps, rng, *, baseline):
    """The sigma of ``sigmas`` with the smallest simulated error, and all the ``(mse, se)`` pairs."""
    results = [simulated_mse(s, copies, reps, rng, baseline=baseline) for s in sigmas]
    return sigmas[int(np.argmin([mse for mse, _ in results]))], results


def _exact_mse(sigma, K, *, baseline):
    """Closed form from the moments of exp(sigma eps): E[e^{s eps} eps] = s e^{s^2/2},
    E[e^{s eps} eps^2] = (1+s^2) e^{s^2/2}, E[e^{2 s eps} eps^2] = (1+4 s^2) e^{2 s^2}."""
    s2 = sigma ** 2
    bias = np.exp(s2 / 2) - 1.0      # both estimators are unbiased for the smoothed derivative e^{s^2/2}
    if not baseline:
        var = ((1 + 4 * s2) * np.exp(2 * s2) / s2 - np.exp(s2)) / K
    else:
        # the unbiased sample covariance s_xy of X = e^{sigma eps}, Y = eps has
        # Var = (mu22 - (K-2)/(K-1) cov^2) / K + var_x var_y / (K (K-1))
        mu22 = (1 + 4 * s2) * np.exp(2 * s2) - (1 + 2 * s2) * np.exp(s2)   # E[(X - EX)^2 Y^2]
        cov2 = s2 * np.exp(s2)
        var_x = np.exp(2 * s2) - np.exp(s2)
        var = ((mu22 - (K - 2) / (K - 1) * cov2) / K + var_x / (K * (K - 1))) / s2
    return bias ** 2 + var


def check():
    """Compare the simulation with the closed form; AssertionError if they disagree."""
    sigmas = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0]
    K, R = 100, 4000
    for baseline in (False, True):
        best, results = best_sigma(sigmas, K, R, np.random.default_rng(0), baseline=baseline)
        exact = np.array([_exact_mse(s, K, baseline=baseline) for s in sigmas])
        for s, (mse, se), ex in zip(sigmas, results, exact):
            # each simulated error is a mean of R squared errors: within 5 standard errors of the
            # closed form (a false alarm has probability below 1e-5 per value, 16 values)
            assert abs(mse - ex) < 5 * se, (baseline, s, mse, ex, se)
        # the chosen sigma is as good as the true best up to the simulation's noise: its exact
        # error exceeds the grid's minimum by less than both simulated values' 5-standard-error bands
        j, j_star = sigmas.index(best), int(np.argmin(exact))
        assert exact[j] <= exact[j_star] + 5 * (results[j][1] + results[j_star][1]), (baseline, best)
        if baseline:
            # the answer to "why": with the baseline the error only grows with sigma ...
            assert j_star == 0 and np.all(np.diff(exact) > 0)
        else:
            # ... without it there is a best sigma strictly inside the grid
            assert 0 < j_star < len(sigmas) - 1


if __name__ == "__main__":
    check()
    print("s02: all checks passed")
