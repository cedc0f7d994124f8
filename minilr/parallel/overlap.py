"""Layer-level parallelism and the pipelined step, with threads (paper Sec. 3.3-3.4).

* :func:`layer_gradients`: given the centred losses, every layer's gradient is independent of the
  others (no chain rule), so the layers' gradients run at the same time, one thread each. NumPy's
  BLAS and minilr's Numba kernels release the GIL, so the threads really overlap.
* :func:`pipelined_estimate`: the copies are split into buckets; while a worker thread forms the
  gradients of bucket ``i``, the main thread runs the forward pass of bucket ``i + 1`` (the LR
  pipeline of Fig. 2, on one machine). The gradients are added in bucket order, so the result is
  bit for bit the plain chunked estimate, ``minilr.estimators.estimate(..., chunk=bucket size)``:
  each bucket has its own leave-one-out baseline, as any chunk does.

On a CPU the forward pass and the gradients already use every core (block-parallel kernels), so
what overlapping buys here is measured, not assumed: ``benchmarks/distributed.py``.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

from .. import kernels
from ..estimators import ESTIMATORS, SITES
from ..estimators.base import centred_losses, noise_keys, noisy_forward


def layer_gradients(sites, Lc, threads=None):
    """``[site.gradient(Lc) for site in sites]``, the sites side by side on ``threads`` threads
    (default: one per site; 1 runs them one after another)."""
    threads = len(sites) if threads is None else threads
    if threads <= 1 or len(sites) <= 1:
        return [s.gradient(Lc) for s in sites]
    with ThreadPoolExecutor(max_workers=threads) as ex:
        return list(ex.map(lambda s: s.gradient(Lc), sites))


def bucket_size(copies, buckets, antithetic=False):
    """Copies per bucket for ``buckets`` buckets (even with antithetic pairs)."""
    size = -(-copies // buckets)
    if antithetic:
        size += size % 2
    return size


def pipelined_estimate(model, x, y, estimator, copies, ss, loss, baseline, antithetic, buckets,
                       es_layers, bk, layer_threads=1):
    """The estimate of :func:`minilr.estimators.estimate` with ``chunk = bucket_size(copies,
    buckets)``, the forward pass of each bucket overlapping the gradients of the one before.

    ``layer_threads`` > 1 also runs each bucket's layers side by side (:func:`layer_gradients`).
    Returns (grads by key, mean noisy loss), equal bit for bit to the plain chunked estimate.
    """
    xp = bk.xp
    est = ESTIMATORS[estimator]
    lin = model.linear_indices
    modes = est.modes(len(lin), es_layers)
    keys = noise_keys(ss, len(lin))
    chunk = min(copies, bucket_size(copies, buckets, antithetic))
    sums = {key: xp.zeros_like(p) for key, p in model.parameters().items()}
    totals = {"loss": 0.0, "rows": 0}

    def gradients(sites, L, Lc):  # one worker thread runs these in bucket order
        parts = layer_gradients(sites, Lc, layer_threads)
        for i, part in zip(lin, parts):
            for name, g in part.items():
                sums[f"{i}.{name}"] += g
        totals["loss"] += float(L.sum())
        totals["rows"] += L.size
        return sites

    fused = est.fused(xp)
    last = None
    # BLAS held at one thread around the whole pipeline: two threads calling a threaded BLAS at
    # once oversubscribe the cores (and the inner holds of the fused path then nest cleanly)
    with kernels.blas_one_thread(), \
            ThreadPoolExecutor(max_workers=1) as worker:
        pending = None
        for start in range(0, copies, chunk):
            k = min(chunk, copies - start)
            L, sites = noisy_forward(model, x, y, start, k, modes, est.approx, keys, loss, antithetic, bk, SITES)
            Lc = centred_losses(L, antithetic, baseline, xp)
            if pending is not None:
                pending.result()  # keeps at most two buckets' records alive
            pending = worker.submit(gradients, sites, L, Lc)
            del L, Lc, sites
        last = pending.result()
    if fused:  # the last bucket's blocks serve the next step (never recycled while in use)
        kernels.recycle([a for s in last for a in s.buffers()])
    grads = {key: sums[key] / totals["rows"] for key in sums}
    return grads, totals["loss"] / totals["rows"]
