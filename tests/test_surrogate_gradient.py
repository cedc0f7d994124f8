"""The surrogate-gradient (straight-through) baseline of minilr.reference for Step and LIF layers."""
import numpy as np
import pytest

import minilr
from minilr import reference
from minilr.reference import Surrogate


def _sig(v, slope):
    return 1 / (1 + np.exp(-slope * v))


def _ce(out, y):
    out = out - out.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(out).sum(axis=1)) - out[np.arange(len(y)), y]))


def _smooth_lif(W, b, x, steps, beta, thr, slope):
    """The LIF recurrence with sigmoid(slope (V - thr)) for the spike, written out independently."""
    if x.ndim == 2:
        x = np.repeat(x[:, None, :], steps, axis=1)
    r = np.zeros((x.shape[0], W.shape[0]))
    out = []
    for t in range(x.shape[1]):
        v = beta * r + x[:, t] @ W.T + b
        s = _sig(v - thr, slope)
        r = v - thr * s
        out.append(s)
    return np.stack(out, axis=1)


def _fd(model, loss_of, eps=1e-6):
    g = {}
    for k, p in model.parameters().items():
        if k.endswith("sigma"):
            continue
        d = np.zeros(p.shape)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            up = loss_of()
            p[i] = old - eps
            down = loss_of()
            p[i] = old
            d[i] = (up - down) / (2 * eps)
        g[k] = d
    return g


def _close(g, fd):
    assert set(g) == set(fd)
    for k in g:
        # central differences in float64 with eps 1e-6: error ~ eps^2 f''' + 1e-16/eps, far below 1e-6
        np.testing.assert_allclose(g[k], fd[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_step_surrogate_gradient_is_the_gradient_of_the_smooth_network():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 6)), rng.integers(0, 3, 7)
    model = minilr.MLP([6, 5, 3], activation="step", seed=1, dtype=np.float64)
    slope = 2.0

    def loss_of():
        l0, l2 = model.layers[0], model.layers[2]
        h = _sig(x @ l0.weight.T + l0.bias, slope)
        return _ce(h @ l2.weight.T + l2.bias, y)

    g = reference.gradient(model, x, y, surrogate=Surrogate("sigmoid", slope, forward="smooth"))
    _close(g, _fd(model, loss_of))


@pytest.mark.parametrize("beta", [0.9, 1.0])
def test_lif_surrogate_gradient_is_bptt_of_the_smooth_network(beta):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    model = minilr.Sequential([minilr.LIF(4, 5, steps=3, beta=beta, output="spikes"),
                               minilr.LIF(5, 4, beta=beta, threshold=0.7, output="rate"),
                               minilr.Linear(4, 3)], seed=2, dtype=np.float64)
    slope = 3.0

    def loss_of():
        a, b, c = model.layers
        s = _smooth_lif(a.weight, a.bias, x, 3, beta, 1.0, slope)
        r = _smooth_lif(b.weight, b.bias, s, None, beta, 0.7, slope).mean(axis=1)
        return _ce(r @ c.weight.T + c.bias, y)

    g = reference.gradient(model, x, y, surrogate=Surrogate("sigmoid", slope, forward="smooth"))
    _close(g, _fd(model, loss_of))


def test_spiking_forward_keeps_the_exact_read_out_gradient_and_the_plain_gradient_still_refuses():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    model = minilr.Sequential([minilr.LIF(4, 8, steps=5), minilr.Linear(8, 3)], seed=0, dtype=np.float64)
    with pytest.raises(ValueError, match="LIF"):
        reference.gradient(model, x, y)
    g = reference.gradient(model, x, y, surrogate="straight_through")
    rates = model.layers[0].forward(x, np)  # the real spikes feed the read-out
    readout = minilr.Sequential([minilr.Linear(8, 3)], dtype=np.float64)
    readout.layers[0].weight, readout.layers[0].bias = model.layers[1].weight, model.layers[1].bias
    exact = reference.gradient(readout, rates, y)
    np.testing.assert_allclose(g["1.weight"], exact["0.weight"], rtol=1e-12)
    assert np.abs(g["0.weight"]).sum() > 0  # the surrogate reaches the spiking layer


def test_straight_through_derivative_is_the_clipped_identity_slope():
    s = Surrogate("straight_through", slope=4.0)
    v = np.array([-0.2, -0.124, 0.0, 0.1, 0.126, 0.3])
    np.testing.assert_array_equal(s.derivative(v), [0, 4, 4, 4, 0, 0])
    np.testing.assert_allclose((s.function(v + 1e-7) - s.function(v - 1e-7)) / 2e-7, s.derivative(v), atol=1e-6)
    with pytest.raises(ValueError):
        Surrogate("heaviside")


def test_surrogate_training_beats_read_out_only_backprop():
    """The same Adam loop on a step MLP: all layers with the surrogate gradient, or the read-out only
    (the first layer's gradient dropped). Fixed seed; on digits the gap is tens of points."""
    (x, y), (xt, yt) = minilr.datasets.load("digits")
    accs = {}
    for name in ("surrogate", "read-out"):
        model = minilr.MLP([64, 32, 10], activation="step", seed=0)
        opt, params = minilr.optim.Adam(lr=1e-2), model.parameters()
        order = np.random.default_rng(0).permutation(len(x))
        for _ in range(2):
            for i in range(0, len(x), 50):
                j = order[i:i + 50]
                g = reference.gradient(model, x[j], y[j], surrogate="sigmoid")
                if name == "read-out":
                    g = {k: v for k, v in g.items() if k.startswith("2.")}
                opt.step(params, g)
        accs[name] = float(np.mean(model.predict(xt) == yt))
    assert accs["surrogate"] > accs["read-out"] + 0.05, accs


def test_train_bp_takes_the_surrogate_and_steps_along_it():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((20, 6)).astype(np.float32), rng.integers(0, 3, 20)
    model = minilr.MLP([6, 8, 3], activation="step", seed=0)
    start = {k: v.copy() for k, v in model.parameters().items()}
    g = reference.gradient(model, x, y, surrogate="straight_through")
    minilr.train(model, (x, y), estimator="bp", surrogate="straight_through", optimizer="sgd", lr=0.5,
                 epochs=1, batch_size=20, progress=False)
    for k, v in model.parameters().items():
        if k in g:  # one full-batch SGD step: p - lr g, in float32
            np.testing.assert_allclose(v, start[k] - 0.5 * g[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert not np.allclose(model.layers[0].weight, start["0.weight"])  # the first layer moved
    with pytest.raises(ValueError, match="Step"):
        minilr.train(model, (x, y), estimator="bp", epochs=1, progress=False)
    with pytest.raises(ValueError, match="surrogate"):
        minilr.train(model, (x, y), estimator="lr", surrogate="sigmoid", epochs=1, progress=False)
