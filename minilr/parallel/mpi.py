"""Copies across processes with MPI: data-level parallelism (paper Sec. 3.3).

Copies of a step are independent, and copy ``k``'s noise is a pure function of the seed, the layer
and ``k`` (:mod:`minilr.noise`). So rank ``r`` of ``R`` runs the noisy forward pass of *its* copies
only, a contiguous range (:func:`copy_range`), and draws exactly the noise one process would have
drawn for them. The ranks then

1. exchange their losses (:func:`allgather_rows`: ``K x B`` numbers), so that the leave-one-out
   baseline and the antithetic pairing are computed over *all* copies, as in one process;
2. form their partial gradient sums with their slice of the centred losses;
3. add the partial sums with ONE ``Allreduce`` of ONE flat buffer holding every layer
   (:func:`allreduce_sum`), instead of one call per array.

With the same seed the result equals the one-process gradient up to the order of the float sums.

``comm=None`` everywhere means one process: nothing is imported, nothing is sent. mpi4py and MPI
itself (the ``mpich`` wheel) come with ``pip install minilr[mpi]``.

**GPUs.** With CuPy, :func:`use_rank_device` puts rank ``r`` on GPU ``r % n``. The reduction is
host-staged (the flat buffer is copied to the host, reduced by MPI, copied back), which works with
any MPI; CuPy's NCCL would avoid the copies. Written for GPU machines, untested here (no GPU).
"""
from __future__ import annotations

import numpy as np

__all__ = ["available", "copy_range", "copy_ranges", "pack", "unpack", "allreduce_sum",
           "allgather_rows", "rank_size", "is_root", "use_rank_device", "world", "bytes_sent"]


def available() -> bool:
    """Whether mpi4py (and so an MPI library) can be imported."""
    try:
        import mpi4py.MPI  # noqa: F401
    except Exception:  # ImportError, or an MPI library that fails to load
        return False
    return True


def world():
    """``MPI.COMM_WORLD``; raises ImportError naming the fix when mpi4py is missing."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("distributed runs need mpi4py and an MPI library: pip install 'minilr[mpi]' "
                          "(mpi4py and the mpich wheel)") from e
    return MPI.COMM_WORLD


def rank_size(comm):
    """``(rank, size)`` of ``comm``; ``(0, 1)`` for ``comm=None``."""
    if comm is None:
        return 0, 1
    return comm.Get_rank(), comm.Get_size()


def is_root(comm) -> bool:
    """True on rank 0 (and in one process): the rank that prints and writes files."""
    return rank_size(comm)[0] == 0


def check_comm(comm, name="comm"):
    """``comm`` must be None or an mpi4py intracommunicator; raises TypeError otherwise."""
    if comm is None:
        return None
    if not all(hasattr(comm, a) for a in ("Get_rank", "Get_size", "Allreduce", "Allgatherv")):
        raise TypeError(f"{name} must be None or an mpi4py communicator such as MPI.COMM_WORLD, "
                        f"got {type(comm).__name__}")
    return comm


def copy_ranges(copies: int, size: int, pair: int = 1):
    """The contiguous copy range ``[k0, k1)`` of every rank, as a list of ``size`` pairs.

    Whole groups of ``pair`` copies (2: antithetic pairs, which must stay on one rank because the
    baseline leaves a whole pair out) are shared out as evenly as possible: ranks differ by at most
    one group. ``copies`` need not be divisible by ``size``; a rank may get none when there are fewer
    groups than ranks.
    """
    for v, nm in ((copies, "copies"), (size, "size"), (pair, "pair")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{nm} must be an integer >= 1, got {v!r}")
    if copies % pair:
        raise ValueError(f"copies (got {copies}) must be a multiple of pair (got {pair})")
    groups = copies // pair
    bounds = [groups * r // size * pair for r in range(size + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def copy_range(copies: int, comm=None, pair: int = 1):
    """This rank's copies ``[k0, k1)`` of ``copies`` (all of them for ``comm=None``)."""
    rank, size = rank_size(comm)
    return copy_ranges(copies, size, pair)[rank]


def pack(arrays, xp=np, dtype=None):
    """One flat contiguous buffer holding ``arrays`` (a list) end to end; see :func:`unpack`."""
    dtype = dtype or (arrays[0].dtype if arrays else np.float32)
    n = sum(int(a.size) for a in arrays)
    flat = xp.empty(n, dtype=dtype)
    i = 0
    for a in arrays:
        flat[i:i + a.size] = a.reshape(-1)
        i += a.size
    return flat


def unpack(flat, like):
    """Split ``flat`` back into arrays shaped like ``like`` (views of ``flat``)."""
    out, i = [], 0
    for a in like:
        out.append(flat[i:i + a.size].reshape(a.shape))
        i += a.size
    if i != flat.size:
        raise ValueError(f"flat buffer has {flat.size} numbers, the arrays {i}")
    return out


def _host(a):
    """A NumPy view/copy of ``a`` (CuPy arrays are staged through the host)."""
    return a if isinstance(a, np.ndarray) else a.get()


def allreduce_sum(arrays, comm=None, stats=None):
    """Sum every array over the ranks with ONE ``Allreduce`` of ONE flat buffer; return the sums.

    ``arrays`` is a dict or a list of arrays (NumPy or CuPy, one dtype); the result has the same
    form, on the same device. ``comm=None`` returns ``arrays`` unchanged. ``stats`` (a dict), if
    given, counts ``"allreduce_calls"`` and ``"allreduce_bytes"`` (the buffer each rank sends).
    """
    if comm is None:
        return arrays
    from mpi4py import MPI

    keys = list(arrays) if isinstance(arrays, dict) else None
    values = [arrays[k] for k in keys] if keys is not None else list(arrays)
    if not values:
        return arrays
    xp = np if isinstance(values[0], np.ndarray) else __import__("cupy")
    flat = _host(pack(values, xp))  # host-staged on a GPU: works with any MPI
    comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
    if stats is not None:
        stats["allreduce_calls"] = stats.get("allreduce_calls", 0) + 1
        stats["allreduce_bytes"] = stats.get("allreduce_bytes", 0) + flat.nbytes
    flat = flat if xp is np else xp.asarray(flat)
    out = unpack(flat, values)
    return dict(zip(keys, out)) if keys is not None else out


def allgather_rows(local, counts, comm=None, stats=None):
    """Stack every rank's rows in rank order: ``local`` has ``counts[rank]`` rows (same trailing
    shape and dtype on every rank); the result has ``sum(counts)`` rows, on every rank.

    Used for the losses of the copies (``K x B`` numbers), so every rank can centre them exactly as
    one process does. ``comm=None`` returns ``local``. ``stats`` counts ``"allgather_bytes"`` (what
    this rank sends).
    """
    if comm is None:
        return local
    from mpi4py import MPI  # noqa: F401  (the datatype map below needs MPI loaded)

    xp = np if isinstance(local, np.ndarray) else __import__("cupy")
    host = np.ascontiguousarray(_host(local))
    row = int(np.prod(host.shape[1:], dtype=np.int64))
    out = np.empty((int(sum(counts)),) + host.shape[1:], dtype=host.dtype)
    sizes = [int(c) * row for c in counts]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
    comm.Allgatherv(host.reshape(-1), [out.reshape(-1), sizes, offsets, _mpi_type(host.dtype)])
    if stats is not None:
        stats["allgather_bytes"] = stats.get("allgather_bytes", 0) + host.nbytes
    return out if xp is np else xp.asarray(out)


def _mpi_type(dtype):
    from mpi4py import MPI

    return MPI._typedict[np.dtype(dtype).char]


def bytes_sent(stats) -> int:
    """Bytes one rank sent in a step, from a ``stats`` dict filled by the calls above."""
    return int(sum(v for k, v in stats.items() if k.endswith("_bytes")))


def use_rank_device(comm=None):
    """With CuPy and several GPUs, put this rank on GPU ``rank % n``; return that index (or None).

    Call once per process, before any CuPy array is made. Untested here: no GPU on this machine.
    """
    try:
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver, no GPU: nothing to choose
        return None
    if n < 1:
        return None
    dev = rank_size(comm)[0] % n
    cupy.cuda.Device(dev).use()
    return dev
