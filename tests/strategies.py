"""Shared hypothesis strategies for the property tests (sign bits, noise).

Sizes are drawn so that rows and widths not divisible by 8 or 64 (the byte and word sizes of the
packing) come up often, next to exact multiples.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

# small sizes, and sizes just around 8 and 64 where byte / word edges are
rows = st.one_of(st.integers(1, 20), st.sampled_from([7, 8, 9, 63, 64, 65, 127, 129, 200]))
widths = st.one_of(st.integers(1, 12), st.sampled_from([31, 64, 65, 70]))
kinds = st.sampled_from(["pm1", "01", "sign"])
seeds = st.integers(0, 2**32 - 1)


def signed_array(seed, shape, zeros=0.3):
    """Float32 values with exact zeros (both +0.0 and -0.0) mixed in, from ``seed``."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(np.float32)
    z = rng.random(shape) < zeros
    a[z] = np.where(rng.random(shape) < 0.5, np.float32(0.0), np.float32(-0.0))[z]
    return a


# -- models and batches for the estimator properties (tests/test_properties.py) ------------------
import minilr  # noqa: E402
from minilr.estimators import NAMES as ESTIMATORS  # noqa: E402

#: every estimator name, "bp" (the exact reference) included
estimators = st.sampled_from(ESTIMATORS)
#: the noisy estimators only (no "bp")
noisy_estimators = st.sampled_from([e for e in ESTIMATORS if e != "bp"])
#: smooth activations (the reference can differentiate them)
smooth_activations = st.sampled_from(["relu", "tanh", "sigmoid", "identity"])
activations = st.sampled_from(["relu", "tanh", "sigmoid", "identity", "step"])
sigmas = st.floats(0.05, 1.0)


@st.composite
def layer_sizes(draw, min_layers=1, max_layers=3, max_width=6):
    """``[in, hidden..., out]`` with ``min_layers..max_layers`` Linear layers; out >= 2 (classes)."""
    n = draw(st.integers(min_layers, max_layers))
    sizes = [draw(st.integers(1, max_width)) for _ in range(n)]
    return sizes + [draw(st.integers(2, max_width))]


@st.composite
def models(draw, activation=None, learn_sigma=None, dtype=np.float32, min_layers=1, max_layers=3):
    """A small MLP with drawn widths, depth, activation, sigma, seed and (optionally) learn_sigma."""
    sizes = draw(layer_sizes(min_layers=min_layers, max_layers=max_layers))
    act = draw(smooth_activations) if activation is None else activation
    ls = draw(st.booleans()) if learn_sigma is None else learn_sigma
    return minilr.MLP(sizes, activation=act, sigma=draw(sigmas), seed=draw(seeds), learn_sigma=ls, dtype=dtype)


@st.composite
def batches(draw, model, max_batch=5):
    """``(x, y)`` for ``model``: standard-normal features and class indices, from a drawn seed."""
    b = draw(st.integers(1, max_batch))
    rng = np.random.default_rng(draw(seeds))
    x = rng.standard_normal((b, model.in_features)).astype(model.dtype)
    y = rng.integers(0, model.out_features, b)
    return x, y


def lr_records(model, x, y, copies, approx, seed=5):
    """One LR (or ALR) forward pass of ``copies`` copies on the reference engine: the sites with
    their records, and the centred losses (leave-one-out baseline)."""
    from minilr.engines.reference import ReferenceEngine
    from minilr.estimators import ESTIMATORS, Plan, Settings, centred_losses

    s = Settings("alr" if approx else "lr", copies)
    plan = Plan.make(model, x, s, np.random.SeedSequence(seed), ESTIMATORS[s.estimator])
    L, sites = ReferenceEngine(np).forward(plan, x, y, range(copies))
    return plan.entries, sites, centred_losses(L, False, True, np)


def float_record_signs(site, Lc):
    """Eq. 3's sums ``sum L sign(eps) sign(U)^T`` formed in float64 from an LR site's float records."""
    G, g, B = 0, 0, site.B
    for (call, c0), (K, P, shared, U, eps) in sorted(site.records.items()):
        m, d = eps.shape[-1], U.shape[-1]
        w = Lc[c0:c0 + K, :, None, None] * np.sign(eps.reshape(K, B, P, m))
        Ue = np.broadcast_to(U.reshape(1, B, P, d), (K, B, P, d)) if shared else U.reshape(K, B, P, d)
        G = G + np.einsum("kbpm,kbpd->md", w.astype(np.float64), np.sign(Ue).astype(np.float64))
        g = g + w.sum(axis=(0, 1, 2))
    return G, g


def model_zoo():
    """One small model of every layer type, with a batch: ``{name: () -> (model, x, y)}`` (float32).

    The engines' shared suite and the MPI equality checks run every entry."""
    import minilr

    rng = np.random.default_rng(0)

    def conv(builder, shape, **kw):
        def make():
            model = builder(input_shape=shape, seed=0, **kw)
            return model, rng.standard_normal((4,) + shape).astype(np.float32), np.arange(4) % 10
        return make

    def recurrent(name):
        def make():
            from test_recurrent_graph_spiking import make as rgs

            model, x, y = rgs(name, np.float32)
            return model, x.astype(np.float32), y
        return make

    def lif():
        model = minilr.Sequential([minilr.LIF(3, 6, steps=5, output="spikes"), minilr.LIF(6, 4),
                                   minilr.Linear(4, 3)], sigma=0.3, seed=0)
        return model, rng.uniform(-1, 1, (3, 3)).astype(np.float32), np.array([0, 1, 2])

    def mlp():
        model = minilr.MLP([7, 16, 12, 4], seed=0, learn_sigma=True)
        return model, rng.standard_normal((5, 7)).astype(np.float32), np.arange(5) % 4

    return {"mlp": mlp, "cnn": conv(minilr.cnn, (1, 12), width=4),
            "cnn2d": conv(minilr.cnn, (2, 8, 8), width=3),
            "resnet5": conv(minilr.resnet5, (1, 12), width=3, learn_sigma=True),
            "resnet9": conv(minilr.resnet9, (2, 8, 8), width=2),
            "lstm": recurrent("lstm"), "gru": recurrent("gru"), "gat": recurrent("gat"), "lif": lif}
