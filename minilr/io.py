"""Saving and loading models: ``.npz`` files with a JSON header, no pickle.

A file holds one uint8 entry ``__minilr__`` with UTF-8 JSON metadata (format version, minilr
version, what the file is, the architecture as a list of layers with their constructor arguments,
the dtype, the input shape) and one array per layer array, ``layers.<i>.<name>`` (every noise site's
``weight``, ``bias`` and ``sigma``, nested layers as ``layers.<i>.body.<j>.weight``; whether sigma
is learned is part of the architecture).

Loading never runs code from the file: it is read with ``np.load(allow_pickle=False)``; layers are
rebuilt from names looked up in the layer registry (:data:`minilr.layers.REGISTRY`: every
:class:`~minilr.layers.Layer` subclass registers itself when defined, with its ``config()``) with
keyword arguments that are plain JSON values. Nothing big is allocated before it is checked: every
array's shape is read from its ``.npy`` header and compared with what the architecture implies,
every size must fit the file, and layers are built from the checked arrays (no random weights
drawn first). A corrupt, truncated, foreign, crafted or newer-format file raises
:class:`FileFormatError` (a ``ValueError``) naming the file.

Writing is atomic (:func:`write_atomic`): the data go to a temporary file ``.<name>.<8 chars>.tmp``
in the same folder, which is flushed to disk and then renamed over the target, so a crash or a kill
at any moment leaves either the old file or the new one, never half of one. A kill mid-write leaves
the temporary file; the next write to the same target (or a resume) removes such leftovers, only
those of that exact name pattern and only when no live writer holds them. Files get the mode
``open()`` would give them (``0o666`` less the umask, as ``np.save``), or the mode of the file they
replace.
"""
from __future__ import annotations

import io as _io
import json
import math
import os
import secrets
import stat
import zipfile

import numpy as np

from . import layers as _layers

try:  # POSIX: a writer locks its temporary file, so a cleaner can tell a live one from a leftover
    import fcntl
except ImportError:  # pragma: no cover - Windows cannot delete an open file anyway
    fcntl = None

__all__ = ["save", "load", "FileFormatError", "NotSaveableError", "FORMAT_VERSION", "write_atomic",
           "read", "model_state", "model_from_state", "check_saveable", "remove_stale_temps"]

FORMAT_VERSION = 1
META_KEY = "__minilr__"


class FileFormatError(ValueError):
    """A file that is not a (readable) minilr file of the expected kind; the message names it."""


class NotSaveableError(TypeError):
    """A model with a layer that cannot be saved (unregistered class, or no ``config()``)."""


def _registry():
    """Every layer module imported, so every minilr layer class is registered."""
    from . import conv, graph, recurrent, spiking  # noqa: F401

    return _layers.REGISTRY


# -- atomic files ---------------------------------------------------------------------------------
_TEMP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")  # also tempfile.mkstemp's names
_TEMP_SUFFIX = ".tmp"


def _temp_prefix(path) -> str:
    return "." + os.path.basename(path) + "."


def _is_temp_of(name: str, prefix: str) -> bool:
    """``name`` is ``prefix`` + 8 name characters + ``.tmp``: our temporary file for that target
    (the fixed length and the dot-free middle keep other targets' temporary files out)."""
    middle = name[len(prefix):-len(_TEMP_SUFFIX)]
    return (name.startswith(prefix) and name.endswith(_TEMP_SUFFIX) and len(middle) == 8
            and set(middle) <= _TEMP_CHARS)


def remove_stale_temps(path) -> list:
    """Remove the temporary files a killed writer of ``path`` left (``.<name>.<8 chars>.tmp`` beside
    it), never a file of another name, nor one a live writer holds (it keeps a lock on it).
    Returns the names removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not _is_temp_of(name, prefix):
            continue
        full = os.path.join(folder, name)
        try:
            if not stat.S_ISREG(os.lstat(full).st_mode):
                continue  # not a file we made (a link, a folder): leave it
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a writer is at work on it
            try:
                os.unlink(full)
                removed.append(name)
            except OSError:
                pass
        finally:
            os.close(fd)
    return removed


def _create_temp(path):
    """``(fd, name)`` of a new, locked temporary file beside ``path``, created with mode 0o666 so
    the umask applies (``tempfile.mkstemp`` would force 0o600)."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(folder, prefix + secrets.token_hex(4) + _TEMP_SUFFIX)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until closed, or until this process dies
        return fd, tmp
    raise FileExistsError(f"no free temporary name beside {path!r}")


def write_atomic(path, meta: dict, arrays: dict) -> None:
    """Write ``meta`` (JSON) and ``arrays`` as one ``.npz`` file at ``path``, atomically.

    The file is written under a temporary name in the same folder, flushed and fsync-ed, then
    renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows), and the folder is
    fsync-ed so the rename itself survives a power cut. ``path`` is used as given (no ``.npz``
    added). Leftover temporary files of earlier, killed writes of ``path`` are removed first.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    header = np.frombuffer(json.dumps(meta, allow_nan=False).encode("utf-8"), dtype=np.uint8)
    if META_KEY in arrays:
        raise ValueError(f"{META_KEY!r} is reserved for the header")
    remove_stale_temps(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)  # replacing a file keeps its mode, as np.save
    except OSError:
        mode = None
    fd, tmp = _create_temp(path)
    try:
        if mode is not None and hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
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


def _declared(data: bytes):
    """``{name: (shape, dtype)}`` of every array in the npz bytes ``data``, read from the ``.npy``
    headers alone, each checked to fit the file; ValueError otherwise."""
    out = {}
    with zipfile.ZipFile(_io.BytesIO(data)) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"entry {info.filename!r} is not an array")
            name = info.filename[:-4]
            # a stored entry holds its bytes in the file; a deflated one at most ~1032 times more
            room = len(data) if info.compress_type == zipfile.ZIP_STORED else 1032 * len(data)
            if info.file_size > room:
                raise ValueError(f"entry {name!r} declares {info.file_size} bytes, more than the file holds")
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"array {name!r} has .npy version {version}, not 1.0 or 2.0")
                held = info.file_size - f.tell()  # the bytes after the header
            if dtype.hasobject:
                raise ValueError(f"array {name!r} holds Python objects (pickle), which minilr never loads")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > held:
                raise ValueError(f"array {name!r} declares shape {shape} ({nbytes} bytes), more than the "
                                 f"{held} bytes the file holds for it")
            if nbytes < held:
                raise ValueError(f"array {name!r} declares shape {shape} ({nbytes} bytes), but the file "
                                 f"holds {held} bytes for it")
            out[name] = (tuple(shape), dtype)
    return out


def read(path, kind):
    """``(meta, arrays)`` from a file written by :func:`write_atomic` whose ``meta["kind"]`` is
    ``kind`` (a string, or a tuple of accepted kinds).

    Before any array is read, every array's declared size must fit the file and, when ``meta``
    holds a model ``architecture``, the model's arrays must have the shapes it implies.
    Raises :class:`FileFormatError` naming ``path`` for anything but a readable minilr file of
    that kind in a format this version knows; ``FileNotFoundError`` if there is no file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        declared = _declared(data)
        if META_KEY not in declared:
            raise FileFormatError(f"{path!r} is not a minilr file (no {META_KEY!r} header)")
        shape, dtype = declared.pop(META_KEY)
        if len(shape) != 1 or dtype != np.uint8:
            raise ValueError(f"the {META_KEY!r} header is not a UTF-8 byte string")
        with np.load(_io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(z[META_KEY].tobytes().decode("utf-8"))
            _check_meta(meta, path, kind)
            arch = meta.get("architecture")
            if arch is not None:
                _check_declared(arch, declared, path)
            arrays = {k: z[k] for k in declared}
    except FileFormatError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, UnicodeDecodeError,
            zipfile.LargeZipFile, NotImplementedError, RecursionError) as exc:
        # json.JSONDecodeError is a ValueError; pickled (object) arrays raise ValueError too;
        # a header nested thousands deep is a RecursionError
        raise FileFormatError(f"{path!r} is not a readable minilr file (corrupt or truncated?): "
                              f"{type(exc).__name__}: {exc}") from None
    return meta, arrays


def _check_meta(meta, path, kind):
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


def _check_declared(arch, declared, path, prefix="layers."):
    """The model's arrays in ``declared`` ({name: (shape, dtype)}) are exactly those ``arch``
    implies, with its shapes and float dtypes; FileFormatError naming ``path`` otherwise."""
    try:
        layers, _, _ = _build_layers(arch)
        slots = _slots(layers, prefix)
        for key, _, _, shape in slots:
            if key not in declared:
                raise ValueError(f"array {key!r} is missing")
            got, dtype = declared[key]
            if got != shape or dtype.kind != "f":
                raise ValueError(f"array {key!r} is declared with shape {got} and dtype {dtype}, but the "
                                 f"architecture implies {shape} floats")
        extra = sorted(set(k for k in declared if k.startswith(prefix)) - {s[0] for s in slots})
        if extra:
            raise ValueError(f"unexpected arrays {extra}")
    except FileFormatError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, NotImplementedError,
            RecursionError) as exc:
        raise FileFormatError(f"{path!r}: the model in it cannot be rebuilt: "
                              f"{type(exc).__name__}: {exc}") from None


def _version():
    from . import __version__

    return __version__


def header(kind: str) -> dict:
    """The fields every minilr file starts with."""
    return {"format": "minilr", "format_version": FORMAT_VERSION, "minilr_version": _version(),
            "kind": kind}


# -- models <-> (meta, arrays) --------------------------------------------------------------------
def _slots(layers, prefix="layers."):
    """``(key, owner, attribute, shape)`` of every array of a list of layers (nested too)."""
    out = []
    for i, layer in enumerate(layers):
        out.extend(_layers.array_slots(layer, f"{prefix}{i}."))
    return out


def _architecture(model):
    """The model's architecture as JSON values; NotSaveableError naming the layer that has none."""
    from .models import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a minilr Sequential or MLP, got {type(model).__name__}")
    _registry()
    specs = []
    for i, layer in enumerate(model.layers):
        try:
            cfg = _layers.spec(layer)
            json.dumps(cfg, allow_nan=False)
        except (TypeError, ValueError, NotImplementedError) as exc:
            raise NotSaveableError(f"layer {i} ({type(layer).__name__}) cannot be saved: {exc}") from None
        specs.append(cfg)
    shape = getattr(model, "input_shape", None)
    return {"model": "Sequential", "dtype": model.dtype.name, "layers": specs,
            "input_shape": None if shape is None else [int(n) for n in shape]}


def check_saveable(model) -> None:
    """Raise :class:`NotSaveableError` naming the layer if ``model`` could not be saved (nothing is
    written or copied): what ``train(checkpoint=...)`` asks before its first step."""
    _architecture(model)
    for key, owner, attr, shape in _slots(model.layers):
        if np.shape(getattr(owner, attr, None)) != shape:
            raise NotSaveableError(f"array {key!r} of the model has shape {np.shape(getattr(owner, attr, None))}, "
                                   f"not {shape}: it cannot be saved")


def model_state(model, prefix="layers."):
    """``(architecture dict, arrays)`` describing ``model`` completely (a copy of its arrays)."""
    arch = _architecture(model)
    arrays = {key: np.array(_host(getattr(owner, attr)), copy=True)
              for key, owner, attr, _ in _slots(model.layers, prefix)}
    return arch, arrays


def _host(a):
    return a.get() if type(a).__module__.split(".")[0] == "cupy" else np.asarray(a)


def _build_layers(arch):
    """``(layers without weights, dtype, input_shape)`` from an architecture dict; ValueError."""
    _registry()
    if not isinstance(arch, dict):
        raise ValueError("the architecture is not a dict")
    if arch.get("model") != "Sequential":
        raise ValueError(f"unknown model type {arch.get('model')!r}")
    dtype = arch.get("dtype")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype {dtype!r} is not float32 or float64")
    specs = arch.get("layers")
    if not isinstance(specs, list) or not specs:
        raise ValueError("no layers")
    layers = []
    for i, spec in enumerate(specs):
        try:
            layers.append(_layers.build(spec))
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"layer {i}: {exc}") from None
    shape = arch.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and all(isinstance(n, int) for n in shape)):
        raise ValueError(f"input_shape {shape!r} is not a list of ints")
    return layers, np.dtype(dtype), None if shape is None else tuple(shape)


def _keep_weights(rng, dtype):
    """Stands in for a loaded layer's ``init``: its weights come from the file."""


def model_from_state(arch, arrays, path, prefix="layers."):
    """Rebuild a model from :func:`model_state`'s output (layers built from the checked arrays,
    no random weights drawn); errors name ``path``."""
    from .models import Sequential

    try:
        layers, dtype, input_shape = _build_layers(arch)
        slots = _slots(layers, prefix)
        for key, owner, attr, shape in slots:
            if key not in arrays:
                raise ValueError(f"array {key!r} is missing")
            new = arrays[key]
            if new.dtype.kind != "f" or new.shape != shape:
                raise ValueError(f"array {key!r} has shape {new.shape} and dtype {new.dtype}, "
                                 f"expected {shape} floats")
            if not np.all(np.isfinite(new)):
                raise ValueError(f"array {key!r} contains NaN or inf")
            setattr(owner, attr, np.ascontiguousarray(new, dtype=dtype))
        extra = sorted(set(k for k in arrays if k.startswith(prefix)) - {s[0] for s in slots})
        if extra:
            raise ValueError(f"unexpected arrays {extra}")
        # Sequential draws every layer's weights on construction: these have theirs already
        owners = {id(o): o for _, o, _, _ in slots}
        owners.update({id(l): l for l in layers})
        for o in owners.values():
            o.init = _keep_weights
        try:
            model = Sequential(layers, sigma=1.0, seed=0, dtype=dtype, input_shape=input_shape)
        finally:
            for o in owners.values():
                o.__dict__.pop("init", None)
        model.check()
    except FileFormatError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, NotImplementedError,
            RecursionError) as exc:
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
