"""The CUDA engine: CuPy arrays, blocks sized by GPU memory, so a step's kernel launches do not grow
with the copies.

A GPU wants one big block and a few large kernels per layer; the reference engine's cache-sized
blocks gave it thousands of tiny launches (issue 7: ~3,800 per ALR step at K=2000). Here a chunk
runs as **one block whenever it fits** in :attr:`CUDAEngine.memory_budget` bytes, else in the fewest
equal blocks that fit (:func:`block_plan`, a pure function of the sizes, tested on the CPU).

The default budget (:meth:`CUDAEngine.budget`) is :data:`FREE_SHARE` (half) of the GPU memory free
when the step starts, at least :data:`MIN_BUDGET` (the fused step's fixed ALR budget, 40 MB): it
bounds the sign-only (ALR) floats in flight and the ES weight noise in flight alike. On an 80 GB
GPU an ALR step of 784-256-256-10 at K = 10,000, B = 50 then runs in one block (19 launches)
instead of the 274 that the fixed 40 MB gave.

Every model runs the one path (:func:`minilr.estimators.base.estimate`) on the reference sites,
with this engine's block plan and its device primitives: the noise drawn, the signs packed and
unpacked by the CuPy kernels of :mod:`.cuda_kernels` (their NumPy twins on NumPy arrays, for the
tests). The fused per-layer kernels of :mod:`.cuda_step` (one GEMM and one fused pass per layer,
ALR's fp16 product) are not yet sites of this engine: that is the next step for the GPU.
"""
from __future__ import annotations

from .reference import ReferenceEngine

# Of the free GPU memory, the share a default plan may fill (the rest: CuPy's pool, cuBLAS, the caller).
FREE_SHARE = 0.5
# Arrays of a copy's widest size alive at once in a block (input, output, noise, a transient).
ALIVE = 4
# The default budget's floor: the fused step's fixed ALR budget (a block is at least 8 copies anyway).
MIN_BUDGET = 40 << 20


def device_kernels():
    """The GPU kernels for CuPy arrays: ``fill_normal(out, k1, gamma, start)``, ``pack(a, planes,
    code, byte0)``, ``unpack(planes, code, r0, r1, scale, out)`` (the contracts of
    :func:`minilr.noise.fill_normal` and :func:`minilr.signbits.pack` / ``unpack``).

    They are CuPy ``RawKernel``s (:mod:`minilr.engines.cuda_kernels`): CuPy alone, no
    ``numba.cuda``. Imported on first use only."""
    from . import cuda_kernels  # noqa: PLC0415

    return cuda_kernels


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


class CUDAEngine(ReferenceEngine):
    """CuPy arrays, one block per chunk whenever it fits in ``memory_budget`` bytes (None: half of
    the GPU memory free at each step, at least ``MIN_BUDGET``; see :meth:`budget`).

    The reference sites run on this engine's plan and device kernels (see the module docstring).
    ``precision`` and ``fused`` are kept for :mod:`.cuda_step` (``precision``: ALR's packed product
    in ``"fp32"`` or ``"fp16"``). On NumPy arrays (tests) the kernels' NumPy twins run instead.
    """

    name = "cuda"

    def __init__(self, xp, memory_budget=None, precision="fp32", fused=True):
        super().__init__(xp)
        if memory_budget is not None and not (isinstance(memory_budget, (int, float)) and memory_budget > 0):
            raise ValueError(f"memory_budget must be a positive number of bytes or None, got {memory_budget!r}")
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        self.memory_budget, self.precision, self.fused = memory_budget, precision, bool(fused)
        self.launches = None  # launches of the last fused step (its launcher's count)

    def free_memory(self):
        """Bytes of device memory free now, counting the blocks CuPy's pool holds unused (a step's
        arrays go back to the pool, not to the device); None on NumPy arrays (no device)."""
        if self.xp.__name__ != "cupy":
            return None
        return self.xp.cuda.runtime.memGetInfo()[0] + self.xp.get_default_memory_pool().free_bytes()

    def budget(self):
        """Bytes a block may use: ``memory_budget``, else ``FREE_SHARE`` of :meth:`free_memory`
        and at least ``MIN_BUDGET`` (None where there is no device: the fused step's defaults)."""
        if self.memory_budget is not None:
            return self.memory_budget
        free = self.free_memory()
        return None if free is None else max(MIN_BUDGET, FREE_SHARE * free)

    def plan_blocks(self, plan, B, copies):
        """One block when the span's copies fit :meth:`budget` (a few arrays of a copy's widest
        size alive at once, :data:`ALIVE`), else the fewest near-equal blocks that do."""
        per = ALIVE * plan.floats_per_copy(B) * plan.model.dtype.itemsize
        budget = self.budget()
        budget = 2 * MIN_BUDGET if budget is None else budget  # NumPy twins (tests): a small GPU
        return block_plan(per, copies, budget, 2 if plan.settings.antithetic else 1)

    # -- device primitives: CuPy kernels (their NumPy twins on NumPy arrays) ---------------------
    def normal(self, key, shape, start):
        if self.xp.__name__ != "cupy":
            return super().normal(key, shape, start)
        from . import cuda_kernels  # noqa: PLC0415

        out = self.xp.empty(shape, dtype="float32")
        cuda_kernels.fill_normal(out, key.k1, key.gamma, start)
        return out

    def pack(self, a, kind):
        if self.xp.__name__ != "cupy":
            return super().pack(a, kind)
        from . import cuda_kernels  # noqa: PLC0415
        from .. import signbits  # noqa: PLC0415

        out = signbits._empty(kind, a.shape[0], a.shape[1], self.xp)
        cuda_kernels.pack(a, signbits._planes(out, kind), signbits._CODES[kind], 0)
        return out

    def unpack(self, p, kind, rows, dtype):
        if self.xp.__name__ != "cupy":
            return super().unpack(p, kind, rows, dtype)
        from . import cuda_kernels  # noqa: PLC0415
        from .. import signbits  # noqa: PLC0415

        out = self.xp.empty((rows, p.shape[-1]), dtype=dtype)
        cuda_kernels.unpack(signbits._planes(p, kind), signbits._CODES[kind], 0, rows,
                            self.xp.ones(rows, dtype=dtype), out)
        return out
