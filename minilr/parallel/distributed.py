"""One gradient estimate over the copies of all MPI ranks; the same numbers as one process.

:func:`estimate` has the contract of :func:`minilr.estimators.estimate` plus ``comm``; the
backend's engine runs the forward passes and the sums, as in one process. Each chunk of
copies (all of them when ``chunk`` is None) is shared out in contiguous ranges
(:func:`~minilr.parallel.mpi.copy_ranges`, whole antithetic pairs). Then, per chunk:

1. rank ``r`` runs the noisy forward pass of its copies only; copy ``k``'s noise depends on the
   seed, the layer and ``k`` alone, so these are the very numbers one process draws for them;
2. the ranks allgather the losses (``K x B`` numbers), so every rank centres them exactly as one
   process does (leave-one-out baseline over all copies, antithetic pairs, Eq. 2);
3. LR sites form the partial sums of Eq. 1 / Eq. 3 with their slice of the centred losses;
   ES sites send nothing: every rank draws *all* the chunk's perturbations ``E_k`` again from the
   seed and forms ``sum_k L_k E_k`` itself (Salimans et al., 2017), so ES/AES exchange losses only,
   whatever the number of weights.

At the end ONE ``Allreduce`` of ONE flat buffer adds the LR partial sums of every layer (none for
ES/AES). The result equals the one-process estimate up to the order of float sums.

The ES exchange trades work for bytes: every rank draws all ``K`` perturbations for the gradient
(its forward pass only its share), so a rank sends ``4 K B / R`` bytes however large the model,
but the noise draw, most of an ES step, does not shrink with the ranks.
"""
from __future__ import annotations

import numpy as np

from ..estimators import ESTIMATORS
from ..estimators.base import centred_losses, noise_keys
from . import mpi


def estimate(model, x, y, settings, ss, bk, comm=None, stats=None):
    """Sum the estimator's gradient over all ranks' copies; return (grads by key, mean noisy loss).

    Same arguments as :func:`minilr.estimators.estimate` (``settings``: a checked
    :class:`~minilr.estimators.Settings`; ``x``, ``y`` on the backend ``bk``, whose engine runs
    the forward passes), plus ``comm`` (an mpi4py communicator; None: one process) and ``stats``
    (a dict that gets the bytes this rank sent, see :func:`minilr.parallel.mpi.bytes_sent`).
    Every rank must call it with the same arguments.
    """
    s = settings
    est = ESTIMATORS[s.estimator]
    if s.estimator == "bp":  # exact and noiseless: the same on every rank, nothing to share
        return est.estimate(model, x, y, s, ss, bk)
    engine, xp = bk.engine, bk.xp
    rank, size = mpi.rank_size(comm)
    lin = model.linear_indices
    modes = est.modes(len(lin), s.es_layers)
    keys = noise_keys(ss, len(lin))
    chunk = s.copies if s.chunk is None else min(s.chunk, s.copies)
    pair = 2 if s.antithetic else 1
    params = model.parameters()
    sums = {key: xp.zeros_like(p) for key, p in params.items()}
    loss_sum, rows = 0.0, 0
    B = x.shape[0]
    with engine.session():
        totals = None
        if s.baseline and chunk < s.copies:  # the baseline over all copies, as in one process
            totals = xp.zeros(B, dtype=np.float64)  # (minilr.estimators.base.Noisy.estimate)
            for start in range(0, s.copies, chunk):
                kc = min(chunk, s.copies - start)
                a, b = mpi.copy_ranges(kc, size, pair)[rank]
                if b > a:
                    L_mine, sites = engine.forward(model, x, y, start + a, b - a, modes, est.approx, keys,
                                                   s.loss, s.antithetic)
                    totals += L_mine.sum(axis=0, dtype=np.float64)
                    engine.done(sites)
                    del L_mine, sites
            totals = mpi.allreduce_sum({"totals": totals}, comm, stats)["totals"]
        for start in range(0, s.copies, chunk):
            kc = min(chunk, s.copies - start)
            ranges = mpi.copy_ranges(kc, size, pair)
            a, b = ranges[rank]
            sites = None
            if b > a:
                L_mine, sites = engine.forward(model, x, y, start + a, b - a, modes, est.approx, keys, s.loss,
                                               s.antithetic)
            else:  # more ranks than copy groups in this chunk: nothing to run, only to receive
                L_mine = xp.empty((0, B), dtype=model.dtype)
            L = mpi.allgather_rows(L_mine, [hi - lo for lo, hi in ranges], comm, stats)
            Lc = centred_losses(L, s.antithetic, s.baseline, xp, totals, s.copies)
            for j, i in enumerate(lin):
                if modes[j] == "es" and comm is not None:
                    site = _es_site_for_all(model.layers[i], kc, B, start, keys[j], s.antithetic, est.approx,
                                            engine, bk)
                    part = site.gradient(Lc)
                elif sites is not None:
                    part = sites[j].gradient(Lc[a:b])
                else:
                    continue
                for name, g in part.items():
                    sums[f"{i}.{name}"] += g
            loss_sum += float(L.sum())
            rows += L.size
            if sites is not None:
                engine.done(sites)  # the records are dead: an engine may reuse their blocks
            del L, Lc, sites
    # the LR sums of every rank, in one buffer, one call; ES sums are complete on every rank
    lr_keys = [f"{i}.{name}" for j, i in enumerate(lin) if modes[j] == "lr"
               for name in ("weight", "bias", "sigma") if f"{i}.{name}" in sums]
    if lr_keys:
        sums.update(mpi.allreduce_sum({k: sums[k] for k in lr_keys}, comm, stats))
    return {key: sums[key] / rows for key in params}, loss_sum / rows


def _es_site_for_all(layer, copies, B, k0, key, antithetic, approx, engine, bk):
    """An ES site for copies ``k0 .. k0 + copies - 1`` that ran no forward pass here: its gradient
    draws every perturbation again from the seed (nothing kept)."""
    W, b, sigma = bk.asarray(layer.weight), bk.asarray(layer.bias), bk.asarray(layer.sigma)
    site = engine.sites["es"](W, b, sigma, layer.learn_sigma, copies, B, k0, key, antithetic, approx, False,
                              False, engine)
    site.kept = None  # no forward ran for most of these copies on this rank: redraw, block by block
    return site
