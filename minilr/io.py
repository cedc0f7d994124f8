"""Saving and loading models: ``.npz`` files with a JSON header, no pickle.

A file holds one uint8 entry ``__minilr__`` with UTF-8 JSON metadata (format version, minilr
version, what the file is, the architecture as a list of layers with their constructor arguments,
the dtype) and one array per parameter, ``layers.<i>.<name>`` (every ``Linear`` stores its
``weight``, ``bias`` and ``sigma``; whether sigma is learned is part of the architecture).

Loading never runs code from the file: it is read with ``np.load(allow_pickle=False)``; layers are
rebuilt from names looked up in a registry (:func:`register_layer`) with keyword arguments that are
plain JSON values. A corrupt, truncated, foreign or newer-format file raises
:class:`FileFormatError` (a ``ValueError``) naming the file.

Writing is atomic (:func:`write_atomic`): the data go to a temporary file in the same folder,
which is flushed to disk and then renamed over the target, so a crash or a kill at any moment
leaves either the old file or the new one, never half of one.

New layer types register themselves, e.g. in ``layers.py``::

    from .io import register_layer
    register_layer(Conv1d, "Conv1d",
                   config=lambda l: {"in_channels": l.in_channels, ...},
                   arrays=("weight", "bias", "sigma"))
"""
from __future__ import annotations

import io as _io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np

__all__ = ["save", "load", "register_layer", "FileFormatError", "FORMAT_VERSION", "write_atomic",
           "read", "model_state", "model_from_state"]

FORMAT_VERSION = 1
META_KEY = "__minilr__"


class FileFormatError(ValueError):
    """A file that is not a (readable) minilr file of the expected kind; the message names it."""


# -- the layer registry -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    name: str
    cls: type
    config: object     # layer -> dict of JSON values: the constructor's keyword arguments
    build: object      # dict -> layer (default: cls(**config))
    arrays: tuple      # attribute names of the layer's arrays, saved and restored


_BY_NAME: dict = {}
_BY_CLASS: dict = {}


def register_layer(cls, name=None, config=None, build=None, arrays=()):
    """Make layers of class ``cls`` saveable.

    Parameters
    ----------
    cls : type
    name : str, optional
        The name written to files (default ``cls.__name__``); never reuse one for another class.
    config : callable, optional
        ``config(layer) -> dict`` of JSON-serialisable constructor keyword arguments (default: none).
    build : callable, optional
        ``build(**config) -> layer`` (default ``cls``).
    arrays : tuple of str
        Attributes holding the layer's arrays (parameters and sigma); restored by ``setattr``.
    """
    name = cls.__name__ if name is None else name
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    old = _BY_NAME.get(name)
    if old is not None and old.cls is not cls:
        raise ValueError(f"layer name {name!r} is already registered for {old.cls.__name__}")
    entry = _Entry(name, cls, config or (lambda layer: {}), build or cls, tuple(arrays))
    _BY_NAME[name] = entry
    _BY_CLASS[cls] = entry
    return cls


def _builtin():
    """Register minilr's own layers (lazily, so ``layers.py`` may import this module)."""
    from . import layers

    if layers.Linear not in _BY_CLASS:
        register_layer(layers.Linear, "Linear",
                       config=lambda l: {"in_features": l.in_features, "out_features": l.out_features,
                                         "learn_sigma": bool(l.learn_sigma)},
                       arrays=("weight", "bias", "sigma"))
    for cls in layers.ACTIVATIONS.values():
        if cls not in _BY_CLASS:
            register_layer(cls)


def _entry_for(layer, index):
    _builtin()
    entry = _BY_CLASS.get(type(layer))
    if entry is None:
        raise TypeError(f"layer {index} ({type(layer).__name__}) cannot be saved: register its class "
                        f"with minilr.io.register_layer")
    return entry


# -- atomic files ---------------------------------------------------------------------------------
def write_atomic(path, meta: dict, arrays: dict) -> None:
    """Write ``meta`` (JSON) and ``arrays`` as one ``.npz`` file at ``path``, atomically.

    The file is written under a temporary name in the same folder, flushed and fsync-ed, then
    renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows), and the folder is
    fsync-ed so the rename itself survives a power cut. ``path`` is used as given (no ``.npz``
    added).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    header = np.frombuffer(json.dumps(meta, allow_nan=False).encode("utf-8"), dtype=np.uint8)
    if META_KEY in arrays:
        raise ValueError(f"{META_KEY!r} is reserved for the header")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{META_KEY: header}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: no temporary file left behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename durable; not possible everywhere (e.g. Windows), harmless to skip
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def read(path, kind):
    """``(meta, arrays)`` from a file written by :func:`write_atomic` whose ``meta["kind"]`` is
    ``kind`` (a string, or a tuple of accepted kinds).

    Raises :class:`FileFormatError` naming ``path`` for anything but a readable minilr file of
    that kind in a format this version knows; ``FileNotFoundError`` if there is no file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        with np.load(_io.BytesIO(data), allow_pickle=False) as z:
            names = list(z.files)
            if META_KEY not in names:
                raise FileFormatError(f"{path!r} is not a minilr file (no {META_KEY!r} header)")
            meta = json.loads(z[META_KEY].tobytes().decode("utf-8"))
            arrays = {k: z[k] for k in names if k != META_KEY}
    except FileFormatError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, UnicodeDecodeError,
            zipfile.LargeZipFile, NotImplementedError) as exc:
        # json.JSONDecodeError is a ValueError; pickled (object) arrays raise ValueError too
        raise FileFormatError(f"{path!r} is not a readable minilr file (corrupt or truncated?): "
                              f"{type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != "minilr":
        raise FileFormatError(f"{path!r} is not a minilr file (its header is not minilr's)")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise FileFormatError(f"{path!r} has no valid format version ({version!r})")
    if version > FORMAT_VERSION:
        raise FileFormatError(f"{path!r} has format version {version}, newer than this minilr "
                              f"({_version()}) reads (up to {FORMAT_VERSION}): upgrade minilr "
                              f"(it was written by minilr {meta.get('minilr_version')})")
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    if meta.get("kind") not in kinds:
        raise FileFormatError(f"{path!r} holds a {meta.get('kind')!r}, not a {' or a '.join(kinds)}")
    return meta, arrays


def _version():
    from . import __version__

    return __version__


def header(kind: str) -> dict:
    """The fields every minilr file starts with."""
    return {"format": "minilr", "format_version": FORMAT_VERSION, "minilr_version": _version(),
            "kind": kind}


# -- models <-> (meta, arrays) --------------------------------------------------------------------
def model_state(model, prefix="layers."):
    """``(architecture dict, arrays)`` describing ``model`` completely (a copy of its arrays)."""
    from .models import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a minilr Sequential or MLP, got {type(model).__name__}")
    layers, arrays = [], {}
    for i, layer in enumerate(model.layers):
        entry = _entry_for(layer, i)
        cfg = entry.config(layer)
        try:
            json.dumps(cfg, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"layer {i} ({entry.name}): its config is not plain JSON: {exc}") from None
        layers.append({"type": entry.name, "config": cfg})
        for a in entry.arrays:
            value = getattr(layer, a)
            if value is not None:
                arrays[f"{prefix}{i}.{a}"] = np.array(_host(value), copy=True)
    arch = {"model": "Sequential", "dtype": model.dtype.name, "layers": layers}
    return arch, arrays


def _host(a):
    return a.get() if type(a).__module__.split(".")[0] == "cupy" else np.asarray(a)


def model_from_state(arch, arrays, path, prefix="layers."):
    """Rebuild a model from :func:`model_state`'s output; errors name ``path``."""
    from .models import Sequential

    _builtin()
    try:
        if arch.get("model") != "Sequential":
            raise ValueError(f"unknown model type {arch.get('model')!r}")
        dtype = arch["dtype"]
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype {dtype!r} is not float32 or float64")
        specs = arch["layers"]
        if not isinstance(specs, list) or not specs:
            raise ValueError("no layers")
        layers = []
        for i, spec in enumerate(specs):
            entry = _BY_NAME.get(spec.get("type")) if isinstance(spec, dict) else None
            if entry is None:
                raise ValueError(f"layer {i} has unknown type {spec!r}; known: {sorted(_BY_NAME)}")
            cfg = spec.get("config", {})
            if not isinstance(cfg, dict):
                raise ValueError(f"layer {i} config is not a dict")
            layers.append(entry.build(**cfg))
        model = Sequential(layers, sigma=1.0, seed=0, dtype=np.dtype(dtype))
        used = set()
        for i, layer in enumerate(model.layers):
            for a in _BY_CLASS[type(layer)].arrays:
                key = f"{prefix}{i}.{a}"
                if key not in arrays:
                    raise ValueError(f"array {key!r} is missing")
                old, new = getattr(layer, a), arrays[key]
                used.add(key)
                if new.dtype.kind != "f" or (old is not None and new.shape != np.shape(old)):
                    raise ValueError(f"array {key!r} has shape {new.shape} and dtype {new.dtype}, "
                                     f"expected {np.shape(old)} floats")
                if not np.all(np.isfinite(new)):
                    raise ValueError(f"array {key!r} contains NaN or inf")
                setattr(layer, a, np.ascontiguousarray(new, dtype=model.dtype))
        extra = sorted(k for k in arrays if k.startswith(prefix) and k not in used)
        if extra:
            raise ValueError(f"unexpected arrays {extra}")
        if hasattr(model, "check"):
            model.check()
    except FileFormatError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise FileFormatError(f"{path!r}: the model in it cannot be rebuilt: "
                              f"{type(exc).__name__}: {exc}") from None
    return model


# -- the public pair --------------------------------------------------------------------------------
def save(model, path) -> None:
    """Save ``model`` (architecture and parameters) to ``path`` as ``.npz``, atomically.

    ``path`` is used as given. :func:`load` rebuilds the same model, bit for bit.
    """
    arch, arrays = model_state(model)
    write_atomic(path, {**header("model"), "architecture": arch}, arrays)


def load(path):
    """The model saved in ``path`` by :func:`save` (or the model of a training checkpoint).

    Never runs code from the file. Raises :class:`FileFormatError` naming the file when it is
    corrupt, truncated, not a minilr model or written in a newer format.
    """
    meta, arrays = read(path, ("model", "checkpoint"))  # a checkpoint holds a model too
    arch = meta.get("architecture")
    if not isinstance(arch, dict):
        raise FileFormatError(f"{os.fspath(path)!r} has no architecture in its header")
    return model_from_state(arch, arrays, os.fspath(path))
