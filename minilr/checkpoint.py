"""Training checkpoints: everything a run needs to go on exactly where it stopped.

A checkpoint is a minilr ``.npz`` file (:mod:`minilr.io`) of kind ``"checkpoint"`` holding

* the model (architecture and parameters, as :func:`minilr.save` writes them);
* the optimizer's state: its step count and per-parameter arrays (Adam's ``m``, ``v``; momentum);
* the :class:`~minilr.train.History` so far;
* where the run is: the epoch, the steps done in it, the global step count and the loss summed
  so far in the epoch;
* the seed (its SeedSequence entropy and spawn key), and the settings that shape the run.

Nothing else is needed: :func:`minilr.train` draws epoch ``e``'s data order from
``child(seed, 0, e)`` and step ``t``'s noise from ``child(seed, 1, t)``, pure functions of the
seed, so a resumed run sees the very data order and noise the uninterrupted run saw. Settings
that change the numbers (estimator, copies, batch size, optimizer, lr, ...) and a fingerprint of
the data are stored and must match on resume; ``epochs`` may grow (train for 1 epoch, then resume
with ``epochs=2``: the same as 2 epochs at once).

Files are written atomically (temporary file, fsync, rename), so a kill at any moment, also
mid-write, leaves the previous checkpoint or the new one. The temporary file such a kill leaves
is removed by the next write or by the resume (:func:`minilr.io.remove_stale_temps`).
"""
from __future__ import annotations

import hashlib

import numpy as np

from . import io as _io
from ._signals import deferred_interrupt

__all__ = ["write", "read", "deferred_interrupt", "data_fingerprint"]

_HISTORY_LISTS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")


def data_fingerprint(*arrays) -> str:
    """A SHA-256 of the training data (shapes, dtypes, bytes): resuming on other data is refused."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def seed_state(ss: np.random.SeedSequence) -> dict:
    """JSON form of a SeedSequence (entropy may exceed 64 bits: kept as a decimal string)."""
    ent = ss.entropy
    ent = [str(int(e)) for e in ent] if isinstance(ent, (list, tuple, np.ndarray)) else str(int(ent))
    return {"entropy": ent, "spawn_key": [int(k) for k in ss.spawn_key]}


def seed_from_state(state: dict) -> np.random.SeedSequence:
    ent = state["entropy"]
    ent = [int(e) for e in ent] if isinstance(ent, list) else int(ent)
    return np.random.SeedSequence(ent, spawn_key=tuple(state["spawn_key"]))


def write(path, model, opt, history, where: dict, settings: dict, ss) -> None:
    """Write a checkpoint atomically (see the module docstring)."""
    arch, arrays = _io.model_state(model)
    state = opt.state()
    scalars = {}
    for name, value in state.items():
        if isinstance(value, dict):
            for key, a in value.items():
                arrays[f"optim:{name}:{key}"] = np.array(_io._host(a), copy=True)
            scalars[name] = "arrays"
        else:
            scalars[name] = value
    for name in _HISTORY_LISTS:
        arrays[f"history:{name}"] = np.asarray(getattr(history, name), dtype=np.float64)
    meta = {**_io.header("checkpoint"), "architecture": arch,
            "history": {"estimator": history.estimator, "copies": history.copies},
            "optimizer": {"type": type(opt).__name__, "scalars": scalars},
            "where": where, "settings": settings, "seed": seed_state(ss)}
    _io.write_atomic(path, meta, arrays)


def read(path):
    """``(meta, model arrays, optimizer state, history lists)`` of a checkpoint; errors name ``path``."""
    meta, arrays = _io.read(path, "checkpoint")
    try:
        scalars = meta["optimizer"]["scalars"]
        state = {}
        for name, value in scalars.items():
            if value == "arrays":
                pre = f"optim:{name}:"
                state[name] = {k[len(pre):]: a for k, a in arrays.items() if k.startswith(pre)}
            else:
                state[name] = value
        lists = {name: [float(v) for v in arrays[f"history:{name}"]] for name in _HISTORY_LISTS}
        for key in ("architecture", "where", "settings", "seed", "history"):
            if not isinstance(meta.get(key), dict):
                raise KeyError(key)
    except (KeyError, TypeError, AttributeError) as exc:
        raise _io.FileFormatError(f"{str(path)!r} is not a complete minilr checkpoint (missing "
                                  f"{exc})") from None
    return meta, arrays, state, lists


def loss_name(loss) -> str:
    """A loss as a setting: its name, or ``custom:<qualified name>`` for a function."""
    fn = getattr(loss, "fn", loss)
    if isinstance(fn, str):
        return fn
    return f"custom:{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def restore(path, model, opt, history, settings: dict):
    """Load the checkpoint at ``path`` into ``model``, ``opt`` and ``history`` (in place).

    The checkpoint's architecture and ``settings`` must equal the run's (else a ValueError naming
    ``path`` and the first setting that differs). Returns ``(where, SeedSequence)``.
    """
    _io.remove_stale_temps(path)  # what a writer killed mid-write left beside the checkpoint
    meta, arrays, state, lists = read(path)
    arch = _io._architecture(model)
    saved_arch = {"input_shape": arch["input_shape"], **meta["architecture"]}  # older files lack it
    if saved_arch != arch:
        raise ValueError(f"{str(path)!r} holds a checkpoint of another model ({meta['architecture']}), "
                         f"not of {model!r}")
    saved = meta["settings"]
    for key in sorted(set(saved) | set(settings)):
        if saved.get(key) != settings.get(key):
            raise ValueError(f"{str(path)!r} was written by a run with {key}={saved.get(key)!r}; this "
                             f"call has {key}={settings.get(key)!r}. Resume with the same settings "
                             f"(only epochs may change) or start a new checkpoint")
    if meta["optimizer"]["type"] != type(opt).__name__:
        raise ValueError(f"{str(path)!r} holds the state of a {meta['optimizer']['type']} optimizer, "
                         f"not of {type(opt).__name__}")
    restored = _io.model_from_state(meta["architecture"], arrays, str(path))
    for (_, mine, a, _), (_, theirs, b, _) in zip(_io._slots(model.layers), _io._slots(restored.layers)):
        setattr(mine, a, getattr(theirs, b))
    opt.set_state(state)
    for name, values in lists.items():
        setattr(history, name, values)
    return meta["where"], seed_from_state(meta["seed"])
