"""The CUDA engine: the sites of the one path as a few large launches of the kernels of
:mod:`.cuda_kernels`, blocks sized by GPU memory, so an estimate's launches do not grow with the
copies.

Every model takes the one path (:func:`minilr.estimators.base.estimate`); this engine gives its
sites records that run on the device (:class:`CUDALRSite`, :class:`CUDAESSite`), the same
noise and equations as :mod:`.reference`, per call of a site and block of copies:

* LR/ALR forward: one cuBLAS product ``U W^T`` (the batch's once per call, shared by every copy)
  and one fused kernel: the noise drawn at its counters, bias, ``sigma * eps``, the activation
  (:meth:`CUDAEngine.fuses`), and for ALR the packed ``sign(eps)`` and, after a ReLU, the output's
  "01" signs, the next site's record (``LR_FORWARD`` / ``ALR_FORWARD``). A site with ``P``
  positions (a convolution's unfolded input) is the same kernel with ``B P`` rows per copy: the
  counters match (copy ``k``, row ``b P + p``); call ``c`` adds ``c * CALL_STRIDE`` to them;
* LR gradient: ``L eps / sigma`` in place and two products (``LR_SCALE``), or, for the shared
  batch, ``sum_k L eps / sigma`` (``SUM_COPIES``) and one product; ALR: the bits unpacked into
  ``L s`` and ``[t | 1]`` block by block and one product per block in fp32, or with
  ``precision="fp16"`` in fp16 on the tensor cores (``UNPACK_PAIR``); the sigma score in one
  kernel (``SIGMA_SUMS``, ALR drawing ``eps`` again);
* ES/AES: the block's weight noise in one kernel (``ES_NOISE``, once per copy for all calls), its
  product with the input (one GEMM, batched where the input is per copy) and a fused combine
  with the activation (``ES_COMBINE``); the gradient draws the noise again inside its reduction
  (``ES_GRAD``, ``ES_SIGMA``) instead of keeping ``K m (d + 1)`` numbers.

Every launch goes through the engine's :class:`~.cuda_kernels.Launcher` (:attr:`CUDAEngine.lnch`,
one per estimate); :attr:`CUDAEngine.launches` is the last estimate's count (the sites' device
work; the layers' other operations and the loss run as CuPy code). On NumPy arrays the kernels'
twins run instead: how the tests check the numbers and count the launches without a GPU.

Blocks (:meth:`CUDAEngine.plan_blocks`): one per chunk whenever it fits in the budget (a share
of the free GPU memory, :meth:`CUDAEngine.budget`), else the fewest equal blocks that fit
(:func:`block_plan`, pure, tested on the CPU). The same budget bounds ALR's unpacked block in its
gradient. The kernels are float32: another dtype runs the reference sites (same numbers).
"""
from __future__ import annotations

import contextlib

import numpy as np

from . import cuda_kernels as ck
from .reference import CALL_STRIDE, ESSite, LRSite, ReferenceEngine

# Of the free GPU memory, the share a default plan may fill (the rest: CuPy's pool, cuBLAS, the caller).
FREE_SHARE = 0.5
# Arrays of a copy's widest size alive at once in a block (input, output, noise, a transient).
ALIVE = 4
# The default budget's floor, 40 MB (and the budget on NumPy arrays, which have no device).
MIN_BUDGET = 40 << 20
# Reductions split their loop into parts until about this many threads fill the GPU.
PAR_THREADS = 1 << 18
_F32 = np.float32


def device_kernels():
    """The GPU kernels for CuPy arrays: ``fill_normal(out, k1, gamma, start)``, ``pack(a, planes,
    code, byte0)``, ``unpack(planes, code, r0, r1, scale, out)`` (the contracts of
    :func:`minilr.noise.fill_normal` and :func:`minilr.signbits.pack` / ``unpack``): CuPy
    ``RawKernel``s, no ``numba.cuda``."""
    return ck


def block_plan(copy_bytes, copies, budget_bytes, unit=1):
    """Blocks ``[(c0, c1), ...]`` of copies ``0 .. copies - 1``: one block when all copies fit in
    ``budget_bytes`` at ``copy_bytes`` each, else the fewest near-equal blocks that do; starts on
    multiples of ``unit`` (2: whole antithetic pairs), so a block is at least one unit even when
    the budget is smaller. Pure: no GPU needed."""
    units = -(-copies // unit)
    fit = max(1, int(budget_bytes // (copy_bytes * unit)))  # units per block
    n = -(-units // fit)
    bounds = [min(copies, units * i // n * unit) for i in range(n)] + [copies]
    return [(c0, c1) for c0, c1 in zip(bounds, bounds[1:]) if c0 < c1]


def _parts(n, width):
    """``(parts, per)``: a reduction kernel's loop over ``n`` items in parts of ``per``, enough
    parts to give about :data:`PAR_THREADS` threads of ``width`` each."""
    per = -(-n // max(1, min(n, -(-PAR_THREADS // max(1, width)))))
    return -(-n // per), per


class _Device:
    """What both sites share: the engine's launcher and a few counted device steps."""

    def _op(self, name, fn, *args, **kw):
        """A CuPy operation outside the kernels (a sign, a repeat, an add): counted as a launch."""
        self.engine.lnch._tick(name)
        return fn(*args, **kw)

    def _add(self, acc, part):
        return part if isinstance(acc, int) else self._op("add", self.xp.add, acc, part)

    def _total(self, P):
        """The sum of a reduction kernel's parts (one launch where there are several)."""
        return self.engine.lnch.reduce("sum", self.xp.sum, P, axis=0) if P.shape[0] > 1 else P[0]

    def _bias(self):
        return self.b if self.b is not None else self.xp.zeros(self.W.shape[0], self.dtype)


class CUDALRSite(_Device, LRSite):
    """An LR/ALR site on the kernels: per call and block one product and one fused kernel; the
    records of :class:`~.reference.LRSite` (ALR's bits in the kernels' layout, which is
    :mod:`minilr.signbits`'), their sums by the gradient kernels."""

    def affine(self, U, P, blk, call, act=None, bits=None):
        lnch, xp, (m, d), K = self.engine.lnch, self.xp, self.W.shape, blk.K
        BP = self.B * P
        rows = K * BP
        code = 0 if act is None else ck.ACTS[act.name]
        shared = U.shape[0] == BP and K > 1
        if shared:  # the batch: U W^T once per call, broadcast over the copies by the kernel
            pre = self.keep_shared(("pre", call), lambda: lnch.matmul(U, self.W.T))
            out = xp.empty((rows, m), self.dtype)
        else:  # the kernel overwrites the product with the output
            pre = out = lnch.matmul(U, self.W.T)
        noise = (self.key.origin, self.key.gamma, self.k0 + blk.c0, BP, m, rows, int(self.antithetic), code)
        offset = call * CALL_STRIDE
        if not self.approx:
            eps = xp.empty((rows, m), self.dtype)
            lnch.kernel(ck.LR_FORWARD, rows * m, pre, int(shared), self._bias(), self.sigma, eps, out,
                        *noise, offset)
            self.records[(call, blk.c0)] = (K, P, shared, self.keep_shared(call, lambda: U) if shared else U, eps)
            return out, None
        nb = -(-rows // 8)
        s = xp.empty((nb, m), np.uint8)
        relu = code == ck.ACTS["relu"]  # the output's "01" signs: the next site's input record
        hbits = xp.empty((nb, m), np.uint8) if relu else s
        lnch.kernel(ck.ALR_FORWARD, nb * m, pre, int(shared), self._bias(), self.sigma, out, s, hbits,
                    int(relu), *noise, 0, nb, offset)
        if shared:
            t, kind = self.keep_shared(call, lambda: self._op("sign", xp.sign, U)), None
        elif bits is not None:
            t, kind = bits, "01"
        else:
            U = xp.ascontiguousarray(U)
            kind = "01" if float(lnch.reduce("min", xp.min, U)) >= 0 else "sign"
            t = xp.empty((ck.CODES[kind], nb, d), np.uint8)  # one plane for "01", two for "sign"
            lnch.kernel(ck.PACK, nb * d, U, t, ck.CODES[kind], rows, d, 0, nb)
        self.records[(call, blk.c0)] = (K, P, shared, s, t, kind)
        return out, (hbits if relu else None)

    def gradient(self, Lc):
        """Eq. 1 (LR) or Eq. 3 (ALR) over the span's records, and the sigma score; ``Lc``
        (copies, B): the span's centred losses."""
        gs = self.sigma_sums(Lc) if self.learn_sigma else None  # first: LR scales its eps in place
        gW, gb, amax = 0, 0, None
        for (call, c0), (K, P, shared, *rec) in sorted(self.records.items()):
            L = self._losses(Lc[c0:c0 + K], P)
            if shared:
                dW, db = self._shared_sums(K, P, rec, L, call)
            elif self.approx:
                if amax is None and self.engine.precision == "fp16":  # fp16's scale: the largest |L|
                    amax = self.engine.lnch.reduce("max", self.xp.max, self._op("abs", self.xp.abs, Lc)).reshape(1)
                dW, db = self._sign_sums(K * self.B * P, rec, L, amax)
            else:
                dW, db = self._lr_sums(K * self.B * P, rec, L)
            gW, gb = self._add(gW, dW), self._add(gb, db)
        return self.finish(gW, gb, gs)

    def _losses(self, L, P):
        """The losses (K, B) as one per row and position, flat (K B P,) float32."""
        L = L if P == 1 else self._op("repeat", self.xp.repeat, L, P, axis=1)
        return self.xp.ascontiguousarray(L, dtype=_F32).reshape(-1)

    def _shared_sums(self, K, P, rec, L, call):
        """The batch shared by the copies: ``A[b] = sum_k L eps / sigma`` (LR) or ``sum_k L
        sign(eps)`` (ALR) in one kernel, then one product with the batch (or its signs)."""
        lnch, xp, m = self.engine.lnch, self.xp, self.W.shape[0]
        BP = self.B * P
        parts, per = _parts(K, BP * m)
        A = xp.empty((parts, BP, m), _F32)
        if self.approx:
            lnch.kernel(ck.SIGN_SUM_COPIES, parts * BP * m, rec[0], L, A, K, BP, m, per)
        else:
            lnch.kernel(ck.SUM_COPIES, parts * BP * m, rec[1], L, self.sigma, A, K, BP, m, per)
        A = self._total(A)
        return lnch.matmul(A.T, self.shared[call]), lnch.reduce("sum", xp.sum, A, axis=0)

    def _lr_sums(self, rows, rec, L):
        """Eq. 1: ``eps`` turned into ``L eps / sigma`` in place, then ``w^T U`` and the bias sum
        as a product with ones (cuBLAS reads the rows coalesced; a column sum would read them
        strided)."""
        lnch, (U, eps) = self.engine.lnch, rec
        lnch.kernel(ck.LR_SCALE, rows * self.W.shape[0], eps, L, self.sigma, rows, self.W.shape[0])
        ones = self._op("ones", self.xp.ones, rows, _F32)
        return lnch.matmul(eps.T, U), lnch.matmul(ones, eps)

    def _sign_sums(self, rows, rec, L, amax):
        """Eq. 3 from the bits: blocks of rows unpacked into ``S = L s`` and ``T = [t | 1 | 0..]``
        (the bias sum from the same product), ``G += S^T T``; fp16 splits ``L`` into two fp16
        parts (``UNPACK_PAIR``). The blocks hold at most the engine's budget."""
        lnch, xp, (m, d) = self.engine.lnch, self.xp, self.W.shape
        s, t, kind = rec
        dw = -(-(d + 1) // 8) * 8  # aligned rows
        half = amax is not None
        per_row = 2 * (2 * m + dw) if half else 4 * (m + dw)
        rb = rows if rows <= 8 else min(rows, max(8, int(self.engine.budget() // per_row) // 8 * 8))
        dt = np.float16 if half else _F32
        S_all, T_all = xp.empty((rb, 2 * m if half else m), dt), xp.empty((rb, dw), dt)  # reused by every block
        G = 0
        for r0 in range(0, rows, rb):
            n = min(rb, rows - r0)
            S, T = S_all[:n], T_all[:n]
            lnch.kernel(ck.UNPACK_PAIR, n * (m + dw), s, L, t, ck.CODES[kind], S, T, int(half),
                        amax if half else L, r0, n, m, d, dw, s.shape[0])
            G = self._add(G, lnch.gemm_t_f16(S, T) if half else lnch.matmul(S.T, T))
        if half:
            gW, gb = xp.empty((m, d), _F32), xp.empty(m, _F32)
            lnch.kernel(ck.SPLIT_FINISH, m * (d + 1), G, gW, gb, amax, m, d, dw)
            return gW, gb
        return G[:, :d], G[:, d]

    def sigma_sums(self, Lc):
        """The sigma score over the records, one kernel each: LR reads its kept ``eps``, ALR draws
        it again from its counters."""
        lnch, m, total = self.engine.lnch, self.W.shape[0], 0
        for (call, c0), (K, P, shared, *rec) in sorted(self.records.items()):
            L = self._losses(Lc[c0:c0 + K], P)
            rows = K * self.B * P
            parts, per = _parts(rows, m)
            out = self.xp.empty((parts, m), _F32)
            eps = L if self.approx else rec[1]  # ALR: a placeholder, the kernel draws eps again
            lnch.kernel(ck.SIGMA_SUMS, parts * m, eps, L, self.sigma, out, rows, m, per, int(self.approx),
                        self.key.origin, self.key.gamma, self.k0 + c0, self.B * P, int(self.antithetic),
                        call * CALL_STRIDE)
            total = self._add(total, self._total(out))
        return total


class CUDAESSite(_Device, ESSite):
    """An ES/AES site on the kernels: a block draws its copies' ``[E_k | e_k]`` once for all
    calls; the gradient draws them again inside its reduction, so nothing weight-sized is kept."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.keep = False

    def affine(self, U, P, blk, call, act=None, bits=None):
        lnch, xp, (m, d), K = self.engine.lnch, self.xp, self.W.shape, blk.K
        BP, wb = self.B * P, int(self.b is not None)
        self.ran = True
        if id(self) not in blk.store:  # the block's first call draws its copies' perturbations
            E, e = xp.empty((K, m, d), _F32), xp.zeros((K, m), _F32)  # no bias: e stays 0
            lnch.kernel(ck.ES_NOISE, K * m * (d + wb), E, e, self.key.origin, self.key.gamma, self.k0 + blk.c0,
                        K, m, d, int(self.antithetic), wb)
            blk.store[id(self)] = E, e
        E, e = blk.store[id(self)]
        code = 0 if act is None else ck.ACTS[act.name]
        if U.shape[0] == BP and K > 1:  # the batch: one product for every copy, (B P, d) x (d, K m)
            pre = self.keep_shared(("pre", call), lambda: lnch.matmul(U, self.W.T))
            pert = lnch.matmul(U, E.reshape(K * m, d).T)
            out = xp.empty((K * BP, m), _F32)
            lnch.kernel(ck.ES_COMBINE, K * BP * m, pre, 1, pert, m, K * m, e, self._bias(), self.sigma, out,
                        K, BP, m, code)
        else:  # one product per copy, batched
            pre = out = lnch.matmul(U, self.W.T)
            pert = lnch.matmul(U.reshape(K, BP, d), E.transpose(0, 2, 1))
            lnch.kernel(ck.ES_COMBINE, K * BP * m, pre, 0, pert, BP * m, m, e, self._bias(), self.sigma, out,
                        K, BP, m, code)
        return out, None

    def gradient(self, Lc):
        """ES: ``sum_k Lk E_k / sigma``; AES: ``sum_k Lk sign(E_k)`` (and the sigma score), the
        noise drawn again in the kernels over the span's copies (also those another process ran)."""
        lnch, xp, (m, d), K = self.engine.lnch, self.xp, self.W.shape, self.copies
        if K == 0:
            return self.finish(0, 0, 0 if self.learn_sigma else None)
        wb = int(self.b is not None)
        Lk = lnch.reduce("sum", xp.sum, Lc, axis=1).astype(_F32, copy=False)  # shared by the batch
        key = (self.key.origin, self.key.gamma, self.k0, K, m, d, int(self.antithetic))
        parts, per = _parts(K, m * (d + wb))
        P = xp.empty((parts, m, d + wb), _F32)
        lnch.kernel(ck.ES_GRAD, parts * m * (d + wb), Lk, self.sigma, P, *key, int(self.approx), per,
                    int(not self.approx and parts == 1), wb)
        g = self._total(P)
        if parts > 1 and not self.approx:
            g = self._op("divide", xp.divide, g, self.sigma[:, None])
        gs = None
        if self.learn_sigma:
            parts, per = _parts(K, m)
            S = xp.empty((parts, m), _F32)
            lnch.kernel(ck.ES_SIGMA, parts * m, Lk, self.sigma, S, *key, per, wb)
            gs = self._total(S)
        return self.finish(xp.ascontiguousarray(g[:, :d]), g[:, d] if wb else None, gs)


class CUDAEngine(ReferenceEngine):
    """CuPy arrays, one block per chunk whenever it fits in ``memory_budget`` bytes (None: half of
    the GPU memory free at each step, at least ``MIN_BUDGET``; see :meth:`budget`); the sites of
    this module (see its docstring). ``precision``: ALR's packed product in ``"fp32"`` or
    ``"fp16"``. On NumPy arrays (tests) the kernels' NumPy twins run instead.
    """

    name = "cuda"
    sites = {"lr": CUDALRSite, "es": CUDAESSite}

    def __init__(self, xp, memory_budget=None, precision="fp32"):
        super().__init__(xp)
        if memory_budget is not None and not (isinstance(memory_budget, (int, float)) and memory_budget > 0):
            raise ValueError(f"memory_budget must be a positive number of bytes or None, got {memory_budget!r}")
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        self.memory_budget, self.precision = memory_budget, precision
        self.lnch = self.new_launcher()
        self.launches = None  # launches of the last estimate (its launcher's count)

    def new_launcher(self):
        """The launcher of one estimate (a test may hand out a :class:`~.cuda_kernels.DryLauncher`)."""
        return ck.Launcher(self.xp)

    @contextlib.contextmanager
    def session(self):
        """One estimate: a fresh launcher; :attr:`launches` is its count afterwards."""
        self.lnch = self.new_launcher()
        try:
            yield
        finally:
            self.launches = self.lnch.count

    def fuses(self, act) -> bool:
        return getattr(act, "name", None) in ck.ACTS

    def site_classes(self, plan):
        """This module's sites; the reference sites for a model that is not float32 (the kernels')."""
        return self.sites if np.dtype(plan.model.dtype) == _F32 else ReferenceEngine.sites

    def free_memory(self):
        """Bytes of device memory free now, counting the blocks CuPy's pool holds unused (a step's
        arrays go back to the pool, not to the device); None on NumPy arrays (no device)."""
        if self.xp.__name__ != "cupy":
            return None
        return self.xp.cuda.runtime.memGetInfo()[0] + self.xp.get_default_memory_pool().free_bytes()

    def budget(self):
        """Bytes a block may use: ``memory_budget``, else ``FREE_SHARE`` of :meth:`free_memory`
        and at least ``MIN_BUDGET`` (``MIN_BUDGET`` where there is no device)."""
        if self.memory_budget is not None:
            return self.memory_budget
        free = self.free_memory()
        return MIN_BUDGET if free is None else max(MIN_BUDGET, FREE_SHARE * free)

    def plan_blocks(self, plan, B, copies):
        """One block when the span's copies fit :meth:`budget` (a few arrays of a copy's widest
        size alive at once, :data:`ALIVE`), else the fewest near-equal blocks that do."""
        per = ALIVE * plan.floats_per_copy(B) * plan.model.dtype.itemsize
        return block_plan(per, copies, self.budget(), 2 if plan.settings.antithetic else 1)

    # -- device primitives of the reference sites (another dtype): CuPy kernels, twins on NumPy ------
    def normal(self, key, shape, start):
        if self.xp.__name__ != "cupy":
            return super().normal(key, shape, start)
        out = self.xp.empty(shape, dtype="float32")
        ck.fill_normal(out, key.origin, key.gamma, start)
        return out

    def pack(self, a, kind):
        if self.xp.__name__ != "cupy":
            return super().pack(a, kind)
        from .. import signbits  # noqa: PLC0415

        out = signbits._empty(kind, a.shape[0], a.shape[1], self.xp)
        ck.pack(a, signbits._planes(out, kind), signbits._CODES[kind], 0)
        return out

    def unpack(self, p, kind, rows, dtype):
        if self.xp.__name__ != "cupy":
            return super().unpack(p, kind, rows, dtype)
        from .. import signbits  # noqa: PLC0415

        out = self.xp.empty((rows, p.shape[-1]), dtype=dtype)
        ck.unpack(signbits._planes(p, kind), signbits._CODES[kind], 0, rows, self.xp.ones(rows, dtype=dtype), out)
        return out
