"""GPU kernels (``numba.cuda``) for sign packing and counter-based noise; they take CuPy arrays.

.. deprecated:: replaced by :mod:`minilr.engines.cuda_kernels` (CuPy ``RawKernel`` only, bit-identical
   noise, no ``numba.cuda``, which fails to import under NumPy 2.5). Kept until the CUDA engine routes
   every GPU call there; do not add to it.

Imported only when a CuPy array needs them. The scalar recipes are the very functions the CPU
kernels compile (:mod:`minilr.noise`), compiled here as CUDA device functions, so the two cannot
drift apart. With ``NUMBA_ENABLE_CUDASIM=1`` Numba runs these kernels on the CPU (with NumPy
arrays), which is how the test suite checks their logic without a GPU.

Why Numba rather than CuPy's own ``ElementwiseKernel``: the noise recipe is shared with the CPU
as Python code, and packing is a short loop over 8 rows per thread; CuPy's kernels (``matmul``,
reductions) do the rest of a step.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import noise as _noise

_hash = cuda.jit(device=True)(_noise._hash_py)
_gauss = cuda.jit(device=True)(_noise._gauss_py)

_THREADS = 256


@cuda.jit
def _fill_kernel(out, k1, gamma, start):
    t = cuda.grid(1)
    if t < out.size:
        c = start + np.uint64(t)
        h = _hash(k1, gamma, c >> np.uint64(1))
        out[t] = _gauss(h >> ((c & np.uint64(1)) << np.uint64(5)))


@cuda.jit
def _pack_kernel(a, out, code, byte0):
    """One thread per (byte row ``r``, column ``c``): packs rows ``8r .. 8r + 7`` of column ``c``."""
    r, c = cuda.grid(2)
    rows, width = a.shape
    if r * 8 >= rows or c >= width:
        return
    pos = np.uint8(0)
    neg = np.uint8(0)
    for b in range(min(8, rows - r * 8)):
        v = a[r * 8 + b, c]
        if code == 0:
            bit = math.copysign(1.0, v) > 0
        else:
            bit = v > 0
        pos |= np.uint8(bit) << np.uint8(b)
        neg |= np.uint8(v < 0) << np.uint8(b)
    out[0, byte0 + r, c] = pos
    if code == 2:
        out[1, byte0 + r, c] = neg


@cuda.jit
def _unpack_kernel(p, code, r0, r1, scale, out):
    """One thread per output value ``out[r - r0, c] = scale[r - r0] * value(r, c)``."""
    i, c = cuda.grid(2)
    r = r0 + i
    if r >= r1 or c >= out.shape[1]:
        return
    sh = np.uint8(r & 7)
    bit = (p[0, r >> 3, c] >> sh) & np.uint8(1)
    f = scale[i]
    if code == 0:
        out[i, c] = f if bit else -f
    elif code == 1:
        out[i, c] = f if bit else f * 0
    else:
        nbit = (p[1, r >> 3, c] >> sh) & np.uint8(1)
        out[i, c] = f if bit else (-f if nbit else f * 0)


def _grid2(n0, n1):
    tx, ty = 16, 16
    return (max(1, (n0 + tx - 1) // tx), max(1, (n1 + ty - 1) // ty)), (tx, ty)


def fill_normal(out, k1, gamma, start):
    flat = out.reshape(-1)
    n = flat.size
    if n:
        _fill_kernel[(n + _THREADS - 1) // _THREADS, _THREADS](flat, k1, gamma, start)


def pack(a, out_planes, code, byte0):
    rows, width = a.shape
    if rows and width:
        blocks, threads = _grid2((rows + 7) // 8, width)
        _pack_kernel[blocks, threads](a, out_planes, code, byte0)


def unpack(p_planes, code, r0, r1, scale, out):
    if r1 > r0 and out.shape[1]:
        blocks, threads = _grid2(r1 - r0, out.shape[1])
        _unpack_kernel[blocks, threads](p_planes, code, r0, r1, scale, out)
