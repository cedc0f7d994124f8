"""Gradient estimators: one object per estimator, one shared interface.

Each estimator says how every ``Linear`` layer is perturbed (:meth:`modes`) and whether only signs
are kept (``approx``); :func:`estimate` runs the recorded forward pass and lets every site turn the
centred losses into its gradient.
"""
from __future__ import annotations

import contextlib

from .. import kernels
from .base import centred_losses, noise_keys, noisy_forward
from .es import ES, ESSite
from .hybrid import Hybrid
from .lr import LR, LRSite
from . import sites as _sites

ESTIMATORS = {
    "lr": LR(False), "alr": LR(True),
    "es": ES(False), "aes": ES(True),
    "hybrid": Hybrid(False), "a-hybrid": Hybrid(True),
}
NAMES = tuple(ESTIMATORS) + ("bp",)
SITES = {"lr": LRSite, "es": ESSite}
# True sends MLPs through the general path too (tests compare the two paths)
GENERAL = False


def estimate(model, x, y, estimator, copies, ss, loss, baseline, antithetic, chunk, es_layers, bk):
    """Sum the estimator's gradient over copy chunks; return (grads by key, mean noisy loss).

    ``x``, ``y`` are already on the backend. Copies are processed ``chunk`` at a time (all at once
    when ``chunk`` is None). The noise of copy ``k`` depends only on ``ss``, the layer and ``k``
    (counter-based, :mod:`minilr.noise`), so chunking changes no noise value; each chunk uses its
    own leave-one-out baseline, so every chunk's sum is unbiased and the total is too. Nothing but
    the running sums outlives a chunk, so peak memory depends on ``chunk``, not ``copies``.
    """
    est = ESTIMATORS[estimator]
    if not getattr(model, "is_mlp", True) or GENERAL:
        return _sites.estimate(model, x, y, est, copies, ss, loss, baseline, antithetic, chunk,
                               es_layers, bk)
    lin = model.linear_indices
    modes = est.modes(len(lin), es_layers)
    keys = noise_keys(ss, len(lin))
    chunk = copies if chunk is None else min(chunk, copies)
    # The accumulators exist from the start, so every chunk, the first included, runs with the
    # same arrays alive: peak memory is that of one chunk plus these, whatever the copies.
    sums = {key: bk.xp.zeros_like(p) for key, p in model.parameters().items()}
    loss_sum, rows = 0.0, 0
    # the fused CPU path runs its own threads: BLAS stays on one (minilr.kernels)
    fused = est.fused(bk.xp)
    with kernels.blas_one_thread() if fused else contextlib.nullcontext():
        for start in range(0, copies, chunk):
            k = min(chunk, copies - start)
            L, sites = noisy_forward(model, x, y, start, k, modes, est.approx, keys, loss, antithetic,
                                     bk, SITES)
            Lc = centred_losses(L, antithetic, baseline, bk.xp)
            for i, site in zip(lin, sites):
                for name, g in site.gradient(Lc).items():
                    key = f"{i}.{name}"
                    sums[key] += g  # in place: no second model-sized array per chunk
            loss_sum += float(L.sum())
            rows += L.size
            if fused:  # the records are dead: their blocks serve the next chunk or step
                kernels.recycle([a for s in sites for a in s.buffers()])
            del L, Lc, sites, site, g  # the loop variables too: the last site holds its bits
    grads = {}
    for key, value in model.parameters().items():
        grads[key] = sums[key] / rows
    return grads, loss_sum / rows
