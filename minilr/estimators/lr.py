"""LR (Eq. 1-2) and ALR (Eq. 3): noise on each layer's output, one score per row.

For the ``n``-th row (copy x sample) with centred loss ``L_n``::

    LR:   g_W[i, j] = sum_n L_n * x_j(n) * eps_i(n) / sigma_i
          g_b[i]    = sum_n L_n * eps_i(n) / sigma_i
    ALR:  g_W[i, j] = sum_n L_n * sign(x_j(n)) * sign(eps_i(n))      (Eq. 3)
          g_b[i]    = sum_n L_n * sign(eps_i(n))                      (x_0 = 1 is the bias input)
    both: g_sigma[i] = sum_n L_n * (eps_i(n)^2 - 1) / sigma_i         (kept exact, Eq. 3)

The sums are divided by the number of rows by the caller. Each weight sum is one matrix product
``(L * eps)^T @ x``.

What a record keeps between the forward pass and the gradient:

* LR: float ``x`` and ``eps`` (the product needs their values), as the forward pass's blocks.
* ALR: only bits, packed along the rows: ``sign(eps)`` in 1 bit, ``sign(x)`` in 1 bit when the
  input is a ReLU-like output (never negative) or 2 bits otherwise. The exact sigma score needs
  ``|eps|``: when sigma is learned the gradient *regenerates* ``eps`` from its counter-based seed
  (one extra noise draw, no storage); when it is not, nothing beyond the bits is kept.
* The first layer's input is the batch itself, shared by all copies: kept once, ``(B, d)``.
"""
from __future__ import annotations

import numpy as np

from .. import signbits
from .base import draw_noise


class LRSite:
    """One LR-perturbed layer: streams blocks of copies forward, keeps what its gradient needs."""

    def __init__(self, W, b, sigma, learn_sigma, copies, B, k0, key, antithetic, approx, nonneg,
                 first, xp):
        m, d = W.shape
        self.W, self.b, self.sigma = W, b, sigma
        self.learn_sigma, self.approx, self.first = learn_sigma, approx, first
        self.copies, self.B, self.k0, self.key, self.antithetic = copies, B, k0, key, antithetic
        self.xp, self.dtype = xp, W.dtype
        self.x_kind = signbits.kind_for(nonneg)
        rows = copies * B
        self.x_shared = None
        if approx:
            self.s = signbits._empty("pm1", rows, m, xp)
            self.t = None if first else signbits._empty(self.x_kind, rows, d, xp)
        else:
            # float records: the blocks themselves, kept as drawn (no copy into one big array)
            self.eps_blocks, self.x_blocks = [], []

    def _noise(self, c0, c1):
        m = self.W.shape[0]
        eps = draw_noise(self.key, self.k0 + c0, self.k0 + c1, self.B * m, self.antithetic, self.xp)
        return eps.reshape(c1 - c0, self.B, m).astype(self.dtype, copy=False)

    def forward_block(self, h, c0, c1):
        """``v = h W^T + b + sigma * eps`` for copies ``c0 .. c1 - 1``; records signs or floats."""
        xp = self.xp
        m, d = self.W.shape
        eps = self._noise(c0, c1)
        if h.ndim == 2:  # the shared batch, (B, d)
            if self.x_shared is None:
                self.x_shared = xp.sign(h) if self.approx else h
            v = h @ self.W.T + self.b
        else:
            v = (h.reshape(-1, d) @ self.W.T).reshape(c1 - c0, self.B, m)
            v += self.b
            if self.approx:
                signbits.pack(h.reshape(-1, d), self.x_kind, out=self.t, row0=c0 * self.B, xp=xp)
            else:
                self.x_blocks.append(h)
        if self.approx:
            signbits.pack(eps.reshape(-1, m), "pm1", out=self.s, row0=c0 * self.B, xp=xp)
            eps *= self.sigma
            eps += v
            return eps
        self.eps_blocks.append(eps)
        if v.ndim == 2:
            v = xp.broadcast_to(v, eps.shape) + self.sigma * eps
        else:
            v += self.sigma * eps
        return v

    def gradient(self, Lc):
        """Unnormalised sums over rows for weight, bias (and sigma if learned); ``Lc`` is (K, B)."""
        xp = self.xp
        m = self.W.shape[0]
        K, B = self.copies, self.B
        if self.approx and self.first:
            A = xp.zeros((B, m), dtype=self.dtype)  # A[b, i] = sum_k L[k, b] sign(eps_i(k, b))
            Lf = Lc.reshape(-1)
            step = max(1, signbits.BLOCK_ROWS // B // 8) * 8
            for c0 in range(0, K, step):
                c1 = min(K, c0 + step)
                S = signbits.unpack(self.s, "pm1", c0 * B, c1 * B, scale=Lf[c0 * B:c1 * B],
                                    dtype=self.dtype, xp=xp)
                A += S.reshape(c1 - c0, B, m).sum(axis=0)
            gW, gb = A.T @ self.x_shared, A.sum(axis=0)
        elif self.approx:
            gW, gb = signbits.packed_gradient(Lc, self.s, "pm1", self.t, self.x_kind, K * B,
                                              dtype=self.dtype, xp=xp)
        else:
            gW, gb, c0 = 0, 0, 0
            for j, eps in enumerate(self.eps_blocks):
                c1 = c0 + eps.shape[0]
                w = Lc[c0:c1, :, None] * eps  # (kb, B, m)
                if self.first:
                    gW = gW + w.sum(axis=0).T @ self.x_shared
                else:
                    x = self.x_blocks[j]
                    gW = gW + w.reshape(-1, m).T @ x.reshape(-1, x.shape[-1])
                gb = gb + w.sum(axis=(0, 1))
                c0 = c1
            gW = gW / self.sigma[:, None]
            gb = gb / self.sigma
        out = {"weight": gW, "bias": gb}
        if self.learn_sigma:
            out["sigma"] = self._sigma_sum(Lc) / self.sigma
        return out

    def _sigma_sum(self, Lc):
        """``sum_n L_n (eps_n^2 - 1)``; ALR draws ``eps`` again, block by block, from its seed."""
        if not self.approx:
            total, c0 = 0, 0
            for eps in self.eps_blocks:
                c1 = c0 + eps.shape[0]
                total = total + (Lc[c0:c1, :, None] * (eps * eps - 1)).sum(axis=(0, 1))
                c0 = c1
            return total
        total = self.xp.zeros(self.W.shape[0], dtype=self.dtype)
        step = max(8, (signbits.BLOCK_ROWS // self.B) // 8 * 8)
        for c0 in range(0, self.copies, step):
            c1 = min(self.copies, c0 + step)
            eps = self._noise(c0, c1)
            total += (Lc[c0:c1, :, None] * (eps * eps - 1)).sum(axis=(0, 1))
        return total


class LR:
    """Noise on every layer's output. ``approx=True`` is ALR (Eq. 3)."""

    def __init__(self, approx: bool = False):
        self.approx = approx
        self.name = "alr" if approx else "lr"

    def modes(self, n_linear: int, es_layers: int):
        return ["lr"] * n_linear
