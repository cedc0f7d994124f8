"""The one primitive, ``ctx.affine`` (minilr.engines.reference.Block), beyond one call per site.

* A layer that calls ``ctx.affine`` twice with the same weights gets one gradient that adds both
  calls: unbiased for the exact gradient (a z-test against the hand-written reference, false-failure
  probability stated in tests/test_statistics.py), and, under ES, the same perturbation in both
  calls (equal to one call with both positions).
"""
from __future__ import annotations

import numpy as np
import pytest

import minilr
from minilr import reference
from minilr.layers import Layer

from test_statistics import assert_unbiased


class Tied(Layer):
    """Test layer: ``out = W x[:, 0] + W x[:, 1] + 2 b`` from input (N, 2, d), as two calls of one site."""

    sites = ("",)

    def __init__(self, d, m):
        self.d, self.m = d, m
        self.sigma = None

    def init(self, rng, dtype):
        self.weight = rng.standard_normal((self.m, self.d)).astype(dtype) / np.sqrt(self.d)
        self.bias = rng.standard_normal(self.m).astype(dtype) * 0.1

    def out_shape(self, in_shape):
        if tuple(in_shape) != (2, self.d):
            raise ValueError(f"expects (2, {self.d}), got {in_shape}")
        return (self.m,)

    def forward(self, h, xp):
        return h[:, 0] @ self.weight.T + h[:, 1] @ self.weight.T + 2 * self.bias

    def train_forward(self, h, ctx):
        a = ctx.affine(self, h[:, 0:1, :])[:, 0]
        b = ctx.affine(self, h[:, 1:2, :])[:, 0]
        return a + b


@reference.register(Tied)
def _tied_backward(layer, x, delta):
    W = np.asarray(layer.weight, np.float64)
    gW = delta.T @ x[:, 0] + delta.T @ x[:, 1]
    dx = np.stack([delta @ W, delta @ W], axis=1)
    return dx, {"weight": gW, "bias": 2 * delta.sum(axis=0)}


def _tied_problem():
    rng = np.random.default_rng(2)
    model = minilr.Sequential([Tied(3, 2)], sigma=0.5, seed=0, dtype=np.float64, input_shape=(2, 3))
    x = rng.standard_normal((4, 2, 3))
    y = rng.standard_normal((4, 2))
    return model, x, y


def test_shared_weights_reference_matches_finite_differences():
    model, x, y = _tied_problem()
    g = reference.gradient(model, x, y, loss="mse")
    p = model.parameters()
    for k in p:
        num = np.zeros_like(p[k])
        for idx in np.ndindex(p[k].shape):
            old = p[k][idx]
            p[k][idx] = old + 1e-6
            up = reference.loss(model, x, y, "mse")
            p[k][idx] = old - 1e-6
            dn = reference.loss(model, x, y, "mse")
            p[k][idx] = old
            num[idx] = (up - dn) / 2e-6
        np.testing.assert_allclose(g[k], num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("estimator", ["lr", "es"])
def test_shared_weights_two_calls_unbiased(estimator):
    """Noise enters additively, so E[L] = noiseless + const and LR/ES target the exact gradient.

    Had both calls drawn the *same* LR noise, the output noise would be ``2 sigma eps`` and the
    estimate twice the truth: the test would fail (assert_unbiased's power check covers 25 %)."""
    model, x, y = _tied_problem()
    target = np.concatenate([np.ravel(v) for v in reference.gradient(model, x, y, loss="mse").values()])
    reps = 1500 if estimator == "lr" else 4000
    samples = np.stack([np.concatenate([np.ravel(v) for v in minilr.estimate_gradient(
        model, x, y, estimator=estimator, copies=16, seed=100 + r, loss="mse").values()])
        for r in range(reps)])
    assert_unbiased(samples, target, f"tied {estimator}")


def test_es_shares_the_perturbation_across_calls():
    """ES: two calls of one site see the same W + sigma E_k: the same as one call at two positions."""
    model, x, y = _tied_problem()

    class OneCall(Tied):
        def train_forward(self, h, ctx):
            return ctx.affine(self, h).sum(axis=1)

    other = minilr.Sequential([OneCall(3, 2)], sigma=0.5, seed=0, dtype=np.float64, input_shape=(2, 3))
    for est in ("es", "aes"):
        a = minilr.estimate_gradient(model, x, y, estimator=est, copies=8, seed=5, loss="mse")
        b = minilr.estimate_gradient(other, x, y, estimator=est, copies=8, seed=5, loss="mse")
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=1e-14)


def test_affine_rejects_bad_shapes():
    model, x, y = _tied_problem()

    class Bad(Tied):
        def train_forward(self, h, ctx):
            return ctx.affine(self, h[:, :, :2])[:, 0]

    bad = minilr.Sequential([Bad(3, 2)], sigma=0.5, seed=0, dtype=np.float64, input_shape=(2, 3))
    with pytest.raises(ValueError, match="U must have shape"):
        minilr.estimate_gradient(bad, x, y, estimator="lr", copies=4, loss="mse")


@pytest.mark.parametrize("engine", ["reference", "cpu"])
@pytest.mark.parametrize("estimator", ["alr", "aes", "a-hybrid"])
def test_sign_records_streamed_in_blocks_give_the_same_gradient(estimator, engine, monkeypatch):
    """Sign records run the forward pass in blocks of copies (floats live for one block); the
    noise and the sums do not depend on the blocks: small blocks = one block, to rounding."""
    from minilr.engines import cpu, reference as ref_engine

    rng = np.random.default_rng(4)
    model = minilr.Sequential([minilr.Conv1d(1, 3, 3, padding=1), "relu", minilr.Conv1d(3, 2, 3),
                               minilr.Flatten(), minilr.Linear(8, 3)], sigma=0.2, seed=0, learn_sigma=True)
    x = rng.standard_normal((3, 1, 6))
    y = rng.integers(0, 3, 3)
    kw = dict(estimator=estimator, copies=40, seed=2, antithetic=True)
    monkeypatch.setattr(ref_engine, "BLOCK_FLOATS_APPROX", 1 << 30)
    monkeypatch.setattr(cpu, "BLOCK_FLOATS_APPROX", 1 << 30)
    whole = minilr.estimate_gradient(model, x, y, backend=minilr.Backend("numpy", engine=engine), **kw)
    monkeypatch.setattr(ref_engine, "BLOCK_FLOATS_APPROX", 2 * 3 * 18)  # ~2 copies per block
    monkeypatch.setattr(cpu, "BLOCK_FLOATS_APPROX", 2 * 3 * 18)
    bk = minilr.Backend("numpy", engine=engine)
    blocks = minilr.estimate_gradient(model, x, y, backend=bk, **kw)
    for k in whole:
        np.testing.assert_allclose(blocks[k], whole[k], rtol=1e-5, atol=1e-6 * np.abs(whole[k]).max(), err_msg=k)
