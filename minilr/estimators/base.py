"""What every estimator shares: the noisy forward pass that *records*, and the loss baseline.

A training forward pass runs ``copies`` noisy copies of every sample at once. Row ``n`` of the
paper's sums is a pair (copy ``k``, sample ``b``); arrays are laid out ``(K, B, width)``. Each
``Linear`` layer is a *site* that is perturbed in one of two ways:

* ``"lr"``: noise on the layer's output, ``v = x W^T + b + sigma * eps`` (LR, Eq. 1);
* ``"es"``: noise on the layer's weights, ``v = x (W + sigma E_k)^T + (b + sigma e_k)`` with one
  ``E_k`` per copy shared by the batch (ES).

The forward pass returns the loss of every row and one *site record* per ``Linear`` layer; the
record keeps exactly what that layer's gradient needs (its input and its noise) and computes the
gradient from the centred losses alone: no graph, no chain rule, so layers are independent.
"""
from __future__ import annotations

from ..backend import child
from ..layers import Linear
from ..losses import per_sample


def draw_noise(rng, shape, dtype, antithetic: bool, xp):
    """Standard normal noise of ``shape`` whose first axis is copies.

    With ``antithetic`` the second half of the copies mirrors the first (``+eps, -eps``), so copy
    ``k`` and copy ``k + K/2`` form a pair.
    """
    if not antithetic:
        return rng.standard_normal(shape, dtype=dtype)
    half = rng.standard_normal((shape[0] // 2,) + tuple(shape[1:]), dtype=dtype)
    return xp.concatenate([half, -half], axis=0)


def centred_losses(L, antithetic: bool, baseline: bool, xp):
    """``L - baseline`` with a leave-one-out baseline that keeps every estimator unbiased.

    The baseline of copy ``k`` of sample ``b`` is the mean loss of the *other* copies of ``b``
    that are independent of copy ``k``'s noise: all other copies, or, with antithetic noise, all
    copies outside ``k``'s mirrored pair. Since it does not depend on ``k``'s noise and the score
    (``eps / sigma`` and friends) has mean zero, subtracting it changes no expectation, only the
    variance. With too few copies to leave any out, no baseline is used.
    """
    K = L.shape[0]
    group = 2 if antithetic else 1
    if not baseline or K - group < 1:
        return L
    own = L
    if antithetic:
        pair = L[: K // 2] + L[K // 2:]
        own = xp.concatenate([pair, pair], axis=0)
    return L - (L.sum(axis=0, keepdims=True) - own) / (K - group)


def noisy_forward(model, x, y, copies, modes, approx, ss, loss, antithetic, bk, lr_site, es_site):
    """Run ``copies`` noisy copies of the batch ``x``; return per-row losses (K, B) and site records.

    ``modes[j]`` says how the ``j``-th Linear layer is perturbed (``"lr"`` or ``"es"``) and
    ``approx`` whether its record keeps only signs. The first layer's input is the same for all
    copies, so it is kept once, shape (B, d), and never repeated K times.
    """
    xp = bk.xp
    dtype = model.dtype
    h = x  # (B, d): shared by all copies until the first noise site
    sites = []
    j = 0
    for layer in model.layers:
        if not isinstance(layer, Linear):
            h = layer.forward(h, xp)
            continue
        W, b, sigma = bk.asarray(layer.weight), bk.asarray(layer.bias), bk.asarray(layer.sigma)
        rng = bk.generator(child(ss, j))
        site_cls = lr_site if modes[j] == "lr" else es_site
        h, site = site_cls.forward(h, W, b, sigma, copies, rng, dtype, antithetic, approx, xp)
        sites.append(site)
        j += 1
    return per_sample(loss, h, y, xp), sites
