"""The HSIC bottleneck baseline: the estimator, its hand-written layer-local gradient, learning."""
import numpy as np
import pytest

import minilr
from minilr import hsic


def test_hsic_is_the_trace_formula():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((7, 3)), rng.standard_normal((7, 2))
    K, L = hsic.gaussian_kernel(a, 1.3), hsic.gaussian_kernel(b, 0.7)
    H = np.eye(7) - np.ones((7, 7)) / 7
    assert hsic.hsic(K, L) == pytest.approx(np.trace(K @ H @ L @ H) / 36, rel=1e-12)
    d2 = ((a[:, None] - a[None]) ** 2).sum(-1)
    np.testing.assert_allclose(K, np.exp(-d2 / (2 * 1.3 ** 2)), rtol=1e-12)
    # on 400 samples independent variables score near 0 (the biased estimator's O(1/n) offset),
    # a variable with itself far above
    a, b = rng.standard_normal((400, 3)), rng.standard_normal((400, 2))
    K, L = hsic.gaussian_kernel(a, 1.0), hsic.gaussian_kernel(b, 1.0)
    assert hsic.hsic(K, K) > 20 * hsic.hsic(K, L)


def _fd_check(model, x, y, beta, width_factor, n_entries=6, h=1e-6):
    """Central differences of each HSIC block's J_i against -grads (the descent direction)."""
    grads, objectives, _ = hsic.block_gradients(model, x, y, beta=beta, width_factor=width_factor)
    rng = np.random.default_rng(1)
    parts = hsic.blocks(model)
    assert len(objectives) == len(parts) - 1
    params = model.parameters()
    checked = 0
    for b, (start, end) in enumerate(parts[:-1]):
        for key in [k for k in params if start <= int(k.split(".")[0]) < end]:
            p = params[key]
            for flat in rng.choice(p.size, size=min(n_entries, p.size), replace=False):
                i = np.unravel_index(flat, p.shape)
                old = p[i]
                vals = []
                for step in (h, -h):
                    p[i] = old + step
                    vals.append(hsic.block_gradients(model, x, y, beta=beta, width_factor=width_factor)[1][b])
                p[i] = old
                fd = (vals[0] - vals[1]) / (2 * h)
                assert -grads[key][i] == pytest.approx(fd, rel=1e-5, abs=1e-9 * max(1.0, abs(fd))), (key, i)
                checked += 1
    return checked


def test_layer_local_gradient_matches_finite_differences_mlp():
    rng = np.random.default_rng(0)
    model = minilr.MLP([5, 6, 4, 3], activation="tanh", dtype=np.float64, seed=0)
    x, y = rng.standard_normal((9, 5)), rng.integers(0, 3, 9)
    # narrow kernels so J is far from linear in Z (a wrong factor would show)
    assert _fd_check(model, x, y, beta=0.3, width_factor=0.5) >= 20


def test_layer_local_gradient_matches_finite_differences_conv():
    rng = np.random.default_rng(2)
    model = minilr.cnn((1, 12), width=3, dtype=np.float64, seed=0)
    x, y = rng.standard_normal((6, 1, 12)), rng.integers(0, 10, 6)
    assert _fd_check(model, x, y, beta=0.1, width_factor=0.7, n_entries=4) >= 20


def test_hidden_gradients_are_local():
    """A block's gradient does not depend on the layers above it (no error signal from them)."""
    rng = np.random.default_rng(0)
    model = minilr.MLP([5, 6, 4, 3], activation="tanh", dtype=np.float64, seed=0)
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    g1, _, _ = hsic.block_gradients(model, x, y)
    model.layers[2].weight[...] = rng.standard_normal(model.layers[2].weight.shape)
    model.layers[4].weight[...] *= 5
    g2, _, _ = hsic.block_gradients(model, x, y)
    np.testing.assert_array_equal(g1["0.weight"], g2["0.weight"])
    assert not np.allclose(g1["4.weight"], g2["4.weight"])


def test_hsic_learns_digits():
    """Measured: 76 % test accuracy (3 HSIC epochs + 1 read-out epoch, seed 0); chance is 10 %.
    The HSIC objective of each hidden block must rise, so a flipped sign fails here too."""
    (x, y), (xt, yt) = minilr.datasets.load("digits")
    model = minilr.MLP([64, 64, 64, 10], seed=0)
    probe = slice(0, 200)
    _, before, _ = hsic.block_gradients(model, x[probe], y[probe])
    h = hsic.train(model, (x, y), val_data=(xt, yt), epochs=3, readout_epochs=1)
    _, after, _ = hsic.block_gradients(model, x[probe], y[probe])
    assert len(h.val_accuracy) == 4 and h.estimator == "hsic"
    assert h.val_accuracy[-1] > 0.5
    assert all(a > b for a, b in zip(after, before)), (before, after)


def test_hsic_signsgd_and_bad_input():
    (x, y), _ = minilr.datasets.load("digits")
    model = minilr.MLP([64, 16, 10], seed=0)
    before = model.parameters()
    hsic.train(model, (x[:50], y[:50]), epochs=1, readout_epochs=0, optimizer="signsgd", lr=0.01,
               batch_size=50)
    step = np.abs(model.parameters()["0.weight"] - before["0.weight"])
    assert np.all((np.abs(step - 0.01) < 1e-6) | (step == 0))
    with pytest.raises(ValueError, match="read-out"):
        hsic.train(minilr.MLP([64, 10]), (x, y))
    with pytest.raises(ValueError, match="batch_size"):
        hsic.train(model, (x, y), batch_size=1)


def test_hsic_stop_ends_the_hsic_phase_then_the_readout_trains_alone():
    (x, y), (xt, yt) = minilr.datasets.load("digits")
    model = minilr.MLP([64, 16, 10], seed=0)
    seen = []

    def stop(history):
        seen.append(len(history.val_accuracy))
        return len(history.val_accuracy) == 2

    frozen = {}

    def cb(epoch, history):
        if epoch == 1:  # the HSIC phase ends here: from now on only the read-out moves
            frozen.update({k: v.copy() for k, v in model.parameters().items()})

    h = hsic.train(model, (x[:200], y[:200]), (xt, yt), epochs=10, readout_epochs=2, stop=stop, callback=cb)
    assert seen == [1, 2] and len(h.val_accuracy) == 4
    after = model.parameters()
    np.testing.assert_array_equal(after["0.weight"], frozen["0.weight"])
    assert not np.array_equal(after["2.weight"], frozen["2.weight"])


def test_objective_is_the_blocks_j():
    rng = np.random.default_rng(4)
    model = minilr.MLP([5, 6, 3], activation="tanh", dtype=np.float64, seed=0)
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    _, (j,), _ = hsic.block_gradients(model, x, y, beta=0.2, width_factor=0.8)
    z = np.tanh(x @ model.layers[0].weight.T + model.layers[0].bias)
    assert hsic.objective(z, x, np.eye(3)[y], beta=0.2, width_factor=0.8) == pytest.approx(j, rel=1e-12)
