"""The reference engine: plain ``xp`` code (NumPy or CuPy), what a student reads and what the tests
compare every other engine with.

**The one primitive.** Every parameterised layer writes its noisy training computation as calls of
:meth:`Block.affine` ``(layer, U, name)``: the affine map ``U W^T + b`` of one *noise site*, applied
at ``P`` positions (a ``Linear`` layer: one position; a convolution: every output position of its
unfolded input; a recurrent layer: one call per time step). The engine gives every site a
*record* (:class:`LRSite`, :class:`ESSite`) that perturbs each call and keeps what the site's
gradient needs:

* ``"lr"`` (LR, ALR; Eq. 1-3): ``v = U W^T + b + sigma * eps``; ``eps`` of copy ``k``, sample ``b``,
  position ``p``, output ``i`` and call ``c`` sits at counter ``c * CALL_STRIDE +
  ((k B + b) P + p) m + i`` of the site's noise key (:mod:`minilr.noise`), so it can be drawn
  again instead of stored. LR keeps ``(U, eps)`` as floats; ALR only their signs in bits
  (:mod:`minilr.signbits`: ``sign(eps)`` in 1 bit, ``sign(U)`` in 1 bit where the block is never
  negative, else 2) and draws ``eps`` again for the exact sigma score.
* ``"es"`` (ES, AES): ``v = U (W + sigma E_k)^T + (b + sigma e_k)``, one ``[E_k | e_k]`` per copy,
  shared by the batch, the positions and the calls of the site.

Since the loss ``L_n`` of row ``n`` does not depend on the position, a site's gradient sums the
paper's per-row terms over rows *and* positions (and calls): the equation functions of
:mod:`minilr.estimators.lr` and :mod:`minilr.estimators.es`, called here with ``L`` repeated over
the positions.

A forward pass runs blocks of whole copies one after another (:meth:`ReferenceEngine.plan_blocks`):
rows are independent, so the floats of a pass live for one block, and a record keeps one entry
per (call, block). Before the first site the batch is shared by all copies (``B`` rows, not
``K B``): a site called on it computes ``U W^T`` once and keeps ``U`` once.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from .. import noise as _noise
from .. import signbits
from ..estimators.es import aes_sums, es_sigma_sums, es_sums
from ..estimators.lr import alr_sums, lr_sigma_sums, lr_sums
from ..layers import run_layers
from ..losses import per_sample

# Counter offset between successive calls of one site: room for 2^40 numbers per call.
CALL_STRIDE = 1 << 40
# Floats per copy-block array. Sign-only records keep bits, so the transient block dominates their
# memory and is kept small (~0.5 MB per array: twice that took the 784-256-256-10 MLP's ALR peak at
# K=2000, B=10 from 5.1 to 6.0 MB); float records keep everything anyway, so larger blocks only save
# Python overhead.
BLOCK_FLOATS_APPROX = 1 << 17
BLOCK_FLOATS_EXACT = 1 << 21
# An ES site keeps its drawn noise for the gradient when it holds at most this many numbers (64 MB
# in float32); larger ones draw it again from the seed (one more noise draw, memory flat in K).
KEEP_FLOATS = 1 << 24


class Block:
    """What a layer's ``train_forward(h, ctx)`` sees: copies ``c0 .. c1 - 1`` of a chunk of a batch
    of ``B`` samples. Arrays between layers have ``K B`` rows (copy-major: row ``k B + b``) or,
    before the first noise site, the ``B`` rows of the batch itself."""

    def __init__(self, engine, sites, c0, c1, B, arena=None):
        self.engine, self.xp, self.arena = engine, engine.xp, arena
        self.c0, self.c1, self.K, self.B = c0, c1, c1 - c0, B
        self._sites = sites  # {(id(layer), name): record}
        self._calls = {}
        self.store = {}  # per-block values of a site shared by its calls (ES: the perturbations)
        self.packed = None  # (array, its "01" bits): a fused ReLU packed the next input's signs

    def affine(self, layer, U, name="", act=None):
        """``act(U W^T + b)`` plus this site's noise: ``U`` (rows, P, d) -> (K B, P, m); a 2-D ``U``
        (rows, d) is one position and gives (K B, m).

        ``layer`` and ``name`` select the site (the layer's ``{name}weight``, ``{name}bias``,
        ``{name}sigma``); calling it again (a recurrent step, shared weights) draws fresh noise
        (LR) or reuses the copy's weight perturbation (ES), and the gradients add up. ``act``, an
        activation that :meth:`fuses` (the layer's output must then be the elementwise ``act`` of
        this map), is applied here."""
        try:
            site = self._sites[(id(layer), name)]
        except KeyError:
            raise ValueError(f"{layer!r} has no noise site {name!r} in this model") from None
        flat = U.ndim == 2
        m, d = site.W.shape
        rows, P = U.shape[0], (1 if flat else U.shape[1])
        if U.shape[-1] != d or rows not in (self.B, self.K * self.B):
            raise ValueError(f"affine: U must have shape ({self.K * self.B} or {self.B}, [positions,] {d}), "
                             f"got {U.shape}")
        c = self._calls.get(id(site), 0)
        self._calls[id(site)] = c + 1
        bits = self.packed[1] if self.packed is not None and self.packed[0] is U else None
        v, hbits = site.affine(U.reshape(rows * P, d).astype(site.dtype, copy=False), P, self, c, act, bits)
        v = v.reshape((self.K * self.B, m) if flat else (self.K * self.B, P, m))
        self.packed = None if hbits is None else (v, hbits)
        return v

    def fuses(self, act) -> bool:
        """Whether :meth:`affine` applies the activation ``act`` itself (the engine's kernels)."""
        return self.engine.fuses(act)

    def expand(self, h):
        """``h`` with ``K B`` rows: a shared batch (``B`` rows) repeated for every copy."""
        if h.shape[0] == self.K * self.B:
            return h
        return self.xp.broadcast_to(h[None], (self.K,) + h.shape).reshape((self.K * self.B,) + h.shape[1:])

    def add(self, a, b):
        """``a + b`` where either may still be the shared batch."""
        if a.shape[0] == b.shape[0]:
            return a + b
        return self.expand(a) + self.expand(b)


class Site:
    """One noise site of one layer for one span of copies: what every record shares.

    Parameters are read from ``layer`` as ``{name}weight`` (shape ``(m, ...)``, used as ``(m, d)``),
    ``{name}bias`` (``(m,)`` or None) and ``{name}sigma`` (``(m,)``). ``records`` holds one entry
    per (call, first copy of the block); blocks may run side by side, each writing its own entries.
    """

    mode = ""

    def __init__(self, layer, name, key, *, approx, span, B, antithetic, engine):
        self.layer, self.name = layer, name
        W = getattr(layer, name + "weight")
        self.w_shape, self.W = W.shape, W.reshape(W.shape[0], -1)
        self.b = getattr(layer, name + "bias", None)
        self.sigma = getattr(layer, name + "sigma")
        self.learn_sigma = bool(layer.learn_sigma)
        self.key, self.approx, self.antithetic = key, approx, antithetic
        self.k0, self.copies, self.B = span.start, len(span), B
        self.engine, self.xp, self.dtype = engine, engine.xp, self.W.dtype
        self.records = {}
        self.shared = {}  # call -> the shared batch's U (or its signs), kept once for all blocks
        self.lock = threading.Lock()

    def respan(self, span):
        """A fresh record of this site for other copies (none of them run yet)."""
        return type(self)(self.layer, self.name, self.key, approx=self.approx, span=span, B=self.B,
                          antithetic=self.antithetic, engine=self.engine)

    def noise(self, c0, c1, per_copy, offset=0):
        """This site's noise of the span's copies ``c0 .. c1 - 1``, ``(c1 - c0, per_copy)``."""
        eps = self.engine.noise(self.key, self.k0 + c0, self.k0 + c1, per_copy, self.antithetic, offset)
        return eps.astype(self.dtype, copy=False)

    def pre(self, U, shared, blk):
        """``U W^T + b``: (rows P, m); the shared batch's once per call (blocks may share it)."""
        v = U @ self.W.T
        if self.b is not None:
            v += self.b
        return v

    def buffers(self):
        """Float arrays of dead records an engine may reuse (none here)."""
        return []

    def keep_shared(self, call, make):
        """The shared batch's record of ``call``, made once by the first block that gets there."""
        with self.lock:
            if call not in self.shared:
                self.shared[call] = make()
            return self.shared[call]

    def finish(self, gW, gb, gs):
        """The site's sums by parameter name (bias only where the layer has one); zeros where
        the span holds no copies (a rank with nothing to run)."""
        xp, m = self.xp, self.W.shape[0]
        gW = xp.zeros(self.W.shape, self.dtype) if isinstance(gW, int) else gW
        gb = xp.zeros(m, self.dtype) if isinstance(gb, int) else gb
        gs = xp.zeros(m, self.dtype) if isinstance(gs, int) else gs
        out = {"weight": gW.reshape(self.w_shape)}
        if self.b is not None:
            out["bias"] = gb
        if self.learn_sigma:
            out["sigma"] = gs
        return out


class LRSite(Site):
    """An LR/ALR site: noise on the map's output, one score per row and position (Eq. 1-3)."""

    mode = "lr"

    def affine(self, U, P, blk, call, act=None, bits=None):
        """``v`` (K, B P, m) of the block for ``U`` (rows P, d), and None (no output signs packed
        here); keeps the call's record. ``bits``: ``U``'s "01" signs, packed already."""
        xp, (m, d), K, BP = self.xp, self.W.shape, blk.K, self.B * P
        shared = U.shape[0] == BP and K > 1
        eps = self.noise(blk.c0, blk.c1, BP * m, call * CALL_STRIDE).reshape(K, BP, m)
        pre = self.pre(U, shared, blk)
        v = pre[None] + self.sigma * eps if shared else pre.reshape(K, BP, m) + self.sigma * eps
        if self.approx:  # the signs only: eps in 1 bit, U in 1 bit (never negative) or 2
            s = self.engine.pack(eps.reshape(-1, m), "pm1")
            if shared:
                t, kind = self.keep_shared(call, lambda: xp.sign(U)), None
            elif bits is not None:
                t, kind = bits, "01"
            else:
                kind = signbits.kind_for(bool((U >= 0).all()))
                t = self.engine.pack(U, kind)
            self.records[(call, blk.c0)] = (K, P, shared, s, t, kind)
        else:
            self.records[(call, blk.c0)] = (K, P, shared, self.keep_shared(call, lambda: U) if shared else U, eps)
        return (v if act is None else act.forward(v, xp)), None

    def gradient(self, Lc):
        """Eq. 1 (LR) or Eq. 3 (ALR) summed over the span's rows, positions and calls, and the
        sigma score; ``Lc`` (copies, B): the span's centred losses."""
        gW, gb = 0, 0
        for (call, c0), (K, P, shared, *rec) in sorted(self.records.items()):
            L = self._rows(Lc[c0:c0 + K], P)
            if self.approx:
                s, t, kind = rec
                m, d = self.W.shape
                se = self.engine.unpack(s, "pm1", K * self.B * P, self.dtype).reshape(K, -1, m)
                st = t if shared else self.engine.unpack(t, kind, K * self.B * P, self.dtype).reshape(K, -1, d)
                dW, db = alr_sums(L, st, se)
            else:
                U, eps = rec
                x = U if shared else U.reshape(K, self.B * P, -1)
                dW, db = lr_sums(L, x, eps, self.sigma)
            gW, gb = gW + dW, gb + db
        gs = self.sigma_sums(Lc) if self.learn_sigma else None
        return self.finish(gW, gb, gs)

    def sigma_sums(self, Lc):
        """The sigma score over the records; ALR draws ``eps`` again."""
        m = self.W.shape[0]
        total = 0
        for (call, c0), (K, P, shared, *rec) in sorted(self.records.items()):
            eps = self.noise(c0, c0 + K, self.B * P * m, call * CALL_STRIDE).reshape(K, -1, m) \
                if self.approx else rec[1]
            total = total + lr_sigma_sums(self._rows(Lc[c0:c0 + K], P), eps, self.sigma)
        return total

    def _rows(self, L, P):
        """The losses (K, B) as one per row and position, (K, B P)."""
        return L if P == 1 else self.xp.repeat(L, P, axis=1)


class ESSite(Site):
    """An ES/AES site: the weights perturbed, one ``[E_k | e_k]`` per copy for all its rows,
    positions and calls.

    A perturbation is weight-sized: keeping one per copy costs ``K m (d + 1)`` numbers (2 GB for a
    784-256 layer at K = 2000). The noise is counter-based, so the gradient can draw the very same
    ``E_k`` again, block by block (the trick of Salimans et al., 2017, who send seeds instead of
    perturbations between workers): a site keeps its noise when it fits in :data:`KEEP_FLOATS`
    numbers and draws it again otherwise.
    """

    mode = "es"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        m, d = self.W.shape
        self.width = d + (self.b is not None)
        self.keep = self.copies * m * self.width <= KEEP_FLOATS
        self.ran = False

    def perturbation(self, c0, c1):
        """``[E_k | e_k]`` of copies ``c0 .. c1 - 1``, (c1 - c0, m, d (+ 1)): the same numbers
        whenever drawn."""
        m = self.W.shape[0]
        return self.noise(c0, c1, m * self.width).reshape(c1 - c0, m, self.width)

    def affine(self, U, P, blk, call, act=None, bits=None):
        xp, (m, d), K, BP = self.xp, self.W.shape, blk.K, self.B * P
        self.ran = True
        E = blk.store.get(id(self))
        if E is None:  # the block's first call draws the perturbations of its copies
            E = blk.store[id(self)] = self.perturbation(blk.c0, blk.c1)
            if self.keep:
                self.records[blk.c0] = E
        shared = U.shape[0] == BP and K > 1
        if shared:  # one product for all copies: (B P, d) x (d, K m)
            pert = (U @ E[..., :d].reshape(K * m, d).T).reshape(BP, K, m).transpose(1, 0, 2)
        else:  # one product per copy, batched
            pert = xp.matmul(U.reshape(K, BP, d), E[..., :d].transpose(0, 2, 1))
        if self.b is not None:
            pert = pert + E[:, None, :, d]
        pre = self.pre(U, shared, blk)
        v = (pre[None] if shared else pre.reshape(K, BP, m)) + self.sigma * pert
        return (v if act is None else act.forward(v, xp)), None

    def gradient(self, Lc):
        """ES or AES sums (and the sigma score) over the span's copies, from the kept or the
        drawn-again noise: ``Lc`` (copies, B), the span's centred losses."""
        xp = self.xp
        Lk = Lc.sum(axis=1).astype(self.dtype, copy=False)  # the perturbation is shared by the batch
        g, gs = 0, 0
        for c0, E in self.blocks():
            Lb = Lk[c0:c0 + E.shape[0]]
            g = g + (aes_sums(Lb, E, xp) if self.approx else es_sums(Lb, E, self.sigma))
            if self.learn_sigma:
                gs = gs + es_sigma_sums(Lb, E, self.sigma)
        d = self.W.shape[1]
        if isinstance(g, int):  # no copies in the span
            return self.finish(0, 0, 0 if self.learn_sigma else None)
        return self.finish(xp.ascontiguousarray(g[:, :d]), xp.ascontiguousarray(g[:, d]) if self.b is not None
                           else None, gs if self.learn_sigma else None)

    def blocks(self):
        """``(c0, [E | e])`` over the span's copies: the kept blocks, or the same noise drawn
        again (also for copies another process ran: a span that ran no forward here)."""
        if self.keep and self.ran:
            yield from sorted(self.records.items())
            return
        m = self.W.shape[0]
        step = max(2, (BLOCK_FLOATS_EXACT // (m * self.width)) // 2 * 2)  # even: whole antithetic pairs
        for c0 in range(0, self.copies, step):
            yield c0, self.perturbation(c0, min(self.copies, c0 + step))

    def buffers(self):
        return []


class ReferenceEngine:
    """Plain ``xp`` code, one block after another; the base of the other engines.

    The interface (see :mod:`minilr.engines`): :meth:`session`, :meth:`forward` (the noisy pass of
    a span of copies: losses and one record per site), :meth:`done`, :meth:`release`; the
    primitives a subclass may replace: :attr:`sites` (the record classes by mode), :meth:`noise`,
    :meth:`pack`, :meth:`unpack`, :meth:`fuses`, :meth:`plan_blocks`, :meth:`run_blocks`.
    """

    name = "reference"
    sites = {"lr": LRSite, "es": ESSite}

    def __init__(self, xp=np):
        self.xp = xp

    def __repr__(self):
        return f"{type(self).__name__}({self.xp.__name__})"

    # -- primitives ------------------------------------------------------------------------------
    def normal(self, key, shape, start):
        """Noise values ``start ...`` (float32, C order) on this engine's device."""
        return _noise.normal(key, shape, start=start, xp=self.xp)

    def noise(self, key, k0, k1, per_copy, antithetic, offset=0):
        """Noise of copies ``k0 .. k1 - 1``, ``(k1 - k0, per_copy)`` float32: copy ``k`` holds the
        counters ``offset + k per_copy ...``; with ``antithetic`` copy ``2p + 1`` is the negative
        of copy ``2p`` and pair ``p`` holds ``offset + p per_copy ...`` (``k0`` even)."""
        if not antithetic:
            return self.normal(key, (k1 - k0, per_copy), offset + k0 * per_copy)
        half = self.normal(key, ((k1 - k0 + 1) // 2, per_copy), offset + (k0 // 2) * per_copy)
        out = self.xp.empty((k1 - k0, per_copy), dtype=np.float32)
        out[0::2] = half
        self.xp.negative(half[: (k1 - k0) // 2], out=out[1::2])
        return out

    def pack(self, a, kind):
        """The rows of ``a`` (rows, width) packed into bits (:func:`minilr.signbits.pack`)."""
        return signbits.pack(a, kind, xp=self.xp)

    def unpack(self, p, kind, rows, dtype):
        """The ``rows`` values of the packed ``p`` as (rows, width) of ``dtype``."""
        return signbits.unpack(p, kind, 0, rows, dtype=dtype, xp=self.xp)

    def fuses(self, act) -> bool:
        """Whether a site's :meth:`~LRSite.affine` applies ``act`` (None here: the layer runs it)."""
        return False

    # -- a pass ----------------------------------------------------------------------------------
    def session(self):
        """A context held around one estimate (all its chunks)."""
        return contextlib.nullcontext()

    def plan_blocks(self, plan, B, copies):
        """Block bounds ``[(c0, c1), ...]`` covering copies ``0 .. copies - 1`` of one span: as many
        copies per block as :data:`BLOCK_FLOATS_APPROX` / ``_EXACT`` floats allow (at least one;
        even, with antithetic pairs)."""
        budget = BLOCK_FLOATS_APPROX if plan.approx else BLOCK_FLOATS_EXACT
        unit = 2 if plan.settings.antithetic else 1
        kb = max(unit, budget // max(1, plan.floats_per_copy(B)) // unit * unit)
        return [(c0, min(copies, c0 + kb)) for c0 in range(0, copies, kb)]

    def run_blocks(self, fn, blocks):
        """``fn(c0, c1)`` for every block, in order."""
        for c0, c1 in blocks:
            fn(c0, c1)

    def new_pass(self):
        """What the blocks of one forward pass may share (an engine's per-thread arrays); None here."""
        return None

    def site_classes(self, plan):
        """The record classes by mode for ``plan``'s sites."""
        return self.sites

    def make_sites(self, plan, span, B):
        """One record per noise site of ``plan`` for the copies ``span`` (a ``range``)."""
        kinds = self.site_classes(plan)
        return [kinds[mode](layer, name, key, approx=plan.approx, span=span, B=B,
                            antithetic=plan.settings.antithetic, engine=self)
                for (_, layer, name), mode, key in zip(plan.entries, plan.modes, plan.keys)]

    def forward(self, plan, x, y, span):
        """The noisy pass of copies ``span`` (a ``range``) of the batch ``x``: losses (copies, B)
        and the sites' records, in the order of ``plan.entries``."""
        xp, B, K = self.xp, x.shape[0], len(span)
        sites = self.make_sites(plan, span, B)
        by_layer = {(id(layer), name): site for (_, layer, name), site in zip(plan.entries, sites)}
        L = xp.empty((K, B), dtype=plan.model.dtype)

        arena = self.new_pass()

        def block(c0, c1):  # copies c0 .. c1 - 1 through every layer: rows are independent
            blk = Block(self, by_layer, c0, c1, B, arena)
            out = blk.expand(run_layers(plan.model.layers, x, blk))
            L[c0:c1] = per_sample(plan.settings.loss, out.reshape((c1 - c0, B) + out.shape[1:]), y, xp)

        self.run_blocks(block, self.plan_blocks(plan, B, K))
        return L, sites

    def done(self, sites):
        """A span's records are dead: let them go."""
        for site in sites:
            site.records, site.shared = {}, {}

    def release(self):
        """Free whatever this engine keeps between calls (nothing here)."""
