"""Tutorial 10's exercises: backprop through time for a LIF layer with a sigmoid surrogate.

1. ``smooth_lif_loss`` and ``smooth_lif_gradient``: the network LIF(rate) -> Linear with
   ``sigmoid(beta (V_t - threshold))`` in place of the spike, forward and BPTT by hand; checked
   against central finite differences of ``smooth_lif_loss`` and against
   ``minilr.reference.gradient(..., surrogate=Surrogate("sigmoid", beta, forward="smooth"))``.
2. ``detach_reset=True`` drops the reset's derivative; with one time step there is no reset to
   differentiate (the two agree), with eight they differ.
"""
import numpy as np

import minilr
from minilr.reference import Surrogate


def _sig(v):
    return 1 / (1 + np.exp(-v))


def _forward(params, x, steps, beta, thr, slope):
    W, b, W2, b2 = params
    current = x @ W.T + b  # static input: the same current at every step
    V, S, r = [], [], np.zeros_like(current)
    for _ in range(steps):
        v = beta * r + current
        s = _sig(slope * (v - thr))
        r = v - thr * s
        V.append(v)
        S.append(s)
    rate = np.mean(S, axis=0)
    return V, S, rate, rate @ W2.T + b2


def smooth_lif_loss(params, x, y, steps, beta, thr, slope):
    out = _forward(params, x, steps, beta, thr, slope)[3]
    out = out - out.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(out).sum(axis=1)) - out[np.arange(len(y)), y]))


def smooth_lif_gradient(params, x, y, steps, beta, thr, slope, detach_reset=False):
    """Gradients of :func:`smooth_lif_loss` w.r.t. (W, b, W2, b2) by BPTT."""
    W, b, W2, b2 = params
    V, S, rate, out = _forward(params, x, steps, beta, thr, slope)
    p = np.exp(out - out.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    d_out = p / len(y)
    d_rate = d_out @ W2
    d_current, d_r = np.zeros_like(rate), np.zeros_like(rate)
    for t in range(steps - 1, -1, -1):
        fprime = slope * S[t] * (1 - S[t])
        d_s = d_rate / steps - (0 if detach_reset else thr * d_r)  # S_t feeds the rate and the reset
        d_v = d_r + fprime * d_s  # V_t feeds S_t and R_t = V_t - thr S_t
        d_current += d_v
        d_r = beta * d_v  # R_{t-1} feeds V_t
    return {"0.weight": d_current.T @ x, "0.bias": d_current.sum(0), "1.weight": d_out.T @ rate,
            "1.bias": d_out.sum(0)}


def _cos(a, b):
    a = np.concatenate([v.ravel() for v in a.values()])
    b = np.concatenate([v.ravel() for v in b.values()])
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def check():
    (x, y), _ = minilr.datasets.load("digits")
    x, y = x[:30].astype(float), y[:30]
    steps, beta, thr, slope = 6, 0.9, 1.0, 3.0
    snn = minilr.Sequential([minilr.LIF(64, 12, steps=steps, beta=beta, threshold=thr), minilr.Linear(12, 10)],
                            seed=4, dtype=np.float64)
    params = (snn.layers[0].weight, snn.layers[0].bias, snn.layers[1].weight, snn.layers[1].bias)
    mine = smooth_lif_gradient(params, x, y, steps, beta, thr, slope)
    ref = minilr.reference.gradient(snn, x, y, surrogate=Surrogate("sigmoid", slope, forward="smooth"))
    for k in ref:  # the same float64 arithmetic in another order: agreement to rounding
        np.testing.assert_allclose(mine[k], ref[k], rtol=1e-9, atol=1e-13, err_msg=k)
    rng = np.random.default_rng(0)
    eps = 1e-6  # central differences: truncation ~eps^2, rounding ~1e-16/eps, both far below 1e-6
    for key, P in zip(("0.weight", "0.bias", "1.weight"), params):
        for _ in range(5):
            i = tuple(rng.integers(0, n) for n in P.shape)
            old = P[i]
            P[i] = old + eps
            up = smooth_lif_loss(params, x, y, steps, beta, thr, slope)
            P[i] = old - eps
            down = smooth_lif_loss(params, x, y, steps, beta, thr, slope)
            P[i] = old
            assert abs((up - down) / (2 * eps) - mine[key][i]) < 1e-7 + 1e-5 * abs(mine[key][i]), (key, i)

    one = [smooth_lif_gradient(params, x, y, 1, beta, thr, slope, detach_reset=d) for d in (False, True)]
    assert _cos(*one) > 1 - 1e-12, "with one step there is no reset to differentiate"
    full = [smooth_lif_gradient(params, x, y, steps, beta, thr, slope, detach_reset=d) for d in (False, True)]
    c = _cos(*full)
    assert c < 1 - 1e-6, f"dropping the reset's derivative changed nothing (cosine {c})"
    return c


if __name__ == "__main__":
    print(f"s10 checks pass; cosine with the reset detached: {check():.4f}")
