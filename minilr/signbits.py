"""Signs packed in bits, and the ALR weight gradient formed from them (Eq. 3).

ALR needs only ``sign(eps)`` and ``sign(x)`` between the forward pass and the gradient. They are
packed *along the rows* ``n`` (copy x sample), little-endian within each byte, one column per
neuron: an array of shape ``(rows, width)`` becomes ``uint8`` of shape ``(ceil(rows / 8), width)``
whose byte ``[r, i]`` holds rows ``8r .. 8r + 7`` of column ``i``. Three codes:

=========  ======  ==============================  ===========================
kind       bits    stored                          value read back
=========  ======  ==============================  ===========================
``"pm1"``  1       ``not signbit(a)``              ``+1`` or ``-1`` (``sign(eps)``)
``"01"``   1       ``a > 0``                       ``1`` or ``0`` (a ReLU output)
``"sign"`` 2       planes ``a > 0`` and ``a < 0``  ``1``, ``0`` or ``-1`` (``sign(0) = 0``)
=========  ======  ==============================  ===========================

``"pm1"`` uses the sign *bit*, so ``-0.0`` reads back as ``-1`` and antithetic pairs ``+eps, -eps``
stay exact mirrors; the noise of :mod:`minilr.noise` is never zero, so ``sign(eps)`` needs no third
value.

The gradient ``G[i, j] = sum_n L_n s_i(n) t_j(n)`` (:func:`packed_gradient`) is formed by
**unpack-then-BLAS**: a block of rows is unpacked into float32 ``L_n s_i(n)`` and ``t_j(n)`` and
multiplied by sgemm; only one block of floats exists at a time. Measured here
(``python benchmarks/packed_gradient.py``: rows 20000, 256 x 256, one OpenBLAS thread, all
three exact on integer losses): unpack-then-BLAS 22 ms; an exact byte-table ("four Russians")
kernel that sums ``L`` over the set bits of ``s_byte & t_byte`` 247 ms (11x); a per-row rank-1
update in Numba 2.8 s (130x). A bit-sliced popcount GEMM is exact only for integer ``L``: real
losses would first be quantised into bit planes (one popcount GEMM per plane), which changes the
estimator, and even 8 planes move ``8 * rows * m * d / 64`` popcounts against sgemm's ~120 GFLOP/s
per core. sgemm wins because the arithmetic is small next to what BLAS sustains; the bits pay for
themselves in memory, not in flops.

On NumPy the CPU engine calls :func:`minilr.engines.cpu.signs.packed_gradient_block` instead: fixed parts of
``G`` (or of the rows, where ``G`` is small) run side by side, the products accumulate in place
(``sgemm`` with ``beta = 1``), whole rows are unpacked by :func:`_unpack_cpu` and the bias sum is
read from the bits, so what is alive beyond the bits is one ``G`` and two small blocks per part
(ALR's peak memory); the first layer's sums come straight from the bits (``sign_sum_copies``).

Three implementations share one contract and one test suite: ``*_reference`` (``np.packbits``,
for checking), Numba on the CPU (``cache=True``; serial, see below) and GPU kernels for
CuPy arrays (:mod:`minilr.engines.cuda_kernels`, which the CUDA engine calls; this module imports
no engine: on CuPy arrays its own functions work on the host). The CPU kernels are deliberately single-threaded:
they are memory-bound, and a Numba thread pool spinning next to OpenBLAS's slowed the sgemm that
follows (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["KINDS", "packed_rows", "pack", "unpack", "pack_reference", "unpack_reference",
           "packed_gradient", "packed_gradient_reference", "kind_for"]

KINDS = ("pm1", "01", "sign")


def packed_rows(rows: int) -> int:
    """Bytes along the row axis for ``rows`` rows."""
    return (rows + 7) // 8


def kind_for(nonneg: bool) -> str:
    """The code for a layer input: 1 bit when it is never negative, else 2 bits."""
    return "01" if nonneg else "sign"


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _empty(kind, rows, width, xp):
    shape = (packed_rows(rows), width) if kind != "sign" else (2, packed_rows(rows), width)
    return xp.empty(shape, dtype=np.uint8)


# -- reference: np.packbits -------------------------------------------------------------------------
def pack_reference(a, kind: str) -> np.ndarray:
    """Pack the rows of the 2-D array ``a`` by ``np.packbits`` (little bit order)."""
    _check_kind(kind)
    a = np.asarray(a)
    if kind == "pm1":
        return np.packbits(~np.signbit(a), axis=0, bitorder="little")
    if kind == "01":
        return np.packbits(a > 0, axis=0, bitorder="little")
    return np.stack([np.packbits(a > 0, axis=0, bitorder="little"),
                     np.packbits(a < 0, axis=0, bitorder="little")])


def unpack_reference(p, kind: str, rows: int, dtype=np.float32) -> np.ndarray:
    """The values of ``p`` as an array ``(rows, width)`` of ``dtype``."""
    _check_kind(kind)
    p = np.asarray(p)
    if kind == "sign":
        pos = np.unpackbits(p[0], axis=0, count=rows, bitorder="little").astype(dtype)
        neg = np.unpackbits(p[1], axis=0, count=rows, bitorder="little").astype(dtype)
        return pos - neg
    bits = np.unpackbits(p, axis=0, count=rows, bitorder="little").astype(dtype)
    return 2 * bits - 1 if kind == "pm1" else bits


def packed_gradient_reference(L, s, s_kind, t, t_kind, rows):
    """``sum_n L_n s(n)^T t(n)`` in float64 from fully unpacked arrays (for checking)."""
    S = unpack_reference(s, s_kind, rows, np.float64)
    T = unpack_reference(t, t_kind, rows, np.float64)
    return (np.asarray(L, np.float64)[:, None] * S).T @ T


# -- Numba CPU kernels --------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _pack_cpu(a, out, code, byte0):
    """Pack rows of ``a`` into ``out[:, byte0 + r // 8, :]``; ``code`` 0: pm1, 1: 01, 2: sign.

    A block whose row count is not a multiple of 8 must be the last one: its final byte is
    written whole, with zero bits past the end. The inner loop runs along a row (contiguous), so
    it vectorises.
    """
    rows, width = a.shape
    nb = (rows + 7) // 8
    for r in range(nb):
        lo = r * 8
        pos = out[0, byte0 + r]
        pos[:] = 0
        if code == 2:
            neg = out[1, byte0 + r]
            neg[:] = 0
        for b in range(min(8, rows - lo)):
            row = a[lo + b]
            sh = np.uint8(b)
            if code == 0:
                # the sign bit, so that -0.0 packs as negative and +0.0 as positive
                for c in range(width):
                    pos[c] |= np.uint8(math.copysign(1.0, row[c]) > 0) << sh
            elif code == 1:
                for c in range(width):
                    pos[c] |= np.uint8(row[c] > 0) << sh
            else:
                for c in range(width):
                    pos[c] |= np.uint8(row[c] > 0) << sh
                    neg[c] |= np.uint8(row[c] < 0) << sh


@numba.njit(cache=True, nogil=True)
def _unpack_cpu(p, code, r0, r1, scale, out):
    """``out[r - r0, c] = scale[r - r0] * value(r, c)`` for rows ``r0 <= r < r1`` (``r0 % 8 == 0``)."""
    width = out.shape[1]
    for r in range(r0, r1):
        byte = r >> 3
        sh = np.uint8(r & 7)
        f = scale[r - r0]
        pos = p[0, byte]
        row = out[r - r0]
        if code == 0:  # f * (2 bit - 1), written as a select so it stays exact
            for c in range(width):
                row[c] = f if (pos[c] >> sh) & np.uint8(1) else -f
        elif code == 1:
            for c in range(width):
                row[c] = f if (pos[c] >> sh) & np.uint8(1) else f * 0
        else:
            neg = p[1, byte]
            for c in range(width):
                bit = (pos[c] >> sh) & np.uint8(1)
                nbit = (neg[c] >> sh) & np.uint8(1)
                row[c] = f if bit else (-f if nbit else f * 0)


_CODES = {"pm1": 0, "01": 1, "sign": 2}


def _planes(p, kind):
    return p if kind == "sign" else p[None]


def pack(a, kind: str, out=None, row0: int = 0, xp=np):
    """Pack the rows of the 2-D float array ``a`` (NumPy or CuPy) into ``out`` from row ``row0``.

    ``row0`` must be a multiple of 8 so blocks of a streamed forward pass land on whole bytes;
    ``out`` (made when None, for ``a``'s rows only) has the layout of :func:`pack_reference`.
    """
    _check_kind(kind)
    if row0 % 8:
        raise ValueError(f"row0 must be a multiple of 8, got {row0}")
    rows, width = a.shape
    if out is None:
        out = _empty(kind, rows, width, xp)
    if xp is np:
        _pack_cpu(np.ascontiguousarray(a), _planes(out, kind), _CODES[kind], row0 // 8)
    else:  # the plain path for other arrays (CuPy): on the host; the CUDA engine packs on the device
        host = pack(a.get(), kind)
        out[..., row0 // 8: row0 // 8 + host.shape[-2], :] = xp.asarray(host)
    return out


def unpack(p, kind: str, r0: int, r1: int, *, scale=None, out=None, dtype=np.float32, xp=np):
    """Rows ``r0 .. r1 - 1`` of the packed ``p`` as ``(r1 - r0, width)`` of ``dtype``, times ``scale``.

    ``scale`` (float32, one per row) folds the loss ``L_n`` into the unpacking, so the gradient
    needs no separate multiply; ``r0`` must be a multiple of 8.
    """
    _check_kind(kind)
    if r0 % 8:
        raise ValueError(f"r0 must be a multiple of 8, got {r0}")
    width = p.shape[-1]
    if out is None:
        out = xp.empty((r1 - r0, width), dtype=dtype)
    if scale is None:
        scale = xp.ones(r1 - r0, dtype=out.dtype)
    scale = xp.ascontiguousarray(scale, dtype=out.dtype)
    if xp is np:
        _unpack_cpu(_planes(p, kind), _CODES[kind], r0, r1, scale, out)
    else:  # the plain path for other arrays (CuPy): on the host; the CUDA engine unpacks on the device
        out[...] = xp.asarray(unpack(p.get(), kind, r0, r1, scale.get(), dtype=out.dtype))
    return out


# Rows unpacked at a time: the two float blocks stay small (256 x 256 floats = 256 KB each, so
# they are not what peak memory is made of), and the gemm per block still runs near peak:
# 256, 1024 and 4096 rows timed the same here.
BLOCK_ROWS = 256

def packed_gradient(L, s, s_kind, t, t_kind, rows, *, block_rows=None, dtype=np.float32, xp=np, start=0):
    """``G = sum_n L_n s(n)^T t(n)`` and ``g = sum_n L_n s(n)`` from packed ``s`` (m) and ``t`` (d).

    The sums run over rows ``start .. rows - 1`` (``start`` a multiple of 8).

    Returns ``(G, g)`` of ``dtype``, shapes ``(m, d)`` and ``(m,)``. Unpack-then-BLAS over blocks
    of ``block_rows`` rows (default :data:`BLOCK_ROWS`, rounded down to a multiple of 8); see the
    module docstring for why.
    """
    m, d = s.shape[-1], t.shape[-1]
    G = xp.zeros((m, d), dtype=dtype)
    g = xp.zeros(m, dtype=dtype)
    L = xp.asarray(L, dtype=dtype).reshape(-1)
    block_rows = BLOCK_ROWS if block_rows is None else block_rows
    block_rows = max(8, block_rows - block_rows % 8)
    for r0 in range(start, rows, block_rows):
        r1 = min(rows, r0 + block_rows)
        S = unpack(s, s_kind, r0, r1, scale=L[r0:r1], dtype=dtype, xp=xp)  # L_n s(n)
        T = unpack(t, t_kind, r0, r1, dtype=dtype, xp=xp)
        G += S.T @ T
        g += S.sum(axis=0)
    return G, g
