"""Tutorial 5's exercises: the straight-through backward pass of a step network, written by hand.

1. ``straight_through_gradient``: backprop through a 2-layer step MLP with the clipped identity's
   derivative in place of the step's; checked against ``minilr.reference.gradient(...,
   surrogate=Surrogate("straight_through", slope))``.
2. With a sigmoid of slope beta and ``forward="smooth"``, the surrogate gradient is the exact
   gradient of the sigmoid network: checked against central finite differences of its loss.
"""
import numpy as np

import minilr
from minilr.reference import Surrogate


def straight_through_gradient(W1, b1, W2, b2, x, y, slope):
    """Gradient of the mean cross-entropy of ``step(x W1^T + b1) W2^T + b2`` with the step's
    derivative replaced by that of ``clip(slope v + 1/2, 0, 1)``."""
    v = x @ W1.T + b1
    h = (v > 0).astype(float)  # the forward pass still spikes
    out = h @ W2.T + b2
    p = np.exp(out - out.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    d_out = p / len(y)
    d_v = (d_out @ W2) * np.where(np.abs(v) < 0.5 / slope, slope, 0.0)
    return {"0.weight": d_v.T @ x, "0.bias": d_v.sum(0), "2.weight": d_out.T @ h, "2.bias": d_out.sum(0)}


def sigmoid_network_loss(W1, b1, W2, b2, x, y, beta):
    """Mean cross-entropy of the network with ``sigmoid(beta v)`` in place of the step."""
    out = (1 / (1 + np.exp(-beta * (x @ W1.T + b1)))) @ W2.T + b2
    out = out - out.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(out).sum(axis=1)) - out[np.arange(len(y)), y]))


def check():
    (x, y), _ = minilr.datasets.load("digits")
    x, y = x[:40].astype(float), y[:40]
    net = minilr.MLP([64, 16, 10], activation="step", seed=3, dtype=np.float64)
    W1, b1, W2, b2 = (net.layers[0].weight, net.layers[0].bias, net.layers[2].weight, net.layers[2].bias)
    slope = 1.33
    mine = straight_through_gradient(W1, b1, W2, b2, x, y, slope)
    ref = minilr.reference.gradient(net, x, y, surrogate=Surrogate("straight_through", slope))
    for k in ref:  # the same float64 sums in another order: agreement to rounding
        np.testing.assert_allclose(mine[k], ref[k], rtol=1e-10, atol=1e-13, err_msg=k)
    assert np.abs(mine["0.weight"]).sum() > 0, "the surrogate must reach the first layer"

    beta = 2.0
    g = minilr.reference.gradient(net, x, y, surrogate=Surrogate("sigmoid", beta, forward="smooth"))
    rng = np.random.default_rng(0)
    eps = 1e-6  # central differences: truncation ~eps^2, rounding ~1e-16/eps, both far below 1e-6
    for key, P in (("0.weight", W1), ("2.weight", W2), ("0.bias", b1)):
        for _ in range(5):
            i = tuple(rng.integers(0, n) for n in P.shape)
            old = P[i]
            P[i] = old + eps
            up = sigmoid_network_loss(W1, b1, W2, b2, x, y, beta)
            P[i] = old - eps
            down = sigmoid_network_loss(W1, b1, W2, b2, x, y, beta)
            P[i] = old
            assert abs((up - down) / (2 * eps) - g[key][i]) < 1e-7 + 1e-5 * abs(g[key][i]), (key, i)


if __name__ == "__main__":
    check()
    print("s05 checks pass")
