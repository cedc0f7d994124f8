"""Parallel training: copies across MPI ranks, layer-parallel gradients, the pipeline of Fig. 2.

* :mod:`minilr.parallel.pipeline`: the schedule simulator of the paper's Fig. 2 (Sec. 3.4).
* :mod:`minilr.parallel.mpi`: which copies a rank owns, one flat buffer for one ``Allreduce``, the
  loss exchange (data-level parallelism, Sec. 3.3). mpi4py is imported only when a ``comm`` is used.
"""
from . import mpi, pipeline

__all__ = ["mpi", "pipeline"]
