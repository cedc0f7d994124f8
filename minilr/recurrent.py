"""Recurrent layers: ``LSTM`` and ``GRU`` unrolled over time, noise on every step's gates.

Sequences are arrays ``(N, T, F)``: N sequences, T time steps, F features per step (float32).
The layer returns the last hidden state ``(N, H)`` (``return_sequences=False``, what a classifier
head takes) or every hidden state ``(N, T, H)``. The state starts at zero.

**Where the noise goes.** Each time step computes its gate pre-activations with one affine map of
the step's input and the previous hidden state, ``z_t = [x_t, h_{t-1}] W^T + b``; that map is a
noise site (``ctx.affine``): LR adds ``sigma * eps_t`` to ``z_t`` with fresh ``eps_t`` at every
step, ES perturbs ``W`` once per copy for all steps. The weights are shared over time, so the
LR weight gradient is one sum over rows *and* time steps (paper Eq. 1 with the steps as extra
rows)::

    g_W = sum_n sum_t L_n * eps_t(n) [x_t(n), h_{t-1}(n)]^T / sigma

No chain rule runs through time: the estimator needs only the loss, each step's input and noise.
The exact gradient (backpropagation through time, by hand) is in :mod:`minilr.reference`.
"""
from __future__ import annotations

import numpy as np

from . import validation as _v
from .layers import Layer, NoiselessContext, _check_sigma

__all__ = ["LSTM", "GRU", "sigmoid", "NoiselessContext"]  # NoiselessContext: from layers


def sigmoid(v, xp=np):
    """``1 / (1 + exp(-v))`` written as ``0.5 (1 + tanh(v / 2))``: it never overflows."""
    return 0.5 * (1 + xp.tanh(0.5 * v))


class _Recurrent(Layer, register=False):
    """What LSTM and GRU share: sizes, shapes, the weight initialisation."""

    gates = 1  # pre-activation blocks of size H in the main noise site
    children = ()

    def __init__(self, in_features, hidden, sigma=None, learn_sigma=None, return_sequences=False):
        self.in_features = _v.positive_int(in_features, "in_features")
        self.hidden = _v.positive_int(hidden, "hidden")
        self.sigma = None if sigma is None else _check_sigma(sigma, self.gates * self.hidden)
        if learn_sigma is not None and not isinstance(learn_sigma, (bool, np.bool_)):
            raise TypeError(f"learn_sigma must be True, False or None, got {learn_sigma!r}")
        if not isinstance(return_sequences, (bool, np.bool_)):
            raise TypeError(f"return_sequences must be True or False, got {return_sequences!r}")
        self.learn_sigma = learn_sigma
        self.return_sequences = bool(return_sequences)

    def array_shapes(self):
        H, F = self.hidden, self.in_features
        out = {"weight": (self.gates * H, F + H), "bias": (self.gates * H,)}
        if "cand_" in self.sites:
            out.update(cand_weight=(H, F + H), cand_bias=(H,))
        return out

    def config(self):
        return {"in_features": self.in_features, "hidden": self.hidden,
                "learn_sigma": bool(self.learn_sigma), "return_sequences": self.return_sequences}

    def backward(self, x, delta, feedback=None):
        from .reference import layer_gradient

        return layer_gradient(self, x, delta)

    def out_shape(self, in_shape):
        """Sequences ``(T, F)`` -> ``(H,)``, or ``(T, H)`` with ``return_sequences``."""
        in_shape = tuple(in_shape)
        if len(in_shape) != 2 or in_shape[1] != self.in_features:
            raise ValueError(f"{self!r} expects sequences of shape (batch, T, {self.in_features}), got "
                             f"(batch, {', '.join(map(str, in_shape))})")
        return (in_shape[0], self.hidden) if self.return_sequences else (self.hidden,)

    def _uniform(self, rng, shape, dtype):
        bound = 1.0 / np.sqrt(self.hidden)  # the usual recurrent default
        return rng.uniform(-bound, bound, shape).astype(dtype)

    def forward(self, x, xp):
        """Noiseless pass on sequences ``x`` (N, T, F)."""
        return self.train_forward(x, NoiselessContext(xp))

    def _step_input(self, x_t, h, ctx):
        """``U = [x_t, h]`` as (rows, 1, F + H); ``x_t`` may still be the batch shared by all copies."""
        if x_t.shape[0] != h.shape[0]:
            x_t = ctx.expand(x_t)
        return ctx.xp.concatenate([x_t, h], axis=-1)[:, None, :]

    def __repr__(self):
        return f"{type(self).__name__}({self.in_features}, {self.hidden})"


class LSTM(_Recurrent):
    """Long short-term memory (Hochreiter & Schmidhuber, 1997) over sequences ``(N, T, F)``.

    Gates, in this order along ``weight``'s rows: input ``i``, forget ``f``, cell ``g``, output
    ``o``::

        [i, f, g, o] = [x_t, h_{t-1}] W^T + b (+ sigma * eps_t)      W: (4H, F + H)
        c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g);   h_t = sigmoid(o) tanh(c_t)

    Parameters ``weight`` (4H, F + H), ``bias`` (4H,), ``sigma`` (4H,): one noise scale per gate
    unit. The forget-gate bias starts at 1 (Jozefowicz et al., 2015) so early memories survive.
    """

    gates = 4
    sites = ("",)

    def init(self, rng, dtype):
        H, F = self.hidden, self.in_features
        self.weight = self._uniform(rng, (4 * H, F + H), dtype)
        self.bias = self._uniform(rng, 4 * H, dtype)
        self.bias[H:2 * H] += 1

    def train_forward(self, x, ctx):
        """Sequences ``x`` (rows, T, F); every step's gates through ``ctx.affine`` (one site)."""
        xp = ctx.xp
        h = xp.zeros((x.shape[0], self.hidden), dtype=x.dtype)
        c = None  # zero: the first step has no memory to forget
        outs = []
        for t in range(x.shape[1]):
            z = ctx.affine(self, self._step_input(x[:, t, :], h, ctx))[:, 0, :]
            h, c = lstm_cell(z, c, xp)
            outs.append(h)
        return xp.stack(outs, axis=1) if self.return_sequences else h


def lstm_cell(z, c, xp):
    """One LSTM step from the gate pre-activations ``z`` (rows, 4H) and the cell ``c`` (None: 0)."""
    H = z.shape[-1] // 4
    i, o = sigmoid(z[..., :H], xp), sigmoid(z[..., 3 * H:], xp)
    c_new = i * xp.tanh(z[..., 2 * H:3 * H])
    if c is not None:
        c_new += sigmoid(z[..., H:2 * H], xp) * c
    return o * xp.tanh(c_new), c_new


class GRU(_Recurrent):
    """Gated recurrent unit (Cho et al., 2014, in their original form: the reset gate acts on
    ``h_{t-1}`` *before* the candidate's matrix), over sequences ``(N, T, F)``::

        [z, r] = sigmoid([x_t, h_{t-1}] W^T + b (+ sigma * eps_t))             W:  (2H, F + H)
        n      = tanh([x_t, r * h_{t-1}] Wc^T + bc (+ sigma_c * eps'_t))      Wc: (H, F + H)
        h_t    = (1 - z) n + z h_{t-1}

    Two noise sites, each with its weights shared over time: ``weight``, ``bias``, ``sigma`` (2H)
    for the gates; ``cand_weight``, ``cand_bias``, ``cand_sigma`` (H) for the candidate.
    """

    gates = 2
    sites = ("", "cand_")

    def __init__(self, in_features, hidden, sigma=None, learn_sigma=None, return_sequences=False):
        super().__init__(in_features, hidden, sigma, learn_sigma, return_sequences)
        self.cand_sigma = None if sigma is None else _check_sigma(sigma, self.hidden)

    def init(self, rng, dtype):
        H, F = self.hidden, self.in_features
        self.weight = self._uniform(rng, (2 * H, F + H), dtype)
        self.bias = self._uniform(rng, 2 * H, dtype)
        self.cand_weight = self._uniform(rng, (H, F + H), dtype)
        self.cand_bias = self._uniform(rng, H, dtype)

    def train_forward(self, x, ctx):
        xp = ctx.xp
        H = self.hidden
        h = xp.zeros((x.shape[0], H), dtype=x.dtype)
        outs = []
        for t in range(x.shape[1]):
            x_t = x[:, t, :]
            zr = sigmoid(ctx.affine(self, self._step_input(x_t, h, ctx))[:, 0, :], xp)
            z, r = zr[:, :H], zr[:, H:]
            rh = h if t == 0 else r * h  # h = 0 at the first step (and still the shared batch's rows)
            n = xp.tanh(ctx.affine(self, self._step_input(x_t, rh, ctx), "cand_")[:, 0, :])
            h = (1 - z) * n if t == 0 else (1 - z) * n + z * h
            outs.append(h)
        return xp.stack(outs, axis=1) if self.return_sequences else h
