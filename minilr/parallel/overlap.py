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

from concurrent.futures import ThreadPoolExecutor

from ..estimators import ESTIMATORS
from ..estimators.base import centred_losses, loss_totals, noise_keys


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


def pipelined_estimate(model, x, y, settings, ss, bk, buckets, layer_threads=1):
    """The estimate of :func:`minilr.estimators.estimate` with ``chunk = bucket_size(copies,
    buckets)``, the forward pass of each bucket overlapping the gradients of the one before.

    ``settings`` is a :class:`~minilr.estimators.Settings` (its ``chunk`` is ignored: the buckets
    are the chunks); ``x``, ``y`` are on the backend ``bk``. ``layer_threads`` > 1 also runs each
    bucket's layers side by side (:func:`layer_gradients`). Returns (grads by key, mean noisy
    loss), equal bit for bit to the plain chunked estimate.
    """
    s = settings
    engine, xp = bk.engine, bk.xp
    est = ESTIMATORS[s.estimator]
    if s.estimator == "bp":
        raise ValueError("estimator='bp' has no copies to pipeline")
    lin = model.linear_indices
    modes = est.modes(len(lin), s.es_layers)
    keys = noise_keys(ss, len(lin))
    chunk = min(s.copies, bucket_size(s.copies, buckets, s.antithetic))
    sums = {key: xp.zeros_like(p) for key, p in model.parameters().items()}
    totals = {"loss": 0.0, "rows": 0}

    def gradients(sites, L, Lc):  # one worker thread runs these in bucket order
        parts = layer_gradients(sites, Lc, layer_threads)
        for i, part in zip(lin, parts):
            for name, g in part.items():
                sums[f"{i}.{name}"] += g
        totals["loss"] += float(L.sum())
        totals["rows"] += L.size

    # the engine's session (BLAS held at one thread on the CPU) around the whole pipeline: two
    # threads calling a threaded BLAS at once would oversubscribe the cores
    with engine.session(), ThreadPoolExecutor(max_workers=1) as worker:
        pending, previous = None, None
        all_losses = loss_totals(engine, model, x, y, s, chunk, modes, est.approx, keys, xp)
        for start in range(0, s.copies, chunk):
            k = min(chunk, s.copies - start)
            L, sites = engine.forward(model, x, y, start, k, modes, est.approx, keys, s.loss, s.antithetic)
            Lc = centred_losses(L, s.antithetic, s.baseline, xp, all_losses, s.copies)
            if pending is not None:
                pending.result()  # at most two buckets' records alive
                engine.done(previous)  # its gradients are formed: its blocks may serve the next forward
            pending, previous = worker.submit(gradients, sites, L, Lc), sites
            del L, Lc, sites
        pending.result()
        engine.done(previous)
    return {key: sums[key] / totals["rows"] for key in sums}, totals["loss"] / totals["rows"]
