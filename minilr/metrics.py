"""Accuracy, gradient cosine similarity, and the Acc./Sta. summaries of Eq. 7-8."""
from __future__ import annotations

import numpy as np

from .validation import as_host_array

__all__ = ["accuracy", "cosine_similarity", "acc_sta"]


def accuracy(pred, y) -> float:
    """Fraction of ``pred`` equal to ``y``: class indices, or (n, C) scores whose argmax is taken."""
    pred, y = as_host_array(pred, "pred"), as_host_array(y, "y")
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    if pred.shape != y.shape:
        raise ValueError(f"pred and y must have the same shape, got {pred.shape} and {y.shape}")
    return float(np.mean(pred == y))


def _cos(a, b) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def cosine_similarity(g, g_true, per_layer: bool = False, keys=None):
    """Cosine between two gradient dicts, flattened over the keys they share.

    Parameters
    ----------
    g, g_true : dict[str, array]
        E.g. an estimate and ``reference.gradient(...)``. Keys in only one dict (a learned
        ``sigma``, which has no exact gradient) are ignored.
    per_layer : bool
        If True, return ``{layer_index: cosine}`` over each layer's weight and bias instead.
    keys : iterable of str, optional
        Restrict to these keys.
    """
    if not isinstance(g, dict) or not isinstance(g_true, dict):
        raise TypeError("cosine_similarity takes two dicts of arrays (as returned by estimate_gradient)")
    common = [k for k in g if k in g_true and (keys is None or k in keys)]
    if not common:
        raise ValueError(f"the two gradients share no keys: {sorted(g)} vs {sorted(g_true)}")
    for k in common:
        a, b = as_host_array(g[k], f"g[{k!r}]"), as_host_array(g_true[k], f"g_true[{k!r}]")
        for name, arr in ((f"g[{k!r}]", a), (f"g_true[{k!r}]", b)):
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contains NaN or inf")
        if a.shape != b.shape:
            raise ValueError(f"g[{k!r}] and g_true[{k!r}] must have the same shape, got {a.shape} and {b.shape}")
    flat = lambda d, ks: np.concatenate([np.ravel(as_host_array(d[k], k)).astype(np.float64) for k in ks])
    if not per_layer:
        return _cos(flat(g, common), flat(g_true, common))
    layers = sorted({int(k.split(".")[0]) for k in common})
    return {i: _cos(flat(g, [k for k in common if k.startswith(f"{i}.")]),
                    flat(g_true, [k for k in common if k.startswith(f"{i}.")])) for i in layers}


def acc_sta(copies, cosines):
    """Gradient-estimation accuracy and stability over a range of copies (Eq. 7-8).

    ``Acc.`` is the mean cosine over the range; ``Sta.`` is the root-mean-square deviation of the
    cosines from a straight line fitted to them against the number of copies (the paper's
    "ideal cosine of the fitted linear regression"). Lower Sta. means more copies improve the
    estimate more consistently.
    """
    n = np.asarray(copies, dtype=np.float64)
    c = np.asarray(cosines, dtype=np.float64)
    if n.shape != c.shape or n.ndim != 1 or n.size < 2:
        raise ValueError("copies and cosines must be 1-D of the same length >= 2")
    slope, intercept = np.polyfit(n, c, 1)
    fitted = slope * n + intercept
    return float(c.mean()), float(np.sqrt(np.mean((c - fitted) ** 2)))
