"""LSTM, GRU, GraphAttention and LIF: exact reference vs finite differences, the noiseless pass,
LIF's dynamics and the reference's refusal, packed-sign records equal to the plain ones, and bad
shapes rejected with the argument named. (Unbiasedness: tests/test_beyond_statistics.py.)"""
from __future__ import annotations

import numpy as np
import pytest

import minilr
from minilr import reference
from strategies import float_record_signs, lr_records
from minilr.losses import per_sample

EDGES = np.array([[0, 1, 2, 3, 1, 4, 0, 2], [1, 0, 3, 2, 2, 0, 4, 4]])


def sequence_model(cell, return_sequences=False, dtype=np.float64, sigma=0.3, seed=0):
    layers = [cell(3, 4, return_sequences=return_sequences)]
    if return_sequences:  # a second recurrent layer reads the whole sequence
        layers.append(minilr.LSTM(4, 3))
    layers.append(minilr.Linear(layers[-1].hidden, 3))
    return minilr.Sequential(layers, sigma=sigma, seed=seed, dtype=dtype)


def graph_model(dtype=np.float64, sigma=0.3, seed=0):
    return minilr.Sequential([minilr.GraphAttention(3, 4, EDGES), minilr.Tanh(),
                              minilr.GraphAttention(4, 3, EDGES)], sigma=sigma, seed=seed, dtype=dtype)


def sequence_data(n=3, T=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, T, 3)), rng.integers(0, 3, n)


def graph_data(seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, (2, 5))
    y[0, 1] = y[1, 3] = -1  # unlabelled nodes
    return rng.standard_normal((2, 5, 3)), y


def make(name, dtype=np.float64, sigma=0.3, seed=0):
    if name == "gat":
        return (graph_model(dtype, sigma, seed),) + graph_data(seed)
    cell = {"lstm": minilr.LSTM, "gru": minilr.GRU, "lstm-seq": minilr.LSTM, "gru-seq": minilr.GRU}[name]
    return (sequence_model(cell, name.endswith("-seq"), dtype, sigma, seed),) + sequence_data(seed=seed)


MODELS = ["lstm", "gru", "lstm-seq", "gru-seq", "gat"]


# -- the exact reference ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_reference_matches_central_finite_differences(name):
    model, x, y = make(name)
    for k, p in model.parameters().items():  # non-trivial biases and attention
        p += np.random.default_rng(1).uniform(-0.5, 0.5, p.shape)
    g = reference.gradient(model, x, y)
    assert set(g) == set(model.parameters())
    h = 1e-6
    for k, p in model.parameters().items():
        num = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            up = reference.loss(model, x, y)
            p[idx] = old - h
            down = reference.loss(model, x, y)
            p[idx] = old
            num[idx] = (up - down) / (2 * h)
        # central differences: error O(h^2) + rounding O(1e-16 / h): ~1e-10 at these sizes
        np.testing.assert_allclose(g[k], num, rtol=0, atol=1e-8 * max(1.0, np.abs(num).max()), err_msg=k)


@pytest.mark.parametrize("name", ["lstm", "gru", "gat"])
def test_reference_input_gradient_matches_finite_differences(name):
    """The backward passes return dLoss/dx too (what a layer below them would receive)."""
    model, x, _ = make(name)
    layer = model.layers[0]
    fwd = reference._BEYOND[type(layer)][0]
    dout = np.random.default_rng(2).standard_normal(fwd(layer, x)[0].shape)
    dx, _ = reference.layer_gradient(layer, x, dout)
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + 1e-6
        up = (fwd(layer, x)[0] * dout).sum()
        x[idx] = old - 1e-6
        down = (fwd(layer, x)[0] * dout).sum()
        x[idx] = old
        num[idx] = (up - down) / 2e-6
    np.testing.assert_allclose(dx, num, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", MODELS)
def test_noiseless_forward_equals_the_reference_forward(name):
    model, x, _ = make(name, dtype=np.float32)
    layer = model.layers[0]
    out32 = layer.forward(x.astype(np.float32), np)
    out64 = reference._BEYOND[type(layer)][0](layer, x)[0]
    np.testing.assert_allclose(out32, out64, rtol=0, atol=1e-5)


def test_lstm_cell_by_hand():
    """One step, one unit, weights chosen so every gate is easy to write down."""
    lstm = minilr.LSTM(1, 1)
    lstm.weight = np.array([[1.0, 0], [0, 0], [2.0, 0], [-1.0, 0]])
    lstm.bias = np.zeros(4)
    x = np.array([[[0.5]]])
    sig = lambda v: 1 / (1 + np.exp(-v))
    c = sig(0.5) * np.tanh(1.0)
    np.testing.assert_allclose(lstm.forward(x, np), [[sig(-0.5) * np.tanh(c)]], rtol=1e-12)


def test_gat_attends_only_along_edges():
    """Changing a node that is not an in-neighbour leaves a node's output unchanged."""
    model, x, _ = make("gat")
    layer = model.layers[0]
    out = layer.forward(x, np)
    x2 = x.copy()
    x2[:, 3] += 5.0  # node 3 sends only to node 2 (and itself)
    out2 = layer.forward(x2, np)
    changed = np.abs(out2 - out).max(axis=(0, 2)) > 1e-12
    np.testing.assert_array_equal(changed, [False, False, True, True, False])
    assert layer.n_edges == EDGES.shape[1] + 5  # self-loops added


# -- LIF ----------------------------------------------------------------------------------------------
def test_lif_dynamics_by_hand():
    lif = minilr.LIF(1, 1, steps=4, beta=0.5, threshold=1.0, output="spikes")
    lif.weight, lif.bias = np.array([[0.8]]), np.zeros(1)
    # V: 0.8 (no), 0.4 + 0.8 = 1.2 -> spike, 0.2; 0.1 + 0.8 = 0.9 (no); 0.45 + 0.8 = 1.25 -> spike
    np.testing.assert_array_equal(lif.forward(np.array([[1.0]]), np)[0, :, 0], [0, 1, 0, 1])
    lif.output = "rate"
    np.testing.assert_array_equal(lif.forward(np.array([[1.0]]), np), [[0.5]])


def test_lif_takes_sequences_and_stacks():
    model = minilr.Sequential([minilr.LIF(3, 5, steps=6, output="spikes"), minilr.LIF(5, 4), minilr.Linear(4, 2)])
    x = np.random.default_rng(0).uniform(0, 1, (7, 3))
    assert model.forward(x).shape == (7, 2)
    spikes = model.layers[0].forward(x, np)
    assert spikes.shape == (7, 6, 5) and set(np.unique(spikes)) <= {0.0, 1.0}


def test_reference_refuses_lif():
    model = minilr.Sequential([minilr.LIF(3, 5, steps=4), minilr.Linear(5, 2)])
    x, y = np.ones((2, 3)), np.array([0, 1])
    with pytest.raises(ValueError, match="LIF spiking neurons.*no exact backprop gradient.*'lr'"):
        reference.gradient(model, x, y)
    with pytest.raises(ValueError, match="LIF"):
        minilr.estimate_gradient(model, x, y, estimator="bp")
    g = minilr.estimate_gradient(model, x, y, estimator="alr", copies=8)
    assert set(g) == set(model.parameters())


# -- packed-sign records ------------------------------------------------------------------------------
LAYER_MODELS = {
    "lstm": lambda: make("lstm", np.float32),
    "gru": lambda: make("gru", np.float32),
    "gat": lambda: make("gat", np.float32),
    "lif": lambda: (minilr.Sequential([minilr.LIF(3, 6, steps=5, output="spikes"), minilr.LIF(6, 4),
                                       minilr.Linear(4, 3)], sigma=0.3, seed=0),
                    np.random.default_rng(0).uniform(-1, 1, (3, 3)), np.array([0, 1, 2])),
}


@pytest.mark.parametrize("name", sorted(LAYER_MODELS))
def test_packed_sign_records_equal_the_plain_ones(name):
    """ALR's sums from packed bits equal ``sum L sign(U) sign(eps)`` formed from the float records
    of an LR pass with the same keys (the same noise, so the same forward pass and losses)."""
    model, x, y = LAYER_MODELS[name]()
    x = x.astype(np.float32)
    entries, plain, Lc = lr_records(model, x, y, 8, approx=False)
    _, packed, Lc2 = lr_records(model, x, y, 8, approx=True)
    np.testing.assert_array_equal(Lc, Lc2)
    for (prefix, layer, site_name), site_f, site_s in zip(entries, plain, packed):
        G, g = float_record_signs(site_f, Lc)
        got = site_s.gradient(Lc)
        key = prefix + site_name
        scale = np.abs(G).max()
        np.testing.assert_allclose(got["weight"].reshape(G.shape), G, rtol=0, atol=1e-5 * scale, err_msg=key)
        if "bias" in got:
            np.testing.assert_allclose(got["bias"], g, rtol=0, atol=1e-5 * max(1, np.abs(g).max()), err_msg=key)


@pytest.mark.parametrize("name", sorted(LAYER_MODELS))
@pytest.mark.parametrize("estimator", ["lr", "alr", "es", "aes", "hybrid", "a-hybrid"])
def test_every_estimator_runs_and_is_reproducible(name, estimator):
    model, x, y = LAYER_MODELS[name]()
    g1 = minilr.estimate_gradient(model, x, y, estimator=estimator, copies=8, seed=3)
    g2 = minilr.estimate_gradient(model, x, y, estimator=estimator, copies=8, seed=3, chunk=4)
    assert list(g1) == list(model.parameters())
    for k in g1:
        assert g1[k].shape == model.parameters()[k].shape and np.all(np.isfinite(g1[k]))
        if estimator in ("lr", "es", "alr", "aes"):  # chunks change only the baseline's groups
            assert np.any(g1[k] != 0), k
    g3 = minilr.estimate_gradient(model, x, y, estimator=estimator, copies=8, seed=3)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g3[k])


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_layer, name", [
    (lambda: minilr.LSTM(0, 4), "in_features"),
    (lambda: minilr.GRU(3, 0), "hidden"),
    (lambda: minilr.LSTM(3, 4, return_sequences="yes"), "return_sequences"),
    (lambda: minilr.LSTM(3, 4, sigma=[0.1, 0.2]), "sigma"),
    (lambda: minilr.GraphAttention(3, 4, np.zeros((3, 4), int)), "edges"),
    (lambda: minilr.GraphAttention(3, 4, np.array([[0, 1], [1, 5]]), n_nodes=3), "edges"),
    (lambda: minilr.GraphAttention(3, 4, np.array([[0.0, 1.0], [1.0, 0.0]])), "edges"),
    (lambda: minilr.GraphAttention(3, 4, np.array([[0, -1], [1, 0]])), "edges"),
    (lambda: minilr.LIF(3, 4, beta=1.5), "beta"),
    (lambda: minilr.LIF(3, 4, threshold=0), "threshold"),
    (lambda: minilr.LIF(3, 4, output="volts"), "output"),
    (lambda: minilr.LIF(3, 4, steps=0), "steps"),
])
def test_bad_layer_arguments_are_rejected(make_layer, name):
    with pytest.raises((ValueError, TypeError), match=name):
        make_layer()


@pytest.mark.parametrize("name, bad_x", [
    ("lstm", np.zeros((3, 5))),          # no time axis
    ("lstm", np.zeros((3, 5, 4))),       # 4 features, the layer takes 3
    ("gat", np.zeros((2, 6, 3))),        # 6 nodes, the graph has 5
    ("gat", np.zeros((2, 5, 2))),        # 2 features
])
def test_bad_input_shapes_are_rejected_naming_x(name, bad_x):
    model, _, y = make(name)
    with pytest.raises(ValueError, match=r"^x\b|x:"):
        minilr.estimate_gradient(model, bad_x, y[:bad_x.shape[0]], estimator="lr", copies=4)
    with pytest.raises(ValueError, match=r"^x\b|x:"):
        reference.gradient(model, bad_x, y[:bad_x.shape[0]])


def test_static_lif_input_needs_steps():
    model = minilr.Sequential([minilr.LIF(3, 4), minilr.Linear(4, 2)])
    with pytest.raises(ValueError, match="steps"):
        minilr.estimate_gradient(model, np.ones((2, 3)), np.array([0, 1]), copies=4)
    model.forward(np.ones((2, 6, 3)))  # spike trains need no steps


def test_graph_labels_are_checked_per_node():
    model, x, y = make("gat")
    with pytest.raises(ValueError, match=r"y must be class indices of shape \(2, 5\)"):
        minilr.estimate_gradient(model, x, y[:, :4], copies=4)
    bad = y.copy()
    bad[0, 0] = -2
    with pytest.raises(ValueError, match=r"y holds labels outside \[-1, 2\]"):
        minilr.estimate_gradient(model, x, bad, copies=4)
    with pytest.raises(ValueError, match=r"y holds labels outside \[-1, 2\]"):
        reference.gradient(model, x, bad)


def test_graph_loss_and_accuracy_skip_unlabelled_nodes():
    model, x, y = make("gat")
    out = model.forward(x)
    mask = y >= 0
    logp = out - np.log(np.exp(out).sum(-1, keepdims=True))
    per_node = -np.take_along_axis(logp, np.where(mask, y, 0)[..., None], -1)[..., 0]
    expect = np.mean([(per_node[b] * mask[b]).sum() / mask[b].sum() for b in range(2)])
    assert reference.loss(model, x, y) == pytest.approx(expect, rel=1e-12)
    h = minilr.train(model, (x, y), val_data=(x, y), estimator="bp", epochs=1, batch_size=2, progress=False)
    assert h.val_accuracy[0] == pytest.approx(np.mean((model.predict(x) == y)[mask]))


@pytest.mark.parametrize("name", sorted(LAYER_MODELS))
def test_sign_records_streamed_in_blocks_give_the_same_estimate(name, monkeypatch):
    """ALR runs the copies in blocks (minilr.engines.cpu.BLOCK_FLOATS_APPROX): recurrent steps,
    graph nodes and spike ticks see the block's copies only, and the estimate does not change."""
    from minilr.engines import cpu

    model, x, y = LAYER_MODELS[name]()
    monkeypatch.setattr(cpu, "BLOCK_FLOATS_APPROX", 1 << 30)
    whole = minilr.estimate_gradient(model, x, y, estimator="alr", copies=24, seed=4)
    monkeypatch.setattr(cpu, "BLOCK_FLOATS_APPROX", 1)  # blocks of one copy
    blocks = minilr.estimate_gradient(model, x, y, estimator="alr", copies=24, seed=4)
    for k in whole:
        np.testing.assert_allclose(blocks[k], whole[k], rtol=1e-5, atol=1e-6, err_msg=k)