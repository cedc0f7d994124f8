"""Which algorithm forms G = sum_n L_n s(n)^T t(n) from packed signs fastest? (minilr.signbits)

Candidates, all exact for the same inputs:
  unpack-then-BLAS  minilr.signbits.packed_gradient: unpack a block of rows to float32, sgemm
  byte table        per 8-row group, a 256-entry table of sums of L over bit masks; then
                    G[i, j] += 2 * T[s & t] - T[t]  (s = 1 bit of sign(eps), t = 1 bit of a ReLU output)
  rank-1 rows       per row, G += (L_n s(n)) t(n)^T over the set bits of t(n), in Numba

Run: python benchmarks/packed_gradient.py [rows m d]   (prints ms per call, median of 5)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numba
import numpy as np

from minilr import signbits as sb

sys.path.insert(0, str(Path(__file__).parent))
from worker import _median_time  # noqa: E402  (the benchmarks' one timer)


@numba.njit(cache=True)
def byte_table(L, s, t, rows):
    nb, m = s.shape
    d = t.shape[1]
    G = np.zeros((m, d), np.float32)
    T = np.zeros(256, np.float32)
    for g in range(nb):
        T[0] = 0
        for b in range(8):  # T[mask] = sum of L over the rows in mask
            r = 8 * g + b
            v = L[r] if r < rows else np.float32(0)
            for msk in range(1 << b, 1 << (b + 1)):
                T[msk] = T[msk - (1 << b)] + v
        for i in range(m):
            si = s[g, i]
            for j in range(d):
                tj = t[g, j]
                G[i, j] += 2 * T[si & tj] - T[tj]
    return G


@numba.njit(cache=True)
def rank1_rows(L, s, t, rows):
    m, d = s.shape[1], t.shape[1]
    G = np.zeros((m, d), np.float32)
    a = np.empty(m, np.float32)
    for r in range(rows):
        g, sh = r >> 3, r & 7
        for i in range(m):
            a[i] = L[r] if (s[g, i] >> sh) & 1 else -L[r]
        for j in range(d):
            if (t[g, j] >> sh) & 1:
                for i in range(m):
                    G[i, j] += a[i]
    return G


def _time(f, reps=5):
    """Median milliseconds of ``f()`` after one warm-up call (which also JIT-compiles)."""
    return 1e3 * _median_time(f, reps, warm=1)


def main(rows=20000, m=256, d=256):
    rng = np.random.default_rng(0)
    s = sb.pack(rng.standard_normal((rows, m)).astype(np.float32), "pm1")
    t = sb.pack(np.maximum(rng.standard_normal((rows, d)), 0).astype(np.float32), "01")
    L = rng.integers(-100, 101, rows).astype(np.float32)  # integers: all three agree exactly
    ref = sb.packed_gradient(L, s, "pm1", t, "01", rows)[0]
    assert np.array_equal(byte_table(L, s, t, rows), ref) and np.array_equal(rank1_rows(L, s, t, rows), ref)
    res = {
        "unpack-then-BLAS": _time(lambda: sb.packed_gradient(L, s, "pm1", t, "01", rows)),
        "byte table": _time(lambda: byte_table(L, s, t, rows), reps=2),
        "rank-1 rows": _time(lambda: rank1_rows(L, s, t, rows), reps=2),
    }
    base = res["unpack-then-BLAS"]
    print(f"packed gradient, rows={rows}, {m} x {d}:")
    for k, v in res.items():
        print(f"  {k:18s} {v:9.1f} ms   {v / base:6.1f}x")
    return res


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
