"""ES and AES: noise on each layer's weights, one perturbation per copy shared by the batch.

Copy ``k`` runs the batch through ``W + sigma E_k`` (``sigma_i`` scales row ``i``), ``b + sigma e_k``.
With ``Lk = sum_b L_{k,b}`` (centred)::

    ES:   g_W = sum_k Lk * E_k / sigma          g_b = sum_k Lk * e_k / sigma
    AES:  g_W = sum_k Lk * sign(E_k)            g_b = sum_k Lk * sign(e_k)
    both: g_sigma[i] = sum_k Lk * (sum_j E_k[i, j]^2 + e_k[i]^2 - (d + 1)) / sigma_i

(the last is the score of ``N(W_i, sigma_i^2 I)`` over the ``d + 1`` numbers of neuron ``i``).
``E_k`` and ``e_k`` are drawn together as ``(m, d + 1)`` numbers per copy.

**Keep the noise, or only its seed.** An ES perturbation is weight-sized: keeping one per copy
costs ``K m (d + 1)`` numbers (2 GB for a 784-256 layer at K = 2000). The noise is counter-based
(:mod:`minilr.noise`), so the gradient can draw the very same ``E_k`` again, block by block, and
form ``sum_k Lk * E_k`` (or its signs, for AES) as it goes: one extra noise draw per step buys a
memory that does not grow with the copies (the trick of Salimans et al., 2017, who send seeds
instead of perturbations between workers). Noise is most of an ES step, so a site keeps its
noise when it fits in :data:`KEEP_FLOATS` numbers (small layers, the common case) and redraws it
otherwise: measured on 784-256-256-10, B=50, K=200, redrawing costs 1.4x the step time and cuts
the peak memory from 223 MB to 18 MB (2.2 GB to 18 MB at K = 2000).
"""
from __future__ import annotations

from .base import BLOCK_FLOATS_EXACT, draw_noise

# A site keeps its drawn noise for the gradient when it holds at most this many numbers (64 MB in
# float32); larger ones draw it again from the seed.
KEEP_FLOATS = 1 << 24


class ESSite:
    """One ES-perturbed layer: its weight and bias noise, per copy, drawn from its seed."""

    def __init__(self, W, b, sigma, learn_sigma, copies, B, k0, key, antithetic, approx, nonneg,
                 first, xp):
        self.W, self.b, self.sigma = W, b, sigma
        self.learn_sigma, self.approx = learn_sigma, approx
        self.copies, self.B, self.k0, self.key, self.antithetic = copies, B, k0, key, antithetic
        self.xp, self.dtype = xp, W.dtype
        m, d = W.shape
        self.kept = {} if copies * m * (d + 1) <= KEEP_FLOATS else None  # noise blocks by first copy

    parallel = False  # its blocks run one at a time (BLAS threads each product)

    def fuses(self, act):
        """ES applies no activation itself."""
        return False

    def _noise(self, c0, c1):
        """``[E_k | e_k]`` for copies ``c0 .. c1 - 1`` of this chunk, shape ``(c1 - c0, m, d + 1)``:
        the same numbers whenever they are drawn."""
        m, d = self.W.shape
        Eb = draw_noise(self.key, self.k0 + c0, self.k0 + c1, m * (d + 1), self.antithetic, self.xp)
        return Eb.reshape(c1 - c0, m, d + 1).astype(self.dtype, copy=False)

    def forward_block(self, h, c0, c1, act=None):
        xp = self.xp
        m, d = self.W.shape
        kb = c1 - c0
        Eb = self._noise(c0, c1)
        if self.kept is not None:
            self.kept[c0] = Eb
        E, e = Eb[..., :d], Eb[..., d]
        if h.ndim == 2:  # shared input (B, d): one GEMM for all copies
            pert = (h @ E.reshape(kb * m, d).T).reshape(self.B, kb, m).transpose(1, 0, 2)
            return (h @ self.W.T + self.b)[None] + self.sigma * (pert + e[:, None, :])
        # (kb, B, d): one small GEMM per copy
        return h @ self.W.T + self.b + self.sigma * (xp.matmul(h, E.transpose(0, 2, 1)) + e[:, None, :])

    def gradient(self, Lc):
        xp = self.xp
        m, d = self.W.shape
        Lk = Lc.sum(axis=1)  # (K,)
        g = xp.zeros((m, d + 1), dtype=self.dtype)
        gs = xp.zeros(m, dtype=self.dtype) if self.learn_sigma else None
        for c0, Eb in self._blocks():
            c1 = c0 + Eb.shape[0]
            if self.learn_sigma:
                gs += Lk[c0:c1] @ ((Eb * Eb).sum(axis=-1) - (d + 1))
            # the noise is never exactly 0 (minilr.noise), so sign() is +-1, as AES needs
            g += xp.tensordot(Lk[c0:c1], xp.sign(Eb) if self.approx else Eb, axes=1)
        if not self.approx:
            g /= self.sigma[:, None]
        out = {"weight": xp.ascontiguousarray(g[:, :d]), "bias": xp.ascontiguousarray(g[:, d])}
        if self.learn_sigma:
            out["sigma"] = gs / self.sigma
        return out

    def _blocks(self):
        """``(c0, [E | e])`` over this chunk's copies: the kept blocks, or the same noise redrawn."""
        if self.kept is not None:
            yield from sorted(self.kept.items())
            return
        m, d = self.W.shape
        step = max(2, (BLOCK_FLOATS_EXACT // (m * (d + 1))) // 2 * 2)  # even: whole antithetic pairs
        for c0 in range(0, self.copies, step):
            yield c0, self._noise(c0, min(self.copies, c0 + step))


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
