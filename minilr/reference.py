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
from .graph import GraphAttention
from .layers import Linear
from .recurrent import GRU, LSTM
from .losses import LOSSES, per_sample

__all__ = ["gradient", "loss", "register", "backward", "feedback_alignment", "feedback_matrices",
           "Surrogate"]

def register(layer_type, container=False):
    """Decorator for a layer class defined without a ``backward`` method: ``fn(layer, x, delta)``
    (``fn(layer, x, delta, feedback)`` with ``container=True``) becomes its
    :meth:`~minilr.layers.Layer.backward`. New layers define ``backward`` in the class instead."""
    def deco(fn):
        if container:
            layer_type.backward = lambda self, x, delta, feedback=None: fn(self, x, delta, feedback)
        else:
            layer_type.backward = lambda self, x, delta, feedback=None: fn(self, x, delta)
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
    back = getattr(layer, "backward", None)
    if back is None:
        raise TypeError(f"minilr.reference has no backward pass for {type(layer).__name__}")
    return back(x, delta, feedback)  # the layer's own (minilr.layers.Layer.backward)


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
    width = model.output_shape(x.shape[1:])[-1]
    positions = tuple(model.output_shape(x.shape[1:])[:-1])
    y = _v.targets(y, "y", loss, x.shape[0], width, positions)
    return x, (y if loss == "cross_entropy" else y.astype(np.float64))


def loss(model, x, y, loss="cross_entropy") -> float:
    """Mean noiseless loss of ``model`` on ``(x, y)``."""
    x, y = _prepare(model, x, y, loss)
    return float(per_sample(loss, model.forward(x).astype(np.float64), y, np).mean())


def gradient(model, x, y, loss="cross_entropy", *, surrogate=None) -> dict:
    """Exact gradient of the mean noiseless loss w.r.t. every weight and bias.

    Keys are ``"<i>.weight"`` and ``"<i>.bias"``; a learned ``sigma`` has no gradient here (the
    noiseless loss does not depend on it) and is left out.

    Parameters
    ----------
    surrogate : None, "straight_through", "sigmoid" or :class:`Surrogate`
        ``None`` (default): the exact gradient, which a spiking layer refuses. Otherwise the
        surrogate-gradient (straight-through) baseline: the same backward pass, except that every
        ``Step`` and ``LIF`` layer of the model's own layer list uses the derivative of a smooth
        stand-in for the Heaviside step where the exact pass needs the step's derivative (a string
        means ``Surrogate(kind)`` with its default slope). The forward pass still spikes. Layers
        inside containers (``Residual``) get no surrogate.

    Raises
    ------
    ValueError
        If the model has a layer with no usable derivative (the Heaviside ``Step``, ``LIF``) and
        ``surrogate`` is None.
    """
    x, y = _prepare(model, x, y, loss)
    if surrogate is not None and not isinstance(surrogate, Surrogate):
        surrogate = Surrogate(surrogate)
    return _gradient_general(model, x, y, loss, surrogate=surrogate)


class Surrogate:
    """A smooth stand-in ``f`` for the Heaviside step ``1[v > 0]`` whose derivative the
    surrogate-gradient baseline uses (:func:`gradient` with ``surrogate=``).

    Parameters
    ----------
    kind : "sigmoid" or "straight_through"
        ``"sigmoid"``: ``f(v) = 1 / (1 + exp(-slope v))``, ``f' = slope f (1 - f)``.
        ``"straight_through"``: the clipped identity ``f(v) = clip(slope v + 1/2, 0, 1)``,
        ``f' = slope`` on ``|v| < 1/(2 slope)`` and 0 elsewhere.
    slope : float > 0, default 5.0
        Steepness (per unit of the pre-activation; a LIF neuron's ``v`` is the potential minus
        the threshold).
    forward : "step" (default) or "smooth"
        What the forward pass emits. ``"step"``: spikes, the baseline. ``"smooth"``: ``f`` itself,
        so that the network *is* the surrogate network and :func:`gradient` returns its exact
        gradient (the check against finite differences).
    """

    KINDS = ("sigmoid", "straight_through")

    def __init__(self, kind="sigmoid", slope=5.0, forward="step"):
        self.kind = _v.choice(kind, "surrogate", self.KINDS)
        self.slope = _v.positive_float(slope, "slope")
        self.smooth = _v.choice(forward, "forward", ("step", "smooth")) == "smooth"

    def function(self, v):
        """``f(v)``."""
        if self.kind == "sigmoid":
            return 0.5 * (1 + np.tanh(0.5 * self.slope * v))
        return np.clip(self.slope * v + 0.5, 0.0, 1.0)

    def derivative(self, v):
        """``f'(v)``."""
        if self.kind == "sigmoid":
            f = self.function(v)
            return self.slope * f * (1 - f)
        return np.where(np.abs(v) < 0.5 / self.slope, self.slope, 0.0)

    def fire(self, v):
        """What the forward pass emits for ``v``: the step (or ``f`` with ``forward="smooth"``)."""
        return self.function(v) if self.smooth else (v > 0).astype(np.float64)

    def __repr__(self):
        return f"Surrogate({self.kind!r}, slope={self.slope}, forward={'smooth' if self.smooth else 'step'!r})"


def _output_delta(h, y, loss):
    """dMeanLoss/d(output) for the named losses."""
    n = h.shape[0]
    if loss == "cross_entropy" and y.ndim > 1:  # one label per position, -1 for none
        mask = y >= 0
        p = np.exp(h - h.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        p -= np.eye(h.shape[-1])[np.where(mask, y, 0)]
        count = np.maximum(mask.reshape(n, -1).sum(axis=1), 1).reshape((n,) + (1,) * (y.ndim - 1))
        return p * (mask / count / n)[..., None]
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


def _gradient_general(model, x, y, loss, feedback=None, surrogate=None):
    """Any layer stack: each layer's :func:`backward` in reverse order, in float64; with a
    ``surrogate``, the top-level ``Step`` and ``LIF`` layers use :func:`surrogate_backward`."""
    spiking = (lambda layer: False) if surrogate is None else _spiking
    inputs = []
    h = x
    for layer in model.layers:
        inputs.append(h)
        h = surrogate_forward(layer, h, surrogate) if spiking(layer) else forward64(layer, h)
    delta = _output_delta(h, y, loss)
    grads = {}
    for i in range(len(model.layers) - 1, -1, -1):
        if spiking(model.layers[i]):
            delta, g = surrogate_backward(model.layers[i], inputs[i], delta, surrogate)
        else:
            delta, g = backward(model.layers[i], inputs[i], delta, feedback)
        for k, v in g.items():
            grads[f"{i}.{k}"] = v
    return {k: grads[k] for k in model.parameters() if k in grads}


# -- layers beyond Linear: hand-written backward passes (each layer's ``backward`` calls its own) ---
from . import conv as _conv  # noqa: E402


def conv_backward(layer, x, delta):
    """v = U W^T + b at every position: dW = sum_{n,p} delta U, dU = delta W, dx = col2im(dU)."""
    U, out_sp = layer.unfold(x, np)  # (N, P, d)
    m = layer.out_channels
    D = delta.reshape(delta.shape[0], m, -1).transpose(0, 2, 1)  # (N, P, m)
    W = _f64(layer.weight).reshape(m, -1)
    gW = D.reshape(-1, m).T @ U.reshape(-1, U.shape[-1])
    dU = D @ W
    dx = _conv.col2im(dU, x.shape, layer.kernel_size, layer.stride, layer.padding, np)
    return dx, {"weight": gW.reshape(layer.weight.shape), "bias": D.sum(axis=(0, 1))}


def pool_backward(layer, x, delta):
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


def groupnorm_backward(layer, x, delta):
    """y = (x - mu) / s per group: dx = (dy - mean(dy) - y mean(dy y)) / s."""
    g = x.reshape(x.shape[0], layer.groups, -1)
    c = g - g.mean(axis=2, keepdims=True)
    s = np.sqrt((c * c).mean(axis=2, keepdims=True) + layer.eps)
    y = c / s
    dy = delta.reshape(g.shape)
    dx = (dy - dy.mean(axis=2, keepdims=True) - y * (dy * y).mean(axis=2, keepdims=True)) / s
    return dx.reshape(x.shape), {}


def residual_backward(layer, x, delta, feedback=None):
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


# -- recurrent, graph and spiking layers (issue 8): forward passes that keep what the backward
# pass needs, and the backward passes, written out by hand in float64 -----------------------------
#
# Each forward pass lists its affine maps as *calls* ``(site, U, eps)`` (the site's name, its input
# U of shape (rows, d), and the noise added to its output, or None); its backward pass returns
# dLoss/dv for every call, aligned with them. The weight gradient of a site is then
# ``sum over its calls of dv^T U``, and tests can weight those products differently (noise
# injected through ``noise(site, call, shape)`` gives the exact gradient of one noisy network:
# a Monte Carlo of it is the gradient of the smoothed loss the LR estimators are unbiased for).
def _sig(v):
    return 0.5 * (1 + np.tanh(0.5 * v))


def _p64(layer, name):
    a = getattr(layer, name, None)
    return None if a is None else np.asarray(a, dtype=np.float64)


class _Calls(list):
    """The affine maps of one float64 forward pass, each ``(site, U, eps)``."""

    def __init__(self, layer, noise):
        super().__init__()
        self.layer, self.noise = layer, noise

    def affine(self, U, name=""):
        """``U W^T + b`` (+ ``sigma * eps`` from ``noise``), ``U`` (rows, d), recorded."""
        W, b = _p64(self.layer, name + "weight"), _p64(self.layer, name + "bias")
        v = U @ W.reshape(W.shape[0], -1).T
        if b is not None:
            v = v + b
        eps = None
        if self.noise is not None:
            call = sum(1 for c in self if c[0] == name)
            eps = self.noise(name, call, v.shape)
            v = v + _p64(self.layer, name + "sigma") * eps
        self.append((name, U, eps))
        return v


def site_gradients(layer, calls, dvs):
    """``{name + "weight": sum dv^T U, name + "bias": sum dv}`` over a layer's calls."""
    grads = {}
    for (name, U, _), dv in zip(calls, dvs):
        grads[name + "weight"] = grads.get(name + "weight", 0) + dv.T @ U
        if getattr(layer, name + "bias", None) is not None:
            grads[name + "bias"] = grads.get(name + "bias", 0) + dv.sum(axis=0)
    return grads


def lstm_forward(layer, x, noise=None):
    """LSTM over ``x`` (N, T, F) in float64: ``(out, cache)`` for :func:`lstm_backward`."""
    H = layer.hidden
    N, T = x.shape[:2]
    h, c = np.zeros((N, H)), np.zeros((N, H))
    calls, steps, hs = _Calls(layer, noise), [], []
    for t in range(T):
        z = calls.affine(np.concatenate([x[:, t], h], axis=1))
        i, f, g, o = _sig(z[:, :H]), _sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), _sig(z[:, 3 * H:])
        c_prev = c
        c = f * c_prev + i * g
        h = o * np.tanh(c)
        steps.append((i, f, g, o, c_prev, c))
        hs.append(h)
    out = np.stack(hs, axis=1) if layer.return_sequences else h
    return out, (calls, steps)


def _dout_at(layer, dout, t, T):
    if layer.return_sequences:
        return dout[:, t]
    return dout if t == T - 1 else 0


def lstm_backward(layer, cache, dout):
    """Backpropagation through time: ``(dLoss/dx, [dLoss/dz_t for every step])``."""
    calls, steps = cache
    W, H, F = _p64(layer, "weight"), layer.hidden, layer.in_features
    T, N = len(steps), calls[0][1].shape[0]
    dx, dzs = np.zeros((N, T, F)), [None] * T
    dh_next, dc_next = np.zeros((N, H)), np.zeros((N, H))
    for t in range(T - 1, -1, -1):
        i, f, g, o, c_prev, c = steps[t]
        dh = dh_next + _dout_at(layer, dout, t, T)
        tc = np.tanh(c)
        dc = dc_next + dh * o * (1 - tc * tc)
        dz = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
                             dh * tc * o * (1 - o)], axis=1)
        dc_next = dc * f
        dzs[t] = dz
        dU = dz @ W
        dx[:, t], dh_next = dU[:, :F], dU[:, F:]
    return dx, dzs


def gru_forward(layer, x, noise=None):
    """GRU over ``x`` (N, T, F) in float64: ``(out, cache)`` for :func:`gru_backward`."""
    H = layer.hidden
    N, T = x.shape[:2]
    h = np.zeros((N, H))
    calls, steps, hs = _Calls(layer, noise), [], []
    for t in range(T):
        a = _sig(calls.affine(np.concatenate([x[:, t], h], axis=1)))
        z, r = a[:, :H], a[:, H:]
        n = np.tanh(calls.affine(np.concatenate([x[:, t], r * h], axis=1), "cand_"))
        steps.append((z, r, n, h))
        h = (1 - z) * n + z * h
        hs.append(h)
    out = np.stack(hs, axis=1) if layer.return_sequences else h
    return out, (calls, steps)


def gru_backward(layer, cache, dout):
    """Backpropagation through time for :class:`~minilr.GRU`: ``(dLoss/dx, dLoss/dv per call)``
    (calls alternate: gates of step t, candidate of step t)."""
    calls, steps = cache
    Wg, Wc, H, F = _p64(layer, "weight"), _p64(layer, "cand_weight"), layer.hidden, layer.in_features
    T, N = len(steps), calls[0][1].shape[0]
    dx, dh_next, dvs = np.zeros((N, T, F)), np.zeros((N, H)), [None] * (2 * T)
    for t in range(T - 1, -1, -1):
        z, r, n, h = steps[t]
        dh_out = dh_next + _dout_at(layer, dout, t, T)
        da_n = dh_out * (1 - z) * (1 - n * n)
        dU2 = da_n @ Wc
        drh = dU2[:, F:]
        da_g = np.concatenate([dh_out * (h - n) * z * (1 - z), drh * h * r * (1 - r)], axis=1)
        dvs[2 * t], dvs[2 * t + 1] = da_g, da_n
        dU1 = da_g @ Wg
        dx[:, t] = dU1[:, :F] + dU2[:, :F]
        dh_next = dh_out * z + drh * r + dU1[:, F:]
    return dx, dvs


def gat_forward(layer, x, noise=None):
    """Graph attention on node features ``x`` (N, n, F) in float64: ``(out, cache)``."""
    from .graph import attend

    N, n, F = x.shape
    calls = _Calls(layer, noise)
    z = calls.affine(x.reshape(N * n, F)).reshape(N, n, -1)
    sd = calls.affine(z.reshape(N * n, -1), "att_").reshape(N, n, 2)
    out, (pre, alpha) = attend(z, sd, layer.src, layer.dst, layer.starts, layer.negative_slope, np)
    return out, (calls, z, pre, alpha)


def gat_backward(layer, cache, dout):
    """Backward pass of :class:`~minilr.GraphAttention` by hand, edge by edge::

        out_i = sum_j alpha_ij z_j    ->  dz_j += alpha_ij dout_i,  dalpha_ij = dout_i . z_j
        softmax over i's edges        ->  de_ij = alpha_ij (dalpha_ij - sum_k alpha_ik dalpha_ik)
        e = LeakyReLU(s_j + d_i)      ->  ds_j += de_ij e'(.),  dd_i += de_ij e'(.)
        [s, d] = z A^T, z = x W^T + b ->  the usual affine backward

    Returns ``(dLoss/dx, [dLoss/dz, dLoss/d[s, d]])`` (nodes as rows).
    """
    from .graph import segment_sum

    calls, z, pre, alpha = cache
    W, A = _p64(layer, "weight"), _p64(layer, "att_weight")
    src, dst, starts = layer.src, layer.dst, layer.starts
    N, n, G = z.shape
    d_dst = dout[:, dst, :]  # (N, E, G)
    dalpha = (d_dst * z[:, src, :]).sum(axis=-1)
    dz = np.zeros_like(z)
    np.add.at(dz, (slice(None), src), alpha[..., None] * d_dst)
    de = alpha * (dalpha - segment_sum(alpha * dalpha, dst, starts, np)[:, dst])
    dpre = de * np.where(pre > 0, 1.0, layer.negative_slope)
    dsd = np.zeros((N, n, 2))
    np.add.at(dsd, (slice(None), src, 0), dpre)
    dsd[:, :, 1] = segment_sum(dpre, dst, starts, np)
    dz += dsd @ A
    return (dz @ W).reshape(N, n, -1), [dz.reshape(N * n, G), dsd.reshape(N * n, 2)]


_BEYOND = {LSTM: (lstm_forward, lstm_backward), GRU: (gru_forward, gru_backward),
           GraphAttention: (gat_forward, gat_backward)}


def layer_gradient(layer, x, dout, noise=None):
    """``(dLoss/dx, {param: dLoss/dparam})`` of one recurrent or graph layer, given
    ``dout`` = dLoss/d(output) at input ``x`` (float64), optionally with ``noise`` injected."""
    fwd, bwd = _BEYOND[type(layer)]
    _, cache = fwd(layer, x, noise)
    dx, dvs = bwd(layer, cache, dout)
    return dx, site_gradients(layer, cache[0], dvs)



# -- the surrogate-gradient baseline for spiking layers (issue 17): Step and LIF ------------------
def _spiking(layer):
    from .layers import Step
    from .spiking import LIF

    return isinstance(layer, (Step, LIF))


def _lif_trajectory(layer, x, surrogate):
    """Potentials before firing ``V`` (N, T, H) and spikes ``S`` of a LIF layer in float64:
    ``V_t = beta R_{t-1} + I_t``, ``S_t = fire(V_t - threshold)``, ``R_t = V_t - threshold S_t``."""
    if x.ndim == 2:
        x = np.broadcast_to(x[:, None, :], (x.shape[0], layer.steps, x.shape[1]))
    current = x @ _f64(layer.weight).T + _f64(layer.bias)
    V, S = np.empty_like(current), np.empty_like(current)
    r = np.zeros_like(current[:, 0])
    for t in range(current.shape[1]):
        V[:, t] = layer.beta * r + current[:, t]
        S[:, t] = surrogate.fire(V[:, t] - layer.threshold)
        r = V[:, t] - layer.threshold * S[:, t]
    return x, V, S


def surrogate_forward(layer, x, surrogate):
    """A ``Step`` or ``LIF`` layer's forward pass in float64 as the surrogate sees it (spikes, or
    ``f`` itself for ``Surrogate(forward="smooth")``)."""
    from .layers import Step

    if isinstance(layer, Step):
        return surrogate.fire(x)
    _, _, S = _lif_trajectory(layer, x, surrogate)
    return S.mean(axis=1) if layer.output == "rate" else S


def surrogate_backward(layer, x, delta, surrogate):
    """``(dLoss/dx, grads)`` of a ``Step`` or ``LIF`` layer with ``surrogate.derivative`` in place
    of the step's derivative.

    ``Step``: ``dx = delta f'(x)``. ``LIF``, backprop through time over the recurrence of
    :func:`_lif_trajectory`, reset included (``dR_t/dV_t = 1 - threshold f'``)::

        dV_t = dR_t + f'(V_t - threshold) (dS_t - threshold dR_t),   dR_{t-1} = beta dV_t,

    with ``dS_t`` what the layer above sends (``delta / T`` at every step for rate outputs); then
    ``dI_t = dV_t`` as for any affine map.
    """
    from .layers import Step

    if isinstance(layer, Step):
        return delta * surrogate.derivative(x), {}
    xs, V, _ = _lif_trajectory(layer, x, surrogate)
    T = V.shape[1]
    dS = np.broadcast_to(delta[:, None, :] / T, V.shape) if layer.output == "rate" else delta
    dI = np.empty_like(V)
    dR = np.zeros_like(V[:, 0])
    for t in range(T - 1, -1, -1):
        fprime = surrogate.derivative(V[:, t] - layer.threshold)
        dI[:, t] = dR + fprime * (dS[:, t] - layer.threshold * dR)
        dR = layer.beta * dI[:, t]
    grads = {"weight": np.einsum("nth,ntf->hf", dI, xs), "bias": dI.sum(axis=(0, 1))}
    dx = dI @ _f64(layer.weight)
    return (dx.sum(axis=1) if x.ndim == 2 else dx), grads
