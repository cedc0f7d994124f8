"""Per-sample losses. Each takes outputs of shape (..., C) and returns one loss per row (...).

The LR estimators need the loss of every noisy copy separately (``L_n`` in Eq. 1-2), so nothing
here averages.
"""
from __future__ import annotations

LOSSES = ("cross_entropy", "mse")


def cross_entropy(logits, y, xp):
    """``-log softmax(logits)[y]`` per row; ``y`` holds class indices broadcastable to logits[..., 0]."""
    m = logits.max(axis=-1, keepdims=True)
    lse = xp.log(xp.exp(logits - m).sum(axis=-1)) + m[..., 0]
    picked = xp.take_along_axis(logits, xp.broadcast_to(y, logits.shape[:-1])[..., None], axis=-1)[..., 0]
    return lse - picked


def positional_cross_entropy(logits, y, xp):
    """Cross-entropy with one label per position (graph nodes): ``y`` is ``(B, *positions)`` with
    ``-1`` where a position has no label; the loss of a sample is the mean over its labelled
    positions (0 if it has none). ``logits`` is ``(..., B, *positions, C)``."""
    mask = y >= 0
    per = cross_entropy(logits, xp.where(mask, y, 0), xp) * mask
    axes = tuple(range(-(y.ndim - 1), 0))
    count = xp.maximum(mask.sum(axis=axes), 1).astype(per.dtype)  # an int count would widen float32
    return per.sum(axis=axes) / count


def mse(out, y, xp):
    """``0.5 * ||out - y||^2`` per row (the 1/2 makes the gradient ``out - y``)."""
    d = out - y
    return 0.5 * (d * d).sum(axis=-1)


def per_sample(name, out, y, xp):
    """Dispatch to the loss called ``name``, or call ``name(out, y, xp)`` if it is a function.

    A custom loss must return one value per row: shape ``out.shape[:-1]``. LR and ES only ever
    *evaluate* it, so it need not be differentiable (the reference, which differentiates, accepts
    only the named losses).
    """
    if callable(name):
        return name(out, y, xp)
    if name == "cross_entropy" and y.ndim > 1:  # one label per position, e.g. per graph node
        return positional_cross_entropy(out, y, xp)
    return cross_entropy(out, y, xp) if name == "cross_entropy" else mse(out, y, xp)
