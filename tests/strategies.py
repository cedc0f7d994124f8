"""Shared hypothesis strategies for minilr's property tests (the minitorch habit).

Append new strategies at the end; keep each one small and documented.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import minilr
from minilr.estimators import NAMES as ESTIMATORS

#: every estimator name, "bp" (the exact reference) included
estimators = st.sampled_from(ESTIMATORS)
#: the noisy estimators only (no "bp")
noisy_estimators = st.sampled_from([e for e in ESTIMATORS if e != "bp"])
#: smooth activations (the reference can differentiate them)
smooth_activations = st.sampled_from(["relu", "tanh", "sigmoid", "identity"])
activations = st.sampled_from(["relu", "tanh", "sigmoid", "identity", "step"])
sigmas = st.floats(0.05, 1.0)
seeds = st.integers(0, 2**32 - 1)


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
