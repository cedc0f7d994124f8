"""Fused CPU kernels for the LR site: the fast path beside the plain code of :mod:`minilr.engines.reference`.

The plain code runs an LR layer as a chain of NumPy calls: draw ``eps``, ``v + b``,
``v + sigma * eps``, ``maximum(v, 0)``, and in the gradient ``L * eps``, sums, a product. Each call
is one pass over a ``(copies, B, m)`` array (10 MB at K=200, B=50, m=256) with a fresh temporary,
and NumPy runs it on one core. The fast path does the same arithmetic

* in **one pass per layer**: :func:`lr_forward` draws ``eps`` from its counter-based stream
  *inside* the pass, keeps it, and writes ``h = act(v + b + sigma * eps)`` (ReLU or identity)
  while the copy is in cache; :func:`scale_rows` turns the kept ``eps`` into ``L * eps`` in place
  and sums it for the bias (and ``L (eps^2 - 1)`` for sigma) in the same pass, so the weight sum
  is one BLAS product; :func:`sum_copies` forms the first layer's ``sum_k L eps`` in one pass;
  for ALR the same pass keeps only ``sign(eps)``, packed straight into the record's bits;
* in **memory already mapped**: LR's block arrays come back from the previous step
  (:class:`Scratch`, owned by the engine) instead of fresh pages that fault on first touch;
* on **every core, by blocks of copies**: copies are independent (the paper's data-level
  parallelism), so the CPU engine (:mod:`minilr.engines.cpu`) runs whole blocks, GEMMs and all,
  side by side on its threads, each block on one thread.

Why blocks and not a parallel loop inside each kernel: every hand-off to a sleeping thread cost
0.1-0.4 ms here (a VM's idle vCPU wakes slowly), and OpenBLAS's own workers busy-wait for ~0.1 s
after each multi-threaded call, so a kernel run right after an sgemm shared its cores with them
(12.7 ms instead of 4.6 ms). Blocks need one hand-off per layer pass, and BLAS is held at one
thread per block (:func:`blas_one_thread`), so no second pool ever spins.

Same arithmetic in the same order as the plain path wherever the plain path fixes one
(``(v + b) + sigma * eps``, one GEMM per row), so the forward pass gives the same bits; sums run
over fixed blocks in a fixed order, so a seed gives the same bits whatever the thread count.
Only NumPy arrays come here. Tests: ``tests/test_kernels.py``.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading

import numba
import numpy as np

from ..._signals import deferred_interrupt
from ...noise import _U64, _fill_range

__all__ = ["ACTS", "lr_forward", "scale_rows", "sum_copies", "blas_one_thread", "Scratch", "Arena",
           "gemm_acc"]

ACTS = {"identity": 0, "relu": 1}  # activations fused into lr_forward, by Activation.name

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_inline = numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")


@_inline
def _draw_copy(e, prev, k, anti, k1, gamma, off):
    """The noise of copy ``k`` into ``e`` (B, m): counters ``off + k * B * m ...``, or, antithetic,
    ``off + (k // 2) * B * m ...`` and for odd ``k`` the negative of ``prev``, copy ``k - 1``'s noise."""
    B, m = e.shape
    if anti and k & 1:
        for bb in range(B):
            for i in range(m):
                e[bb, i] = -prev[bb, i]
    else:
        kk = k >> 1 if anti else k
        _fill_range(e.reshape(B * m), 0, B * m, k1, gamma, off + _U64(kk) * _U64(B * m))


@_inline
def _act_copy(vc, b, sigma, act, e, hc):
    """``hc = act((vc + b) + sigma * e)`` for one copy, (B, m); ``act`` 1 is ReLU, 0 identity."""
    B, m = e.shape
    zero = sigma[0] * 0  # +0 of the arrays' dtype (sigma > 0 and finite)
    for bb in range(B):
        for i in range(m):
            z = (vc[bb, i] + b[i]) + sigma[i] * e[bb, i]
            if act == 1 and z < 0:  # maximum(z, 0): NaN stays NaN
                z = zero
            hc[bb, i] = z


@_jit
def _lr_forward_rows(v, b, sigma, act, eps, h, k1, gamma, k0, anti, off, lo, hi):
    """Copies ``lo .. hi - 1`` of the (copies, B, m) arrays (absolute copy ``k0 + c``); ``v`` has
    one copy when shared. Each copy's noise is drawn, then used while it is still in cache."""
    for c in range(lo, hi):
        _draw_copy(eps[c], eps[c - 1], k0 + c, anti, k1, gamma, off)  # ranges start at even copies
        _act_copy(v[c if v.shape[0] > 1 else 0], b, sigma, act, eps[c], h[c])


@_jit
def _lr_forward_signs(v, b, sigma, act, bits, h, e, k1, gamma, k0, anti, off, hbits, pack_h):
    """As :func:`_lr_forward_rows` over all copies of ``h``, but ``eps`` lives one copy at a time
    in ``e`` (B, m): only ``not signbit(eps)`` is kept, packed along the rows into ``bits``
    (row ``n = c * B + b`` is bit ``n % 8`` of byte ``n // 8``, as ``signbits.pack``). With
    ``pack_h`` also ``h > 0`` into ``hbits`` (``signbits.pack``'s "01": the next layer's input
    signs), while the copy is in cache instead of in a second pass."""
    K, B, m = h.shape
    zero8 = np.uint8(0)
    bits[:] = 0
    if pack_h:
        hbits[:] = 0
    for c in range(K):
        _draw_copy(e, e, k0 + c, anti, k1, gamma, off)  # an odd antithetic copy negates e in place
        hc = h[c]
        _act_copy(v[c if v.shape[0] > 1 else 0], b, sigma, act, e, hc)
        for bb in range(B):
            n = c * B + bb
            row = bits[n >> 3]
            bit = np.uint8(1 << (n & 7))  # a select of uint8 constants: ~30% faster than a shift
            er = e[bb]
            for i in range(m):  # eps is never 0 nor NaN: e > 0 is pack's "pm1" sign bit
                row[i] |= bit if er[i] > 0 else zero8
            if pack_h:
                hrow = hbits[n >> 3]
                hr = hc[bb]
                for i in range(m):
                    hrow[i] |= bit if hr[i] > 0 else zero8


def lr_forward(v, b, sigma, act, *, eps, h, key, k0, antithetic, bits=None, hbits=None, offset=0):
    """Draw the noise of copies ``k0 ...`` and write ``h = act(v + b + sigma * eps)``.

    ``h``: (copies, B, m), C-contiguous, of ``v``'s dtype; ``v``: (copies, B, m), or (B, m)
    shared by all copies (the first layer). ``h`` may be ``v`` (in place). ``act``: a key of
    :data:`ACTS`. With ``antithetic`` ``k0`` must be even. The noise is kept in ``eps`` (same shape
    as ``h``), or, when ``bits`` is given (``eps`` None), only its signs, packed along the rows
    into ``bits`` (uint8, ``(ceil(copies * B / 8), m)``, as :func:`minilr.signbits.pack`); then
    ``hbits`` (same shape), if given, gets ``h``'s "01" signs likewise. ``offset`` is added to
    every counter (a site's later calls). One thread (a block's).
    """
    v3 = v.reshape((-1,) + h.shape[1:])
    if bits is None:
        _lr_forward_rows(v3, b, sigma, ACTS[act], eps, h, key.origin, key.gamma, k0, antithetic,
                         _U64(offset), 0, h.shape[0])
    else:
        e = np.empty(h.shape[1:], dtype=h.dtype)
        pack_h = hbits is not None
        _lr_forward_signs(v3, b, sigma, ACTS[act], bits, h, e, key.origin, key.gamma, k0, antithetic,
                          _U64(offset), hbits if pack_h else bits, pack_h)
    return h


@_jit
def _scale_rows(w, L, learn_sigma, gb, gs, lo, hi):
    """Rows ``lo .. hi - 1``: ``w[n] *= L[n]``; partial sums into ``gb`` and (if asked) ``gs``."""
    m = w.shape[1]
    for n in range(lo, hi):
        l = L[n]
        r = w[n]
        if learn_sigma:
            for i in range(m):
                gs[i] += l * (r[i] * r[i] - 1)
        for i in range(m):
            r[i] *= l
            gb[i] += r[i]


def scale_rows(w, L, learn_sigma):
    """``w[n] *= L[n]`` in place (``w``: (rows, m), the kept ``eps``); returns ``(sum_n L eps, sum_n L (eps^2 - 1))``.

    The second is None unless ``learn_sigma``. One thread (a block's), rows summed in order.
    """
    m = w.shape[1]
    gb = np.zeros(m, dtype=w.dtype)
    gs = np.zeros(m if learn_sigma else 1, dtype=w.dtype)
    _scale_rows(w, np.ascontiguousarray(L, w.dtype).reshape(-1), learn_sigma, gb, gs, 0, w.shape[0])
    return gb, (gs if learn_sigma else None)


@_jit
def _sum_copies_rows(eps, L, learn_sigma, A, S, lo, hi):
    """Samples ``lo .. hi - 1``: ``A[b] += sum_k L[k, b] eps[k, b]`` (and ``S`` for sigma), ``k`` in order."""
    K, _, m = eps.shape
    for bb in range(lo, hi):
        a = A[bb]
        s = S[bb]
        for k in range(K):
            l = L[k, bb]
            e = eps[k, bb]
            if learn_sigma:
                for i in range(m):
                    s[i] += l * (e[i] * e[i] - 1)
            for i in range(m):
                a[i] += l * e[i]


def sum_copies(eps, L, A, S=None):
    """``A[b, i] += sum_k L[k, b] eps[k, b, i]`` and, if ``S`` is given, ``S += L (eps^2 - 1)`` alike.

    ``eps``: (copies, B, m); ``L``: (copies, B); ``A``, ``S``: (B, m). One thread, copies in order.
    """
    learn_sigma = S is not None
    _sum_copies_rows(eps, np.ascontiguousarray(L, eps.dtype), learn_sigma, A, S if learn_sigma else A,
                     0, eps.shape[1])
    return A


# -- scratch memory ----------------------------------------------------------------------------------
class Scratch:
    """Block arrays kept from one step for the next, owned by a CPU engine (nothing global).

    Fresh memory costs a page fault per 4 KB page on first touch: an exact LR step (K=200, B=50)
    keeps ~50 MB of blocks, and allocating them anew each step cost 18 ms here, as much as the
    noise. So the engine takes its block arrays from the ones the previous step gave back: only
    one step's worth is kept, only arrays of the shapes that step used, and only as long as the
    engine lives (:meth:`release` frees them at once)."""

    def __init__(self):
        self._free = {}

    def get(self, shape, dtype):
        """An uninitialised array: one :meth:`recycle` kept, if it has this shape, or a new one."""
        key = (tuple(shape), np.dtype(dtype).str)
        try:
            return self._free[key].pop()  # atomic under the GIL: concurrent callers get distinct arrays
        except (KeyError, IndexError):
            return np.empty(shape, dtype)

    def recycle(self, arrays):
        """Keep ``arrays`` (whose contents are dead) for the next :meth:`get`, dropping any kept
        before. Given none (a step that kept no blocks: ALR), what is kept stays."""
        if not arrays:
            return
        free, seen = {}, set()
        for a in arrays:
            # only whole arrays of their own, once each: a view (an ES site's transposed output
            # kept as the next layer's input) would come back non-contiguous or aliased
            if a.base is None and a.flags.c_contiguous and id(a) not in seen:
                seen.add(id(a))
                free.setdefault((a.shape, a.dtype.str), []).append(a)
        self._free = free

    def release(self):
        """Free the arrays kept for the next step."""
        self._free = {}

    def nbytes(self):
        """Bytes held for the next step."""
        return sum(a.nbytes for arrays in self._free.values() for a in arrays)


class Arena:
    """Arrays reused by the blocks one thread runs in one pass, by tag (ALR's forward blocks).

    A fresh block array costs page faults on first touch, and two threads faulting at once
    contend for the process's memory map: ALR's 25 blocks x 3 layers of fresh arrays per step
    (B=50, K=200) ran the forward pass on two threads no faster than ~1.5x one. Each thread keeps
    one array per tag, so the floats alive stay what one block of each tag needs; they go when
    the arena does (the end of the pass)."""

    def __init__(self):
        self._local = threading.local()

    def get(self, tag, shape, dtype):
        """An uninitialised array of ``shape``, this thread's for ``tag`` (valid till its next get)."""
        d = self._local.__dict__
        n = math.prod(shape)
        a = d.get(tag)
        if a is None or a.size < n or a.dtype != np.dtype(dtype):
            a = d[tag] = np.empty(n, dtype)
        return a[:n].reshape(shape)


# -- BLAS: one thread while any estimate runs --------------------------------------------------------
# OpenBLAS's workers busy-wait for ~0.1 s after every multi-threaded call (measured here: a fused
# pass right after a 2-thread sgemm took 12.7 ms instead of 4.6 ms, back to normal only 0.2 s
# later), so the CPU engine never lets BLAS start its own threads: its blocks are the parallelism.
# One BLAS thread also makes every product's bits independent of the BLAS thread count (a
# threaded sgemm splits its sums by thread). The limit is process-wide (BLAS has one), so it is
# counted: the first estimate to start sets it, the last to finish restores what was there, and
# an estimate running beside another never sees the limit change under it.
_BLAS = {"users": 0, "saved": [], "held": False, "controller": None}
_BLAS_LOCK = threading.Lock()


def _controller():
    if _BLAS["controller"] is None:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415 (~10 ms: on first use)

        _BLAS["controller"] = ThreadpoolController()
    return _BLAS["controller"]


def _set_threads(pairs):
    """``lib.set_num_threads(n)`` for each ``(lib, n)``, from whichever thread calls.

    threadpoolctl 3.8 lets only one Python thread, the first to set a pthreads OpenBLAS's limit,
    change it until that thread lets go, and silently ignores every other thread's set. An
    estimate in the main thread took that role and kept it (the main thread never ends), so every
    later estimate in a worker thread set nothing, read back 2 threads and raised (issue 14).
    This module already sets and restores the process-wide count under one lock, so each set
    takes the role for itself and lets it go after. The set is not read back: OpenBLAS 0.3.31's
    ``goto_set_num_threads`` stores the count unconditionally, and a library on OpenMP reports
    the calling thread's count, not the process's."""
    from threadpoolctl import OpenBLASController  # noqa: PLC0415 (imported by _controller)

    release = getattr(OpenBLASController, "clear_controlling_thread", None)  # threadpoolctl >= 3.8
    try:
        for lib, n in pairs:
            if release is not None:
                release(force=True)
            lib.set_num_threads(n)
    finally:
        if release is not None:
            release()  # only if this thread holds it: never leave the role to this thread


def _per_thread(lib):
    """Whether ``lib``'s thread limit holds only for the thread that sets it (OpenBLAS built on
    OpenMP sets ``omp_set_num_threads``): then the engine's worker threads would not see it."""
    return getattr(lib, "internal_api", "") == "openblas" and getattr(lib, "threading_layer", "") == "openmp"


@contextlib.contextmanager
def blas_one_thread():
    """Hold the BLAS libraries at one thread inside the block (counted; yields whether the hold
    covers every thread, so that blocks may run side by side)."""
    # Ctrl-C is held back in the two locked parts: an interrupt landing just after the lock is
    # taken would leave it held (and the next estimate waiting forever), or the count wrong
    counted = [False]  # True while this hold is counted in _BLAS["users"]
    try:  # the interrupt held back is raised as the first block ends: inside this try
        with deferred_interrupt(), _BLAS_LOCK:
            if _BLAS["users"] == 0:
                libs = _controller().select(user_api="blas").lib_controllers
                saved = [(lib, lib.get_num_threads()) for lib in libs]
                try:
                    _set_threads([(lib, 1) for lib in libs])
                except BaseException:
                    _set_threads(saved)  # a set that failed half-way leaves nothing changed
                    raise
                _BLAS["saved"] = saved
                _BLAS["held"] = bool(libs) and not any(_per_thread(lib) for lib in libs)
            # counted only once the limit is set: a failed set above leaves the count at 0
            _BLAS["users"] += 1
            counted[0], held = True, _BLAS["held"]
        yield held
    finally:
        try:
            _release(counted)
        except KeyboardInterrupt:  # a Ctrl-C landed before the release could hold it back
            _release(counted)
            raise


def _release(counted):
    """Uncount a hold (once: ``counted`` is cleared in the same held-back block); the last one
    restores the libraries' thread counts."""
    with deferred_interrupt(), _BLAS_LOCK:
        if counted[0]:
            counted[0] = False
            _BLAS["users"] -= 1
            if _BLAS["users"] == 0:
                saved, _BLAS["saved"] = _BLAS["saved"], []
                _set_threads(saved)


def _after_fork():
    global _BLAS_LOCK
    _BLAS_LOCK = threading.Lock()  # another thread may have held it at the fork
    if _BLAS["saved"]:  # forked mid-estimate: the child's BLAS goes back as it was
        _set_threads(_BLAS["saved"])
    _BLAS["users"], _BLAS["saved"] = 0, []


os.register_at_fork(after_in_child=_after_fork)


def _find_sgemm():
    """``cblas_sgemm`` (ILP64 or not) of the OpenBLAS NumPy loaded, via ctypes, as ``(function,
    int type)``, or None."""
    for lib in _controller().select(internal_api="openblas").lib_controllers:
        try:
            dll = ctypes.CDLL(lib.filepath)
        except OSError:
            continue
        for name, it in (("scipy_cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm64_", ctypes.c_int64),
                         ("scipy_cblas_sgemm", ctypes.c_int), ("cblas_sgemm", ctypes.c_int)):
            f = getattr(dll, name, None)
            if f is not None:
                f.restype = None
                return f, it
    return None


_SGEMM = []


def gemm_acc(C, A, B):
    """``C += A^T @ B`` in place (float32 ``A`` (k, m), ``B`` (k, n), rows contiguous; ``C`` (m, n)).

    sgemm with ``beta = 1`` when OpenBLAS's cblas is found: no (m, n) temporary per call (the
    packed gradient calls this once per block of rows). Else a product and an add. The ctypes call
    drops the GIL, so threads run it side by side."""
    if not _SGEMM:
        _SGEMM.append(_find_sgemm())
    if (_SGEMM[0] is None or C.dtype != np.float32 or A.dtype != np.float32 or B.dtype != np.float32
            or A.strides[1] != 4 or B.strides[1] != 4 or C.strides[1] != 4):
        C += A.T @ B
        return C
    f, it = _SGEMM[0]
    k, m = A.shape
    n = B.shape[1]
    # CblasRowMajor = 101, CblasTrans = 112, CblasNoTrans = 111
    f(ctypes.c_int(101), ctypes.c_int(112), ctypes.c_int(111), it(m), it(n), it(k), ctypes.c_float(1.0),
      ctypes.c_void_p(A.ctypes.data), it(A.strides[0] // 4), ctypes.c_void_p(B.ctypes.data),
      it(B.strides[0] // 4), ctypes.c_float(1.0), ctypes.c_void_p(C.ctypes.data), it(C.strides[0] // 4))
    return C
