"""Leaky integrate-and-fire (LIF) spiking neurons over T time steps.

Each neuron integrates an input current into a leaky membrane potential and emits a spike (1)
when the potential crosses the threshold, which then drops by the threshold (reset by
subtraction)::

    I_t = x_t W^T + b (+ sigma * eps_t)          the input current: the noise site
    V_t = beta * V_{t-1} + I_t
    S_t = 1[V_t > threshold];   V_t <- V_t - threshold * S_t

Inputs are ``(N, F)``, the same current repeated for ``steps`` time steps (rate coding of a
static input), or spike trains / sequences ``(N, T, F)`` (what a previous LIF layer emits).
Outputs are spike trains ``(N, T, H)`` (``output="spikes"``) or firing rates ``(N, H)``, the mean
over time (``output="rate"``, what a ``Linear`` read-out takes).

**Training.** A spike is a step function of the potential: its derivative is zero almost
everywhere, so backpropagation has nothing to pass down (practitioners replace it by a made-up
"surrogate gradient"). LR never differentiates: with fresh noise on the input current at every
step (every step is a position of the noise site), the gradient is
``sum_n sum_t L_n eps_t(n) x_t(n)^T / sigma`` (Eq. 1), unbiased for the smoothed loss; ALR keeps
only the signs (Eq. 3). The exact reference refuses this layer, as it refuses ``Step``; the
surrogate-gradient baseline (BPTT through the recurrence with a smooth stand-in's derivative for
the spike) is ``minilr.reference.gradient(..., surrogate=...)``, ``train(..., estimator="bp",
surrogate=...)``.
"""
from __future__ import annotations

import numpy as np

from . import validation as _v
from .layers import Layer, _check_sigma

__all__ = ["LIF"]

OUTPUTS = ("spikes", "rate")


class LIF(Layer):
    """A layer of leaky integrate-and-fire neurons fed by a dense input current.

    Parameters
    ----------
    in_features, out_features : int
    steps : int, optional
        Time steps for static inputs ``(N, F)``; not needed for ``(N, T, F)`` inputs.
    beta : float in (0, 1], default 0.9
        Membrane leak per step (1 = no leak: a pure integrator).
    threshold : float > 0, default 1.0
    output : "spikes" (N, T, H) or "rate" (N, H)
    sigma : noise scale of the input current, per neuron; ``None`` takes the model's.
    """

    sites = ("",)
    children = ()

    def __init__(self, in_features, out_features, steps=None, beta=0.9, threshold=1.0,
                 output="rate", sigma=None, learn_sigma=None):
        self.in_features = _v.positive_int(in_features, "in_features")
        self.out_features = _v.positive_int(out_features, "out_features")
        self.steps = None if steps is None else _v.positive_int(steps, "steps")
        self.beta = _v.positive_float(beta, "beta")
        if self.beta > 1:
            raise ValueError(f"beta must be in (0, 1] (the fraction of potential kept per step), got {beta}")
        self.threshold = _v.positive_float(threshold, "threshold")
        self.output = _v.choice(output, "output", OUTPUTS)
        self.sigma = None if sigma is None else _check_sigma(sigma, self.out_features)
        if learn_sigma is not None and not isinstance(learn_sigma, (bool, np.bool_)):
            raise TypeError(f"learn_sigma must be True, False or None, got {learn_sigma!r}")
        self.learn_sigma = learn_sigma

    def init(self, rng, dtype):
        """Uniform in +-1/sqrt(fan_in) scaled by 2 * threshold, so some neurons fire at the start."""
        bound = 2.0 * self.threshold / np.sqrt(self.in_features)
        self.weight = rng.uniform(-bound, bound, (self.out_features, self.in_features)).astype(dtype)
        self.bias = np.zeros(self.out_features, dtype)

    def array_shapes(self):
        return {"weight": (self.out_features, self.in_features), "bias": (self.out_features,)}

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "steps": self.steps,
                "beta": self.beta, "threshold": self.threshold, "output": self.output,
                "learn_sigma": bool(self.learn_sigma)}

    def backward(self, x, delta, feedback=None):
        raise self.derivative_error()

    def out_shape(self, in_shape):
        """``(F,)`` (needs ``steps``) or ``(T, F)`` -> spikes ``(T, H)`` or rates ``(H,)``."""
        in_shape, F = tuple(in_shape), self.in_features
        if in_shape == (F,) and self.steps is None:
            raise ValueError(f"static inputs (batch, {F}) need steps=T to repeat them over T time "
                             f"steps; or pass spike trains (batch, T, {F})")
        if in_shape == (F,) or (len(in_shape) == 2 and in_shape[1] == F):
            T = self.steps if len(in_shape) == 1 else in_shape[0]
            return (self.out_features,) if self.output == "rate" else (T, self.out_features)
        raise ValueError(f"{self!r} expects inputs of shape (batch, {F}) (static, repeated over "
                         f"steps) or (batch, T, {F}), got (batch, {', '.join(map(str, in_shape))})")

    def forward(self, x, xp):
        """Noiseless spikes or rates for ``x`` (N, F) or (N, T, F)."""
        from .layers import NoiselessContext

        return self.train_forward(x, NoiselessContext(xp))

    def train_forward(self, x, ctx):
        """Every time step is a position of the noise site: ``U`` is (rows, T, F)."""
        xp = ctx.xp
        if x.ndim == 2:  # static: the same input at every step (fresh noise at every step)
            x = xp.broadcast_to(x[:, None, :], (x.shape[0], self.steps, x.shape[1]))
        current = ctx.affine(self, x)  # (rows, T, H): every step's current at once
        spikes = integrate_and_fire(current, self.beta, self.threshold, xp)
        return spikes.mean(axis=1) if self.output == "rate" else spikes

    def derivative_error(self):
        return ValueError(
            "LIF spiking neurons emit step functions of their membrane potential (derivative 0 "
            "almost everywhere, none at the threshold), so no exact backprop gradient exists: use "
            "an LR or ES estimator (e.g. estimator='lr' or 'alr') for this model instead of the "
            "reference / 'bp'")

    def __repr__(self):
        return (f"LIF({self.in_features}, {self.out_features}, steps={self.steps}, beta={self.beta}, "
                f"threshold={self.threshold}, output={self.output!r})")


def integrate_and_fire(current, beta, threshold, xp):
    """Spike trains (..., T, H) from input currents (..., T, H): leak, integrate, fire, subtract."""
    v = xp.zeros(current.shape[:-2] + current.shape[-1:], dtype=current.dtype)
    spikes = xp.empty_like(current)
    for t in range(current.shape[-2]):
        v = beta * v + current[..., t, :]
        s = (v > threshold).astype(current.dtype)
        v = v - threshold * s
        spikes[..., t, :] = s
    return spikes
