"""The CPU engine: fused Numba kernels and OpenBLAS, blocks of copies side by side on every core.

What it changes against :mod:`minilr.engines.reference` (same noise, same equations):

* an LR site (:class:`FusedLRSite`) runs one GEMM and one fused pass per block (:mod:`.kernels`:
  noise drawn inside the pass, bias, activation; ALR packs ``sign(eps)`` and the next layer's input
  signs in the same pass), and forms its sums in place (``L * eps`` over the kept blocks; ALR's
  packed sums over fixed parts of ``G`` or of the rows);
* blocks of copies run side by side on the engine's threads (:class:`.threads.Workers`), each
  on one thread, BLAS held at one thread for the whole estimate (:func:`.kernels.blas_one_thread`);
* LR's block arrays are kept from one step for the next (:class:`.kernels.Scratch`) as long as the
  engine lives: ``estimate_gradient(..., backend="numpy")`` makes a fresh engine per call, so
  nothing stays after it returns; ``train`` keeps one for its steps; hold a
  ``minilr.Backend("numpy")`` and pass it as ``backend=`` to keep it between your own calls
  (``backend.engine.release()`` frees it).

Bits: blocks and parts are fixed by the sizes, never by the thread count, and every product runs on
one BLAS thread (a GEMM's bits depend on its shape and on BLAS's threads: 8 and 80 rows of the
same product differ in the last bit here), so a seed gives the same bits on any number of threads.
"""
from __future__ import annotations

import threading

import numpy as np

from ... import signbits
from ..reference import (BLOCK_FLOATS_APPROX, BLOCK_FLOATS_EXACT, CALL_STRIDE, Block, LRSite,
                         ReferenceEngine)
from . import kernels, signs, threads

# Blocks of a float-record pass at least (when copies allow): enough for two or four threads.
MIN_BLOCKS = 4
# Sign records: the floats of this many blocks in flight share the block budget, and the block
# count is made a multiple of it. A constant, not the thread count: a block's row count sets the
# shape of its GEMMs, hence their bits.
SIGN_GROUPS = 2
# ALR's packed-gradient sums: this many fixed parts (of G's wider side, or of the records), run
# side by side. Two, not four: each part's G or blocks are alive at once, and ALR's peak memory is
# made of them.
SIGN_PARTS = 2
# Up to this many weights (512 KB of float32) the packed sum splits the records instead, one G per
# part added in order: no bits unpacked twice, for one extra G alive. Larger G: split G.
SMALL_G = 1 << 17


def balanced_starts(copies, kb, unit, groups):
    """First copies of blocks of at most ``kb`` copies (more only where ``kb`` is below one
    ``unit``: whole antithetic pairs) whose count is a multiple of ``groups``, sizes spread evenly.
    For sign records."""
    units = -(-copies // unit)
    per = max(1, kb // unit)
    n = -(-units // per)
    n = min(units, -(-n // groups) * groups)
    bounds = [units * i // n * unit for i in range(n)]
    return [c for c in bounds if c < copies]


def _add(total, part):
    """``total + part`` in place where ``total`` is an array already (0 to start: no zeros array)."""
    if isinstance(part, int):
        return total
    if isinstance(total, int):
        return part
    total += part
    return total


class FusedLRSite(LRSite):
    """An LR/ALR site on the fused kernels: one GEMM and one pass per call and block (noise, bias,
    activation; ALR packs ``sign(eps)``, and after a ReLU the output's signs for the next site, in
    the same pass); the same records as :class:`LRSite`, whose sums it forms with the CPU kernels."""

    def affine(self, U, P, blk, call, act=None, bits=None):
        m, d = self.W.shape
        K, BP = blk.K, self.B * P
        shape = (K, BP, m)
        act = "identity" if act is None else act.name
        shared = U.shape[0] == BP and K > 1
        # LR keeps its output blocks (the next site's input) till the gradient: from (and back to)
        # the engine's scratch. ALR's die with the block: this thread's arrays of the pass.
        out = blk.arena.get((id(self), call), shape, self.dtype) if self.approx else \
            self.engine.scratch.get(shape, self.dtype)
        if shared:  # the batch: v is (B P, m), broadcast over the copies by the kernel
            v = self.keep_shared(("pre", call), lambda: U @ self.W.T)
        else:
            v = out  # act(v) overwrites v
            np.matmul(U, self.W.T, out=out.reshape(-1, m))
        b = self.b if self.b is not None else np.zeros(m, self.dtype)
        draw = dict(h=out, key=self.key, k0=self.k0 + blk.c0, antithetic=self.antithetic,
                    offset=call * CALL_STRIDE)
        hbits = None
        if self.approx:  # sign(eps) packed straight into the block's bits
            s = np.empty((signbits.packed_rows(K * BP), m), np.uint8)
            if act == "relu":
                hbits = np.empty_like(s)
            kernels.lr_forward(v, b, self.sigma, act, eps=None, bits=s, hbits=hbits, **draw)
            if shared:
                t, kind = self.keep_shared(call, lambda: np.sign(U)), None
            elif bits is not None:
                t, kind = bits, "01"
            else:
                kind = signbits.kind_for(bool((U >= 0).all()))
                t = signbits.pack(U, kind)
            self.records[(call, blk.c0)] = (K, P, shared, s, t, kind)
        else:
            eps = self.engine.scratch.get(shape, self.dtype)
            kernels.lr_forward(v, b, self.sigma, act, eps=eps, **draw)
            self.records[(call, blk.c0)] = (K, P, shared, self.keep_shared(call, lambda: U) if shared else U, eps)
        return out, hbits

    def buffers(self):
        """The float blocks this record holds (an engine may reuse them once it is dead)."""
        return [] if self.approx else [a for r in self.records.values() for a in r[3:5] if not r[2]] + \
            [r[4] for r in self.records.values() if r[2]]

    def gradient(self, Lc):
        gW, gb, gs = self._sign_gradient(Lc) if self.approx else self._lr_gradient(Lc)
        if self.approx and self.learn_sigma:
            gs = self.sigma_sums(Lc)
        return self.finish(gW, gb, gs)

    def _work(self, Lc):
        """The records in a fixed order, each with its losses per row ``(K, B P)``."""
        return [(key, rec, self._rows(Lc[key[1]:key[1] + rec[0]], rec[1]).astype(self.dtype, copy=False))
                for key, rec in sorted(self.records.items())]

    def _lr_gradient(self, Lc):
        """Eq. 1 over the kept blocks, block-parallel; turns the kept ``eps`` into ``L * eps``."""
        m, d = self.W.shape
        work = self._work(Lc)
        if not work:  # no copies in the span
            return 0, 0, (0 if self.learn_sigma else None)
        parts = [None] * len(work)

        def block(i, _):
            (call, c0), (K, P, shared, U, eps), L = work[i]
            if shared:  # A[b] = sum_k L eps, then one product per call with the shared batch
                A = np.zeros(eps.shape[1:], dtype=self.dtype)
                S = np.zeros_like(A) if self.learn_sigma else None
                parts[i] = (kernels.sum_copies(eps, L, A, S), S)
            else:
                w = eps.reshape(-1, m)
                gb, gs = kernels.scale_rows(w, L, self.learn_sigma)  # w = L * eps now
                parts[i] = (w.T @ U, gb, gs)

        self.engine.run_blocks(block, [(i, i + 1) for i in range(len(work))])
        gW, gb, gs, A = 0, 0, 0, {}
        for ((call, _), (_, _, shared, *_), _), part in zip(work, parts):  # in order: the same bits
            if shared:
                A[call] = part[0] if call not in A else A[call] + part[0]
                if self.learn_sigma:
                    gs = gs + part[1].sum(axis=0)
            else:
                gW, gb = gW + part[0], gb + part[1]
                if self.learn_sigma:
                    gs = gs + part[2]
        for call, Ac in sorted(A.items()):
            gW, gb = gW + Ac.T @ self.shared[call], gb + Ac.sum(axis=0)
        return gW / self.sigma[:, None], gb / self.sigma, (gs / self.sigma if self.learn_sigma else None)

    def _sign_gradient(self, Lc):
        """Eq. 3's weight and bias sums from the packed bits.

        ``G``'s wider side (neurons or inputs) is split into :data:`SIGN_PARTS` fixed ranges run
        side by side, each over all records in order, writing its own part of one shared ``G``: no
        per-part copy of ``G`` to add up (ALR's peak memory). A small ``G`` (:data:`SMALL_G`) splits
        the records instead. Either way the parts are fixed by the sizes: the bits do not depend on
        the thread count."""
        m, d = self.W.shape
        work = self._work(Lc)
        gW, gb, A = 0, 0, {}
        own = []
        for (call, _), (K, P, shared, s, t, kind), L in work:
            if shared:  # A[b, i] = sum_k L sign(eps_i), read from the bits; one product per call
                A.setdefault(call, np.zeros((self.B * P, m), self.dtype))
                signs.sign_sum_copies(s, L, self.B * P, A[call], 0, m)
            else:
                own.append((s, t, kind, L.reshape(-1)))
        for call, Ac in sorted(A.items()):  # no zeros first: one (m, d) array alive, not two
            gW, gb = _add(gW, Ac.T @ self.shared[call]), _add(gb, Ac.sum(axis=0))
        if not own:
            return gW, gb, None
        zeros = lambda: (np.zeros((m, d), self.dtype), np.zeros(m, self.dtype))  # noqa: E731
        if m * d <= SMALL_G:  # split the records, one G per part, added in order
            groups = [own[a:b] for a, b in threads.split(len(own), SIGN_PARTS)]
            sums = [zeros() for _ in groups]
            cols = [(0, m, 0, d)] * len(groups)
        else:  # split G's wider side: the narrower side's bits are unpacked by every part
            cols = [(i0, i1, 0, d) for i0, i1 in threads.split(m, SIGN_PARTS, align=16)] if m >= d else \
                [(0, m, j0, j1) for j0, j1 in threads.split(d, SIGN_PARTS, align=16)]
            groups, sums = [own] * len(cols), [zeros()] * len(cols)

        def part(p, _):
            for s, t, kind, L in groups[p]:
                signs.packed_gradient_block(L, s, "pm1", t, kind, G=sums[p][0], g=sums[p][1],
                                            rows=(0, L.shape[0]), cols=cols[p], gemm=kernels.gemm_acc)

        self.engine.run_blocks(part, [(p, p + 1) for p in range(len(groups))])
        G, g = sums[0]  # the first part's arrays hold the sum: no further (m, d) array
        for Gp, gp in sums[1:]:
            if Gp is not G:
                G += Gp
                g += gp
        return _add(G, gW), _add(g, gb), None


class CPUEngine(ReferenceEngine):
    """Fused kernels, blocks side by side on the engine's threads, BLAS on one thread per block."""

    name = "cpu"
    sites = dict(ReferenceEngine.sites, lr=FusedLRSite)

    def __init__(self, xp=np):
        if xp is not np:
            raise TypeError(f"the CPU engine runs NumPy arrays only, got {xp.__name__}")
        super().__init__(np)
        self.scratch = kernels.Scratch()
        self.workers = threads.Workers()

    def normal(self, key, shape, start):
        """The noise filled on the engine's threads (the same values on any number of them)."""
        from ... import noise  # noqa: PLC0415

        run = lambda *a, **kw: threads.run_split(*a, **kw, workers=self.workers)  # noqa: E731
        return noise.normal(key, shape, start=start, run=run)

    def fuses(self, act) -> bool:
        return getattr(act, "name", None) in kernels.ACTS

    def session(self):
        return kernels.blas_one_thread()

    def plan_blocks(self, plan, B, copies):
        """Float records: at least :data:`MIN_BLOCKS` near-equal blocks of an even number of copies
        (whole antithetic pairs); sign records: small blocks (their floats die with the block) in
        a multiple of :data:`SIGN_GROUPS`. Fixed by the sizes alone, never by the thread count."""
        per_copy = max(1, plan.floats_per_copy(B))
        if plan.approx:
            unit = 2 if plan.settings.antithetic else 1
            kb = max(unit, BLOCK_FLOATS_APPROX // SIGN_GROUPS // per_copy)
            starts = balanced_starts(copies, kb, unit, SIGN_GROUPS)
        else:
            kb = max(2, BLOCK_FLOATS_EXACT // per_copy)
            n = max(MIN_BLOCKS, -(-copies // kb))
            kb = max(2, -(-copies // (2 * n)) * 2)
            starts = list(range(0, copies, kb))
        return list(zip(starts, starts[1:] + [copies]))

    def run_blocks(self, fn, blocks):
        """``fn(c0, c1)`` for every block, the blocks dealt in contiguous groups to the threads.

        ``fn`` must be safe to run on several blocks at once (each writes only its own slices) and
        mostly GIL-free (BLAS, Numba kernels). Where BLAS cannot be held at one thread (no BLAS
        library that threadpoolctl controls) the blocks run one after another instead."""
        with kernels.blas_one_thread() as held:
            if not held:
                for c0, c1 in blocks:
                    fn(c0, c1)
                return
            err = np.geterr()  # NumPy's error state is per thread: carry the caller's

            def each(lo, hi):
                with np.errstate(**err):
                    for c0, c1 in blocks[lo:hi]:
                        fn(c0, c1)

            threads.run_split(each, len(blocks), (), workers=self.workers)

    def new_pass(self):
        """Per-thread block arrays for one forward pass (ALR's outputs die with their block)."""
        return kernels.Arena()

    def done(self, sites):
        """The records are dead: their blocks serve the next chunk or step."""
        self.scratch.recycle([a for s in sites for a in s.buffers()])
        super().done(sites)

    def release(self):
        """Free the blocks kept for the next step and let the threads go."""
        self.scratch.release()
        self.workers.close()
