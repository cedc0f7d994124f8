"""Layers: the base class every layer subclasses, a noisy ``Linear`` and element-wise activations.

A ``Linear`` layer is a *noise site*: during a training forward pass it computes
``v = x W^T + b + sigma * eps`` with ``eps ~ N(0, I)`` and one ``sigma_i`` per output neuron
(paper Sec. 2). Activations then map ``v`` to ``x' = phi(v)``. Nothing here knows about gradients
except :meth:`Layer.backward`, which only the exact reference (``reference.py``) uses.

A new layer is one :class:`Layer` subclass: defining it registers it (:data:`REGISTRY`), and the
class alone says everything minilr needs, its noise sites, its exact backward pass and how it is
saved and loaded (see :class:`Layer`).
"""
from __future__ import annotations

import numpy as np

from . import validation as _v

__all__ = ["Layer", "REGISTRY", "Linear", "ReLU", "Tanh", "Sigmoid", "Identity", "Step", "Activation", "activation",
           "run_layers", "NoiselessContext"]


REGISTRY: dict = {}
"""Every saveable layer class by the name files use for it (filled by :meth:`Layer.__init_subclass__`)."""


class Layer:
    """Base of every layer. A new layer is one subclass; defining it registers it (once, by name).

    What a layer class declares, all in the class (the training side: :mod:`minilr.engines.reference`):

    * ``sites``: names of its noise sites. Site ``s`` owns the attributes ``{s}weight`` (first axis:
      the ``m`` outputs; the rest flattened is the ``d`` inputs), ``{s}bias`` (``(m,)``; a site
      without bias leaves it out of :meth:`array_shapes`) and ``{s}sigma`` (``(m,)``, one noise
      scale per output). ``""`` gives ``weight``, ``bias``, ``sigma``. These arrays are the layer's
      whole state: they are what is trained, saved and loaded.
    * ``children``: names of sub-layers (attributes holding a layer or a list of layers), whose
      arrays appear under ``"<name>.<j>."`` (containers such as :class:`~minilr.conv.Residual`).
    * :meth:`array_shapes`: the shape of every ``{s}weight`` / ``{s}bias`` from the constructor's
      arguments alone, so a file's arrays are checked before anything is allocated.
    * :meth:`config`: the constructor's keyword arguments as JSON values (the architecture in a
      saved file); :meth:`from_config` rebuilds the layer from them (containers build children).
    * :meth:`backward`: the exact float64 backward pass that :mod:`minilr.reference` (the oracle,
      never the trainer) runs; layers without a derivative raise a ValueError saying why.
    * ``init(rng, dtype)`` draws the weights; ``out_shape(in_shape)`` maps a per-sample input shape
      to the output shape (ValueError naming the layer when it does not fit); ``forward(h, xp)`` is
      the noiseless pass on ``(N, *in_shape)``; ``train_forward(h, ctx)`` is the training pass, which
      writes every noisy affine map as ``ctx.affine(self, U, name)``.

    Registration: ``class MyLayer(Layer)`` adds ``MyLayer`` to :data:`REGISTRY` under its class name
    (``class MyLayer(Layer, save_name="other")`` chooses the name; ``register=False`` leaves out an
    abstract base). A name already taken by another class is not taken over: saving such a layer
    raises a TypeError that says so.
    """

    sites: tuple = ()
    children: tuple = ()
    learn_sigma = None

    def __init_subclass__(cls, register=True, save_name=None, **kwargs):
        super().__init_subclass__(**kwargs)
        if not register:
            return
        name = cls.__name__ if save_name is None else save_name
        if not isinstance(name, str) or not name:
            raise TypeError(f"save_name must be a non-empty string, got {name!r}")
        old = REGISTRY.get(name)
        if old is not None and old is not cls and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            return  # the first class keeps the name (a redefinition of the same class replaces it)
        cls._save_name = name  # set on this class only: see registered_name
        REGISTRY[name] = cls

    def init(self, rng: np.random.Generator, dtype) -> None:
        pass

    def out_shape(self, in_shape: tuple) -> tuple:
        return tuple(in_shape)

    def forward(self, h, xp):
        raise NotImplementedError

    def train_forward(self, h, ctx):
        """The training forward pass; parameter-free layers just run :meth:`forward`."""
        return self.forward(h, ctx.xp)

    def array_shapes(self) -> dict:
        """``{attribute: shape}`` of every site's ``{s}weight`` and ``{s}bias`` (no sigma: it is
        ``(weight.shape[0],)``), from the constructor's arguments alone."""
        if self.sites:
            raise NotImplementedError(f"{type(self).__name__} has noise sites {self.sites} but no "
                                      f"array_shapes(): define it (the shapes its init draws)")
        return {}

    def config(self) -> dict:
        """The constructor's keyword arguments as JSON values (arrays are saved apart)."""
        import inspect

        init = type(self).__init__
        takes = [] if init is object.__init__ else [
            n for n, p in inspect.signature(init).parameters.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if takes:
            raise TypeError(f"{type(self).__name__} takes constructor arguments ({', '.join(takes)}) "
                            f"but defines no config(): define config() returning them as JSON values")
        return {}

    @classmethod
    def from_config(cls, config: dict):
        """The layer (without weights) from :meth:`config`'s output."""
        return cls(**config)

    def backward(self, x, delta, feedback=None):
        """``(dLoss/dx, {array name: dLoss/darray})`` in float64 given ``delta`` = dLoss/d(output)
        at input ``x``; containers pass ``feedback`` on to :func:`minilr.reference.backward`."""
        raise TypeError(f"minilr.reference has no backward pass for {type(self).__name__}: define "
                        f"{type(self).__name__}.backward")

    def __repr__(self):
        return f"{type(self).__name__}()"


def registered_name(layer) -> str:
    """The name files use for ``layer``'s class; TypeError if the class is not registered."""
    cls = type(layer)
    name = cls.__dict__.get("_save_name")
    if name is None or REGISTRY.get(name) is not cls:
        taken = REGISTRY.get(cls.__name__)
        why = (f"the name {cls.__name__!r} is taken by {taken.__module__}.{taken.__qualname__}: give "
               f"the class another with class {cls.__name__}(..., save_name='...')"
               if taken is not None and taken is not cls else
               "it is not a registered minilr Layer subclass (register=False, or not a Layer)")
        raise TypeError(f"{cls.__name__} cannot be saved: {why}")
    return name


def spec(layer) -> dict:
    """``{"type": name, "config": {...}}``: a layer's architecture as JSON (nested for containers)."""
    return {"type": registered_name(layer), "config": layer.config()}


def build(spec) -> "Layer":
    """A layer (without weights) from :func:`spec`'s output; ValueError for an unknown type."""
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ValueError(f"a layer must be given as {{'type': name, 'config': {{...}}}}, got {spec!r}")
    cls = REGISTRY.get(spec["type"])
    if cls is None:
        raise ValueError(f"unknown type {spec['type']!r}; known: {sorted(REGISTRY)}")
    cfg = spec.get("config", {})
    if not isinstance(cfg, dict):
        raise ValueError(f"the config of a {spec['type']} is not a dict")
    return cls.from_config(cfg)


def children_of(layer):
    """``(key part, sub-layer)`` of a container layer: ``("body.0", l)``, ``("skip", l)``...
    (activations left out: they hold no arrays)."""
    out = []
    for attr in layer.children:
        value = getattr(layer, attr)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            out.extend((f"{attr}.{j}", l) for j, l in enumerate(value) if not isinstance(l, Activation))
        else:
            out.append((attr, value))
    return out


def array_slots(layer, prefix=""):
    """``(key, owner, attribute, shape)`` of every array a layer holds, nested layers included:
    keys ``prefix + "weight"``, ``prefix + "body.0.bias"``... in the order of the parameters."""
    out = []
    shapes = layer.array_shapes()
    for s in layer.sites:
        w = tuple(shapes[s + "weight"])
        out.append((prefix + s + "weight", layer, s + "weight", w))
        if s + "bias" in shapes:
            out.append((prefix + s + "bias", layer, s + "bias", tuple(shapes[s + "bias"])))
        out.append((prefix + s + "sigma", layer, s + "sigma", (w[0],)))
    for part, child in children_of(layer):
        out.extend(array_slots(child, f"{prefix}{part}."))
    return out


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


class Linear(Layer):
    """Affine layer ``x W^T + b`` with Gaussian noise of per-neuron scale ``sigma`` on its output.

    Parameters
    ----------
    in_features, out_features : int
    sigma : float or array of shape (out_features,), optional
        Noise scale; ``None`` takes the model's default.
    learn_sigma : bool, optional
        Whether ``sigma`` is a trained parameter (Eq. 1, second line); ``None`` takes the model's.

    Weights are drawn when the layer joins a model, from the model's seed.
    """

    def __init__(self, in_features: int, out_features: int, sigma=None, learn_sigma=None):
        self.in_features = _v.positive_int(in_features, "in_features")
        self.out_features = _v.positive_int(out_features, "out_features")
        self.sigma = None if sigma is None else _check_sigma(sigma, self.out_features)
        if learn_sigma is not None and not isinstance(learn_sigma, (bool, np.bool_)):
            raise TypeError(f"learn_sigma must be True, False or None, got {learn_sigma!r}")
        self.learn_sigma = learn_sigma
        self.weight = None
        self.bias = None

    def init(self, rng: np.random.Generator, dtype) -> None:
        """Uniform in +-1/sqrt(fan_in), the usual default for dense layers."""
        bound = 1.0 / np.sqrt(self.in_features)
        self.weight = rng.uniform(-bound, bound, (self.out_features, self.in_features)).astype(dtype)
        self.bias = rng.uniform(-bound, bound, self.out_features).astype(dtype)

    sites = ("",)
    children = ()

    def array_shapes(self) -> dict:
        return {"weight": (self.out_features, self.in_features), "bias": (self.out_features,)}

    def config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "learn_sigma": bool(self.learn_sigma)}

    def backward(self, x, delta, feedback=None):
        return delta @ _f64(self.weight), {"weight": delta.T @ x, "bias": delta.sum(axis=0)}

    def out_shape(self, in_shape: tuple) -> tuple:
        if tuple(in_shape) != (self.in_features,):
            raise ValueError(f"{self!r} expects inputs of shape (batch, {self.in_features}), got "
                             f"(batch, {', '.join(map(str, in_shape))})")
        return (self.out_features,)

    def forward(self, h, xp):
        return h @ self.weight.T + self.bias

    # its training output is the elementwise act of its affine map: a following activation may fuse
    fuses_activation = True

    def train_forward(self, h, ctx, act=None):
        """The noisy map at one position (``ctx.affine``, :mod:`minilr.engines.reference`)."""
        return ctx.affine(self, h, act=act)

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features})"

    def check(self, index: int, dtype) -> None:
        """Raise a ValueError naming layer ``index`` and the parameter if an array set by hand has
        the wrong shape or kind, is not finite, or sigma is not positive in ``dtype``."""
        m, d = self.out_features, self.in_features
        for name, shape in (("weight", (m, d)), ("bias", (m,)), ("sigma", (m,))):
            a = getattr(self, name)
            what = f"layer {index} ({self!r}) parameter '{index}.{name}'"
            if getattr(a, "shape", None) is None or getattr(a, "dtype", None) is None:
                raise TypeError(f"{what} must be an array of shape {shape}, got {type(a).__name__}")
            if tuple(a.shape) != shape:
                raise ValueError(f"{what} must have shape {shape}, got {tuple(a.shape)}")
            if a.dtype.kind != "f":
                raise TypeError(f"{what} must hold floats ({np.dtype(dtype).name}), got dtype {a.dtype}")
            if not bool(np.isfinite(a).all()):
                raise ValueError(f"{what} contains NaN or inf")
        if not bool((self.sigma >= np.finfo(dtype).tiny).all()):
            raise ValueError(f"layer {index} ({self!r}) parameter '{index}.sigma' must be > 0 (at least "
                             f"{np.finfo(dtype).tiny:.3g} in {np.dtype(dtype).name}), got min "
                             f"{float(self.sigma.min()):.3g}")


def _check_sigma(sigma, n: int) -> np.ndarray:
    if isinstance(sigma, (bool, np.bool_, str, bytes)) or sigma is None:
        raise TypeError(f"sigma must be a positive number or an array of shape ({n},), got {sigma!r}")
    try:
        s = np.asarray(sigma, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"sigma must be a positive number or an array of shape ({n},), "
                        f"got {type(sigma).__name__}") from None
    if s.ndim == 0:
        s = np.full(n, float(s))
    if s.shape != (n,):
        raise ValueError(f"sigma must be a positive number or an array of shape ({n},), got shape {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"sigma must be > 0 and finite, got min {s.min()}")
    return s


class Activation(Layer, register=False):
    """Element-wise ``phi``. ``nonneg`` says the output is never negative (its sign needs 1 bit)."""

    name = "activation"
    nonneg = False

    def forward(self, v, xp):
        raise NotImplementedError

    def derivative(self, v, out, xp):
        """``phi'(v)`` for the exact reference; ``out = phi(v)`` is given to save work."""
        raise NotImplementedError

    sites = ()
    children = ()

    def out_shape(self, in_shape: tuple) -> tuple:
        return tuple(in_shape)

    def train_forward(self, h, ctx):
        return self.forward(h, ctx.xp)

    def backward(self, x, delta, feedback=None):
        return delta * self.derivative(x, self.forward(x, np), np), {}

    def __repr__(self):
        return f"{type(self).__name__}()"


class ReLU(Activation):
    name = "relu"
    nonneg = True

    def forward(self, v, xp):
        return xp.maximum(v, 0)

    def derivative(self, v, out, xp):
        return (v > 0).astype(v.dtype)


class Tanh(Activation):
    name = "tanh"

    def forward(self, v, xp):
        return xp.tanh(v)

    def derivative(self, v, out, xp):
        return 1 - out * out


class Sigmoid(Activation):
    name = "sigmoid"
    nonneg = True

    def forward(self, v, xp):
        # 0.5 * (1 + tanh(v/2)) never overflows, unlike 1 / (1 + exp(-v)).
        return 0.5 * (1 + xp.tanh(0.5 * v))

    def derivative(self, v, out, xp):
        return out * (1 - out)


class Identity(Activation):
    name = "identity"

    def forward(self, v, xp):
        return v

    def derivative(self, v, out, xp):
        return xp.ones_like(v)


class Step(Activation):
    """Heaviside step ``1[v > 0]``: a spiking neuron. Its derivative is 0 almost everywhere, so
    backprop learns nothing through it, while LR and ES, which never differentiate ``phi``, train it.
    """

    name = "step"
    nonneg = True

    def forward(self, v, xp):
        return (v > 0).astype(v.dtype)

    def derivative(self, v, out, xp):
        raise ValueError(
            "the Heaviside Step activation has derivative 0 almost everywhere (and none at 0), so "
            "no exact backprop gradient exists: use an LR or ES estimator (e.g. estimator='lr') "
            "for this model instead of the reference / 'bp'")


ACTIVATIONS = {cls.name: cls for cls in (ReLU, Tanh, Sigmoid, Identity, Step)}


def activation(name) -> Activation:
    """An activation from its name (``"relu"``, ``"tanh"``, ``"sigmoid"``, ``"identity"``, ``"step"``)."""
    if isinstance(name, Activation):
        return name
    _v.choice(name, "activation", ACTIVATIONS)
    return ACTIVATIONS[name]()


def run_layers(layers, h, ctx):
    """Run ``layers`` in their training mode (every noisy map through ``ctx.affine``).

    A layer whose output is the elementwise activation of its affine map (``fuses_activation``:
    ``Linear``, the convolutions) hands the activation that follows it to the map when the
    context's engine applies it in the same pass (``ctx.fuses(act)``); the activation then does
    not run again."""
    i = 0
    while i < len(layers):
        layer, nxt = layers[i], (layers[i + 1] if i + 1 < len(layers) else None)
        if getattr(layer, "fuses_activation", False) and isinstance(nxt, Activation) and ctx.fuses(nxt):
            h = layer.train_forward(h, ctx, act=nxt)
            i += 2
        else:
            h = layer.train_forward(h, ctx)
            i += 1
    return h


class NoiselessContext:
    """The noiseless pass, written with the training pass's code: ``affine`` is the exact map.

    A layer's training forward (``train_forward(h, ctx)``) asks ``ctx.affine(layer, U, name)`` for
    every noisy affine map and ``ctx.expand`` for a batch shared by all copies; with this context
    the same code computes the plain forward pass, so the two can never drift apart.
    """

    def __init__(self, xp):
        self.xp = xp

    def affine(self, layer, U, name="", act=None):
        """``act(U W^T + b)`` for ``U`` (rows, [P,] d) -> (rows, [P,] m)."""
        W = getattr(layer, name + "weight")
        b = getattr(layer, name + "bias", None)
        v = self.xp.matmul(U, W.reshape(W.shape[0], -1).T)
        v = v if b is None else v + b
        return v if act is None else act.forward(v, self.xp)

    def fuses(self, act):
        return False

    def expand(self, h):
        return h

    def add(self, a, b):
        return a + b
