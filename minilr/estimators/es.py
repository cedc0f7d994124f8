"""ES and AES: noise on each layer's weights, one perturbation per copy shared by the batch.

Copy ``k`` runs the batch through ``W + sigma E_k`` (``sigma_i`` scales row ``i``), ``b + sigma e_k``.
With ``Lk = sum_b L_{k,b}`` (centred)::

    ES:   g_W = sum_k Lk * E_k / sigma          g_b = sum_k Lk * e_k / sigma
    AES:  g_W = sum_k Lk * sign(E_k)            g_b = sum_k Lk * sign(e_k)
    both: g_sigma[i] = sum_k Lk * (sum_j E_k[i, j]^2 + e_k[i]^2 - (d + 1)) / sigma_i

(the last is the score of ``N(W_i, sigma_i^2 I)`` over the ``d + 1`` numbers of neuron ``i``).
"""
from __future__ import annotations

from .base import draw_noise


class ESSite:
    """What one ES-perturbed layer keeps: its weight and bias noise."""

    def __init__(self, E, e, sigma, approx, xp):
        self.sigma = sigma
        self.approx = approx
        d = E.shape[-1]
        self.score_sigma = (E * E).sum(axis=-1) + e * e - (d + 1)  # (K, m)
        self.E, self.e = (xp.sign(E), xp.sign(e)) if approx else (E, e)
        self.xp = xp

    @classmethod
    def forward(cls, h, W, b, sigma, copies, rng, dtype, antithetic, approx, xp):
        m, d = W.shape
        E = draw_noise(rng, (copies, m, d), dtype, antithetic, xp)
        e = draw_noise(rng, (copies, m), dtype, antithetic, xp)
        if h.ndim == 2:  # shared input (B, d): one GEMM for all copies
            B = h.shape[0]
            pert = (h @ E.reshape(copies * m, d).T).reshape(B, copies, m).transpose(1, 0, 2)
            v = (h @ W.T + b)[None] + sigma * (pert + e[:, None, :])
        else:  # (K, B, d): one small GEMM per copy
            v = h @ W.T + b + sigma * (xp.matmul(h, E.transpose(0, 2, 1)) + e[:, None, :])
        return v, cls(E, e, sigma, approx, xp)

    def gradient(self, Lc):
        xp = self.xp
        Lk = Lc.sum(axis=1)  # (K,)
        gW = xp.tensordot(Lk, self.E, axes=1)
        gb = Lk @ self.e
        if not self.approx:
            gW = gW / self.sigma[:, None]
            gb = gb / self.sigma
        gs = (Lk @ self.score_sigma) / self.sigma
        return {"weight": gW, "bias": gb, "sigma": gs}


class ES:
    """Noise on every layer's weights. ``approx=True`` is AES."""

    def __init__(self, approx: bool = False):
        self.approx = approx
        self.name = "aes" if approx else "es"

    def modes(self, n_linear: int, es_layers: int):
        return ["es"] * n_linear
