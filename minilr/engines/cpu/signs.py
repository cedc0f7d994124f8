"""The CPU engine's packed-sign sums (ALR, Eq. 3): fixed parts of ``G`` or of the rows side by side,
products accumulated in place (``sgemm`` with ``beta = 1``), whole rows unpacked by
:func:`minilr.signbits._unpack_cpu` and the bias sum read from the bits, so what is alive beyond the
bits is one ``G`` and two small blocks per part (ALR's peak memory); the first layer's sums come
straight from the bits (:func:`sign_sum_copies`). Tested equal to :func:`minilr.signbits.packed_gradient`
and to :func:`minilr.estimators.alr_sums` (``tests/test_signbits.py``, ``tests/test_engines.py``).
"""
from __future__ import annotations

import numba
import numpy as np

from ...signbits import _CODES, _planes, _unpack_cpu

@numba.njit(cache=True, nogil=True)
def _unpack_cols_cpu(p, code, r0, r1, c0, c1, scale, out, colsum):
    """Columns ``c0 .. c1 - 1`` of :func:`_unpack_cpu`'s rows into ``out`` (reused, ``r1 - r0`` rows
    used), each value times ``scale[r - r0]``; adds every written value into ``colsum[c - c0]``
    when ``colsum`` is not empty (ALR's bias sum, in the same pass). About 2x slower than
    :func:`_unpack_cpu` on whole rows (measured; sliced rows vectorise worse), so whole-row
    blocks use that one."""
    summed = colsum.shape[0] > 0
    w = c1 - c0
    for r in range(r0, r1):
        byte = r >> 3
        sh = np.uint8(r & 7)
        f = scale[r - r0]
        pos = p[0, byte, c0:c1]
        row = out[r - r0, :w]
        if code == 0:
            for c in range(w):
                row[c] = f if (pos[c] >> sh) & np.uint8(1) else -f
        elif code == 1:
            for c in range(w):
                row[c] = f if (pos[c] >> sh) & np.uint8(1) else f * 0
        else:
            neg = p[1, byte, c0:c1]
            for c in range(w):
                bit = (pos[c] >> sh) & np.uint8(1)
                nbit = (neg[c] >> sh) & np.uint8(1)
                row[c] = f if bit else (-f if nbit else f * 0)
        if summed:
            for c in range(w):
                colsum[c] += row[c]


@numba.njit(cache=True, nogil=True)
def _sign_sum_copies_cpu(p, L, B, r0, r1, c0, c1, A):
    """``A[n % B, c] += L[n] * (+1 or -1 by the "pm1" bit)`` for rows ``r0 .. r1 - 1`` in order,
    columns ``c0 .. c1 - 1``: the first layer's ``sum_k L sign(eps)`` straight from the bits."""
    w = c1 - c0
    for r in range(r0, r1):
        a = A[r % B, c0:c1]
        pos = p[r >> 3, c0:c1]
        sh = np.uint8(r & 7)
        l = L[r]
        for c in range(w):
            a[c] += l if (pos[c] >> sh) & np.uint8(1) else -l


@numba.njit(cache=True, nogil=True)
def _sign_sum_rows_cpu(p, L, B, r0, r1, A):
    """:func:`_sign_sum_copies_cpu` over whole rows (C layout; ~5% faster than the sliced one)."""
    for r in range(r0, r1):
        a = A[r % B]
        pos = p[r >> 3]
        sh = np.uint8(r & 7)
        l = L[r]
        for c in range(a.shape[0]):
            a[c] += l if (pos[c] >> sh) & np.uint8(1) else -l


# Floats unpacked at a time (both blocks) per part of :func:`packed_gradient_block` (the fast CPU
# path): 256 KB, alive per running part on top of all the bits, so kept small for ALR's peak.
GRAD_BLOCK_FLOATS = 1 << 16

_NONE = np.empty(0, np.float32)


def sign_sum_copies(s, L, B, A, c0, c1):
    """``A[b, i] += sum_k L[k, b] sign(eps_i)`` over all rows of the packed ``"pm1"`` bits ``s``,
    for columns ``c0 .. c1 - 1`` (``A``: (B, m), ``L``: the rows' losses, flat). NumPy only.

    Reads the bits directly: no float copy of the signs. Rows are summed in order, so a column's
    sum does not depend on how the columns are split among threads."""
    L = np.ascontiguousarray(L, A.dtype).reshape(-1)
    if c0 == 0 and c1 == s.shape[-1]:
        _sign_sum_rows_cpu(s, L, B, 0, L.shape[0], A)
    else:
        _sign_sum_copies_cpu(s, L, B, 0, L.shape[0], c0, c1, A)
    return A


@numba.njit(cache=True, nogil=True)
def _unpack_pair_cpu(sp, s_code, tp, t_code, r0, r1, i0, i1, j0, j1, L, S, T, g, ones, none):
    """One block of :func:`packed_gradient_block`: both unpackings in one call (less dispatch)."""
    _unpack_cols_cpu(sp, s_code, r0, r1, i0, i1, L[r0:r1], S, g)
    _unpack_cols_cpu(tp, t_code, r0, r1, j0, j1, ones, T, none)


def packed_gradient_block(L, s, s_kind, t, t_kind, *, G, g, rows, cols, gemm=None, block_floats=None):
    """Add rows ``r_lo .. r_hi - 1``'s share of :func:`packed_gradient` into ``G[i0:i1, j0:j1]``
    (and into ``g[i0:i1]`` when ``j0 == 0``), in place, for ``rows = (r_lo, r_hi)`` and ``cols =
    (i0, i1, j0, j1)``; NumPy only (the fast CPU path).

    Threads can then split the *outputs* and share one ``G`` (no per-part copies to add up:
    ALR's peak memory), or split the rows into per-part ``G``s where ``G`` is small. The two
    unpacked blocks (about ``block_floats`` floats together, default :data:`GRAD_BLOCK_FLOATS`)
    are allocated once per call and reused; ``L`` is folded into ``s`` and the bias sum ``g`` into
    the same unpacking pass. ``gemm(C, A, B)`` does ``C += A^T B`` (default: a product and an add).
    """
    (r_lo, r_hi), (i0, i1, j0, j1) = rows, cols
    dtype = G.dtype
    L = np.ascontiguousarray(L, dtype).reshape(-1)
    budget = GRAD_BLOCK_FLOATS if block_floats is None else block_floats
    block_rows = max(8, budget // (i1 - i0 + j1 - j0) // 8 * 8)
    n = min(block_rows, r_hi - r_lo)
    S = np.empty((n, i1 - i0), dtype)
    T = np.empty((n, j1 - j0), dtype)
    none, ones = _NONE.astype(dtype, copy=False), np.ones(n, dtype)
    Gp, gp = G[i0:i1, j0:j1], (g[i0:i1] if j0 == 0 else none)
    sp, tp, sc, tc = _planes(s, s_kind), _planes(t, t_kind), _CODES[s_kind], _CODES[t_kind]
    whole_s, whole_t = i1 - i0 == s.shape[-1], j1 - j0 == t.shape[-1]
    if whole_s and j0 == 0 and s_kind == "pm1":  # g straight from the bits, in row order
        _sign_sum_rows_cpu(s, L, 1, r_lo, r_hi, g[None])
        gp = none
    for r0 in range(r_lo, r_hi, block_rows):
        r1 = min(r_hi, r0 + block_rows)
        k = r1 - r0
        if whole_s and whole_t and gp.shape[0] == 0:  # whole rows: the faster unpacking
            _unpack_cpu(sp, sc, r0, r1, L[r0:r1], S)
            _unpack_cpu(tp, tc, r0, r1, ones, T)
        else:
            _unpack_pair_cpu(sp, sc, tp, tc, r0, r1, i0, i1, j0, j1, L, S, T, gp, ones, none)
        if gemm is None:
            Gp += S[:k].T @ T[:k]
        else:
            gemm(Gp, S[:k], T[:k])
    return G, g
