"""The general path: any layer whose noisy computations are affine maps applied at positions.

The paper's noise sites are linear maps. A convolution applies one map ``W`` (``m`` outputs,
``d = C_in * kernel`` inputs) at every output position; a recurrent layer applies its gate map at
every time step; a graph layer at every node; ``Linear`` at one position. So every parameterised
layer writes its noisy training computation as calls to one primitive,
:meth:`Context.affine` ``(layer, U, name)``, with ``U`` the *unfolded* input of shape
``(rows, P, d)`` (``rows`` = copies x batch, or just the batch while the input is still shared by
all copies; ``P`` positions) and gets back ``v`` of shape ``(copies * batch, P, m)``:

* mode ``"lr"`` (LR, ALR; Eq. 1-3): ``v = U W^T + b + sigma * eps``, ``eps ~ N(0, I)`` drawn per
  copy ``k``, sample ``b``, position ``p`` and output ``i`` at counter
  ``((k * B + b) * P + p) * m + i`` of the site's key (:mod:`minilr.noise`). For ``P = 1`` these are
  the counters of :class:`~minilr.estimators.lr.LRSite`, so a ``Linear`` gets the same noise on
  either path. The ``c``-th call of a site (``c > 0``: a recurrent step, a second use of shared
  weights) adds ``c * CALL_STRIDE`` to its counters: fresh noise for every call.
* mode ``"es"`` (ES, AES): ``v = U (W + sigma E_k)^T + (b + sigma e_k)``, one ``[E_k | e_k]`` of
  ``m x (d + 1)`` numbers per copy (counters as :class:`~minilr.estimators.es.ESSite`), shared by
  the batch, the positions *and* all calls of the site: a perturbation of the weights.

The record of an ``"lr"`` call keeps ``(U, eps)`` as floats, or, with the sign approximation,
``sign(eps)`` in 1 bit and ``sign(U)`` in 1 bit (never negative) or 2 bits (:mod:`minilr.signbits`).
Since the loss ``L_n`` of row ``n`` does not depend on the position, the site's gradient sums the
paper's per-row terms over rows *and* positions, one matrix product per call::

    LR:   g_W = (L * eps)^T U / sigma          (L broadcast over positions, Eq. 1)
    ALR:  g_W = (L * sign(eps))^T sign(U)                                       (Eq. 3)
    both: g_b = sum L * eps / sigma  (ALR: sign(eps)),   g_sigma = sum L * (eps^2 - 1) / sigma

and a site called several times (shared weights) adds its calls into one gradient. ES/AES use
``sum_k Lk E_k / sigma`` / ``sum_k Lk sign(E_k)`` as :mod:`minilr.estimators.es` explains.

Unlike the fused MLP path this one runs on plain ``xp`` (NumPy or CuPy) and materialises whole
blocks of copies: float records run a chunk in one block (they keep everything anyway); sign
records run it in blocks of about :data:`BLOCK_ROWS` rows, so their floats live for one block and
only the bits of all copies stay (the memory the sign approximation is for). ``chunk`` still
bounds the memory of both; im2col plus one BLAS product per call keeps the arithmetic in matrix
products.

For the author of a new layer: subclass :class:`minilr.layers.Layer`, name the noise sites in
``sites``, and write ``train_forward(h, ctx)`` with every noisy map as ``ctx.affine(self, U, name)``
(``ctx.K`` copies of ``ctx.B`` samples run now; ``ctx.expand`` repeats a still-shared batch);
register its exact backward pass with :func:`minilr.reference.register`.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from .. import noise as _noise
from .. import signbits
from ..losses import per_sample
from .base import centred_losses, noise_keys

# Counter offset between successive calls of one site: room for 2^40 numbers per call.
CALL_STRIDE = 1 << 40
# Rows (copies x batch) per forward block when records keep only signs: the floats of a pass
# live for one block, so sign records' memory is this block plus the bits of all copies.
BLOCK_ROWS = 2048
# BLAS threads inside the general path. Its products are tall and skinny (rows = copies x batch x
# positions, a few dozen columns); measured here (50,000 x 25 by 50,000 x 75, sgemm, OpenBLAS):
# 6 ms on one thread, 80-500 ms on two threads while other processes kept the 2 cores busy, and
# at best ~2x faster on an idle machine. One thread is the predictable choice; run independent
# seeds in parallel processes to use more cores. None leaves BLAS alone.
BLAS_THREADS = 1
_CONTROLLER = None


def _blas_limit():
    """A context holding BLAS at :data:`BLAS_THREADS` threads (threadpoolctl; a no-op if None)."""
    global _CONTROLLER
    if BLAS_THREADS is None:
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=BLAS_THREADS, user_api="blas")


def draw(key, k0, k1, per_copy, antithetic, xp, offset=0):
    """Noise of copies ``k0 .. k1 - 1``, ``(k1 - k0, per_copy)`` float32, counters from ``offset``.

    As :func:`minilr.estimators.base.draw_noise` (``offset = 0`` gives the same numbers): copy ``k``
    holds counters ``offset + k * per_copy ...``; with ``antithetic`` copy ``2p + 1`` is ``-`` copy
    ``2p``, and pair ``p`` holds counters ``offset + p * per_copy ...``.
    """
    if not antithetic:
        return _noise.normal(key, (k1 - k0, per_copy), start=offset + k0 * per_copy, xp=xp)
    half = _noise.normal(key, ((k1 - k0 + 1) // 2, per_copy), start=offset + (k0 // 2) * per_copy, xp=xp)
    out = xp.empty((k1 - k0, per_copy), dtype=np.float32)
    out[0::2] = half
    xp.negative(half[: (k1 - k0) // 2], out=out[1::2])
    return out


class AffineSite:
    """One noise site for one chunk of copies: perturbs every call, keeps each call's record.

    Parameters are read from ``layer`` as ``{name}weight`` (any shape ``(m, ...)``, used as
    ``(m, d)``), ``{name}bias`` (``(m,)`` or None) and ``{name}sigma`` (``(m,)``). The chunk's
    copies may pass in blocks (:meth:`begin`); a record notes its call and its copies.
    """

    def __init__(self, layer, name, mode, approx, key, K, B, k0, antithetic, xp):
        W = getattr(layer, name + "weight")
        self.w_shape = W.shape
        self.W = W.reshape(W.shape[0], -1)
        self.b = getattr(layer, name + "bias", None)
        self.sigma = getattr(layer, name + "sigma")
        self.learn_sigma = bool(layer.learn_sigma)
        self.mode, self.approx, self.key = mode, approx, key
        self.K, self.B, self.k0, self.antithetic, self.xp = K, B, k0, antithetic, xp
        self.dtype = self.W.dtype
        self.calls = 0  # calls so far in this block (all blocks see the same calls)
        self.used = False
        self.j0, self.j1 = 0, K  # the block: copies j0 .. j1 - 1 of the chunk
        self.records = []
        self.E = {}  # ES: [E_k | e_k] per block, (copies, m, d (+1)), drawn at its first call

    def begin(self, j0, j1):
        """The next forward pass runs the chunk's copies ``j0 .. j1 - 1``."""
        self.j0, self.j1, self.calls = j0, j1, 0

    # -- forward ---------------------------------------------------------------------------------
    def affine(self, U):
        """``v`` of shape ``(Kb * B, P, m)`` for the unfolded input ``U`` (rows, P, d); records."""
        xp = self.xp
        m, d = self.W.shape
        K, B = self.j1 - self.j0, self.B
        if U.ndim != 3 or U.shape[2] != d or U.shape[0] not in (B, K * B):
            raise ValueError(f"affine: U must have shape ({K * B} or {B}, positions, {d}), got {U.shape}")
        U = U.astype(self.dtype, copy=False)
        P = U.shape[1]
        shared = U.shape[0] == B and K > 1  # the batch itself: one copy serves all K
        pre = (U.reshape(-1, d) @ self.W.T).reshape(U.shape[0], P, m)
        if self.b is not None:
            pre += self.b
        c = self.calls
        self.calls += 1
        self.used = True
        if self.mode == "es":
            return self._es_forward(U, pre, shared).reshape(K * B, P, m)
        eps = self._eps(c, P)
        v = self.sigma * eps
        v += pre[None] if shared else pre.reshape(K, B, P, m)
        if self.approx:  # the signs only: eps in 1 bit, U in 1 bit (never negative) or 2
            kind = signbits.kind_for(bool((U >= 0).all()))
            s = signbits.pack(eps.reshape(-1, m), "pm1", xp=xp)
            t = xp.sign(U).reshape(-1, d) if shared else signbits.pack(U.reshape(-1, d), kind, xp=xp)
            self.records.append((c, P, shared, self.j0, self.j1, s, t, kind))
        else:
            self.records.append((c, P, shared, self.j0, self.j1, U, eps))
        return v.reshape(K * B, P, m)

    def _eps(self, c, P, j0=None, j1=None):
        """The block's noise of call ``c``, (copies, B, P, m): the same numbers whenever drawn."""
        j0 = self.j0 if j0 is None else j0
        j1 = self.j1 if j1 is None else j1
        m = self.W.shape[0]
        eps = draw(self.key, self.k0 + j0, self.k0 + j1, self.B * P * m, self.antithetic, self.xp,
                   offset=c * CALL_STRIDE)
        return eps.reshape(j1 - j0, self.B, P, m).astype(self.dtype, copy=False)

    def _es_forward(self, U, pre, shared):
        xp = self.xp
        m, d = self.W.shape
        K, B, P = self.j1 - self.j0, self.B, U.shape[1]
        if self.j0 not in self.E:  # one perturbation per copy for all calls of the block
            w = d + (self.b is not None)
            E = draw(self.key, self.k0 + self.j0, self.k0 + self.j1, m * w, self.antithetic, xp)
            self.E[self.j0] = E.reshape(K, m, w).astype(self.dtype, copy=False)
        Eb = self.E[self.j0]
        E = Eb[..., :d]
        if shared:  # one product for all copies: (B P, d) x (d, K m)
            pert = (U.reshape(B * P, d) @ E.reshape(K * m, d).T).reshape(B * P, K, m).transpose(1, 0, 2)
        else:  # one product per copy, batched
            pert = xp.matmul(U.reshape(K, B * P, d), E.transpose(0, 2, 1))
        if self.b is not None:
            pert = pert + Eb[:, None, :, d]
        base = pre.reshape(1 if shared else K, B * P, m)
        return base + self.sigma * pert

    # -- gradient --------------------------------------------------------------------------------
    def gradient(self, Lc):
        """Unnormalised sums over rows and positions: ``{"weight", "bias"?, "sigma"?}``.

        ``Lc`` (K, B): the chunk's centred losses. Consumes the records."""
        if not self.used:
            return {}
        if self.mode == "es":
            out = self._es_gradient(Lc)
        else:
            xp = self.xp
            m, d = self.W.shape
            gW = xp.zeros((m, d), self.dtype)
            gb = xp.zeros(m, self.dtype)
            # first: the weight sums below turn the kept eps into L * eps
            gs = self._sigma_sum(Lc) / self.sigma if self.learn_sigma else None
            for c, P, shared, j0, j1, *rec in self.records:
                sums = self._sign_sums if self.approx else self._float_sums
                G, g = sums(Lc[j0:j1], P, shared, *rec)
                gW += G
                gb += g
            if not self.approx:
                gW /= self.sigma[:, None]
                gb /= self.sigma
            out = {"weight": gW.reshape(self.w_shape), "bias": gb}
            if self.learn_sigma:
                out["sigma"] = gs
        self.records, self.E = [], {}  # consumed
        if self.b is None:
            out.pop("bias")
        return out

    def _float_sums(self, Lc, P, shared, U, eps):
        """Eq. 1 summed over positions: ``(L * eps)^T U`` and ``sum L * eps``.

        ``eps`` becomes ``L * eps`` in place (the record is consumed); the sums over rows are
        products with a vector of ones (BLAS; a NumPy ``sum(axis=0)`` is ~30x slower here)."""
        xp = self.xp
        m, d = self.W.shape
        K = Lc.shape[0]
        w = xp.multiply(eps, Lc[:, :, None, None].astype(self.dtype, copy=False), out=eps)  # (K, B, P, m)
        if shared:  # sum over the copies first: the input is the same for all of them
            A = (xp.ones(K, self.dtype) @ w.reshape(K, -1)).reshape(-1, m)
            return A.T @ U.reshape(-1, d), A.sum(axis=0)
        w = w.reshape(-1, m)
        return w.T @ U.reshape(-1, d), xp.ones(w.shape[0], self.dtype) @ w

    def _sign_sums(self, Lc, P, shared, s, t, kind):
        """Eq. 3 summed over positions, from the packed bits (unpack-then-BLAS in blocks)."""
        xp = self.xp
        m, d = self.W.shape
        K, B = Lc.shape
        Lrows = xp.repeat(Lc.reshape(-1).astype(self.dtype), P)  # one loss per (row, position)
        if not shared:
            return signbits.packed_gradient(Lrows, s, "pm1", t, kind, K * B * P, dtype=self.dtype, xp=xp)
        # A[(b, p), i] = sum_k L sign(eps): blocks of whole copies starting on whole bytes
        per = B * P
        step = (8 // math.gcd(per, 8)) * max(1, signbits.BLOCK_ROWS // per)
        A = xp.zeros((per, m), self.dtype)
        for k0 in range(0, K, step):
            k1 = min(K, k0 + step)
            S = signbits.unpack(s, "pm1", k0 * per, k1 * per, scale=Lrows[k0 * per:k1 * per],
                                dtype=self.dtype, xp=xp)
            A += S.reshape(k1 - k0, per, m).sum(axis=0)
        return A.T @ t, A.sum(axis=0)

    def _sigma_sum(self, Lc):
        """``sum L (eps^2 - 1)`` over rows, positions and calls; signs-only records draw ``eps`` again."""
        m = self.W.shape[0]
        total = self.xp.zeros(m, self.dtype)
        for c, P, shared, j0, j1, *rec in self.records:
            eps = self._eps(c, P, j0, j1) if self.approx else rec[1]
            e2 = (eps * eps - 1).reshape((j1 - j0) * self.B, P * m)
            total += (Lc[j0:j1].reshape(-1).astype(self.dtype, copy=False) @ e2).reshape(P, m).sum(axis=0)
        return total

    def _es_gradient(self, Lc):
        xp = self.xp
        m, d = self.W.shape
        Lk = Lc.sum(axis=1).astype(self.dtype)  # (K,): the perturbation is shared by the batch
        g, gs = 0, 0
        for j0, Eb in sorted(self.E.items()):
            Lb = Lk[j0:j0 + Eb.shape[0]]
            # the noise is never exactly 0 (minilr.noise), so sign() is +-1, as AES needs
            g = g + xp.tensordot(Lb, xp.sign(Eb) if self.approx else Eb, axes=1)
            if self.learn_sigma:
                gs = gs + Lb @ ((Eb * Eb).sum(axis=-1) - Eb.shape[-1])
        if not self.approx:
            g = g / self.sigma[:, None]
        out = {"weight": xp.ascontiguousarray(g[:, :d]).reshape(self.w_shape)}
        out["bias"] = xp.ascontiguousarray(g[:, d]) if self.b is not None else None
        if self.learn_sigma:
            out["sigma"] = gs / self.sigma
        return out


class Context:
    """What a layer's :meth:`~minilr.layers.Layer.train_forward` sees for one chunk of copies.

    ``K`` copies of a batch of ``B`` samples; arrays flowing between layers have ``K * B`` rows
    (copy-major: row ``k * B + b``) or, before the first noise site, the ``B`` rows of the batch.
    """

    def __init__(self, entries, modes, approx, keys, k0, K, B, antithetic, xp):
        self.K, self.B, self.xp = K, B, xp  # K: copies of the block running now (see begin)
        self.sites = [AffineSite(layer, name, mode, approx, key, K, B, k0, antithetic, xp)
                      for (prefix, layer, name), mode, key in zip(entries, modes, keys)]
        self._by_layer = {(id(layer), name): site
                          for (prefix, layer, name), site in zip(entries, self.sites)}

    def begin(self, j0, j1):
        """Run the chunk's copies ``j0 .. j1 - 1`` next (a block; the records remember it)."""
        self.K = j1 - j0
        for site in self.sites:
            site.begin(j0, j1)

    def affine(self, layer, U, name=""):
        """``U W^T + b`` plus this site's noise: ``U`` (rows, P, d) -> ``v`` (K * B, P, m).

        ``layer`` and ``name`` select the site (the layer's ``{name}weight``, ``{name}bias``,
        ``{name}sigma``); calling it again with the same site (shared weights) draws fresh noise
        (LR) or reuses the copy's weight perturbation (ES), and the gradients add up.
        """
        try:
            site = self._by_layer[(id(layer), name)]
        except KeyError:
            raise ValueError(f"{layer!r} has no noise site {name!r} in this model") from None
        return site.affine(U)

    def expand(self, h):
        """``h`` with ``K * B`` rows: a shared batch (``B`` rows) repeated for every copy."""
        if h.shape[0] == self.K * self.B:
            return h
        return self.xp.broadcast_to(h[None], (self.K,) + h.shape).reshape((self.K * self.B,) + h.shape[1:])

    def add(self, a, b):
        """``a + b`` where either may still be the shared batch."""
        if a.shape[0] == b.shape[0]:
            return a + b
        return self.expand(a) + self.expand(b)


def forward(layers, h, ctx):
    """Run ``layers`` in their training mode (every noisy map through ``ctx``)."""
    for layer in layers:
        h = layer.train_forward(h, ctx)
    return h


def estimate(model, x, y, est, copies, ss, loss, baseline, antithetic, chunk, es_layers, bk):
    """The general path of :func:`minilr.estimators.estimate`: (grads by key, mean noisy loss).

    Chunks, baseline and normalisation as there; noise keys from ``ss`` per site in the order of
    ``model.noise_sites()`` (for an MLP: the Linear layers, as on the fast path).
    """
    xp = bk.xp
    entries = model.noise_sites()
    modes = est.modes(len(entries), es_layers)
    keys = noise_keys(ss, len(entries))
    chunk = copies if chunk is None else min(chunk, copies)
    params = model.parameters()
    sums = {key: xp.zeros_like(p) for key, p in params.items()}
    loss_sum, rows = 0.0, 0
    with _blas_limit():
        totals = None
        if baseline and chunk < copies:  # pass 1: every copy's loss, so each chunk's baseline
            totals = xp.zeros(x.shape[0], dtype=np.float64)  # leaves out only the copy's own
            for start in range(0, copies, chunk):
                L = _chunk(model, x, y, est, start, min(chunk, copies - start), entries, modes, keys,
                           loss, baseline, antithetic, xp, None)
                totals += L.sum(axis=0, dtype=np.float64)
        for start in range(0, copies, chunk):
            L = _chunk(model, x, y, est, start, min(chunk, copies - start), entries, modes, keys,
                       loss, baseline, antithetic, xp, sums, totals, copies)
            loss_sum += float(L.sum())
            rows += L.size
    return {key: sums[key] / rows for key in params}, loss_sum / rows


def block_copies(K, B, approx):
    """Copies per forward block: sign records keep bits, so their floats live for one block of
    about :data:`BLOCK_ROWS` rows (a multiple of 8 copies: whole bytes, whole antithetic pairs);
    float records keep everything anyway, so they run the chunk in one block."""
    if not approx:
        return K
    return min(K, max(8, BLOCK_ROWS // B // 8 * 8))


def _chunk(model, x, y, est, start, K, entries, modes, keys, loss, baseline, antithetic, xp, sums,
           totals=None, copies=None):
    """One chunk of copies: forward (in blocks), centred losses (over all ``copies`` when
    ``totals`` holds every copy's loss sum), every site's sums added into ``sums`` (none when
    ``sums`` is None: losses only); returns the chunk's losses (K, B). Its records die on return."""
    B = x.shape[0]
    ctx = Context(entries, modes, est.approx, keys, start, K, B, antithetic, xp)
    L = xp.empty((K, B), dtype=model.dtype)
    kb = block_copies(K, B, est.approx)
    for j0 in range(0, K, kb):
        j1 = min(K, j0 + kb)
        ctx.begin(j0, j1)
        out = ctx.expand(forward(model.layers, x, ctx))
        L[j0:j1] = per_sample(loss, out.reshape((j1 - j0, B) + out.shape[1:]), y, xp)
        del out
    if sums is None:
        return L
    Lc = centred_losses(L, antithetic, baseline, xp, totals, copies)
    for (prefix, layer, name), site in zip(entries, ctx.sites):
        for pname, g in site.gradient(Lc).items():
            if g is not None:
                sums[prefix + name + pname] += g
    return L
