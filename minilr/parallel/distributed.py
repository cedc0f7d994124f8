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

from ..estimators import Share, estimate as _estimate
from . import mpi


class MPIShare(Share):
    """The copy hook of :func:`minilr.estimators.base.estimate` for the ranks of ``comm``: each a
    contiguous range of every chunk (whole antithetic pairs), losses allgathered, LR sums reduced
    in one flat ``Allreduce``; an ES site's sums formed on every rank from all copies' noise."""

    def __init__(self, comm, stats=None):
        self.comm, self.stats = comm, stats
        self.rank, self.size = mpi.rank_size(comm)
        self.ranges = None

    def span(self, copies, antithetic):
        self.ranges = mpi.copy_ranges(copies, self.size, 2 if antithetic else 1)
        return self.ranges[self.rank]

    def gather(self, L, copies):
        return mpi.allgather_rows(L, [hi - lo for lo, hi in self.ranges], self.comm, self.stats)

    def total(self, totals):
        return mpi.allreduce_sum({"totals": totals}, self.comm, self.stats)["totals"]

    def gradient(self, site, Lc, a, b):
        if site.mode == "es" and self.comm is not None:  # every rank: all the chunk's copies, redrawn
            return site.respan(range(site.k0 - a, site.k0 - a + Lc.shape[0])).gradient(Lc), False
        return site.gradient(Lc[a:b]), True

    def reduce(self, sums, keys):
        if keys:
            sums.update(mpi.allreduce_sum({k: sums[k] for k in keys}, self.comm, self.stats))
        return sums


def estimate(model, x, y, settings, ss, bk, *, comm=None, stats=None):
    """Sum the estimator's gradient over all ranks' copies; return (grads by key, mean noisy loss).

    Same arguments as :func:`minilr.estimators.estimate` (``settings``: a checked
    :class:`~minilr.estimators.Settings`; ``x``, ``y`` on the backend ``bk``, whose engine runs
    the forward passes), plus ``comm`` (an mpi4py communicator; None: one process) and ``stats``
    (a dict that gets the bytes this rank sent, see :func:`minilr.parallel.mpi.bytes_sent`).
    Every rank must call it with the same arguments.
    """
    return _estimate(model, x, y, settings, ss, bk, share=MPIShare(comm, stats))
