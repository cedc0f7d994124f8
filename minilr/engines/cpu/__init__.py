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

import math
import threading

import numpy as np

from ... import signbits
from ..reference import BLOCK_FLOATS_APPROX, BLOCK_FLOATS_EXACT, LRSite, ReferenceEngine, floats_per_copy
from . import kernels, signs, threads

# Blocks of a float-record pass at least (when copies allow): enough for two or four threads.
MIN_BLOCKS = 4
# Sign records: the floats of this many blocks in flight share the block budget, and the block
# count is made a multiple of it. A constant, not the thread count: a block's row count sets the
# shape of its GEMMs, hence their bits.
SIGN_GROUPS = 2
# ALR's packed-gradient sums: this many fixed parts (of G's wider side, or of the rows), run side
# by side. Two, not four: each part's G or blocks are alive at once, and ALR's peak memory is made
# of them (K=2000, B=10: 6.5 MB with four row parts, 5.0 MB with two).
SIGN_PARTS = 2
# Up to this many weights (512 KB of float32) the packed sum splits the rows instead, one G per
# part added in order: no bits unpacked twice (a 256 x 256 layer: ~2 ms less CPU per step at
# B=50, K=200) for one extra G alive. Larger G: split G, no copies.
SMALL_G = 1 << 17


def balanced_starts(copies, kb, B, groups):
    """First copies of blocks of at most ``kb`` copies (more only where ``kb`` is below one unit)
    whose count is a multiple of ``groups``, sizes spread evenly. A unit is the fewest copies that
    fill whole bytes of packed rows and whole antithetic pairs. For sign records."""
    unit = 8 // math.gcd(B, 8)
    unit *= 2 // math.gcd(unit, 2)
    units = -(-copies // unit)
    per = max(1, kb // unit)
    n = -(-units // per)
    n = min(units, -(-n // groups) * groups)
    bounds = [units * i // n * unit for i in range(n)]
    return [c for c in bounds if c < copies]


class FusedLRSite(LRSite):
    """An LR/ALR site on the fused kernels; the same records as :class:`LRSite`, thread-safe per block."""

    def __init__(self, *args):
        super().__init__(*args)
        self._pre, self._lock = None, threading.Lock()  # the shared batch's h W^T, once
        self.next_t, self.t_packed = None, False  # ALR: the next site's input bits, packed here
        self.arena, self.tag = None, 0  # ALR: where its block outputs live (CPUEngine.prepare)

    def fuses(self, act):
        return act is not None and getattr(act, "name", None) in kernels.ACTS

    def link_next(self, act, nxt):
        """ALR: when this site's pass applies the ReLU ``act`` whose output is ``nxt``'s input, pack
        that input's signs in the same pass (one pass over the block, not two)."""
        if (self.approx and self.fuses(act) and act.name == "relu" and isinstance(nxt, FusedLRSite)
                and nxt.approx and nxt.x_kind == "01"):
            self.next_t, nxt.t_packed = nxt.t, True

    def forward_block(self, h, c0, c1, act=None):
        """One GEMM, then one fused pass (noise, bias, activation ``act``), as the reference's
        ``(v + b) + sigma * eps``: the same bits."""
        act = "identity" if act is None else act.name
        m, d = self.W.shape
        shape = (c1 - c0, self.B, m)
        # LR keeps its blocks till the gradient: they come from (and go back to) the engine's
        # scratch. ALR's die with the block: per-thread arrays reused, by layer parity (input and
        # output of a layer differ), from the pass's arena
        if not self.approx:
            out = self.engine.scratch.get(shape, self.dtype)
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
            self.eps_blocks[c0] = eps = self.engine.scratch.get(shape, self.dtype)
            kernels.lr_forward(v, self.b, self.sigma, act, eps, out, self.key, self.k0 + c0,
                               self.antithetic)
        return out

    def gradient(self, Lc):
        if not self.approx:
            return self._lr_gradient(Lc)
        gW, gb = self._sign_gradient(Lc)
        out = {"weight": gW, "bias": gb}
        if self.learn_sigma:
            out["sigma"] = self.sigma_sums(Lc)
        return out

    def _lr_gradient(self, Lc):
        """Eq. 1 over the kept blocks, block-parallel; turns the kept ``eps`` into ``L * eps``."""
        m, d = self.W.shape
        parts = {}

        def block(c0, c1):
            eps = self.eps_blocks[c0]
            Lb = Lc[c0:c1]
            if self.first:  # A[b] = sum_k L eps, then one product with the shared batch
                A = np.zeros((self.B, m), dtype=self.dtype)
                S = np.zeros_like(A) if self.learn_sigma else None
                parts[c0] = (kernels.sum_copies(eps, Lb, A, S), S)
            else:
                w = eps.reshape(-1, m)
                gb, gs = kernels.scale_rows(w, Lb, self.learn_sigma)  # w = L * eps now
                parts[c0] = (w.T @ self.x_blocks[c0].reshape(-1, d), gb, gs)

        starts = sorted(self.eps_blocks)
        self.engine.run_blocks(block, [(c0, c0 + self.eps_blocks[c0].shape[0]) for c0 in starts])
        parts = [parts[c0] for c0 in starts]  # summed in block order: the same bits every run
        if self.first:
            A = sum(p[0] for p in parts)
            gW, gb = A.T @ self.x_shared, A.sum(axis=0)
            gs = sum(p[1] for p in parts).sum(axis=0) if self.learn_sigma else None
        else:
            gW, gb = sum(p[0] for p in parts), sum(p[1] for p in parts)
            gs = sum(p[2] for p in parts) if self.learn_sigma else None
        out = {"weight": gW / self.sigma[:, None], "bias": gb / self.sigma}
        if self.learn_sigma:
            out["sigma"] = gs / self.sigma
        return out

    def _sign_gradient(self, Lc):
        """Eq. 3's weight and bias sums from the packed bits.

        ``G``'s wider side (neurons or inputs) is split into :data:`SIGN_PARTS` fixed ranges run
        side by side, each over all rows in order, writing its own part of one shared ``G``: no
        per-part copy of ``G`` to add up (ALR's peak memory). A small ``G`` (:data:`SMALL_G`) splits
        the rows instead. Either way the parts are fixed by the sizes: the bits do not depend on
        the thread count."""
        m, d = self.W.shape
        K, B = self.copies, self.B
        rows = K * B
        Lf = np.ascontiguousarray(Lc, self.dtype).reshape(-1)
        if self.first:  # A[b, i] = sum_k L sign(eps_i), read from the bits; then one product
            # one thread: ~0.2 ms of work (B=50, K=200), less than a hand-off to the other
            A = signs.sign_sum_copies(self.s, Lf, B, np.zeros((B, m), self.dtype), 0, m)
            return A.T @ self.x_shared, A.sum(axis=0)
        if m * d <= SMALL_G:  # G is small: split the rows, one G per part, added in order
            parts = [(c0 * B, c1 * B, 0, m, 0, d) for c0, c1 in threads.split(K, SIGN_PARTS, align=8)]
            sums = [(np.zeros((m, d), self.dtype), np.zeros(m, self.dtype)) for _ in parts]
            # a part's floats alive: its G and its blocks; a G smaller than the block budget
            # leaves the rest to the blocks (fewer, larger blocks: less Python per flop)
            floats = 2 * signs.GRAD_BLOCK_FLOATS - min(m * d, signs.GRAD_BLOCK_FLOATS)
        else:  # split G's wider side: the narrower side's bits are unpacked by every part
            cut = [(i0, i1, 0, d) for i0, i1 in threads.split(m, SIGN_PARTS, align=16)] if m >= d else \
                [(0, m, j0, j1) for j0, j1 in threads.split(d, SIGN_PARTS, align=16)]
            parts = [(0, rows) + c for c in cut]
            sums = [(np.zeros((m, d), self.dtype), np.zeros(m, self.dtype))] * len(parts)
            floats = None
        self.engine.run_blocks(lambda p, _: signs.packed_gradient_block(
            Lf, self.s, "pm1", self.t, self.x_kind, *sums[p], *parts[p], gemm=kernels.gemm_acc,
            block_floats=floats), [(p, p + 1) for p in range(len(parts))])
        G, g = sums[0]
        for Gp, gp in sums[1:]:
            if Gp is not G:
                G += Gp
                g += gp
        return G, g


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

    def session(self):
        return kernels.blas_one_thread()

    def plan(self, model, B, copies, modes, approx):
        """Float records: at least :data:`MIN_BLOCKS` near-equal blocks of an even number of copies
        (whole antithetic pairs); sign records: small blocks (their floats die with the block) in
        a multiple of :data:`SIGN_GROUPS`. Fixed by the sizes alone, never by the thread count."""
        per_copy = floats_per_copy(model, B, modes)
        if approx:
            kb = max(8, (BLOCK_FLOATS_APPROX // SIGN_GROUPS // per_copy) // 8 * 8)
            starts = balanced_starts(copies, kb, B, SIGN_GROUPS)
        else:
            kb = max(8, (BLOCK_FLOATS_EXACT // per_copy) // 8 * 8)
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

    def prepare(self, model, lin, sites):
        """Per-thread block arrays for ALR's pass; a fused ReLU packs the next site's input signs."""
        arena = kernels.Arena()
        for j, site in enumerate(sites):
            if isinstance(site, FusedLRSite):
                site.arena, site.tag = arena, j % 2
        for j in range(len(lin) - 1):
            i, link = lin[j][0], getattr(sites[j], "link_next", None)
            if link is not None and lin[j + 1][0] == i + 2:
                link(model.layers[i + 1], sites[j + 1])

    def forward(self, *args):
        L, sites = super().forward(*args)
        for site in sites:  # the pass's per-thread block arrays are dead: free them before the gradient
            if isinstance(site, FusedLRSite):
                site.arena = None
        return L, sites

    def done(self, sites):
        """The records are dead: their blocks serve the next chunk or step."""
        self.scratch.recycle([a for s in sites for a in s.buffers()])

    def release(self):
        """Free the blocks kept for the next step and let the threads go."""
        self.scratch.release()
        self.workers.close()
