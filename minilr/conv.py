"""Convolutions, pooling, flattening, normalisation and residual blocks, as noise sites.

A convolution is one affine map ``W`` (``m = C_out`` outputs, ``d = C_in * kernel`` inputs) applied
at every output position. *im2col* unfolds the input into ``U`` of shape ``(rows, P, d)`` (one row
of ``d`` numbers per output position ``p``), so the layer is ``v = U W^T + b`` and its noisy
training pass is one call ``ctx.affine(self, U)`` (:mod:`minilr.engines.reference`): noise per output
position and channel, one ``sigma`` per output channel, and the LR weight gradient
``sum_{n, p} L_n eps_{n,p} U_{n,p}^T / sigma`` is one matrix product.

Arrays are channels-first: ``(N, C, L)`` for 1-D, ``(N, C, H, W)`` for 2-D.
"""
from __future__ import annotations

import math

import numpy as np

from . import validation as _v
from .layers import Activation, Layer, _check_sigma, run_layers
from .layers import activation as make_activation

__all__ = ["Conv1d", "Conv2d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "Flatten",
           "GlobalAvgPool", "GroupNorm", "Residual"]


def _pair(v, name, minimum=1):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
        return tuple(_v.positive_int(a, name, minimum) for a in v)
    v = _v.positive_int(v, name, minimum)
    return (v, v)


def _windows(xp, x, k, axes):
    """Sliding windows of sizes ``k`` over ``axes`` (a view where the array library has one)."""
    swv = getattr(getattr(getattr(xp, "lib", None), "stride_tricks", None), "sliding_window_view", None)
    if swv is not None:
        return swv(x, k, axis=axes)
    # fallback: gather by index (one window axis at a time)
    out = x
    for ax, kk in zip(axes, k):
        n = out.shape[ax] - kk + 1
        idx = xp.arange(n)[:, None] + xp.arange(kk)[None, :]
        out = xp.moveaxis(xp.take(out, idx, axis=ax), ax + 1, -1)
    return out


def _pad(xp, x, pads):
    """Zero padding of the trailing spatial axes by ``pads`` (one int per axis)."""
    if not any(pads):
        return x
    width = [(0, 0)] * (x.ndim - len(pads)) + [(p, p) for p in pads]
    return xp.pad(x, width)


def im2col(x, kernel, stride, padding, xp=np):
    """Unfold ``x`` (N, C, *spatial) into ``U`` (N, P, C * prod(kernel)) and the output's spatial shape.

    Column order is (channel, kernel offsets), the order of ``weight.reshape(C_out, -1)``. One
    strided copy per kernel offset, channels innermost: a single copy of the 2 + 2 nd axis window
    view runs its innermost loop over the 3 or 9 kernel entries, 1.2-2.5x slower here.
    """
    nd = len(kernel)
    N, C = x.shape[:2]
    xc = xp.moveaxis(_pad(xp, x, padding), 1, -1)  # (N, *padded, C), a view
    out_sp = tuple((n - k) // s + 1 for n, k, s in zip(xc.shape[1:-1], kernel, stride))
    U = xp.empty((N,) + out_sp + (C,) + tuple(kernel), dtype=x.dtype)
    for off in np.ndindex(*kernel):
        U[(Ellipsis,) + off] = xc[(slice(None),) + tuple(slice(o, o + s * (n - 1) + 1, s)
                                                          for o, s, n in zip(off, stride, out_sp))]
    return U.reshape(N, math.prod(out_sp), C * math.prod(kernel)), out_sp


def col2im(dU, x_shape, kernel, stride, padding, xp=np):
    """The adjoint of :func:`im2col`: scatter-add ``dU`` (N, P, C * K) back to ``x``'s shape."""
    nd = len(kernel)
    N, C = x_shape[:2]
    padded = tuple(n + 2 * p for n, p in zip(x_shape[2:], padding))
    out_sp = tuple((n - k) // s + 1 for n, k, s in zip(padded, kernel, stride))
    d = dU.reshape((N,) + out_sp + (C,) + tuple(kernel))
    dx = xp.zeros((N, C) + padded, dtype=dU.dtype)
    for off in np.ndindex(*kernel):  # one strided add per kernel offset
        src = d[(slice(None),) + (slice(None),) * nd + (slice(None),) + off]  # (N, *out, C)
        src = xp.moveaxis(src, -1, 1)
        dst = (slice(None), slice(None)) + tuple(slice(o, o + s * (n - 1) + 1, s)
                                                  for o, s, n in zip(off, stride, out_sp))
        dx[dst] += src
    crop = (slice(None), slice(None)) + tuple(slice(p, p + n) for p, n in zip(padding, x_shape[2:]))
    return dx[crop]


class _ConvNd(Layer, register=False):
    nd = 0
    sites = ("",)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, sigma=None,
                 learn_sigma=None):
        self.in_channels = _v.positive_int(in_channels, "in_channels")
        self.out_channels = _v.positive_int(out_channels, "out_channels")
        tup = _pair if self.nd == 2 else (lambda v, n, minimum=1: (_v.positive_int(v, n, minimum),))
        self.kernel_size = tup(kernel_size, "kernel_size")
        self.stride = tup(stride, "stride")
        self.padding = tup(padding, "padding", 0)
        self.sigma = None if sigma is None else _check_sigma(sigma, self.out_channels)
        if learn_sigma is not None and not isinstance(learn_sigma, (bool, np.bool_)):
            raise TypeError(f"learn_sigma must be True, False or None, got {learn_sigma!r}")
        self.learn_sigma = learn_sigma
        self.weight = self.bias = None

    def init(self, rng, dtype):
        """Uniform in +-1/sqrt(fan_in), fan_in = C_in * kernel (as for Linear)."""
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        bound = 1.0 / math.sqrt(self.in_channels * math.prod(self.kernel_size))
        self.weight = rng.uniform(-bound, bound, shape).astype(dtype)
        self.bias = rng.uniform(-bound, bound, self.out_channels).astype(dtype)

    def array_shapes(self):
        return {"weight": (self.out_channels, self.in_channels) + self.kernel_size,
                "bias": (self.out_channels,)}

    def config(self):
        one = (lambda t: t[0]) if self.nd == 1 else list
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": one(self.kernel_size), "stride": one(self.stride),
                "padding": one(self.padding), "learn_sigma": bool(self.learn_sigma)}

    def backward(self, x, delta, feedback=None):
        from .reference import conv_backward

        return conv_backward(self, x, delta)

    def out_shape(self, in_shape):
        name = type(self).__name__
        if len(in_shape) != 1 + self.nd or in_shape[0] != self.in_channels:
            want = "(C, L)" if self.nd == 1 else "(C, H, W)"
            hint = " (add a channel axis: x[:, None])" if len(in_shape) == self.nd else ""
            raise ValueError(f"{name} expects samples of shape {want} with C = in_channels = "
                             f"{self.in_channels}, got {tuple(in_shape)}{hint}")
        out = []
        for n, k, s, p in zip(in_shape[1:], self.kernel_size, self.stride, self.padding):
            if n + 2 * p < k:
                raise ValueError(f"{name}: kernel_size {k} is larger than the padded input ({n} + 2 * {p})")
            out.append((n + 2 * p - k) // s + 1)
        return (self.out_channels,) + tuple(out)

    def unfold(self, h, xp):
        """``U`` (N, P, d) and the output's spatial shape."""
        return im2col(h, self.kernel_size, self.stride, self.padding, xp)

    def _fold(self, v, out_sp):
        # (N, P, m) -> (N, m, *out)
        return v.transpose(0, 2, 1).reshape((v.shape[0], self.out_channels) + tuple(out_sp))

    def forward(self, h, xp):
        U, out_sp = self.unfold(h, xp)
        W = self.weight.reshape(self.out_channels, -1)
        return self._fold(U @ W.T + self.bias, out_sp)

    fuses_activation = True  # an elementwise activation commutes with the fold

    def train_forward(self, h, ctx, act=None):
        U, out_sp = self.unfold(h, ctx.xp)
        return self._fold(ctx.affine(self, U, act=act), out_sp)

    def __repr__(self):
        k = self.kernel_size[0] if self.nd == 1 else self.kernel_size
        s = self.stride[0] if self.nd == 1 else self.stride
        p = self.padding[0] if self.nd == 1 else self.padding
        return (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, kernel_size={k}, "
                f"stride={s}, padding={p})")


class Conv1d(_ConvNd):
    """1-D convolution over (N, C_in, L) -> (N, C_out, L_out), ``L_out = (L + 2 pad - k) // stride + 1``.

    Noise (training) per output position and channel, one ``sigma`` per output channel. Weight
    ``(C_out, C_in, k)``, bias ``(C_out,)``.
    """

    nd = 1


class Conv2d(_ConvNd):
    """2-D convolution over (N, C_in, H, W); ``kernel_size``, ``stride``, ``padding``: int or pair.

    Weight ``(C_out, C_in, kh, kw)``; otherwise as :class:`Conv1d`.
    """

    nd = 2


class _PoolNd(Layer, register=False):
    nd = 0
    mode = ""

    def __init__(self, kernel_size, stride=None):
        tup = _pair if self.nd == 2 else (lambda v, n: (_v.positive_int(v, n),))
        self.kernel_size = tup(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else tup(stride, "stride")

    def config(self):
        one = (lambda t: t[0]) if self.nd == 1 else list
        return {"kernel_size": one(self.kernel_size), "stride": one(self.stride)}

    def backward(self, x, delta, feedback=None):
        from .reference import pool_backward

        return pool_backward(self, x, delta)

    def out_shape(self, in_shape):
        name = type(self).__name__
        if len(in_shape) != 1 + self.nd:
            want = "(C, L)" if self.nd == 1 else "(C, H, W)"
            raise ValueError(f"{name} expects samples of shape {want}, got {tuple(in_shape)}")
        out = []
        for n, k, s in zip(in_shape[1:], self.kernel_size, self.stride):
            if n < k:
                raise ValueError(f"{name}: kernel_size {k} is larger than the input ({n})")
            out.append((n - k) // s + 1)
        return (in_shape[0],) + tuple(out)

    def windows(self, h, xp):
        """(N, C, *out, *kernel) windows of ``h`` (a view)."""
        nd = self.nd
        if self.kernel_size == self.stride and all(n % k == 0 for n, k in zip(h.shape[2:], self.kernel_size)):
            # non-overlapping, whole windows: a reshape
            shape = h.shape[:2]
            for n, k in zip(h.shape[2:], self.kernel_size):
                shape += (n // k, k)
            w = h.reshape(shape)
            perm = (0, 1) + tuple(2 + 2 * i for i in range(nd)) + tuple(3 + 2 * i for i in range(nd))
            return w.transpose(perm)
        w = _windows(xp, h, self.kernel_size, tuple(range(2, 2 + nd)))
        return w[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in self.stride)]

    def forward(self, h, xp):
        # one elementwise max (or sum) per kernel offset over strided views: a reduction over an
        # axis of 2 or 4 window entries costs NumPy a loop per output (~10x slower here)
        out = None
        for off in np.ndindex(*self.kernel_size):
            part = h[(slice(None), slice(None)) + tuple(
                slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(off, self.stride, self._out(h)))]
            if out is None:
                out = part.copy()
            elif self.mode == "max":
                xp.maximum(out, part, out=out)
            else:
                out += part
        return out if self.mode == "max" else out / math.prod(self.kernel_size)

    def _out(self, h):
        return [(n - k) // s + 1 for n, k, s in zip(h.shape[2:], self.kernel_size, self.stride)]

    def __repr__(self):
        k = self.kernel_size[0] if self.nd == 1 else self.kernel_size
        return f"{type(self).__name__}({k})"


class MaxPool1d(_PoolNd):
    """Maximum over windows of ``kernel_size`` (stride defaults to ``kernel_size``); (N, C, L)."""

    nd, mode = 1, "max"


class MaxPool2d(_PoolNd):
    """Maximum over ``kernel_size`` windows of (N, C, H, W) (stride defaults to ``kernel_size``)."""

    nd, mode = 2, "max"


class AvgPool1d(_PoolNd):
    """Mean over windows of ``kernel_size`` (stride defaults to ``kernel_size``); (N, C, L)."""

    nd, mode = 1, "avg"


class AvgPool2d(_PoolNd):
    """Mean over ``kernel_size`` windows of (N, C, H, W) (stride defaults to ``kernel_size``)."""

    nd, mode = 2, "avg"


class Flatten(Layer):
    """(N, C, ...) -> (N, C * ...): joins a convolutional trunk to ``Linear`` layers."""

    def out_shape(self, in_shape):
        return (math.prod(in_shape),)

    def forward(self, h, xp):
        return h.reshape(h.shape[0], -1)

    def backward(self, x, delta, feedback=None):
        return delta.reshape(x.shape), {}


class GlobalAvgPool(Layer):
    """``(N, C, *spatial) -> (N, C)``: the mean over all positions (the head of a ResNet)."""

    def out_shape(self, in_shape):
        if len(in_shape) < 2:
            raise ValueError(f"GlobalAvgPool expects samples of shape (C, L) or (C, H, W), got {tuple(in_shape)}")
        return (in_shape[0],)

    def forward(self, h, xp):
        return h.reshape(h.shape[0], h.shape[1], -1).mean(axis=2)

    def backward(self, x, delta, feedback=None):
        n = math.prod(x.shape[2:])
        return np.broadcast_to((delta / n).reshape(delta.shape + (1,) * (x.ndim - 2)), x.shape).copy(), {}


class GroupNorm(Layer):
    """Per-sample normalisation over groups of channels, no learned parameters.

    Each sample's channels are split into ``groups`` groups; each group (channels x positions) is
    shifted to mean 0 and scaled to variance 1 (``eps`` added to the variance). ``groups=1`` is
    layer norm over the whole sample; ``groups=C`` is instance norm.

    Why not batch norm: batch norm's statistics mix all rows of a batch, and in a training pass
    the rows are the K noisy copies of every sample. Copy k's output would then depend on the
    other copies' noise, so the per-copy losses are no longer independent given the sample: the
    leave-one-out baseline stops being independent of copy k's noise, and LR's score identity
    ``E[L eps] = sigma dE[L]/du`` no longer holds per copy. A per-sample normalisation sees only
    one row, so copies stay independent and every estimator keeps its expectation. It has no
    learned scale and shift here: those would be two more noise sites for little gain at this size.
    """

    def __init__(self, groups=1, eps=1e-5):
        self.groups = _v.positive_int(groups, "groups")
        self.eps = _v.positive_float(eps, "eps")

    def out_shape(self, in_shape):
        if len(in_shape) < 1 or in_shape[0] % self.groups:
            raise ValueError(f"GroupNorm: groups={self.groups} must divide the channels of samples "
                             f"of shape {tuple(in_shape)}")
        return tuple(in_shape)

    def config(self):
        return {"groups": self.groups, "eps": self.eps}

    def backward(self, x, delta, feedback=None):
        from .reference import groupnorm_backward

        return groupnorm_backward(self, x, delta)

    def _grouped(self, h):
        return h.reshape(h.shape[0], self.groups, -1)

    def forward(self, h, xp):
        g = self._grouped(h)
        mu = g.mean(axis=2, keepdims=True)
        c = g - mu
        # sum of squares without a temporary, scaling in place: two passes fewer than (c * c).mean
        var = xp.einsum("ngi,ngi->ng", c, c)[..., None] / c.shape[2]
        c /= xp.sqrt(var + self.eps)
        return c.reshape(h.shape)

    def __repr__(self):
        return f"GroupNorm({self.groups})"


class Residual(Layer):
    """``body(x) + skip(x)``: a residual block (He et al., 2016).

    Parameters
    ----------
    body : list of layers (activation names allowed)
    skip : layer or None
        None is the identity (the body must keep the shape); a 1x1 ``Conv1d``/``Conv2d`` (or any
        layer) maps ``x`` to the body's output shape. Put the block's final activation after it.

    Parameters of the body's layers have keys ``"<i>.body.<j>.weight"``, the skip's
    ``"<i>.skip.weight"``.
    """

    children = ("body", "skip")

    def __init__(self, body, skip=None):
        if not isinstance(body, (list, tuple)) or not body:
            raise TypeError("body must be a non-empty list of layers")
        self.body = [l if isinstance(l, Layer) else make_activation(l) for l in body]
        for j, l in enumerate(self.body):
            if not isinstance(l, (Layer, Activation)):
                raise TypeError(f"body[{j}] is a {type(l).__name__}, not a layer")
        if skip is not None and not isinstance(skip, Layer):
            raise TypeError(f"skip must be a layer (e.g. a 1x1 Conv1d) or None, got {type(skip).__name__}")
        self.skip = skip

    def out_shape(self, in_shape):
        shape = tuple(in_shape)
        for j, l in enumerate(self.body):
            try:
                shape = l.out_shape(shape)
            except ValueError as exc:
                raise ValueError(f"body[{j}]: {exc}") from None
        s = tuple(in_shape) if self.skip is None else self.skip.out_shape(tuple(in_shape))
        if s != shape:
            what = "the input" if self.skip is None else "skip"
            raise ValueError(f"the body gives shape {shape} but {what} gives {s}: they must match "
                             f"(use skip=Conv1d(C_in, C_out, 1) to change channels)")
        return shape

    def config(self):
        from .layers import spec

        return {"body": [spec(l) for l in self.body], "skip": None if self.skip is None else spec(self.skip)}

    @classmethod
    def from_config(cls, config):
        from .layers import build

        body = config.get("body")
        if not isinstance(body, list):
            raise ValueError(f"Residual: body must be a list of layers, got {body!r}")
        skip = config.get("skip")
        extra = sorted(set(config) - {"body", "skip"})
        if extra:
            raise ValueError(f"Residual got unexpected config keys {extra}")
        return cls([build(l) for l in body], skip=None if skip is None else build(skip))

    def backward(self, x, delta, feedback=None):
        from .reference import residual_backward

        return residual_backward(self, x, delta, feedback)

    def forward(self, h, xp):
        out = h
        for l in self.body:
            out = l.forward(out, xp)
        return out + (h if self.skip is None else self.skip.forward(h, xp))

    def train_forward(self, h, ctx):
        out = run_layers(self.body, h, ctx)
        s = h if self.skip is None else self.skip.train_forward(h, ctx)
        return ctx.add(out, s)

    def __repr__(self):
        inner = ", ".join(repr(l) for l in self.body)
        return f"Residual([{inner}], skip={self.skip!r})"
