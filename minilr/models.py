"""Models: a ``Sequential`` stack of layers and the ``MLP`` builder.

A model is plain data: its ``Linear`` layers hold NumPy arrays. Estimators read them; optimizers
write them; nothing records operations.
"""
from __future__ import annotations

import contextlib
import copy as _copy

import numpy as np

from . import validation as _v
from .backend import get_backend, seed_sequence
from .layers import Activation, Layer, Linear, _check_sigma, children_of
from .layers import activation as make_activation

__all__ = ["Sequential", "MLP", "cnn", "resnet5", "resnet9"]


class Sequential:
    """A stack of ``Linear`` layers and activations, applied in order.

    Parameters
    ----------
    layers : list of Linear / Activation (or activation names such as ``"relu"``)
    sigma : float, default 0.1
        Noise scale for every ``Linear`` that does not set its own.
    seed : int or SeedSequence, default 0
        Seed for the initial weights (one child stream per layer).
    learn_sigma : bool, default False
        Train ``sigma`` too (the layers' keys gain ``"<i>.sigma"``).
    dtype : default float32
        Precision of parameters and of the training arithmetic.
    """

    def __init__(self, layers, sigma=0.1, seed=0, learn_sigma=False, dtype=np.float32, input_shape=None):
        if not isinstance(layers, (list, tuple)) or not layers:
            raise TypeError("layers must be a non-empty list of Linear layers and activations")
        if not isinstance(learn_sigma, (bool, np.bool_)):
            raise TypeError(f"learn_sigma must be True or False, got {learn_sigma!r}")
        _v.seed_arg(seed)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.layers = [l if isinstance(l, (Linear, Layer)) else make_activation(l) for l in layers]
        if isinstance(self.layers[0], Activation):
            raise ValueError("the first layer must be a Linear layer (or another parameterised or "
                             f"shape layer such as Conv1d), not the activation {self.layers[0]!r}")
        width = None
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Linear):
                if width is not None and layer.in_features != width:
                    raise ValueError(f"layer {i} expects {layer.in_features} inputs but the layer "
                                     f"before it gives {width}")
                width = layer.out_features
            elif not isinstance(layer, (Activation, Layer)):
                raise TypeError(f"layer {i} is a {type(layer).__name__}, not a Linear or activation")
            elif not isinstance(layer, Activation):
                width = None
        if input_shape is None and isinstance(self.layers[0], Linear):
            input_shape = (self.layers[0].in_features,)
        if input_shape is not None:
            if (not isinstance(input_shape, (tuple, list)) or not input_shape
                    or not all(isinstance(n, (int, np.integer)) and n > 0 for n in input_shape)):
                raise TypeError(f"input_shape must be a tuple of positive ints (one sample's shape, "
                                f"e.g. (1, 40)), got {input_shape!r}")
            input_shape = tuple(int(n) for n in input_shape)
        self.input_shape = input_shape
        if input_shape is not None:
            self.output_shape(input_shape, "input_shape")  # every layer fits, or a clear error now
        for i, layer in enumerate(self.layers):  # one object twice would silently tie its weights
            for j in range(i):
                if isinstance(layer, Linear) and self.layers[j] is layer:
                    raise ValueError(f"layers[{i}] is the same Linear object as layers[{j}]; use a new "
                                     f"Linear for each position (minilr does not tie weights)")
        children = seed_sequence(seed).spawn(len(self.layers))
        for i, (layer, ss) in enumerate(zip(self.layers, children)):
            if isinstance(layer, Activation):
                continue
            _init_layer(layer, np.random.default_rng(ss), self.dtype, sigma, learn_sigma, i)

    # -- structure ------------------------------------------------------------------------------
    @property
    def linear_indices(self) -> list[int]:
        """Positions of the ``Linear`` layers (the noise sites) in ``layers``."""
        return [i for i, l in enumerate(self.layers) if isinstance(l, Linear)]

    @property
    def in_features(self) -> int:
        if isinstance(self.layers[0], Linear):
            return self.layers[0].in_features
        if self.input_shape is not None and len(self.input_shape) == 1:
            return self.input_shape[0]
        raise AttributeError("this model takes multi-dimensional inputs: see input_shape")

    @property
    def out_features(self) -> int:
        if self.input_shape is not None:
            return self.output_shape(self.input_shape, "input_shape")[-1]
        last = [l for l in self.layers if isinstance(l, Linear)]
        if last and self.layers.index(last[-1]) == max(i for i, l in enumerate(self.layers)
                                                        if not isinstance(l, Activation)):
            return last[-1].out_features
        raise AttributeError("the model's output width depends on its input: give input_shape")

    def output_shape(self, in_shape, name="x"):
        """One sample's output shape for one sample's input shape ``in_shape``; ValueError naming
        ``name`` and the first layer that does not fit."""
        shape = tuple(in_shape)
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.out_shape(shape)
            except ValueError as exc:
                raise ValueError(f"{name}: samples of shape {tuple(in_shape)} do not fit layer {i} "
                                 f"({layer!r}): {exc}") from None
        return shape

    def noise_sites(self) -> list:
        """``(key prefix, layer, site name)`` for every noise site, in order (nested layers too).

        The parameters of a site are ``prefix + name + "weight"`` / ``"bias"`` / ``"sigma"``."""
        out = []
        for i, layer in enumerate(self.layers):
            out.extend(_sites(layer, f"{i}."))
        return out

    def check(self) -> None:
        """Check what may have been set by hand: every layer's arrays (shapes, finiteness, sigma > 0)
        and no Linear object used twice. Errors name the layer and parameter."""
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Linear):
                for j in range(i):
                    if self.layers[j] is layer:
                        raise ValueError(f"layers[{i}] is the same Linear object as layers[{j}]; use a "
                                         f"new Linear for each position (minilr does not tie weights)")
            if hasattr(layer, "check"):
                layer.check(i, self.dtype)

    def parameters(self) -> dict:
        """``{"<i>.weight", "<i>.bias"[, "<i>.sigma"]: array}`` for every parameterised layer ``i``.

        Nested layers (residual blocks) give keys such as ``"3.body.0.weight"``. The arrays are the
        model's own (not copies): changing them changes the model.
        """
        params = {}
        for prefix, layer, name in self.noise_sites():
            params[prefix + name + "weight"] = getattr(layer, name + "weight")
            if getattr(layer, name + "bias", None) is not None:
                params[prefix + name + "bias"] = getattr(layer, name + "bias")
            if layer.learn_sigma:
                params[prefix + name + "sigma"] = getattr(layer, name + "sigma")
        return params

    def set_parameters(self, params: dict) -> None:
        """Replace parameters by the arrays in ``params`` (same keys and shapes)."""
        own = self.parameters()
        for k, v in params.items():
            if k not in own:
                raise KeyError(f"unknown parameter {k!r}; the model has {sorted(own)}")
            if tuple(v.shape) != own[k].shape:
                raise ValueError(f"parameter {k!r} must have shape {own[k].shape}, got {tuple(v.shape)}")
        for k, v in params.items():
            *path, name = k.split(".")
            setattr(_resolve(self, path), name, v)

    def copy(self) -> "Sequential":
        """An independent deep copy."""
        return _copy.deepcopy(self)

    def __repr__(self):
        inner = ", ".join(repr(l) for l in self.layers)
        return f"{type(self).__name__}([{inner}])"

    # -- noiseless inference ----------------------------------------------------------------------
    def check_input(self, x, name="x"):
        """``x`` checked as a batch for this model (shape, real, finite); ValueError naming ``name``."""
        if self.input_shape is not None and len(self.input_shape) == 1:  # flat samples
            x = _v.features(x, name, self.input_shape[0], self.dtype)
            self.output_shape(x.shape[1:], name)
            return x
        x = _v.batch(x, name)
        _v.fits_dtype(x, name, self.dtype)
        if self.input_shape is not None and x.shape[1:] != self.input_shape:
            raise ValueError(f"{name} must have shape (batch, {', '.join(map(str, self.input_shape))}), "
                             f"got {x.shape}")
        self.output_shape(x.shape[1:], name)
        return x

    def forward(self, x, backend="numpy"):
        """Noiseless outputs for a batch ``x`` (shape (batch, in_features), or (batch, C, L) etc. for
        convolutional models), as a NumPy array."""
        bk = get_backend(backend)
        self.check()
        x = self.check_input(x, "x")
        h = _forward(self, bk.asarray(x, self.dtype), bk.xp, bk)
        return bk.to_numpy(h)

    def predict(self, x, backend="numpy") -> np.ndarray:
        """Predicted class indices for a batch ``x`` (NumPy in, NumPy out)."""
        with np.errstate(over="ignore", invalid="ignore"):  # said below, as an error
            h = self.forward(x, backend)
        if not np.all(np.isfinite(h)):
            raise FloatingPointError(f"the model's output is not finite for this x (largest |x| "
                                     f"{float(np.max(np.abs(x))):.3g}): the values overflow "
                                     f"{self.dtype.name} inside the network, so no class can be predicted")
        return h.argmax(axis=-1)


def _init_layer(layer, rng, dtype, sigma, learn_sigma, index):
    """Draw a layer's weights and give each of its noise sites its ``sigma`` (nested layers too)."""
    layer.init(rng, dtype)
    for name in layer.sites:
        m = getattr(layer, name + "weight").shape[0]
        own = getattr(layer, name + "sigma", None)
        s = own if own is not None else _check_sigma(sigma, m)
        setattr(layer, name + "sigma", _sigma_in_dtype(np.asarray(s, dtype=np.float64), dtype, f"{index}{'.' + name[:-1] if name else ''}"))
    if layer.sites and layer.learn_sigma is None:
        layer.learn_sigma = bool(learn_sigma)
    for j, child in enumerate(children_of(layer)):
        _init_layer(child[1], np.random.default_rng(rng.integers(2**63) + j), dtype, sigma, learn_sigma,
                    f"{index}.{child[0]}")


def _sites(layer, prefix):
    out = [(prefix, layer, name) for name in layer.sites]
    for part, child in children_of(layer):
        out.extend(_sites(child, f"{prefix}{part}."))
    return out


def _resolve(model, path):
    obj = model.layers
    for part in path:
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _sigma_in_dtype(s, dtype, index):
    """``s`` cast to ``dtype``; a ValueError if it underflows (below the smallest normal number, whose
    ``1 / sigma`` in the estimators would overflow) or overflows there."""
    with np.errstate(over="ignore", under="ignore"):  # said below, as an error
        cast = s.astype(dtype)
    fi = np.finfo(dtype)
    if not np.all(cast >= fi.tiny) or not np.all(np.isfinite(cast)):
        bad = s[(cast < fi.tiny) | ~np.isfinite(cast)][0]
        raise ValueError(f"sigma of layer {index} is {bad:.3g}, outside the range of {fi.dtype} "
                         f"([{fi.tiny:.3g}, {fi.max:.3g}]): use a sigma in that range or dtype=float64")
    return cast


def _forward(model, h, xp, bk):
    """Noiseless forward on the backend's arrays (parameters moved there for the call)."""
    with on_backend(model, bk):
        for layer in model.layers:
            h = layer.forward(h, xp)
    return h


@contextlib.contextmanager
def on_backend(model, bk):
    """Every noise site's arrays on ``bk``'s device for the block, home again afterwards (even on
    error). A no-op on NumPy and inside another such block (the arrays are there already)."""
    sites = model.noise_sites()
    first = getattr(sites[0][1], sites[0][2] + "weight") if sites else None
    if bk.name == "numpy" or first is None or not isinstance(first, np.ndarray):
        yield
        return
    _move_sites(sites, bk.asarray)
    try:
        yield
    finally:
        _move_sites(sites, bk.to_numpy)


def _move_sites(sites, move):
    for _, layer, name in sites:
        for p in ("weight", "bias", "sigma"):
            a = getattr(layer, name + p, None)
            if a is not None:
                setattr(layer, name + p, move(a))


def MLP(sizes, activation="relu", sigma=0.1, seed=0, learn_sigma=False, dtype=np.float32) -> Sequential:
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]``.

    ``activation`` follows every hidden ``Linear``; the last layer's outputs are the logits.
    """
    if not isinstance(sizes, (list, tuple)) or len(sizes) < 2:
        raise ValueError(f"sizes must list at least an input and an output width, got {sizes!r}")
    sizes = [_v.positive_int(s, "sizes[i]") for s in sizes]
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(make_activation(activation))
    return Sequential(layers, sigma=sigma, seed=seed, learn_sigma=learn_sigma, dtype=dtype)



# -- convolutional builders -------------------------------------------------------------------------
def _conv_kit(input_shape):
    from . import conv

    if not isinstance(input_shape, (tuple, list)) or len(input_shape) not in (2, 3):
        raise ValueError(f"input_shape must be (C, L) or (C, H, W), got {input_shape!r}")
    if len(input_shape) == 2:
        return conv.Conv1d, conv.MaxPool1d
    return conv.Conv2d, conv.MaxPool2d


def cnn(input_shape=(1, 40), classes=10, width=25, sigma=0.1, seed=0, learn_sigma=False,
        dtype=np.float32) -> Sequential:
    """A small CNN: three stride-2 convolutions (kernels 5, 3, 3) with ReLU, then a linear read-out.

    The shape of the MNIST-1D paper's convolutional baseline (Greydanus, 2020), which reaches ~94 %
    there with backprop. Strides instead of pooling keep the positions, hence the noise sites,
    few: 19 + 10 + 5 positions for 40-point inputs. 1-D for (C, L) inputs, 2-D for (C, H, W).
    """
    Conv, _ = _conv_kit(input_shape)
    from .conv import Flatten

    layers = [Conv(input_shape[0], width, 5, stride=2, padding=1), "relu",
              Conv(width, width, 3, stride=2, padding=1), "relu",
              Conv(width, width, 3, stride=2, padding=1), "relu", Flatten()]
    shape = tuple(input_shape)
    for l in layers:  # the read-out's width: the trunk's output shape
        shape = make_activation(l).out_shape(shape) if isinstance(l, str) else l.out_shape(shape)
    layers.append(Linear(shape[0], classes))
    return Sequential(layers, sigma=sigma, seed=seed, learn_sigma=learn_sigma, dtype=dtype,
                      input_shape=tuple(input_shape))


def _block(Conv, c_in, c_out, groups=1):
    from .conv import GroupNorm

    return [Conv(c_in, c_out, 3, padding=1), GroupNorm(groups), "relu"]


def resnet5(input_shape=(1, 40), classes=10, width=16, sigma=0.1, seed=0, learn_sigma=False,
            dtype=np.float32) -> Sequential:
    """A ResNet with 5 weight layers, the paper's ResNet-5 scaled down (4 conv + 1 linear).

    ``conv(w) -> pool -> residual[conv(w), conv(w)] -> conv(2w) -> pool -> global mean -> linear``;
    every conv is followed by a parameter-free :class:`~minilr.conv.GroupNorm` (per-sample: batch
    norm would couple the noisy copies, see its docstring) and ReLU.
    """
    Conv, Pool = _conv_kit(input_shape)
    from .conv import GlobalAvgPool, GroupNorm, Residual

    w = _v.positive_int(width, "width")
    layers = (_block(Conv, input_shape[0], w) + [Pool(2)]
              + [Residual([Conv(w, w, 3, padding=1), GroupNorm(1), "relu",
                           Conv(w, w, 3, padding=1), GroupNorm(1)]), "relu"]
              + _block(Conv, w, 2 * w) + [Pool(2), GlobalAvgPool(), Linear(2 * w, classes)])
    return Sequential(layers, sigma=sigma, seed=seed, learn_sigma=learn_sigma, dtype=dtype,
                      input_shape=tuple(input_shape))


def resnet9(input_shape=(1, 40), classes=10, width=8, sigma=0.1, seed=0, learn_sigma=False,
            dtype=np.float32) -> Sequential:
    """A ResNet with 9 weight layers, shaped like the paper's ResNet-9 (the "DAWNBench" ResNet-9:
    prep conv, three conv stages with pooling, residual blocks after the first and the last),
    channel widths ``w, 2w, 4w, 8w`` scaled down by ``width``.

    ``conv(w) -> conv(2w), pool -> res[conv, conv] -> conv(4w), pool -> conv(8w), pool ->
    res[conv, conv] -> global mean -> linear``; GroupNorm + ReLU after every conv as in :func:`resnet5`.
    """
    Conv, Pool = _conv_kit(input_shape)
    from .conv import GlobalAvgPool, GroupNorm, Residual

    w = _v.positive_int(width, "width")

    def res(c):
        return [Residual([Conv(c, c, 3, padding=1), GroupNorm(1), "relu",
                          Conv(c, c, 3, padding=1), GroupNorm(1)]), "relu"]

    layers = (_block(Conv, input_shape[0], w)
              + _block(Conv, w, 2 * w) + [Pool(2)] + res(2 * w)
              + _block(Conv, 2 * w, 4 * w) + [Pool(2)]
              + _block(Conv, 4 * w, 8 * w) + [Pool(2)] + res(8 * w)
              + [GlobalAvgPool(), Linear(8 * w, classes)])
    return Sequential(layers, sigma=sigma, seed=seed, learn_sigma=learn_sigma, dtype=dtype,
                      input_shape=tuple(input_shape))
