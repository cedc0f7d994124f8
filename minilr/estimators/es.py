"""ES and AES: noise on each layer's weights, one perturbation per copy shared by the batch.

Copy ``k`` runs the batch through ``W + sigma E_k`` (``sigma_i`` scales row ``i``), ``b + sigma e_k``.
With ``Lk = sum_b L_{k,b}`` (centred)::

    ES:   g_W = sum_k Lk * E_k / sigma          g_b = sum_k Lk * e_k / sigma
    AES:  g_W = sum_k Lk * sign(E_k)            g_b = sum_k Lk * sign(e_k)
    both: g_sigma[i] = sum_k Lk * (sum_j E_k[i, j]^2 + e_k[i]^2 - (d + 1)) / sigma_i

(the last is the score of ``N(W_i, sigma_i^2 I)`` over the ``d + 1`` numbers of neuron ``i``).
``E_k`` and ``e_k`` are drawn together as ``(m, d + 1)`` numbers per copy. ES keeps them as floats;
AES keeps ``sign`` in 1 bit packed along the copies; the per-copy sigma score ``(K, m)`` is kept
only when sigma is learned.
"""
from __future__ import annotations

import numpy as np

from .. import signbits
from .base import draw_noise


class ESSite:
    """One ES-perturbed layer: its weight and bias noise, per copy."""

    def __init__(self, W, b, sigma, learn_sigma, copies, B, k0, key, antithetic, approx, nonneg,
                 first, xp):
        m, d = W.shape
        self.W, self.b, self.sigma = W, b, sigma
        self.learn_sigma, self.approx = learn_sigma, approx
        self.copies, self.B, self.k0, self.key, self.antithetic = copies, B, k0, key, antithetic
        self.xp, self.dtype = xp, W.dtype
        if approx:
            self.bits = signbits._empty("pm1", copies, m * (d + 1), xp)
        else:
            self.E = xp.empty((copies, m, d + 1), dtype=self.dtype)
        self.score = xp.empty((copies, m), dtype=self.dtype) if learn_sigma else None

    parallel = False  # its blocks run one at a time (BLAS threads each product)

    def fuses(self, act):
        """ES applies no activation itself."""
        return False

    def forward_block(self, h, c0, c1, act=None):
        xp = self.xp
        m, d = self.W.shape
        kb = c1 - c0
        Eb = draw_noise(self.key, self.k0 + c0, self.k0 + c1, m * (d + 1), self.antithetic, xp)
        Eb = Eb.reshape(kb, m, d + 1).astype(self.dtype, copy=False)
        E, e = Eb[..., :d], Eb[..., d]
        if h.ndim == 2:  # shared input (B, d): one GEMM for all copies
            pert = (h @ E.reshape(kb * m, d).T).reshape(self.B, kb, m).transpose(1, 0, 2)
            v = (h @ self.W.T + self.b)[None] + self.sigma * (pert + e[:, None, :])
        else:  # (kb, B, d): one small GEMM per copy
            v = h @ self.W.T + self.b + self.sigma * (xp.matmul(h, E.transpose(0, 2, 1)) + e[:, None, :])
        if self.learn_sigma:
            self.score[c0:c1] = (Eb * Eb).sum(axis=-1) - (d + 1)
        if self.approx:
            signbits.pack(Eb.reshape(kb, -1), "pm1", out=self.bits, row0=c0, xp=xp)
        else:
            self.E[c0:c1] = Eb
        return v

    def gradient(self, Lc):
        xp = self.xp
        m, d = self.W.shape
        Lk = Lc.sum(axis=1)  # (K,)
        if self.approx:
            g = xp.zeros(m * (d + 1), dtype=self.dtype)
            step = max(8, (signbits.BLOCK_ROWS * 256 // (m * (d + 1))) // 8 * 8)
            for c0 in range(0, self.copies, step):
                c1 = min(self.copies, c0 + step)
                g += Lk[c0:c1] @ signbits.unpack(self.bits, "pm1", c0, c1, dtype=self.dtype, xp=xp)
            g = g.reshape(m, d + 1)
        else:
            g = xp.tensordot(Lk, self.E, axes=1) / self.sigma[:, None]
        out = {"weight": xp.ascontiguousarray(g[:, :d]), "bias": xp.ascontiguousarray(g[:, d])}
        if self.learn_sigma:
            out["sigma"] = (Lk @ self.score) / self.sigma
        return out


class ES:
    """Noise on every layer's weights. ``approx=True`` is AES."""

    def __init__(self, approx: bool = False):
        self.approx = approx
        self.name = "aes" if approx else "es"

    def modes(self, n_linear: int, es_layers: int):
        return ["es"] * n_linear

    def fused(self, xp) -> bool:
        """ES has no fused path: BLAS threads its products."""
        return False
