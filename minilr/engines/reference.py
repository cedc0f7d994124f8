"""The reference engine: plain ``xp`` code (NumPy or CuPy), what a student reads and what the tests
compare every other engine with.

A forward pass runs blocks of whole copies one after another (:meth:`ReferenceEngine.plan`): rows
are independent, so floats (activations, noise) live for one block, and what a record keeps is
written into its slice. Each ``Linear`` layer gets a *site* (:class:`LRSite` or :class:`ESSite`)
that draws its noise, runs its block and keeps what its gradient needs; its ``gradient`` is the
paper's sums (:mod:`minilr.estimators.lr`, :mod:`minilr.estimators.es`) over the kept blocks.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .. import signbits
from ..estimators.base import draw_noise
from ..estimators.es import aes_sums, es_sigma_sums, es_sums
from ..estimators.lr import alr_sums, lr_sigma_sums, lr_sums
from ..layers import Activation, Linear
from ..losses import per_sample

# Floats per array in one streamed block. Sign-only records keep bits, so the transient block
# dominates their memory and is kept small (~0.5 MB per array); float records keep everything
# anyway, so larger blocks only save Python overhead.
BLOCK_FLOATS_APPROX = 1 << 17
BLOCK_FLOATS_EXACT = 1 << 21
# An ES site keeps its drawn noise for the gradient when it holds at most this many numbers (64 MB
# in float32); larger ones draw it again from the seed (one more noise draw, memory flat in K).
KEEP_FLOATS = 1 << 24


def floats_per_copy(model, B, modes):
    """The widest array one copy needs in a block: ``B`` rows of a layer, or an ES layer's noise.

    An LR site's first input is the shared batch, so only its output grows with the copies."""
    per_copy, j = 1, 0
    for layer in model.layers:
        if isinstance(layer, Linear):
            m, d = layer.out_features, layer.in_features
            per_copy = max(per_copy, B * max(m, d if j else 0), m * (d + 1) if modes[j] == "es" else 0)
            j += 1
    return per_copy


def block_copies(model, B, copies, modes, approx):
    """Copies per streamed block: a multiple of 8 (whole bytes of packed rows), at least 8."""
    budget = BLOCK_FLOATS_APPROX if approx else BLOCK_FLOATS_EXACT
    kb = max(8, (budget // floats_per_copy(model, B, modes)) // 8 * 8)
    return min(kb, -(-copies // 8) * 8)


class LRSite:
    """One LR-perturbed layer: streams blocks of copies forward, keeps what its gradient needs.

    LR keeps float ``x`` and ``eps`` blocks (the product needs their values); ALR only bits packed
    along the rows (:mod:`minilr.signbits`): ``sign(eps)`` in 1 bit, ``sign(x)`` in 1 bit when the
    input is never negative (a ReLU output) or 2 bits otherwise. The exact sigma score needs
    ``|eps|``: ALR then *regenerates* ``eps`` from its counter-based seed. The first layer's input
    is the batch itself, shared by all copies: kept once, ``(B, d)``.
    """

    def __init__(self, W, b, sigma, learn_sigma, copies, B, k0, key, antithetic, approx, nonneg,
                 first, engine):
        m, d = W.shape
        self.W, self.b, self.sigma = W, b, sigma
        self.learn_sigma, self.approx, self.first = learn_sigma, approx, first
        self.copies, self.B, self.k0, self.key, self.antithetic = copies, B, k0, key, antithetic
        self.engine, self.xp, self.dtype = engine, engine.xp, W.dtype
        self.x_kind = signbits.kind_for(nonneg)
        self.x_shared = None
        if approx:
            self.s = signbits._empty("pm1", copies * B, m, self.xp)
            self.t = None if first else signbits._empty(self.x_kind, copies * B, d, self.xp)
        else:
            # float records: the blocks themselves, kept as drawn, by first copy (blocks may
            # finish in any order)
            self.eps_blocks, self.x_blocks = {}, {}

    def _noise(self, c0, c1):
        m = self.W.shape[0]
        eps = draw_noise(self.key, self.k0 + c0, self.k0 + c1, self.B * m, self.antithetic, self.xp)
        return eps.reshape(c1 - c0, self.B, m).astype(self.dtype, copy=False)

    def fuses(self, act):
        """Whether :meth:`forward_block` can apply the activation layer ``act`` itself (not here)."""
        return False

    def forward_block(self, h, c0, c1, act=None):
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

    def buffers(self):
        """The float blocks this record holds (an engine may reuse them once it is dead)."""
        return [] if self.approx else list(self.eps_blocks.values()) + list(self.x_blocks.values())

    def gradient(self, Lc):
        """Eq. 1 (LR) or Eq. 3 (ALR) summed over this chunk's rows; ``Lc`` is (K, B)."""
        gW, gb = 0, 0
        for c0, c1, x, e in self._blocks():
            Lb = Lc[c0:c1]
            dW, db = alr_sums(Lb, x, e) if self.approx else lr_sums(Lb, x, e, self.sigma)
            gW, gb = gW + dW, gb + db
        out = {"weight": gW, "bias": gb}
        if self.learn_sigma:
            out["sigma"] = self.sigma_sums(Lc)
        return out

    def sigma_sums(self, Lc):
        """The sigma score over this chunk's rows; ALR draws ``eps`` again, block by block."""
        return sum(lr_sigma_sums(Lc[c0:c1], self._noise(c0, c1) if self.approx else e, self.sigma)
                   for c0, c1, _, e in self._blocks(signs=False))

    def _blocks(self, signs=True):
        """``(c0, c1, x, eps)`` per block of copies: the kept floats (LR), or for ALR the signs
        unpacked from the bits a block of rows at a time (``signs=False``: no unpacking)."""
        if not self.approx:
            for c0, eps in sorted(self.eps_blocks.items()):
                c1 = c0 + eps.shape[0]
                yield c0, c1, self.x_shared if self.first else self.x_blocks[c0], eps
            return
        B, xp, m = self.B, self.xp, self.W.shape[0]
        step = max(1, signbits.BLOCK_ROWS // B // 8) * 8  # whole bytes of rows
        for c0 in range(0, self.copies, step):
            c1 = min(self.copies, c0 + step)
            if not signs:
                yield c0, c1, None, None
                continue
            unpack = lambda p, kind: signbits.unpack(p, kind, c0 * B, c1 * B, dtype=self.dtype,  # noqa: E731
                                                     xp=xp).reshape(c1 - c0, B, -1)
            yield c0, c1, self.x_shared if self.first else unpack(self.t, self.x_kind), unpack(self.s, "pm1")


class ESSite:
    """One ES-perturbed layer: its weight and bias noise, per copy, drawn from its seed.

    An ES perturbation is weight-sized: keeping one per copy costs ``K m (d + 1)`` numbers (2 GB
    for a 784-256 layer at K = 2000). The noise is counter-based, so the gradient can draw the
    very same ``E_k`` again, block by block (the trick of Salimans et al., 2017, who send seeds
    instead of perturbations between workers): a site keeps its noise when it fits in
    :data:`KEEP_FLOATS` numbers and redraws it otherwise (784-256-256-10, B=50, K=200: 1.4x the
    step time, peak memory 223 MB -> 18 MB).
    """

    def __init__(self, W, b, sigma, learn_sigma, copies, B, k0, key, antithetic, approx, nonneg,
                 first, engine):
        self.W, self.b, self.sigma = W, b, sigma
        self.learn_sigma, self.approx = learn_sigma, approx
        self.copies, self.B, self.k0, self.key, self.antithetic = copies, B, k0, key, antithetic
        self.engine, self.xp, self.dtype = engine, engine.xp, W.dtype
        m, d = W.shape
        keep = copies * m * (d + 1) <= KEEP_FLOATS
        self.kept = {} if keep else None  # noise blocks by first copy

    def fuses(self, act):
        """ES applies no activation itself."""
        return False

    def buffers(self):
        return []

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
        """ES or AES sums over this chunk's copies, from the kept or the redrawn noise blocks."""
        xp, d = self.xp, self.W.shape[1]
        Lk = Lc.sum(axis=1)  # (K,): the perturbation is shared by the batch
        g, gs = 0, 0
        for c0, Eb in self.blocks():
            c1 = c0 + Eb.shape[0]
            g = g + (aes_sums(Lk[c0:c1], Eb, xp) if self.approx else es_sums(Lk[c0:c1], Eb, self.sigma))
            if self.learn_sigma:
                gs = gs + es_sigma_sums(Lk[c0:c1], Eb, self.sigma)
        out = {"weight": xp.ascontiguousarray(g[:, :d]), "bias": xp.ascontiguousarray(g[:, d])}
        if self.learn_sigma:
            out["sigma"] = gs
        return out

    def blocks(self):
        """``(c0, [E | e])`` over this chunk's copies: the kept blocks, or the same noise redrawn."""
        if self.kept is not None:
            yield from sorted(self.kept.items())
            return
        m, d = self.W.shape
        step = max(2, (BLOCK_FLOATS_EXACT // (m * (d + 1))) // 2 * 2)  # even: whole antithetic pairs
        for c0 in range(0, self.copies, step):
            yield c0, self._noise(c0, min(self.copies, c0 + step))


class ReferenceEngine:
    """Plain ``xp`` code, one block after another; the base of the other engines.

    An engine subclass overrides what it does differently: :attr:`sites` (the record classes by
    mode), :meth:`plan` (the blocks), :meth:`run_blocks` (how blocks run), :meth:`session`
    (resources held for one estimate), :meth:`prepare` (wiring between sites before a pass) and
    :meth:`done` (records that are dead).
    """

    name = "reference"
    sites = {"lr": LRSite, "es": ESSite}

    def __init__(self, xp=np):
        self.xp = xp

    def __repr__(self):
        return f"{type(self).__name__}({self.xp.__name__})"

    def session(self):
        """A context held around one estimate (all its chunks)."""
        return contextlib.nullcontext()

    def plan(self, model, B, copies, modes, approx):
        """Block bounds ``[(c0, c1), ...]`` covering copies ``0 .. copies - 1`` of one chunk."""
        kb = block_copies(model, B, copies, modes, approx)
        return [(c0, min(copies, c0 + kb)) for c0 in range(0, copies, kb)]

    def run_blocks(self, fn, blocks):
        """``fn(c0, c1)`` for every block, in order."""
        for c0, c1 in blocks:
            fn(c0, c1)

    def prepare(self, model, lin, sites):
        """Before a pass: nothing to wire here."""

    def done(self, sites):
        """A chunk's records are dead: nothing to keep here."""

    def release(self):
        """Free whatever this engine keeps between calls (nothing here)."""

    def forward(self, model, x, y, k0, copies, modes, approx, keys, loss, antithetic):
        """Run copies ``k0 .. k0 + copies - 1`` of the batch ``x``; return losses (K, B) and site records.

        ``modes[j]`` says how the ``j``-th Linear layer is perturbed (``"lr"`` or ``"es"``),
        ``approx`` whether its record keeps only signs, ``keys[j]`` its noise stream. The first
        layer's input is the same for all copies, so it is kept once, shape (B, d).
        """
        xp = self.xp
        B = x.shape[0]
        lin = [(i, l) for i, l in enumerate(model.layers) if isinstance(l, Linear)]
        sites = []
        for j, (i, layer) in enumerate(lin):
            prev = model.layers[i - 1] if i > 0 else None
            nonneg = isinstance(prev, Activation) and prev.nonneg
            W, b, sigma = (xp.asarray(a) for a in (layer.weight, layer.bias, layer.sigma))
            sites.append(self.sites[modes[j]](W, b, sigma, layer.learn_sigma, copies, B, k0, keys[j],
                                              antithetic, approx, nonneg, j == 0, self))
        self.prepare(model, lin, sites)
        L = xp.empty((copies, B), dtype=model.dtype)

        def block(c0, c1):  # copies c0 .. c1 - 1 through every layer: rows are independent
            h = x  # (B, d): shared by all copies until the first noise site
            j, fused = 0, False  # fused: did the last site apply this activation already?
            for n, layer in enumerate(model.layers):
                if fused:
                    fused = False
                elif isinstance(layer, Linear):
                    act = model.layers[n + 1] if n + 1 < len(model.layers) else None
                    fused = sites[j].fuses(act)
                    h = sites[j].forward_block(h, c0, c1, act if fused else None)
                    j += 1
                else:
                    h = layer.forward(h, xp)
            L[c0:c1] = per_sample(loss, h, y, xp)

        self.run_blocks(block, self.plan(model, B, copies, modes, approx))
        return L, sites
