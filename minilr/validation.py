"""Argument checks shared by the public entry points.

Every message names the argument and what was expected, and every check runs before any work, so a
bad call leaves the model untouched.
"""
from __future__ import annotations

import math
import numbers

import numpy as np


def positive_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; TypeError for non-integers, ValueError for small ones."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def positive_float(value, name: str, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return value


def choice(value, name: str, options) -> str:
    """``value`` if it is one of ``options``, else ValueError listing them."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {sorted(options)}, got {value!r} ({type(value).__name__})")
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(options)}")
    return value


def as_host_array(a, name: str) -> np.ndarray:
    """A NumPy view of ``a`` (device arrays are copied to the host only when asked explicitly)."""
    if isinstance(a, np.ndarray):
        return a
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    try:
        return np.asarray(a)
    except Exception as exc:
        raise TypeError(f"{name} must be array-like, got {type(a).__name__}: {exc}") from None


def features(x, name: str, n_features: int, dtype=None) -> np.ndarray:
    """Check a batch of inputs: shape (batch, n_features), real, finite, non-empty; and, given the
    model's ``dtype``, finite after the cast to it (a 1e39 is finite in float64, inf in float32)."""
    x = as_host_array(x, name)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"{name} must have shape (batch, {n_features}), got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: need at least one sample")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    fits_dtype(x, name, dtype)
    return x


def batch(x, name: str) -> np.ndarray:
    """Check a batch of multi-dimensional samples: (batch, ...) with at least 2 axes, real, finite."""
    x = as_host_array(x, name)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (batch, ...) with one sample per row, got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: need at least one sample")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def fits_dtype(x, name: str, dtype) -> None:
    """ValueError if the finite array ``x`` overflows to inf when cast to ``dtype``.

    The cast is monotone, so only the largest and smallest values need casting (no copy of ``x``).
    """
    if dtype is None or x.dtype.kind not in "iuf" or x.size == 0:
        return
    dtype = np.dtype(dtype)
    if x.dtype.kind == "f" and x.dtype.itemsize <= dtype.itemsize:
        return
    with np.errstate(over="ignore"):
        lo, hi = (np.asarray(v).astype(dtype) for v in (x.min(), x.max()))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        big = x.max() if not np.isfinite(hi) else x.min()
        raise ValueError(f"{name} holds {float(big):.3g}, beyond the range of the model's dtype "
                         f"{dtype.name} (+-{np.finfo(dtype).max:.3g}): it would become inf; scale the "
                         f"data or use a float64 model")


def loss_arg(loss):
    """A loss name from ``LOSSES`` or a callable ``loss(out, y, xp) -> per-row losses``.

    A callable comes back wrapped so that a result of the wrong shape raises a ValueError naming
    ``loss`` at its first call (in the first forward pass, before any update).
    """
    from .losses import LOSSES

    if isinstance(loss, CheckedLoss) or not callable(loss):
        return loss if callable(loss) else choice(loss, "loss", LOSSES)
    return CheckedLoss(loss)


class CheckedLoss:
    """A custom loss ``fn(out, y, xp)`` whose result must have shape ``out.shape[:-1]``."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, out, y, xp):
        r = self.fn(out, y, xp)
        if getattr(r, "shape", None) != out.shape[:-1]:
            raise ValueError(f"loss must return one loss per row of the output, shape {out.shape[:-1]}, "
                             f"got {getattr(r, 'shape', type(r).__name__)}")
        return r


def targets(y, name: str, loss, n_samples: int, n_outputs: int, positions: tuple = (),
            dtype=None) -> np.ndarray:
    """Check targets for ``loss``: class indices in [0, n_outputs) or an (n, n_outputs) array.

    A model whose output has ``positions`` before its classes (graph nodes: output
    (n, n_nodes, C)) takes one label per position, shape ``(n, *positions)``, with ``-1`` for a
    position without a label. For a custom (callable) loss only the number of rows and finiteness
    are checked.
    """
    y = as_host_array(y, name)
    if callable(loss):
        if y.ndim < 1 or y.shape[0] != n_samples:
            raise ValueError(f"{name} must have one row per sample ({n_samples}), got shape {y.shape}")
        if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
            raise ValueError(f"{name} contains NaN or inf")
        return y
    if loss == "cross_entropy":
        shape = (n_samples,) + tuple(positions)
        if y.shape != shape:
            per = " (one label per position, -1 for none)" if positions else ""
            raise ValueError(f"{name} must be class indices of shape {shape}{per} for "
                             f"loss='cross_entropy', got shape {y.shape}")
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                raise TypeError(f"{name} must hold integer class indices, got non-integer values")
        elif y.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
        low = -1 if positions else 0  # -1: a position without a label
        if y.size and (y.min() < low or y.max() >= n_outputs):
            raise ValueError(f"{name} holds labels outside [{low}, {n_outputs - 1}] "
                             f"(min {y.min()}, max {y.max()}); the model has {n_outputs} outputs")
        return y.astype(np.int64)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real targets for loss='mse', got dtype {y.dtype}")
    if y.shape != (n_samples, n_outputs):
        raise ValueError(f"{name} must have shape ({n_samples}, {n_outputs}) for loss='mse' "
                         f"(same as the model output), got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains NaN or inf")
    fits_dtype(y, name, dtype)
    return y


def seed_arg(seed, name: str = "seed"):
    """Check a seed early (int >= 0, None or SeedSequence) so the error comes before any work."""
    if seed is None or isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an int, None or numpy.random.SeedSequence, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"{name} must be >= 0, got {seed}")
    return int(seed)
