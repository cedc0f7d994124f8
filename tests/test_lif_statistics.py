"""LR, ES, ALR and AES on a spiking (LIF) layer against exact targets computed by quadrature
(the reference has no gradient for spikes, so the targets come from the noise distribution
itself): LR and ES are unbiased for the gradient of the smoothed loss; ALR and AES match their
own expectations (derived below, before their tests).

The problem: LIF(d -> H, 2 steps, rate output) then Linear(H -> C), squared loss. Neuron ``i`` of
sample ``b`` sees the drive ``a = W1_i . x_b + b1_i``, the same at both steps, plus the noise.

* **LR** adds fresh ``sigma eps_t`` to the current at each step:
  ``s1 = 1[a + sigma e1 > th]``, ``V1 = a + sigma e1 - th s1``, ``s2 = 1[beta V1 + a + sigma e2 > th]``.
  Given ``e1``, ``P(s2 = 1) = Phi((beta V1 + a - th) / sigma)``, so ``E[s2]`` and ``E[s1 s2]`` are
  one-dimensional integrals over ``e1`` (split where ``s1`` jumps), done by ``scipy.integrate.quad``
  to ~1e-12; ``E[s1] = Phi((a - th) / sigma)``.
* **ES** perturbs the weights: the current is ``a + s xi`` with ``s = sigma sqrt(|x_b|^2 + 1)``,
  one ``xi ~ N(0, 1)`` for both steps, so the rate is a step function of ``c = a + s xi``:
  ``r = 0.5 * 1[c > th / (1 + beta)] + 0.5 * 1[c > th]`` and its moments are closed forms.

The rate ``r = (s1 + s2) / 2`` has moments ``m1(a) = E[r]``, ``m2(a) = E[r^2]``; neurons are
independent, so with the read-out noise the smoothed loss is, per sample,
``0.5 sum_c [(W2_c . m1 + b2_c - y_c)^2 + sum_i W2_ci^2 (m2_i - m1_i^2) + noise_c]`` where
``noise_c = sigma2_c^2`` (LR) or ``sigma2_c^2 (sum_i m2_i + 1)`` (ES). Its gradient needs
``dm1/da``, ``dm2/da``: central differences of the quadratures (h = 1e-4, error ~1e-8, far below
the estimators' standard errors). The test method and failure probability are those of
tests/test_beyond_statistics.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.stats import norm

import minilr

from test_beyond_statistics import assert_matches, estimates

TH, BETA = 1.0, 0.8


def lr_moments(a, sigma):
    """``(E[r], E[r^2])`` of a 2-step LIF neuron with drive ``a`` and fresh noise per step."""
    cut = (TH - a) / sigma  # s1 = 1 above it

    def p2(e):  # P(s2 = 1 | e1 = e)
        s1 = e > cut
        v1 = a + sigma * e - TH * s1
        return norm.cdf((BETA * v1 + a - TH) / sigma)

    f = lambda e: norm.pdf(e) * p2(e)
    below = quad(f, -np.inf, cut, epsabs=1e-13, epsrel=1e-12)[0]
    above = quad(f, cut, np.inf, epsabs=1e-13, epsrel=1e-12)[0]
    e1, e2, e12 = norm.sf(cut), below + above, above
    return (e1 + e2) / 2, (e1 + e2 + 2 * e12) / 4


def es_moments(a, s):
    """``(E[r], E[r^2])`` when the current is ``a + s xi`` at both steps (closed form)."""
    lo, hi = norm.sf((TH / (1 + BETA) - a) / s), norm.sf((TH - a) / s)
    return 0.5 * lo + 0.5 * hi, 0.25 * lo + 0.75 * hi


def smoothed_gradient(model, x, y, estimator, h=1e-4):
    lif, head = model.layers
    W1, b1, s1 = (np.asarray(getattr(lif, n), np.float64) for n in ("weight", "bias", "sigma"))
    W2, b2, s2 = (np.asarray(getattr(head, n), np.float64) for n in ("weight", "bias", "sigma"))
    B, H = x.shape[0], W1.shape[0]
    A = x @ W1.T + b1
    scale = np.sqrt((x * x).sum(1) + 1)  # ES: the current's noise scale per sample, / sigma
    m = np.zeros((3, B, H, 2))  # moments at a - h, a, a + h
    for b in range(B):
        for i in range(H):
            for k, da in enumerate((-h, 0.0, h)):
                if estimator == "lr":
                    m[k, b, i] = lr_moments(A[b, i] + da, s1[i])
                else:
                    m[k, b, i] = es_moments(A[b, i] + da, s1[i] * scale[b])
    m1, m2 = m[1, ..., 0], m[1, ..., 1]
    dm = (m[2] - m[0]) / (2 * h)  # d moments / da
    u = m1 @ W2.T + b2 - y  # (B, C)
    gW2 = (u.T @ m1 + W2 * (m2 - m1 ** 2).sum(0)) / B
    gb2 = u.mean(0)
    dF_dm1 = u @ W2 - m1 * (W2 ** 2).sum(0)  # (B, H)
    dF_dm2 = 0.5 * (W2 ** 2).sum(0) + (0.5 * (s2 ** 2).sum() if estimator == "es" else 0.0)
    dF_da = (dF_dm1 * dm[..., 0] + dF_dm2 * dm[..., 1]) / B
    return {"0.weight": dF_da.T @ x, "0.bias": dF_da.sum(0), "1.weight": gW2, "1.bias": gb2}


def problem():
    model = minilr.Sequential([minilr.LIF(3, 2, steps=2, beta=BETA, threshold=TH),
                               minilr.Linear(2, 2)], sigma=0.4, seed=0, dtype=np.float64)
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (3, 3))
    model.layers[0].weight = rng.uniform(-0.3, 0.3, (2, 3))
    model.layers[0].bias = np.array([0.75, 0.95])  # near threshold: both neurons fire sometimes
    y = rng.standard_normal((3, 2))
    return model, x, y


def flat(g, keys):
    return np.concatenate([np.ravel(g[k]) for k in keys])


def check(estimator, reps):
    model, x, y = problem()
    keys = list(model.parameters())
    t = flat(smoothed_gradient(model, x, y, estimator), keys)
    mean, se = estimates_mse(model, x, y, estimator, reps)
    assert_matches(mean, se, t, np.zeros_like(t), f"{estimator} on LIF")


def estimates_mse(model, x, y, estimator, reps, copies=8):
    keys = list(model.parameters())
    s = np.stack([flat(minilr.estimate_gradient(model, x, y, estimator=estimator, copies=copies,
                                                seed=20_000 + r, loss="mse"), keys) for r in range(reps)])
    return s.mean(0), s.std(0, ddof=1) / math.sqrt(reps)


def test_quadrature_moments_agree_with_simulation():
    """The exact moments against a direct simulation of the neuron (1e6 draws, 6 SE)."""
    rng = np.random.default_rng(0)
    a, sigma, n = 0.8, 0.4, 1_000_000
    lif = minilr.LIF(1, 1, steps=2, beta=BETA, threshold=TH, output="rate")
    lif.weight, lif.bias = np.ones((1, 1)), np.zeros(1)
    cur = a + sigma * rng.standard_normal((n, 2, 1))
    from minilr.spiking import integrate_and_fire

    r = integrate_and_fire(cur, BETA, TH, np).mean(1)[:, 0]
    m1, m2 = lr_moments(a, sigma)
    assert abs(r.mean() - m1) < 6 * r.std() / math.sqrt(n)
    assert abs((r ** 2).mean() - m2) < 6 * (r ** 2).std() / math.sqrt(n)
    xi = rng.standard_normal(n)
    r = integrate_and_fire(np.repeat((a + sigma * xi)[:, None, None], 2, axis=1), BETA, TH, np).mean(1)[:, 0]
    m1, m2 = es_moments(a, sigma)
    assert abs(r.mean() - m1) < 6 * r.std() / math.sqrt(n)
    assert abs((r ** 2).mean() - m2) < 6 * (r ** 2).std() / math.sqrt(n)


def test_lr_on_lif_is_unbiased_for_the_smoothed_gradient():
    check("lr", 3000)


def test_es_on_lif_is_unbiased_for_the_smoothed_gradient():
    check("es", 6000)


# -- the sign estimators: their exact expectations ---------------------------------------------------
# ALR (Eq. 3) and AES average ``L sign(input) sign(noise)``. Only the terms of the squared loss
# that involve the perturbed neuron correlate with its noise's sign, which leaves expectations of
# the form E[r sign(eps_t)], E[r^2 sign(eps_t)] (one neuron, one-dimensional integrals) and, for the
# read-out site, E|eps| = sqrt(2/pi):
#
#   ALR, LIF site:  E[L_b sign(eps_ti)] = sum_c [Z_bc W2_ci E[r sign(eps_t)] + W2_ci^2 E[r^2 sign(eps_t)] / 2]
#                   with Z_bc = u_bc - W2_ci m1_bi (the rest of output c, independent of neuron i);
#                   the weight's target multiplies it by sign(x_bj), the bias's by 1, summed over t.
#   ALR, read-out:  E[L_b 1[r_i > 0] sign(eps2_c)] = sigma2_c sqrt(2/pi) (Z_bc P(r_i > 0) + W2_ci m1_i)
#   AES, LIF site:  sign(E_ij) correlates with the current's noise xi = (E_i . x + e_i) / q
#                   (q^2 = |x|^2 + 1) through E[sign(E_ij) | xi] = 2 Phi(rho xi / sqrt(1 - rho^2)) - 1,
#                   rho = x_j / q (1 / q for the bias); the read-out's own noise adds
#                   sigma2_c^2 r_i^2 / 2 to the loss.
#   AES, read-out:  E[L_b sign(E2_ci)] = sigma2_c sqrt(2/pi) (Z_bc m1_i + W2_ci m2_i)
SQRT_2_PI = math.sqrt(2 / math.pi)


def _quad(f, lo, hi, breaks):
    pts = sorted({lo, hi, *[b for b in breaks if lo < b < hi]})
    return sum(quad(f, a, b, epsabs=1e-13, epsrel=1e-12, limit=200)[0] for a, b in zip(pts, pts[1:]))


def lr_sign_moments(a, sigma):
    """``(P(r > 0), [E[r sign(eps_t)] for t = 1, 2], [E[r^2 sign(eps_t)]])`` under LR noise."""
    cut = (TH - a) / sigma

    def v1(e):
        return a + sigma * e - TH * (e > cut)

    def c2(e):  # s2 = 1[eps2 > c2]
        return (TH - BETA * v1(e) - a) / sigma

    p2 = lambda e: norm.sf(c2(e))
    br = (cut, 0.0)
    inf = np.inf
    s1_sg1 = norm.cdf(-abs(cut))
    s2_sg1 = _quad(lambda e: norm.pdf(e) * np.sign(e) * p2(e), -inf, inf, br)
    s12_sg1 = _quad(lambda e: norm.pdf(e) * np.sign(e) * p2(e), cut, inf, br)
    s2_sg2 = _quad(lambda e: norm.pdf(e) * norm.cdf(-abs(c2(e))), -inf, inf, br)
    s12_sg2 = _quad(lambda e: norm.pdf(e) * norm.cdf(-abs(c2(e))), cut, inf, br)
    none = _quad(lambda e: norm.pdf(e) * (1 - p2(e)), -inf, cut, br)  # P(s1 = s2 = 0)
    n1 = [(s1_sg1 + s2_sg1) / 2, s2_sg2 / 2]
    n2 = [(s1_sg1 + s2_sg1 + 2 * s12_sg1) / 4, (s2_sg2 + 2 * s12_sg2) / 4]
    return 1 - none, n1, n2


def es_sign_moments(a, s, rho):
    """``(E[r psi], E[r^2 psi])`` with ``psi = E[sign(E_j) | xi]`` for correlation ``rho``."""
    g = rho / math.sqrt(1 - rho * rho)
    J = lambda k: _quad(lambda t: norm.pdf(t) * (2 * norm.cdf(g * t) - 1), k, np.inf, (0.0,))
    j1, j2 = J((TH / (1 + BETA) - a) / s), J((TH - a) / s)
    return 0.5 * j1 + 0.5 * j2, 0.25 * j1 + 0.75 * j2


def sign_target(model, x, y, estimator):
    lif, head = model.layers
    W1, b1, s1 = (np.asarray(getattr(lif, n), np.float64) for n in ("weight", "bias", "sigma"))
    W2, b2, s2 = (np.asarray(getattr(head, n), np.float64) for n in ("weight", "bias", "sigma"))
    B, H, d = x.shape[0], W1.shape[0], x.shape[1]
    C = W2.shape[0]
    A = x @ W1.T + b1
    q = np.sqrt((x * x).sum(1) + 1)
    mom = np.array([[lr_moments(A[b, i], s1[i]) if estimator == "alr" else
                     es_moments(A[b, i], s1[i] * q[b]) for i in range(H)] for b in range(B)])
    m1, m2 = mom[..., 0], mom[..., 1]
    u = m1 @ W2.T + b2 - y  # (B, C)
    gW1, gb1 = np.zeros((H, d)), np.zeros(H)
    gW2, gb2 = np.zeros((C, H)), np.zeros(C)
    for b in range(B):
        gb2 += s2 * SQRT_2_PI * u[b]
        for i in range(H):
            Z = u[b] - W2[:, i] * m1[b, i]  # (C,)
            if estimator == "alr":
                p_fire, n1, n2 = lr_sign_moments(A[b, i], s1[i])
                per_t = [(Z * W2[:, i] * n1[t] + 0.5 * W2[:, i] ** 2 * n2[t]).sum() for t in (0, 1)]
                gW1[i] += np.sign(x[b]) * sum(per_t)
                gb1[i] += sum(per_t)
                gW2[:, i] += s2 * SQRT_2_PI * (Z * p_fire + W2[:, i] * m1[b, i])
            else:
                w2 = 0.5 * (W2[:, i] ** 2 + s2 ** 2)
                for j, rho in enumerate(list(x[b] / q[b]) + [1 / q[b]]):
                    e1, e2 = es_sign_moments(A[b, i], s1[i] * q[b], rho)
                    val = (Z * W2[:, i] * e1 + w2 * e2).sum()
                    if j < d:
                        gW1[i, j] += val
                    else:
                        gb1[i] += val
                gW2[:, i] += s2 * SQRT_2_PI * (Z * m1[b, i] + W2[:, i] * m2[b, i])
    return {"0.weight": gW1 / B, "0.bias": gb1 / B, "1.weight": gW2 / B, "1.bias": gb2 / B}


def check_sign(estimator, reps):
    model, x, y = problem()
    keys = list(model.parameters())
    t = flat(sign_target(model, x, y, estimator), keys)
    mean, se = estimates_mse(model, x, y, estimator, reps)
    assert_matches(mean, se, t, np.zeros_like(t), f"{estimator} on LIF")


def test_sign_moments_agree_with_simulation():
    """The ALR and AES building blocks against direct simulation (1e6 draws, 6 SE)."""
    from minilr.spiking import integrate_and_fire

    rng = np.random.default_rng(1)
    a, sigma, n = 0.8, 0.4, 1_000_000
    eps = rng.standard_normal((n, 2, 1))
    r = integrate_and_fire(a + sigma * eps, BETA, TH, np).mean(1)[:, 0]
    p_fire, n1, n2 = lr_sign_moments(a, sigma)
    for got, want in [((r > 0).mean(), p_fire)] + [((r * np.sign(eps[:, t, 0])).mean(), n1[t]) for t in (0, 1)] \
            + [((r * r * np.sign(eps[:, t, 0])).mean(), n2[t]) for t in (0, 1)]:
        assert abs(got - want) < 6 / math.sqrt(n), (got, want)
    rho = 0.6
    E = rng.standard_normal(n)
    xi = rho * E + math.sqrt(1 - rho * rho) * rng.standard_normal(n)  # corr(E, xi) = rho
    r = integrate_and_fire(np.repeat((a + sigma * xi)[:, None, None], 2, axis=1), BETA, TH, np).mean(1)[:, 0]
    e1, e2 = es_sign_moments(a, sigma, rho)
    assert abs((r * np.sign(E)).mean() - e1) < 6 / math.sqrt(n)
    assert abs((r * r * np.sign(E)).mean() - e2) < 6 / math.sqrt(n)


def test_alr_on_lif_matches_its_exact_expectation():
    check_sign("alr", 3000)


@pytest.mark.slow  # ~10 s: 6,000 estimates (AES shares one perturbation by the batch)
def test_aes_on_lif_matches_its_exact_expectation():
    check_sign("aes", 6000)
