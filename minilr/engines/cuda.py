"""The CUDA engine: CuPy arrays, blocks sized by GPU memory, so a step's kernel launches do not grow
with the copies.

A GPU wants one big block and a few large kernels per layer; the reference engine's cache-sized
blocks gave it thousands of tiny launches (issue 7: ~3,800 per ALR step at K=2000). Here a chunk
runs as **one block whenever it fits** in :attr:`CUDAEngine.memory_budget` bytes (default: half of
the GPU memory free when the plan is made), else in the fewest equal blocks that fit
(:func:`block_plan`, a pure function of the sizes, tested on the CPU).

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
    the free GPU memory at each plan).

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

    def budget(self):
        """Bytes a block may use: ``memory_budget``, or a share of the GPU memory free now."""
        if self.memory_budget is not None:
            return self.memory_budget
        if self.xp.__name__ != "cupy":  # NumPy twins (tests): as if 2 GB were free
            return FREE_SHARE * (2 << 30)
        free, _ = self.xp.cuda.runtime.memGetInfo()
        return FREE_SHARE * free

    def plan_blocks(self, plan, B, copies):
        """One block when the span's copies fit :meth:`budget` (a few arrays of a copy's widest
        size alive at once, :data:`ALIVE`), else the fewest near-equal blocks that do."""
        per = ALIVE * plan.floats_per_copy(B) * plan.model.dtype.itemsize
        return block_plan(per, copies, self.budget(), 2 if plan.settings.antithetic else 1)

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
