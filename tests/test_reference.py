"""The oracle itself must be right: the hand-written backward pass against central differences."""
from __future__ import annotations

import numpy as np
import pytest

import minilr


def finite_difference(model, x, y, loss, h=1e-6):
    """Central differences of the mean noiseless loss for every weight and bias (float64)."""
    out = {}
    for key, p in model.parameters().items():
        if key.endswith(".sigma"):
            continue
        g = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            up = minilr.reference.loss(model, x, y, loss)
            p[idx] = old - h
            down = minilr.reference.loss(model, x, y, loss)
            p[idx] = old
            g[idx] = (up - down) / (2 * h)
        out[key] = g
    return out


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "identity"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_reference_matches_central_differences(activation, loss):
    """Central differences have error O(h^2 f''') + O(eps_machine / h) ~ 1e-9 here; ReLU kinks are
    avoided because no pre-activation of this seed lies within h of 0. Tolerance 1e-6 absolute."""
    rng = np.random.default_rng(1)
    model = minilr.MLP([5, 7, 6, 3], activation=activation, seed=2, dtype=np.float64)
    x = rng.standard_normal((4, 5))
    y = rng.integers(0, 3, 4) if loss == "cross_entropy" else rng.standard_normal((4, 3))
    exact = minilr.reference.gradient(model, x, y, loss)
    approx = finite_difference(model, x, y, loss)
    assert exact.keys() == approx.keys() == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    for k in exact:
        np.testing.assert_allclose(exact[k], approx[k], atol=1e-6, rtol=0, err_msg=k)


def test_reference_leaves_out_sigma_and_bp_estimator_fills_zeros():
    rng = np.random.default_rng(0)
    model = minilr.MLP([3, 4, 2], seed=0, learn_sigma=True)
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
    g = minilr.reference.gradient(model, x, y)
    assert set(g) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    bp = minilr.estimate_gradient(model, x, y, estimator="bp")
    assert set(bp) == set(model.parameters())
    assert not np.any(bp["0.sigma"]) and not np.any(bp["2.sigma"])
    np.testing.assert_allclose(bp["0.weight"], g["0.weight"], rtol=1e-5, atol=1e-7)


def test_reference_refuses_the_step_activation_with_a_reason():
    model = minilr.MLP([3, 4, 2], activation="step", seed=0)
    with pytest.raises(ValueError, match="(?i)step.*derivative"):
        minilr.reference.gradient(model, np.ones((2, 3)), np.array([0, 1]))


def test_reference_refuses_a_custom_loss():
    model = minilr.MLP([3, 2], seed=0)
    with pytest.raises(ValueError, match="loss"):
        minilr.reference.gradient(model, np.ones((2, 3)), np.array([0, 1]), loss=lambda o, y, xp: o.sum(-1))
