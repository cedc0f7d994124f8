"""Layer-level parallelism and the pipelined step, with threads (paper Sec. 3.3-3.4).

* :func:`layer_gradients`: given the centred losses, every layer's gradient is independent of the
  others (no chain rule), so the layers' gradients run at the same time, one thread each. NumPy's
  BLAS and minilr's Numba kernels release the GIL, so the threads really overlap.
* :func:`pipelined_estimate`: the copies are split into buckets; while a worker thread forms the
  gradients of bucket ``i``, the main thread runs the forward pass of bucket ``i + 1`` (the LR
  pipeline of Fig. 2, on one machine). The gradients are added in bucket order, so the result is
  bit for bit the plain chunked estimate, ``minilr.estimators.estimate(..., chunk=bucket size)``:
  each copy's leave-one-out baseline holds the copies of every bucket, as any chunk's does (a
  first pass sums the losses, :func:`~minilr.estimators.base.loss_totals`).

On a CPU the forward pass and the gradients already use every core (block-parallel kernels), so
what overlapping buys here is measured, not assumed: ``benchmarks/distributed.py``.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

from ..estimators import Schedule, estimate


def layer_gradients(sites, Lc, threads=None):
    """``[site.gradient(Lc) for site in sites]``, the sites side by side on ``threads`` threads
    (default: one per site; 1 runs them one after another)."""
    return Overlap(threads).map(lambda s: s.gradient(Lc), sites)


def bucket_size(copies, buckets, antithetic=False):
    """Copies per bucket for ``buckets`` buckets (even with antithetic pairs)."""
    size = -(-copies // buckets)
    if antithetic:
        size += size % 2
    return size


class Overlap(Schedule):
    """The time hook of :func:`minilr.estimators.base.estimate`: a chunk's gradients run on a
    worker thread while the caller runs the next chunk's forward pass (at most two chunks'
    records alive), in chunk order; with ``layer_threads`` > 1 each chunk's sites run side by side
    too. The sums are added in the same order as without overlap: the same bits."""

    def __init__(self, layer_threads=1):
        self.layer_threads = layer_threads
        self.worker, self.pending = None, None

    def map(self, fn, sites):
        threads = len(sites) if self.layer_threads is None else self.layer_threads
        if threads <= 1 or len(sites) <= 1:
            return [fn(s) for s in sites]
        with ThreadPoolExecutor(max_workers=threads) as ex:
            return list(ex.map(fn, sites))

    def submit(self, gradients, done):
        self.drain()  # the chunk before: its gradients formed, its blocks may serve the next pass
        if self.worker is None:
            self.worker = ThreadPoolExecutor(max_workers=1)
        self.pending = (self.worker.submit(gradients), done)

    def drain(self):
        if self.pending is not None:
            future, done = self.pending
            self.pending = None
            future.result()
            done()

    def close(self):
        self.drain()
        if self.worker is not None:
            self.worker.shutdown()


def pipelined_estimate(model, x, y, settings, ss, bk, *, buckets, layer_threads=1):
    """The estimate of :func:`minilr.estimators.estimate` with ``chunk = bucket_size(copies,
    buckets)``, the forward pass of each bucket overlapping the gradients of the one before.

    ``settings`` is a :class:`~minilr.estimators.Settings` (its ``chunk`` is replaced: the buckets
    are the chunks); ``x``, ``y`` are on the backend ``bk``. ``layer_threads`` > 1 also runs each
    bucket's layers side by side. Returns (grads by key, mean noisy loss), equal bit for bit to the
    plain chunked estimate.
    """
    s = settings
    if s.estimator == "bp":
        raise ValueError("estimator='bp' has no copies to pipeline")
    chunk = min(s.copies, bucket_size(s.copies, buckets, s.antithetic))
    schedule = Overlap(layer_threads)
    try:
        return estimate(model, x, y, dataclasses.replace(s, chunk=chunk), ss, bk, schedule=schedule)
    finally:
        schedule.close()
