"""Exact gradients of the noiseless loss by a hand-written backward pass: the oracle.

This is backpropagation written out by hand (chain rule, layer by layer, no autograd) so tests
and tutorials can measure how close an estimate is to the truth (paper Fig. 1, 5, Table 4).
Training never calls it unless you ask for the BP baseline (``estimator="bp"``).

Everything runs in float64 on the host, whatever the model's dtype.
"""
from __future__ import annotations

import numpy as np

from . import validation as _v
from .layers import Linear
from .losses import LOSSES, per_sample

__all__ = ["gradient", "loss"]


def _prepare(model, x, y, loss):
    from .models import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a minilr Sequential or MLP, got {type(model).__name__}")
    if callable(loss):
        raise ValueError("the reference differentiates only loss='cross_entropy' or 'mse', not a "
                         "custom loss function: write its gradient by hand")
    _v.choice(loss, "loss", LOSSES)
    x = _v.features(x, "x", model.in_features).astype(np.float64)
    y = _v.targets(y, "y", loss, x.shape[0], model.out_features)
    return x, (y if loss == "cross_entropy" else y.astype(np.float64))


def loss(model, x, y, loss="cross_entropy") -> float:
    """Mean noiseless loss of ``model`` on ``(x, y)``."""
    x, y = _prepare(model, x, y, loss)
    return float(per_sample(loss, model.forward(x).astype(np.float64), y, np).mean())


def gradient(model, x, y, loss="cross_entropy") -> dict:
    """Exact gradient of the mean noiseless loss w.r.t. every weight and bias.

    Keys are ``"<i>.weight"`` and ``"<i>.bias"``; a learned ``sigma`` has no gradient here (the
    noiseless loss does not depend on it) and is left out.

    Raises
    ------
    ValueError
        If the model has a layer with no usable derivative (the Heaviside ``Step``).
    """
    x, y = _prepare(model, x, y, loss)
    # Forward, keeping every layer's input.
    inputs = []
    h = x
    for layer in model.layers:
        inputs.append(h)
        if isinstance(layer, Linear):
            h = h @ layer.weight.astype(np.float64).T + layer.bias.astype(np.float64)
        else:
            h = layer.forward(h, np)
    n = x.shape[0]
    # dL/d(output) of the mean loss.
    if loss == "cross_entropy":
        p = np.exp(h - h.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(n), y] -= 1.0
        delta = p / n
    else:
        delta = (h - y) / n
    grads = {}
    for i in range(len(model.layers) - 1, -1, -1):
        layer, h_in = model.layers[i], inputs[i]
        if isinstance(layer, Linear):
            grads[f"{i}.weight"] = delta.T @ h_in
            grads[f"{i}.bias"] = delta.sum(axis=0)
            delta = delta @ layer.weight.astype(np.float64)
        else:
            out = layer.forward(h_in, np)
            delta = delta * layer.derivative(h_in, out, np)
    return {k: grads[k] for k in model.parameters() if k in grads}


# -- recurrent, graph and spiking layers (issue 8): forward passes that keep what the backward
# pass needs, and the backward passes, written out by hand in float64 -----------------------------
def _sig(v):
    return 0.5 * (1 + np.tanh(0.5 * v))


def _f64(layer, name):
    a = getattr(layer, name, None)
    return None if a is None else np.asarray(a, dtype=np.float64)


def lstm_forward(layer, x):
    """LSTM over ``x`` (N, T, F) in float64: ``(out, cache)`` for :func:`lstm_backward`."""
    W, b, H, F = _f64(layer, "weight"), _f64(layer, "bias"), layer.hidden, layer.in_features
    N, T = x.shape[:2]
    h, c = np.zeros((N, H)), np.zeros((N, H))
    steps, hs = [], []
    for t in range(T):
        U = np.concatenate([x[:, t], h], axis=1)
        z = U @ W.T + b
        i, f, g, o = _sig(z[:, :H]), _sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), _sig(z[:, 3 * H:])
        c_prev = c
        c = f * c_prev + i * g
        h = o * np.tanh(c)
        steps.append((U, i, f, g, o, c_prev, c))
        hs.append(h)
    out = np.stack(hs, axis=1) if layer.return_sequences else h
    return out, steps


def lstm_backward(layer, steps, dout):
    """Backpropagation through time: ``(grads {"weight", "bias"}, d out / d x)``."""
    W, H, F = _f64(layer, "weight"), layer.hidden, layer.in_features
    T, N = len(steps), steps[0][0].shape[0]
    dW, db, dx = np.zeros_like(W), np.zeros(4 * H), np.zeros((N, T, F))
    dh_next, dc_next = np.zeros((N, H)), np.zeros((N, H))
    for t in range(T - 1, -1, -1):
        U, i, f, g, o, c_prev, c = steps[t]
        dh = dh_next + (dout[:, t] if layer.return_sequences else (dout if t == T - 1 else 0))
        tc = np.tanh(c)
        dc = dc_next + dh * o * (1 - tc * tc)
        dz = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
                             dh * tc * o * (1 - o)], axis=1)
        dc_next = dc * f
        dW += dz.T @ U
        db += dz.sum(axis=0)
        dU = dz @ W
        dx[:, t], dh_next = dU[:, :F], dU[:, F:]
    return {"weight": dW, "bias": db}, dx


def gru_forward(layer, x):
    """GRU over ``x`` (N, T, F) in float64: ``(out, cache)`` for :func:`gru_backward`."""
    Wg, bg, Wc, bc = (_f64(layer, n) for n in ("weight", "bias", "cand_weight", "cand_bias"))
    H = layer.hidden
    N, T = x.shape[:2]
    h = np.zeros((N, H))
    steps, hs = [], []
    for t in range(T):
        U1 = np.concatenate([x[:, t], h], axis=1)
        a = _sig(U1 @ Wg.T + bg)
        z, r = a[:, :H], a[:, H:]
        U2 = np.concatenate([x[:, t], r * h], axis=1)
        n = np.tanh(U2 @ Wc.T + bc)
        steps.append((U1, U2, z, r, n, h))
        h = (1 - z) * n + z * h
        hs.append(h)
    out = np.stack(hs, axis=1) if layer.return_sequences else h
    return out, steps


def gru_backward(layer, steps, dout):
    """Backpropagation through time for :class:`~minilr.GRU`."""
    Wg, Wc, H, F = _f64(layer, "weight"), _f64(layer, "cand_weight"), layer.hidden, layer.in_features
    T, N = len(steps), steps[0][0].shape[0]
    g = {"weight": np.zeros_like(Wg), "bias": np.zeros(2 * H),
         "cand_weight": np.zeros_like(Wc), "cand_bias": np.zeros(H)}
    dx, dh_next = np.zeros((N, T, F)), np.zeros((N, H))
    for t in range(T - 1, -1, -1):
        U1, U2, z, r, n, h = steps[t]
        dh_out = dh_next + (dout[:, t] if layer.return_sequences else (dout if t == T - 1 else 0))
        da_n = dh_out * (1 - z) * (1 - n * n)
        g["cand_weight"] += da_n.T @ U2
        g["cand_bias"] += da_n.sum(axis=0)
        dU2 = da_n @ Wc
        drh = dU2[:, F:]
        da_g = np.concatenate([dh_out * (h - n) * z * (1 - z), drh * h * r * (1 - r)], axis=1)
        g["weight"] += da_g.T @ U1
        g["bias"] += da_g.sum(axis=0)
        dU1 = da_g @ Wg
        dx[:, t] = dU1[:, :F] + dU2[:, :F]
        dh_next = dh_out * z + drh * r + dU1[:, F:]
    return g, dx


def gat_forward(layer, x):
    """Graph attention on node features ``x`` (N, n, F) in float64: ``(out, cache)``."""
    from .graph import attend

    W, b, A = _f64(layer, "weight"), _f64(layer, "bias"), _f64(layer, "att_weight")
    z = x @ W.T + b
    sd = z @ A.T
    out, (pre, alpha) = attend(z, sd, layer.src, layer.dst, layer.starts, layer.negative_slope, np)
    return out, (x, z, pre, alpha)


def gat_backward(layer, cache, dout):
    """Backward pass of :class:`~minilr.GraphAttention` by hand, edge by edge::

        out_i = sum_j alpha_ij z_j    ->  dz_j += alpha_ij dout_i,  dalpha_ij = dout_i . z_j
        softmax over i's edges        ->  de_ij = alpha_ij (dalpha_ij - sum_k alpha_ik dalpha_ik)
        e = LeakyReLU(s_j + d_i)      ->  ds_j += de_ij e'(.),  dd_i += de_ij e'(.)
        [s, d] = z A^T, z = x W^T + b ->  the usual affine backward
    """
    from .graph import segment_sum

    x, z, pre, alpha = cache
    W, A = _f64(layer, "weight"), _f64(layer, "att_weight")
    src, dst, starts = layer.src, layer.dst, layer.starts
    N, n = x.shape[:2]
    d_dst = dout[:, dst, :]  # (N, E, G)
    dalpha = (d_dst * z[:, src, :]).sum(axis=-1)
    dz = np.zeros_like(z)
    np.add.at(dz, (slice(None), src), alpha[..., None] * d_dst)
    de = alpha * (dalpha - segment_sum(alpha * dalpha, dst, starts, np)[:, dst])
    dpre = de * np.where(pre > 0, 1.0, layer.negative_slope)
    dsd = np.zeros((N, n, 2))
    np.add.at(dsd, (slice(None), src, 0), dpre)
    dsd[:, :, 1] = segment_sum(dpre, dst, starts, np)
    dA = np.einsum("bvk,bvg->kg", dsd, z)
    dz += dsd @ A
    grads = {"weight": np.einsum("bvg,bvf->gf", dz, x), "bias": dz.sum(axis=(0, 1)), "att_weight": dA}
    return grads, dz @ W
