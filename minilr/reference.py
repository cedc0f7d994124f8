"""Exact gradients of the noiseless loss by a hand-written backward pass: the oracle.

This is backpropagation written out by hand (chain rule, layer by layer, no autograd) so tests
and tutorials can measure how close an estimate is to the truth (paper Fig. 1, 5, Table 4).
Training never calls it unless you ask for the BP baseline (``estimator="bp"``).

Everything runs in float64 on the host, whatever the model's dtype.
"""
from __future__ import annotations

import math

import numpy as np

from . import validation as _v
from .layers import Activation, Linear
from .losses import LOSSES, per_sample

__all__ = ["gradient", "loss", "register", "backward", "feedback_alignment", "feedback_matrices"]

# Hand-written backward passes of the layers beyond Linear, by layer type:
# ``fn(layer, x, delta) -> (delta_x, grads)`` with ``x`` the layer's float64 input (batch, ...),
# ``delta`` = dLoss/d(output), ``grads`` keyed relative to the layer ("weight", "body.0.bias").
BACKWARD = {}


# Container layers' backward passes take ``feedback=`` and hand it to their children.
CONTAINERS = set()


def register(layer_type, container=False):
    """Decorator: ``fn`` is the exact backward pass of ``layer_type`` (see :data:`BACKWARD`).

    ``container=True``: ``fn(layer, x, delta, feedback)`` runs sub-layers through :func:`backward`
    and must pass ``feedback`` on (for :func:`feedback_alignment`)."""
    def deco(fn):
        BACKWARD[layer_type] = fn
        if container:
            CONTAINERS.add(layer_type)
        return fn
    return deco


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def backward(layer, x, delta, feedback=None):
    """``(dLoss/dx, {param: dLoss/dparam})`` for one layer given ``delta`` = dLoss/d(output).

    ``feedback`` (for :func:`feedback_alignment`): ``{id(layer): B}``; such a layer sends ``delta``
    back through the fixed matrix ``B`` instead of its weight. Its own weight gradient does not
    involve its weight (``delta`` times its input), so only ``dx`` changes.
    """
    if feedback and id(layer) in feedback:
        import copy

        twin = copy.copy(layer)
        twin.weight = feedback[id(layer)]
        layer = twin
    if isinstance(layer, Linear):
        return delta @ _f64(layer.weight), {"weight": delta.T @ x, "bias": delta.sum(axis=0)}
    if isinstance(layer, Activation):
        return delta * layer.derivative(x, layer.forward(x, np), np), {}
    for cls in type(layer).__mro__:
        if cls in BACKWARD:
            if cls in CONTAINERS:
                return BACKWARD[cls](layer, x, delta, feedback)
            return BACKWARD[cls](layer, x, delta)
    raise TypeError(f"minilr.reference has no backward pass for {type(layer).__name__}")


def forward64(layer, x):
    """A layer's noiseless forward pass in float64 (parameters widened)."""
    if isinstance(layer, Linear):
        return x @ _f64(layer.weight).T + _f64(layer.bias)
    return layer.forward(x, np)


def _prepare(model, x, y, loss):
    from .models import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a minilr Sequential or MLP, got {type(model).__name__}")
    if callable(loss):
        raise ValueError("the reference differentiates only loss='cross_entropy' or 'mse', not a "
                         "custom loss function: write its gradient by hand")
    _v.choice(loss, "loss", LOSSES)
    x = model.check_input(x, "x").astype(np.float64)
    width = model.out_features if model.is_mlp else model.output_shape(x.shape[1:])[-1]
    y = _v.targets(y, "y", loss, x.shape[0], width)
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
    if not model.is_mlp:
        return _gradient_general(model, x, y, loss)
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


def _output_delta(h, y, loss):
    """dMeanLoss/d(output) for the named losses."""
    n = h.shape[0]
    if loss == "cross_entropy":
        p = np.exp(h - h.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(n), y] -= 1.0
        return p / n
    return (h - y) / n


def feedback_matrices(model, seed=0) -> dict:
    """Fixed random feedback matrices for :func:`feedback_alignment`: one per weight, its shape,
    entries uniform in +-1/sqrt(fan_in) (as the weights' initialisation), drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, layer, name in model.noise_sites():
        W = getattr(layer, name + "weight")
        bound = 1.0 / math.sqrt(math.prod(W.shape[1:]))
        out[prefix + name + "weight"] = rng.uniform(-bound, bound, W.shape)
    return out


def feedback_alignment(model, x, y, feedback, loss="cross_entropy") -> dict:
    """Feedback alignment (Lillicrap et al., 2016; the local-learning baseline of the paper's
    Table 1): backprop's pass with every weight's transpose on the way back replaced by a fixed
    random matrix ``feedback[key]`` (from :func:`feedback_matrices`). Updates are then
    ``delta x^T`` with ``delta`` carried by the fixed matrices: no weight transport.
    """
    x, y = _prepare(model, x, y, loss)
    ids = {}
    for prefix, layer, name in model.noise_sites():
        if name:
            raise ValueError("feedback_alignment handles layers with one weight each")
        ids[id(layer)] = np.asarray(feedback[prefix + "weight"], dtype=np.float64)
    return _gradient_general(model, x, y, loss, ids)


def _gradient_general(model, x, y, loss, feedback=None):
    """Any layer stack: each layer's :func:`backward` in reverse order, in float64."""
    inputs = []
    h = x
    for layer in model.layers:
        inputs.append(h)
        h = forward64(layer, h)
    delta = _output_delta(h, y, loss)
    grads = {}
    for i in range(len(model.layers) - 1, -1, -1):
        delta, g = backward(model.layers[i], inputs[i], delta, feedback)
        for k, v in g.items():
            grads[f"{i}.{k}"] = v
    return {k: grads[k] for k in model.parameters() if k in grads}


# -- layers beyond Linear: hand-written backward passes ----------------------------------------------
from . import conv as _conv  # noqa: E402  (after BACKWARD exists)


@register(_conv._ConvNd)
def _conv_backward(layer, x, delta):
    """v = U W^T + b at every position: dW = sum_{n,p} delta U, dU = delta W, dx = col2im(dU)."""
    U, out_sp = layer.unfold(x, np)  # (N, P, d)
    m = layer.out_channels
    D = delta.reshape(delta.shape[0], m, -1).transpose(0, 2, 1)  # (N, P, m)
    W = _f64(layer.weight).reshape(m, -1)
    gW = D.reshape(-1, m).T @ U.reshape(-1, U.shape[-1])
    dU = D @ W
    dx = _conv.col2im(dU, x.shape, layer.kernel_size, layer.stride, layer.padding, np)
    return dx, {"weight": gW.reshape(layer.weight.shape), "bias": D.sum(axis=(0, 1))}


@register(_conv._PoolNd)
def _pool_backward(layer, x, delta):
    """Average: delta / window size to every input of the window; max: all of it to the (first)
    largest input of the window."""
    nd = layer.nd
    w = layer.windows(x, np)  # (N, C, *out, *kernel)
    out_sp = w.shape[2:2 + nd]
    ksize = math.prod(layer.kernel_size)
    flat = w.reshape(w.shape[:2 + nd] + (ksize,))
    if layer.mode == "max":
        route = np.zeros(flat.shape)
        np.put_along_axis(route, flat.argmax(axis=-1)[..., None], 1.0, axis=-1)
    else:
        route = np.full(flat.shape, 1.0 / ksize)
    contrib = route * delta[..., None]  # (N, C, *out, K)
    dx = np.zeros(x.shape)
    for t, off in enumerate(np.ndindex(*layer.kernel_size)):
        dst = (slice(None), slice(None)) + tuple(slice(o, o + s * (n - 1) + 1, s)
                                                  for o, s, n in zip(off, layer.stride, out_sp))
        dx[dst] += contrib[..., t]
    return dx, {}


@register(_conv.Flatten)
def _flatten_backward(layer, x, delta):
    return delta.reshape(x.shape), {}


@register(_conv.GlobalAvgPool)
def _global_pool_backward(layer, x, delta):
    n = math.prod(x.shape[2:])
    return np.broadcast_to((delta / n).reshape(delta.shape + (1,) * (x.ndim - 2)), x.shape).copy(), {}


@register(_conv.GroupNorm)
def _groupnorm_backward(layer, x, delta):
    """y = (x - mu) / s per group: dx = (dy - mean(dy) - y mean(dy y)) / s."""
    g = x.reshape(x.shape[0], layer.groups, -1)
    c = g - g.mean(axis=2, keepdims=True)
    s = np.sqrt((c * c).mean(axis=2, keepdims=True) + layer.eps)
    y = c / s
    dy = delta.reshape(g.shape)
    dx = (dy - dy.mean(axis=2, keepdims=True) - y * (dy * y).mean(axis=2, keepdims=True)) / s
    return dx.reshape(x.shape), {}


@register(_conv.Residual, container=True)
def _residual_backward(layer, x, delta, feedback=None):
    """Both branches get ``delta``; their input gradients add up."""
    inputs, h = [], x
    for l in layer.body:
        inputs.append(h)
        h = forward64(l, h)
    grads = {}
    d = delta
    for j in range(len(layer.body) - 1, -1, -1):
        d, g = backward(layer.body[j], inputs[j], d, feedback)
        grads.update({f"body.{j}.{k}": v for k, v in g.items()})
    if layer.skip is None:
        return d + delta, grads
    ds, g = backward(layer.skip, x, delta, feedback)
    grads.update({f"skip.{k}": v for k, v in g.items()})
    return d + ds, grads
