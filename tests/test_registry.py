"""Layers register themselves once (issue 13, item 5): every registered layer class saves and loads
bit for bit, and so does every model builder.

The round trip is parametrised over :data:`minilr.layers.REGISTRY`: a new minilr layer class is
covered as soon as it is defined, and fails here until ``EXAMPLES`` shows how to build it.
"""
from __future__ import annotations

import numpy as np
import pytest

import minilr
from minilr import io as mio
from minilr.layers import REGISTRY, Layer

EDGES = np.array([[0, 1, 2, 3, 4, 1], [1, 2, 3, 4, 0, 3]])


def _acts(act):
    return lambda: ([minilr.Linear(4, 3), act(), minilr.Linear(3, 2)], (4,))


# name -> () -> (layers, one sample's input shape); several layers of the kind where options differ
EXAMPLES = {
    "Linear": lambda: ([minilr.Linear(4, 3, sigma=[0.1, 0.2, 0.3])], (4,)),
    **{n: _acts(getattr(minilr, n)) for n in ("ReLU", "Tanh", "Sigmoid", "Identity", "Step")},
    "Conv1d": lambda: ([minilr.Conv1d(2, 3, 3, stride=2, padding=1), minilr.Conv1d(3, 2, 1)], (2, 9)),
    "Conv2d": lambda: ([minilr.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0))], (2, 6, 5)),
    "MaxPool1d": lambda: ([minilr.Conv1d(1, 2, 3), minilr.MaxPool1d(3, stride=2)], (1, 10)),
    "AvgPool1d": lambda: ([minilr.Conv1d(1, 2, 3), minilr.AvgPool1d(2)], (1, 10)),
    "MaxPool2d": lambda: ([minilr.Conv2d(1, 2, 3), minilr.MaxPool2d((2, 3), stride=(1, 2))], (1, 7, 8)),
    "AvgPool2d": lambda: ([minilr.Conv2d(1, 2, 3), minilr.AvgPool2d(2)], (1, 7, 8)),
    "Flatten": lambda: ([minilr.Conv1d(1, 2, 3), minilr.Flatten(), minilr.Linear(14, 3)], (1, 9)),
    "GlobalAvgPool": lambda: ([minilr.Conv2d(1, 2, 3), minilr.GlobalAvgPool(), minilr.Linear(2, 2)], (1, 5, 5)),
    "GroupNorm": lambda: ([minilr.Conv1d(1, 4, 3), minilr.GroupNorm(2, eps=1e-3)], (1, 9)),
    "Residual": lambda: ([minilr.Conv1d(1, 4, 3, padding=1),
                          minilr.Residual([minilr.Conv1d(4, 4, 3, padding=1), minilr.GroupNorm(1), "relu",
                                           minilr.Conv1d(4, 4, 3, padding=1)]), "relu",
                          minilr.Residual([minilr.Conv1d(4, 3, 3, padding=1), "tanh"],
                                          skip=minilr.Conv1d(4, 3, 1)),
                          minilr.Flatten(),
                          minilr.Residual([minilr.Linear(27, 27), "sigmoid", minilr.Linear(27, 27)])], (1, 9)),
    "LSTM": lambda: ([minilr.LSTM(3, 5, return_sequences=True), minilr.LSTM(5, 4), minilr.Linear(4, 2)], (6, 3)),
    "GRU": lambda: ([minilr.GRU(3, 5, return_sequences=True), minilr.GRU(5, 4), minilr.Linear(4, 2)], (6, 3)),
    "GraphAttention": lambda: ([minilr.GraphAttention(3, 4, EDGES, n_nodes=6, negative_slope=0.1), "relu",
                                minilr.GraphAttention(4, 2, EDGES, n_nodes=6)], (6, 3)),
    "LIF": lambda: ([minilr.LIF(4, 6, steps=3, beta=0.8, threshold=0.7, output="spikes"),
                     minilr.LIF(6, 3), minilr.Linear(3, 2)], (4,)),
}

OURS = sorted(n for n, c in REGISTRY.items() if c.__module__.startswith("minilr."))


def _arrays(model):
    return mio.model_state(model)[1]


def assert_round_trip(model, tmp_path, shape, name="m.npz"):
    path = tmp_path / name
    minilr.save(model, path)
    loaded = minilr.load(path)
    assert repr(loaded) == repr(model) and loaded.dtype == model.dtype
    assert loaded.input_shape == model.input_shape
    a, b = _arrays(model), _arrays(loaded)
    assert a.keys() == b.keys() and a
    for k in a:  # every array, sigma included, bit for bit
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k
    assert list(loaded.parameters()) == list(model.parameters())
    for la, lb in zip(model.layers, loaded.layers):
        assert type(la) is type(lb) and la.config() == lb.config()
    x = np.random.default_rng(1).standard_normal((3,) + tuple(shape)).astype(model.dtype)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    return loaded


def test_every_minilr_layer_class_is_registered_and_has_an_example():
    ours = {n for n, c in vars(minilr).items() if isinstance(c, type) and issubclass(c, Layer)}
    assert ours <= set(OURS), ours - set(OURS)
    assert set(OURS) == set(EXAMPLES), f"give EXAMPLES an entry for {set(OURS) - set(EXAMPLES)}"


@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("name", OURS)
def test_every_registered_layer_round_trips_bit_for_bit(tmp_path, name, learn_sigma):
    assert name in EXAMPLES, f"{name} is a registered layer: add it to EXAMPLES"
    layers, shape = EXAMPLES[name]()
    model = minilr.Sequential(layers, sigma=0.2, seed=7, learn_sigma=learn_sigma, input_shape=shape)
    assert any(type(l) is REGISTRY[name] for l in model.layers)
    if learn_sigma:  # a learned sigma has moved away from its start: it must come back as it is
        for k, p in model.parameters().items():
            if k.endswith("sigma"):
                p *= np.linspace(0.5, 2.0, p.size, dtype=p.dtype)
    assert_round_trip(model, tmp_path, shape)


@pytest.mark.parametrize("build, shape", [
    (lambda: minilr.cnn(learn_sigma=True), (1, 40)),
    (lambda: minilr.cnn(input_shape=(3, 12, 12), width=4), (3, 12, 12)),
    (lambda: minilr.resnet5(seed=3), (1, 40)),
    (lambda: minilr.resnet5(input_shape=(3, 8, 8), width=4, dtype=np.float64), (3, 8, 8)),
    (lambda: minilr.resnet9(), (1, 40)),
    (lambda: minilr.resnet9(input_shape=(3, 16, 16), width=2, learn_sigma=True), (3, 16, 16)),
    (lambda: minilr.MLP([5, 7, 3], activation="tanh", learn_sigma=True), (5,)),
])
def test_every_builder_round_trips_and_estimates_the_same(tmp_path, build, shape):
    model = build()
    loaded = assert_round_trip(model, tmp_path, shape)
    x = np.random.default_rng(2).standard_normal((4,) + shape).astype(model.dtype)
    y = np.arange(4) % model.out_features
    for est in ("lr", "alr"):
        g0 = minilr.estimate_gradient(model, x, y, estimator=est, copies=6, seed=5)
        g1 = minilr.estimate_gradient(loaded, x, y, estimator=est, copies=6, seed=5)
        assert g0.keys() == g1.keys()
        for k in g0:
            assert g0[k].tobytes() == g1[k].tobytes(), (est, k)


def test_recurrent_graph_and_spiking_models_round_trip(tmp_path):
    models = [
        (minilr.Sequential([minilr.LSTM(2, 8), minilr.Linear(8, 3)], seed=1, learn_sigma=True), (5, 2)),
        (minilr.Sequential([minilr.GRU(2, 8), minilr.Linear(8, 3)], seed=1), (5, 2)),
        (minilr.Sequential([minilr.GraphAttention(3, 8, EDGES), "relu", minilr.GraphAttention(8, 2, EDGES)],
                           seed=2, learn_sigma=True), (5, 3)),
        (minilr.Sequential([minilr.LIF(4, 8, steps=5), minilr.Linear(8, 2)], seed=3), (4,)),
    ]
    for i, (m, shape) in enumerate(models):
        assert_round_trip(m, tmp_path, shape, f"m{i}.npz")


def test_the_reference_backward_pass_is_the_layers_own():
    """reference.backward calls the layer's ``backward``: a layer class declares it in the class."""
    class Double(Layer):
        def forward(self, h, xp):
            return 2 * h

        def backward(self, x, delta, feedback=None):
            return 2 * delta, {}

    model = minilr.Sequential([minilr.Linear(3, 2), Double()], seed=0, input_shape=(3,))
    x = np.random.default_rng(0).standard_normal((4, 3))
    y = np.array([0, 1, 1, 0])
    g = minilr.reference.gradient(model, x, y)
    plain = minilr.Sequential([minilr.Linear(3, 2)], seed=0)
    plain.layers[0].weight = 2 * model.layers[0].weight.astype(np.float64)
    plain.layers[0].bias = 2 * model.layers[0].bias.astype(np.float64)
    g2 = minilr.reference.gradient(plain, x, y)
    np.testing.assert_allclose(g["0.weight"], 2 * g2["0.weight"], rtol=1e-12)

    class NoBackward(Layer):
        def forward(self, h, xp):
            return h

    with pytest.raises(TypeError, match="no backward pass for NoBackward"):
        minilr.reference.gradient(minilr.Sequential([minilr.Linear(3, 2), NoBackward()], seed=0), x, y)


# -- a layer added later: one class, registered once --------------------------------------------------
def test_a_new_layer_registers_itself_and_round_trips(tmp_path):
    class Scale(minilr.layers.Activation):
        name = "scale_test"

        def __init__(self, factor=2.0):
            self.factor = factor

        def forward(self, v, xp):
            return self.factor * v

        def config(self):
            return {"factor": self.factor}

    assert REGISTRY["Scale"] is Scale
    model = minilr.Sequential([minilr.Linear(2, 3), Scale(3.0), minilr.Linear(3, 2)], seed=0)
    minilr.save(model, tmp_path / "m.npz")
    loaded = minilr.load(tmp_path / "m.npz")
    assert isinstance(loaded.layers[1], Scale) and loaded.layers[1].factor == 3.0
    x = np.ones((1, 2), np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


def test_a_layer_without_config_or_with_a_taken_name_is_not_saved_silently(tmp_path):
    class ShiftNoConfig(minilr.layers.Activation):  # takes an argument but says nothing of it
        def __init__(self, by=1.0):
            self.by = by

        def forward(self, v, xp):
            return v + self.by

    model = minilr.Sequential([minilr.Linear(2, 3), ShiftNoConfig(3.0), minilr.Linear(3, 2)], seed=0)
    with pytest.raises(mio.NotSaveableError, match=r"layer 1 \(ShiftNoConfig\).*config\(\)"):
        minilr.save(model, tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()

    class Linear(Layer):  # another module's class of a taken name does not take it over
        def forward(self, h, xp):
            return h

    assert REGISTRY["Linear"] is minilr.Linear
    model = minilr.Sequential([minilr.Linear(2, 3), Linear()], seed=0, input_shape=(2,))
    with pytest.raises(mio.NotSaveableError, match="name 'Linear' is taken by minilr.layers.Linear.*save_name"):
        minilr.save(model, tmp_path / "m.npz")

    class Linear(Layer, save_name="test_registry.Linear"):  # noqa: F811 - a name of its own
        def forward(self, h, xp):
            return h

    model = minilr.Sequential([minilr.Linear(2, 3), Linear()], seed=0, input_shape=(2,))
    minilr.save(model, tmp_path / "m.npz")
    assert type(minilr.load(tmp_path / "m.npz").layers[1]) is Linear
