"""Solutions to tutorial 3's exercises: ALR for one linear layer by hand, its exact expectation
under squared loss, where its iteration stops, and the plateau estimator.

Run ``check()`` (``python -m pytest tests/test_exercises.py -k s03``).
"""
from __future__ import annotations

import numpy as np

import minilr
from minilr.estimators.lr import alr_sums, lr_sums

C = np.sqrt(2 / np.pi)  # E|eps| for eps ~ N(0, 1)


def lr_linear(L, x, eps, sigma):
    """LR's (Eq. 1) weight and bias gradient of one Linear layer, averaged over the rows.

    ``L``: (K, B) centred losses; ``x``: (B, d) the layer input shared by the copies; ``eps``:
    (K, B, m) its output noise; ``sigma``: (m,).
    """
    K, B = L.shape
    w = L[..., None] * eps / sigma                       # L_n eps_i(n) / sigma_i
    return np.einsum("kbi,bj->ij", w, x) / (K * B), w.sum(axis=(0, 1)) / (K * B)


def alr_linear(L, x, eps):
    """ALR's (Eq. 3) weight and bias gradient: ``sign(x_j) sign(eps_i)`` in place of ``x_j eps_i / sigma_i``."""
    K, B = L.shape
    w = L[..., None] * np.sign(eps)
    return np.einsum("kbi,bj->ij", w, np.sign(x)) / (K * B), w.sum(axis=(0, 1)) / (K * B)


def expected_alr_linear(W, b, sigma, x, y):
    """E[ALR] for ``v = x W^T + b + sigma eps`` with loss ``0.5 ||v - y||^2`` (and an unbiased baseline).

    ``L = 0.5 sum_k (r_k + sigma_k eps_k)^2`` with ``r = x W^T + b - y``; its only term that is odd in
    ``eps_i`` is ``r_i sigma_i eps_i`` (``eps_i^2 sign(eps_i)`` is odd too but has mean zero), so
    ``E[L sign(eps_i)] = sqrt(2/pi) sigma_i r_i`` exactly: the first-order expansion of tutorial 3
    is exact for one linear layer.
    """
    r = x @ W.T + b - y                                  # (B, m)
    cs = C * np.asarray(sigma)
    return cs[:, None] * (r.T @ np.sign(x)) / len(x), cs * r.mean(axis=0)


def alr_fixed_point(x, y):
    """Where ALR's expected update vanishes: ``sum_n r(n) [sign(x(n)), 1] = 0``, i.e. ``(W, b)`` with
    ``[W, b] = Y^T S (X1^T S)^{-1}``, ``X1 = [x, 1]``, ``S = [sign(x), 1]``: an instrumental-variables
    fit with the signs as instruments, not the least-squares solution (which has ``S = X1``)."""
    X1 = np.hstack([x, np.ones((len(x), 1))])
    S = np.hstack([np.sign(x), np.ones((len(x), 1))])
    theta = np.linalg.solve((X1.T @ S).T, (y.T @ S).T).T  # theta X1^T S = Y^T S
    return theta[:, :-1], theta[:, -1]


def limit_cosine(a, a2, g):
    """cos(E[a], g) from two independent estimates ``a``, ``a2`` (flat arrays): cos(a, g) / sqrt(cos(a, a2))."""
    cos = lambda u, v: float(u @ v / np.sqrt((u @ u) * (v @ v)))  # noqa: E731
    return (cos(a, g) + cos(a2, g)) / 2 / np.sqrt(cos(a, a2))


def check():
    rng = np.random.default_rng(0)
    # 1a. the hand-written sums against minilr's equation functions on the same noise
    K, B, d, m = 7, 5, 4, 3
    L, x, eps = rng.standard_normal((K, B)), rng.standard_normal((B, d)), rng.standard_normal((K, B, m))
    sigma = rng.uniform(0.05, 0.5, m)
    for mine, lib in ((lr_linear(L, x, eps, sigma), lr_sums(L, x, eps, sigma)),
                      (alr_linear(L, x, eps), alr_sums(L, np.sign(x), np.sign(eps)))):
        for a, s in zip(mine, lib):
            np.testing.assert_allclose(a, s / (K * B), rtol=1e-10, atol=1e-12)

    # 1b. E[ALR] in closed form against minilr's ALR, averaged over S seeds
    B, K, S = 20, 400, 40
    x = rng.standard_normal((B, d)).astype(np.float32)
    y = rng.standard_normal((B, m)).astype(np.float32)
    model = minilr.Sequential([minilr.Linear(d, m)], sigma=0.1, seed=0)
    lay = model.layers[0]
    ests = [minilr.estimate_gradient(model, x, y, estimator="alr", loss="mse", copies=K, seed=s) for s in range(S)]
    want = expected_alr_linear(lay.weight.astype(np.float64), lay.bias, lay.sigma, x.astype(np.float64), y)
    for key, w in zip(("0.weight", "0.bias"), want):
        got = np.stack([e[key] for e in ests])
        se = got.std(axis=0, ddof=1) / np.sqrt(S)
        # 15 entries, each |t| with 39 degrees of freedom: P(|t| > 5.5) < 4e-6, so a false failure
        # has probability < 1e-4 over all entries (and the seeds are fixed)
        z = np.abs(got.mean(axis=0) - w) / se
        assert z.max() < 5.5, f"{key}: E[ALR] differs from the closed form by {z.max():.1f} standard errors"

    # 1c. ALR's iteration stops at the sign-instrument fit, not at least squares
    xs = rng.standard_normal((200, d))
    ys = xs @ rng.standard_normal((m, d)).T + 0.3 * rng.standard_normal((200, m))
    Wf, bf = alr_fixed_point(xs, ys)
    Jw, Jb = expected_alr_linear(Wf, bf, np.full(m, 0.1), xs, ys)
    assert np.abs(Jw).max() < 1e-10 and np.abs(Jb).max() < 1e-10, "E[ALR] does not vanish at the fixed point"
    ls = np.linalg.lstsq(np.hstack([xs, np.ones((200, 1))]), ys, rcond=None)[0].T
    assert np.linalg.norm(np.hstack([Wf, bf[:, None]]) - ls) > 1e-3, "the fixed point should differ from least squares"

    # 2. the plateau estimator on vectors with a known mean
    D, R = 2000, 20
    mu = rng.standard_normal(D)
    g = mu + 1.5 * rng.standard_normal(D)                # cos(mu, g) about 0.55
    truth = float(mu @ g / np.sqrt((mu @ mu) * (g @ g)))
    est, naive = [], []
    for _ in range(R):
        a, a2 = (mu + 1.2 * rng.standard_normal(D) for _ in range(2))
        est.append(limit_cosine(a, a2, g))
        naive.append(float(a @ g / np.sqrt((a @ a) * (g @ g))))
    tol = 5 * np.std(est, ddof=1) / np.sqrt(R)           # 5 standard errors of the mean over R pairs
    assert abs(np.mean(est) - truth) < tol, f"plateau estimate {np.mean(est):.3f} vs cos(mu, g) {truth:.3f}"
    assert truth - np.mean(naive) > 10 * tol, "with this much noise cos(a, g) alone should fall clearly short"


if __name__ == "__main__":
    check()
    print("s03: all checks pass")
