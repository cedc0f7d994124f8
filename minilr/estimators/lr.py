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

Two paths, one arithmetic: on NumPy an LR site runs fused kernels (:mod:`minilr.kernels`: noise
drawn inside the pass, the activation fused, ``L * eps`` formed in place) over blocks of copies
side by side on every core (ALR: its packed sums over fixed parts of ``G`` or of the rows, its
ReLU pass packing the next layer's input signs too); the plain ``xp`` code beside them is what
CuPy runs and what the tests compare them with.
"""
from __future__ import annotations

import threading

import numpy as np

from .. import kernels, noise, signbits
from .base import draw_noise


FAST = True
# ALR's packed-gradient sums on the fast path: this many fixed parts (of G's wider side, or of
# the rows), run side by side. Fixed by the sizes, never by the thread count, so the bits are
# the same on 1 or 3 threads. Two parts, not four: each part's G or blocks are alive at once,
# and ALR's peak memory is made of them (K=2000, B=10: 6.5 MB with four row parts, 5.0 MB now).
SIGN_PARTS = 2
# Up to this many weights (512 KB of float32) the packed sum splits the rows instead, one G per
# part added in order: no bits unpacked twice (a 256 x 256 layer: ~2 ms less CPU per step at
# B=50, K=200) for one extra G alive. Larger G: split G, no copies.
SMALL_G = 1 << 17


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
        # the fused CPU path (exact LR on NumPy); FAST = False forces the plain path everywhere.
        # Its blocks may run on several threads at once (``parallel``, see base.noisy_forward).
        self.fast = self.parallel = FAST and xp is np
        rows = copies * B
        self.x_shared = None
        self._pre, self._lock = None, threading.Lock()  # fast path: the shared batch's h W^T
        # ALR fast path: the next site's input bits, packed by this site's fused ReLU pass
        self.next_t, self.t_packed = None, False
        self.arena, self.tag = None, 0  # ALR fast path: where its block outputs live (noisy_forward)
        if approx:
            self.s = signbits._empty("pm1", rows, m, xp)
            self.t = None if first else signbits._empty(self.x_kind, rows, d, xp)
        else:
            # float records: the blocks themselves, kept as drawn (no copy into one big array),
            # by first copy (blocks may finish in any order)
            self.eps_blocks, self.x_blocks = {}, {}

    def _noise(self, c0, c1):
        m = self.W.shape[0]
        eps = draw_noise(self.key, self.k0 + c0, self.k0 + c1, self.B * m, self.antithetic, self.xp)
        return eps.reshape(c1 - c0, self.B, m).astype(self.dtype, copy=False)

    def fuses(self, act):
        """Whether :meth:`forward_block` can apply the activation layer ``act`` itself."""
        return self.fast and act is not None and getattr(act, "name", None) in kernels.ACTS

    def link_next(self, act, nxt):
        """ALR fast path: when this site's pass applies the ReLU ``act`` whose output is ``nxt``'s
        input, pack that input's signs in the same pass (one pass over the block, not two)."""
        if (self.fast and self.approx and self.fuses(act) and act.name == "relu"
                and isinstance(nxt, LRSite) and nxt.fast and nxt.approx and nxt.x_kind == "01"):
            self.next_t, nxt.t_packed = nxt.t, True

    def forward_block(self, h, c0, c1, act=None):
        """``v = h W^T + b + sigma * eps`` for copies ``c0 .. c1 - 1``; records signs or floats.

        Returns ``act(v)`` when given the activation layer ``act`` (only if :meth:`fuses` says so).
        """
        if self.fast:
            return self._forward_fused(h, c0, c1, "identity" if act is None else act.name)
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
                self.x_blocks[c0] = h
        if self.approx:
            signbits.pack(eps.reshape(-1, m), "pm1", out=self.s, row0=c0 * self.B, xp=xp)
            eps *= self.sigma
            eps += v
            return eps
        self.eps_blocks[c0] = eps
        if v.ndim == 2:
            v = xp.broadcast_to(v, eps.shape) + self.sigma * eps
        else:
            v += self.sigma * eps
        return v

    def _forward_fused(self, h, c0, c1, act):
        """The fast path of :meth:`forward_block`: one GEMM, then one fused pass (noise, bias, act)."""
        m, d = self.W.shape
        shape = (c1 - c0, self.B, m)
        # LR keeps its blocks till the gradient: they come from (and go back to) kernels.scratch
        # ALR's blocks die with the block: per-thread arrays reused, by layer parity (input and
        # output of a layer differ), from the pass's arena when it has one
        if not self.approx:
            out = kernels.scratch(shape, self.dtype)
        elif self.arena is not None:
            out = self.arena.get(self.tag, shape, self.dtype)
        else:
            out = np.empty(shape, self.dtype)
        if h.ndim == 2:  # the shared batch: v is (B, m), broadcast over the copies by the kernel
            with self._lock:  # once for all blocks (they may run side by side)
                if self._pre is None:
                    self.x_shared = np.sign(h) if self.approx else h
                    self._pre = h @ self.W.T
            v = self._pre
        else:
            if self.approx:
                if not self.t_packed:
                    signbits.pack(h.reshape(-1, d), self.x_kind, out=self.t, row0=c0 * self.B)
            else:
                self.x_blocks[c0] = h
            v = out  # act(v) overwrites v
            np.matmul(h.reshape(-1, d), self.W.T, out=out.reshape(-1, m))
        if self.approx:  # sign(eps) packed straight into its rows of the record
            rows = slice(c0 * self.B // 8, -(-c1 * self.B // 8))
            hbits = None if self.next_t is None or act != "relu" else self.next_t[rows]
            kernels.lr_forward(v, self.b, self.sigma, act, None, out, self.key, self.k0 + c0,
                               self.antithetic, bits=self.s[rows], hbits=hbits)
        else:
            self.eps_blocks[c0] = eps = kernels.scratch(shape, self.dtype)
            kernels.lr_forward(v, self.b, self.sigma, act, eps, out, self.key, self.k0 + c0,
                               self.antithetic)
        return out

    def buffers(self):
        """The float blocks this record holds (for :func:`minilr.kernels.recycle` once it is dead)."""
        return list(self.eps_blocks.values()) + list(self.x_blocks.values()) if not self.approx else []

    def _gradient_fused(self, Lc):
        """The fast path of :meth:`gradient`, block-parallel; turns the kept ``eps`` into ``L * eps``."""
        m, d = self.W.shape
        parts = {}

        def block(c0):
            eps = self.eps_blocks[c0]
            Lb = Lc[c0:c0 + eps.shape[0]]
            if self.first:  # A[b] = sum_k L eps, then one product with the shared batch
                A = np.zeros((self.B, m), dtype=self.dtype)
                S = np.zeros_like(A) if self.learn_sigma else None
                parts[c0] = (kernels.sum_copies(eps, Lb, A, S), S)
            else:
                w = eps.reshape(-1, m)
                gb, gs = kernels.scale_rows(w, Lb, self.learn_sigma)  # w = L * eps now
                parts[c0] = (w.T @ self.x_blocks[c0].reshape(-1, d), gb, gs)

        starts = sorted(self.eps_blocks)
        kernels.run_blocks(block, starts)  # the blocks hold L * eps now: consumed
        parts = [parts[c0] for c0 in starts]  # summed in block order: the same bits every run
        if self.first:
            A = sum(p[0] for p in parts)
            gW, gb = A.T @ self.x_shared, A.sum(axis=0)
            gs = sum(p[1] for p in parts) if self.learn_sigma else None
        else:
            gW, gb = sum(p[0] for p in parts), sum(p[1] for p in parts)
            gs = sum(p[2] for p in parts) if self.learn_sigma else None
        out = {"weight": gW / self.sigma[:, None], "bias": gb / self.sigma}
        if self.learn_sigma:
            out["sigma"] = (gs.sum(axis=0) if self.first else gs) / self.sigma
        return out

    def gradient(self, Lc):
        """Unnormalised sums over rows for weight, bias (and sigma if learned); ``Lc`` is (K, B)."""
        if self.fast and not self.approx:
            return self._gradient_fused(Lc)
        xp = self.xp
        m = self.W.shape[0]
        K, B = self.copies, self.B
        if self.approx:
            gW, gb = self._sign_gradient(Lc)
        else:
            gW, gb = 0, 0
            for c0, eps in sorted(self.eps_blocks.items()):
                c1 = c0 + eps.shape[0]
                w = Lc[c0:c1, :, None] * eps  # (kb, B, m)
                if self.first:
                    gW = gW + w.sum(axis=0).T @ self.x_shared
                else:
                    x = self.x_blocks[c0]
                    gW = gW + w.reshape(-1, m).T @ x.reshape(-1, x.shape[-1])
                gb = gb + w.sum(axis=(0, 1))
            gW = gW / self.sigma[:, None]
            gb = gb / self.sigma
        out = {"weight": gW, "bias": gb}
        if self.learn_sigma:
            out["sigma"] = self._sigma_sum(Lc) / self.sigma
        return out

    def _sign_gradient(self, Lc):
        """ALR's weight and bias sums from the packed bits.

        On the fast path ``G``'s wider side (neurons or inputs) is split into :data:`SIGN_PARTS`
        fixed ranges run side by side, each over all rows in order, writing its own part of one
        shared ``G``: no per-part copy of ``G`` to add up (ALR's peak memory). A small ``G``
        (:data:`SMALL_G`) splits the rows instead. Either way the parts are fixed by the sizes,
        so the bits do not depend on the thread count."""
        K = self.copies
        if not self.fast:
            parts = [self._sign_sums(Lc, 0, K)]
            if self.first:
                A = sum(p for p in parts)
                return A.T @ self.x_shared, A.sum(axis=0)
            return sum(p[0] for p in parts), sum(p[1] for p in parts)
        m, d = self.W.shape
        B, rows = self.B, K * self.B
        Lf = np.ascontiguousarray(Lc, self.dtype).reshape(-1)
        if self.first:  # A[b, i] = sum_k L sign(eps_i), read from the bits; then one product
            # one thread: ~0.2 ms of work (B=50, K=200), less than a hand-off to the other
            A = signbits.sign_sum_copies(self.s, Lf, B, np.zeros((B, m), self.dtype), 0, m)
            return A.T @ self.x_shared, A.sum(axis=0)
        if m * d <= SMALL_G:  # G is small: split the rows, one G per part, added in order
            parts = [(c0 * B, c1 * B, 0, m, 0, d) for c0, c1 in noise.split(K, SIGN_PARTS, align=8)]
            sums = [(np.zeros((m, d), self.dtype), np.zeros(m, self.dtype)) for _ in parts]
            # a part's floats alive: its G and its blocks; a G smaller than the block budget
            # leaves the rest to the blocks (fewer, larger blocks: less Python per flop)
            floats = 2 * signbits.GRAD_BLOCK_FLOATS - min(m * d, signbits.GRAD_BLOCK_FLOATS)
        else:  # split G's wider side: the narrower side's bits are unpacked by every part
            cut = [(i0, i1, 0, d) for i0, i1 in noise.split(m, SIGN_PARTS, align=16)] if m >= d else \
                [(0, m, j0, j1) for j0, j1 in noise.split(d, SIGN_PARTS, align=16)]
            parts = [(0, rows) + c for c in cut]
            sums = [(np.zeros((m, d), self.dtype), np.zeros(m, self.dtype))] * len(parts)
            floats = None
        kernels.run_blocks(lambda p: signbits.packed_gradient_block(
            Lf, self.s, "pm1", self.t, self.x_kind, *sums[p], *parts[p], gemm=kernels.gemm_acc,
            block_floats=floats),
            list(range(len(parts))))
        G, g = sums[0]
        for Gp, gp in sums[1:]:
            if Gp is not G:
                G += Gp
                g += gp
        return G, g

    def _sign_sums(self, Lc, c_lo, c_hi):
        """Over copies ``c_lo .. c_hi - 1``: ``A[b, i] = sum_k L sign(eps_i)`` (first layer, whose
        input is shared), else ``(G, g)`` by :func:`~minilr.signbits.packed_gradient`."""
        xp, m, B = self.xp, self.W.shape[0], self.B
        Lf = Lc.reshape(-1)
        if not self.first:
            return signbits.packed_gradient(Lf, self.s, "pm1", self.t, self.x_kind, c_hi * B,
                                            dtype=self.dtype, xp=xp, start=c_lo * B)
        A = xp.zeros((B, m), dtype=self.dtype)
        step = max(1, signbits.BLOCK_ROWS // B // 8) * 8
        for c0 in range(c_lo, c_hi, step):
            c1 = min(c_hi, c0 + step)
            S = signbits.unpack(self.s, "pm1", c0 * B, c1 * B, scale=Lf[c0 * B:c1 * B],
                                dtype=self.dtype, xp=xp)
            A += S.reshape(c1 - c0, B, m).sum(axis=0)
        return A

    def _sigma_sum(self, Lc):
        """``sum_n L_n (eps_n^2 - 1)``; ALR draws ``eps`` again, block by block, from its seed."""
        if not self.approx:
            total = 0
            for c0, eps in sorted(self.eps_blocks.items()):
                c1 = c0 + eps.shape[0]
                total = total + (Lc[c0:c1, :, None] * (eps * eps - 1)).sum(axis=(0, 1))
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

    def fused(self, xp) -> bool:
        """Whether every site takes the fused CPU path (:mod:`minilr.kernels`)."""
        return FAST and xp is np
