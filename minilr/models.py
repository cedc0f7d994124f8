"""Models: a ``Sequential`` stack of layers and the ``MLP`` builder.

A model is plain data: its ``Linear`` layers hold NumPy arrays. Estimators read them; optimizers
write them; nothing records operations.
"""
from __future__ import annotations

import copy as _copy

import numpy as np

from . import validation as _v
from .backend import get_backend, seed_sequence
from .layers import Activation, Linear, _check_sigma
from .layers import activation as make_activation

__all__ = ["Sequential", "MLP"]


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

    def __init__(self, layers, sigma=0.1, seed=0, learn_sigma=False, dtype=np.float32):
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
        self.layers = [l if isinstance(l, Linear) else make_activation(l) for l in layers]
        if not isinstance(self.layers[0], Linear):
            raise ValueError("the first layer must be a Linear layer")
        width = None
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Linear):
                if width is not None and layer.in_features != width:
                    raise ValueError(f"layer {i} expects {layer.in_features} inputs but the layer "
                                     f"before it gives {width}")
                width = layer.out_features
            elif not isinstance(layer, Activation):
                raise TypeError(f"layer {i} is a {type(layer).__name__}, not a Linear or activation")
        for i, layer in enumerate(self.layers):  # one object twice would silently tie its weights
            for j in range(i):
                if isinstance(layer, Linear) and self.layers[j] is layer:
                    raise ValueError(f"layers[{i}] is the same Linear object as layers[{j}]; use a new "
                                     f"Linear for each position (minilr does not tie weights)")
        children = seed_sequence(seed).spawn(len(self.layers))
        for i, (layer, ss) in enumerate(zip(self.layers, children)):
            if isinstance(layer, Linear):
                layer.init(np.random.default_rng(ss), self.dtype)
                s = layer.sigma if layer.sigma is not None else _check_sigma(sigma, layer.out_features)
                layer.sigma = _sigma_in_dtype(s, self.dtype, i)
                if layer.learn_sigma is None:
                    layer.learn_sigma = bool(learn_sigma)

    # -- structure ------------------------------------------------------------------------------
    @property
    def linear_indices(self) -> list[int]:
        """Positions of the ``Linear`` layers (the noise sites) in ``layers``."""
        return [i for i, l in enumerate(self.layers) if isinstance(l, Linear)]

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def out_features(self) -> int:
        return self.layers[self.linear_indices[-1]].out_features

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
        """``{"<i>.weight", "<i>.bias"[, "<i>.sigma"]: array}`` for every Linear layer ``i``.

        The arrays are the model's own (not copies): changing them changes the model.
        """
        params = {}
        for i in self.linear_indices:
            layer = self.layers[i]
            params[f"{i}.weight"] = layer.weight
            params[f"{i}.bias"] = layer.bias
            if layer.learn_sigma:
                params[f"{i}.sigma"] = layer.sigma
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
            i, name = k.split(".")
            setattr(self.layers[int(i)], name, v)

    def copy(self) -> "Sequential":
        """An independent deep copy."""
        return _copy.deepcopy(self)

    def __repr__(self):
        inner = ", ".join(repr(l) for l in self.layers)
        return f"{type(self).__name__}([{inner}])"

    # -- noiseless inference ----------------------------------------------------------------------
    def forward(self, x, backend="numpy"):
        """Noiseless outputs for a batch ``x`` of shape (batch, in_features), as a NumPy array."""
        bk = get_backend(backend)
        self.check()
        x = _v.features(x, "x", self.in_features, self.dtype)
        h = _forward(self, bk.asarray(x, self.dtype), bk.xp, bk)
        return bk.to_numpy(h)

    def predict(self, x, backend="numpy") -> np.ndarray:
        """Predicted class indices for a batch ``x`` (NumPy in, NumPy out).

        Raises FloatingPointError if an output is NaN/inf (its argmax would be arbitrary).
        """
        with np.errstate(over="ignore", invalid="ignore"):  # said below, as an error
            h = self.forward(x, backend)
        if not np.all(np.isfinite(h)):
            raise FloatingPointError(f"the model's output is not finite for this x (largest |x| "
                                     f"{float(np.max(np.abs(x))):.3g}): the values overflow "
                                     f"{self.dtype.name} inside the network, so no class can be predicted")
        return h.argmax(axis=1)


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
    """Noiseless forward on the backend's arrays (parameters moved as needed)."""
    for layer in model.layers:
        if isinstance(layer, Linear):
            h = h @ bk.asarray(layer.weight).T + bk.asarray(layer.bias)
        else:
            h = layer.forward(h, xp)
    return h


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

