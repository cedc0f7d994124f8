"""Fuzz: no NaN or inf is ever handed back silently from finite inputs (issue 10, target 4).

Hypothesis draws models (dtype, widths, activation, sigma from 1e-30 to 1e30, learned or not),
inputs and targets with magnitudes up to 1e300, every estimator, copies, chunk and antithetic
noise, and calls :func:`minilr.estimate_gradient` and :func:`minilr.train`. Each call must either
return finite numbers only (gradient; trained parameters and every History value) or raise a
clear error: ValueError/TypeError (bad input, e.g. a value the model's dtype cannot hold) or
FloatingPointError (TrainingDiverged included: the numbers overflowed on the way), whose message
must say what happened. Anything else (a NumPy warning, a Numba error, a silent NaN) fails.
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minilr

ESTIMATORS = ("lr", "alr", "es", "aes", "hybrid", "a-hybrid", "bp")
CLEAR = (ValueError, TypeError, FloatingPointError)


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    d = draw(st.integers(1, 5))
    widths = [d] + draw(st.lists(st.integers(1, 6), min_size=0, max_size=2)) + [draw(st.integers(2, 4))]
    activation = draw(st.sampled_from(["relu", "tanh", "sigmoid", "identity", "step"]))
    sigma = 10.0 ** draw(st.floats(-30, 30))
    learn_sigma = draw(st.booleans())
    b = draw(st.integers(1, 6))
    scale = 10.0 ** draw(st.floats(-300, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((b, d)) * scale
    loss = draw(st.sampled_from(["cross_entropy", "mse"]))
    y = rng.integers(0, widths[-1], b) if loss == "cross_entropy" else \
        rng.standard_normal((b, widths[-1])) * 10.0 ** draw(st.floats(-300, 300))
    estimator = draw(st.sampled_from(ESTIMATORS))
    if activation == "step" and estimator == "bp":
        activation = "relu"
    antithetic = draw(st.booleans())
    copies = draw(st.integers(1, 12)) * (2 if antithetic else 1)
    chunk = draw(st.one_of(st.none(), st.integers(1, copies)))
    if antithetic and chunk is not None:
        chunk += chunk % 2
    return dict(dtype=dtype, widths=widths, activation=activation, sigma=sigma, learn_sigma=learn_sigma,
                x=x, y=y, loss=loss, estimator=estimator, copies=copies, chunk=chunk, antithetic=antithetic)


def _model(c):
    return minilr.MLP(c["widths"], activation=c["activation"], sigma=c["sigma"], seed=0,
                      learn_sigma=c["learn_sigma"], dtype=c["dtype"])


def _clear(exc):
    assert isinstance(exc, CLEAR), f"unclear error {type(exc).__name__}: {exc}"
    assert len(str(exc)) > 20, f"error without an explanation: {exc!r}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_estimate_gradient_is_finite_or_says_why(c):
    try:
        model = _model(c)
        g = minilr.estimate_gradient(model, c["x"], c["y"], estimator=c["estimator"], copies=c["copies"],
                                     chunk=c["chunk"], antithetic=c["antithetic"], loss=c["loss"], seed=1)
    except Exception as exc:  # noqa: BLE001 - judged by _clear
        _clear(exc)
        return
    for k, v in g.items():
        assert np.all(np.isfinite(v)), f"{k} is not finite, returned silently"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.sampled_from(["sgd", "momentum", "adam"]), st.floats(-6, 3))
def test_train_is_finite_or_says_why(c, optimizer, log_lr):
    model = None
    try:
        model = _model(c)
        h = minilr.train(model, (c["x"], c["y"]), val_data=(c["x"], c["y"]), estimator=c["estimator"],
                         copies=c["copies"], chunk=c["chunk"], antithetic=c["antithetic"], loss=c["loss"],
                         epochs=2, batch_size=3, optimizer=optimizer, lr=10.0 ** log_lr, progress=False, seed=1)
    except Exception as exc:  # noqa: BLE001 - judged by _clear
        _clear(exc)
        if model is not None and isinstance(exc, minilr.TrainingDiverged):
            for k, p in model.parameters().items():
                assert np.all(np.isfinite(p)), f"diverged and left {k} non-finite"
        return
    for k, p in model.parameters().items():
        assert np.all(np.isfinite(p)), f"{k} is not finite after training"
    values = h.train_loss + h.val_loss + (h.train_accuracy + h.val_accuracy if c["loss"] != "mse" else [])
    assert all(math.isfinite(v) for v in values), h
