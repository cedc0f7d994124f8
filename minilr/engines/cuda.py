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

The estimate itself runs as the fused CUDA step (:mod:`.cuda_step`, kernels in
:mod:`.cuda_kernels`: ~20 launches per step for a 3-layer MLP in one block) wherever it applies
(float32 stacks of ``Linear`` layers and activations); other models run the reference sites on
this engine's plan. The GPU kernels that CuPy arrays need outside the step (noise fill, sign
packing) come from :func:`device_kernels`.
"""
from __future__ import annotations

import math

from ..layers import Linear
from .reference import ReferenceEngine

# Of the free GPU memory, the share a default plan may fill (the rest: CuPy's pool, cuBLAS, the caller).
FREE_SHARE = 0.5
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


def copy_bytes(sizes, B, modes=None, approx=False, itemsize=4):
    """Bytes one copy of a batch of ``B`` needs on the device in one block, for layer widths
    ``sizes`` (``[d0, d1, ..., dL]``) and per-layer ``modes`` (``"lr"``/``"es"``, default all LR).

    LR keeps ``eps`` and the layer's output (the next layer's ``x``) per row, with one transient
    of the output's size; ALR keeps bits only (1-2 bits per value) beside the transients; an ES
    layer adds its ``m (d + 1)`` noise per copy. An estimate, on the safe side."""
    modes = modes or ["lr"] * (len(sizes) - 1)
    floats, bits, widest = 0, 0, 0
    for (d, m), mode in zip(zip(sizes[:-1], sizes[1:]), modes):
        widest = max(widest, B * m)
        if mode == "es":
            floats += m * (d + 1) + B * m
        elif approx:
            bits += B * (m + 2 * d)
        else:
            floats += 2 * B * m
    return itemsize * (floats + 2 * widest) + bits // 8 + 1


def block_plan(sizes, B, copies, budget_bytes, modes=None, approx=False, itemsize=4):
    """Blocks ``[(c0, c1), ...]`` of copies ``0 .. copies - 1``: one block when all copies fit in
    ``budget_bytes``, else the fewest near-equal blocks that do.

    Block starts are multiples of a unit (whole bytes of packed rows, whole antithetic pairs), so
    a block is at least one unit even when the budget is smaller. Pure: no GPU needed.
    """
    per = copy_bytes(sizes, B, modes, approx, itemsize)
    unit = 8 // math.gcd(B, 8)
    unit *= 2 // math.gcd(unit, 2)
    units = -(-copies // unit)
    fit = max(1, int(budget_bytes // (per * unit)))  # units per block
    n = -(-units // fit)
    bounds = [units * i // n * unit for i in range(n)] + [copies]
    return [(c0, c1) for c0, c1 in zip(bounds, bounds[1:]) if c0 < c1]


class CUDAEngine(ReferenceEngine):
    """CuPy arrays, one block per chunk whenever it fits in ``memory_budget`` bytes (None: half of
    the GPU memory free at each step, at least ``MIN_BUDGET``; see :meth:`budget`).

    Noisy estimates of float32 ``Linear``/activation stacks run as the fused
    CUDA step of :mod:`.cuda_step` (:meth:`estimate`: ~20 launches per step on a 3-layer MLP,
    whatever the copies, when one block fits); anything else runs the reference sites with this
    engine's block plan. ``precision``: ALR's packed product in ``"fp32"`` or ``"fp16"`` (tensor
    cores, ``L`` split into two fp16 parts: within 2^-22 |L| per term); ``fused=False`` runs the
    sites always. On NumPy arrays (tests) the kernels' NumPy twins run instead of the GPU.
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

    def estimate(self, estimator, model, x, y, s, ss):
        """The whole noisy estimate as the fused CUDA step, ``(grads, mean loss)``; None when the
        model is not on that path (:func:`.cuda_step.supported`): the caller then runs the sites."""
        from . import cuda_kernels, cuda_step  # noqa: PLC0415

        if not self.fused or cuda_step.supported(model) is not None:
            return None
        budget = self.budget()  # the user's, or the share of free memory; None: the step's defaults
        budgets = {} if budget is None else {"approx_budget": int(budget), "es_budget": int(budget)}
        lnch = cuda_kernels.Launcher(self.xp)
        grads, loss, _ = cuda_step.estimate(model, x, y, s.estimator, s.copies, ss, s.loss, s.baseline,
                                            s.antithetic, s.chunk, s.es_layers, xp=self.xp, lnch=lnch,
                                            precision=self.precision, **budgets)
        self.launches = lnch.count
        return grads, loss

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

    def plan(self, model, B, copies, modes, approx):
        lin = [l for l in model.layers if isinstance(l, Linear)]
        sizes = [lin[0].in_features] + [l.out_features for l in lin]
        budget = self.budget()
        return block_plan(sizes, B, copies, MIN_BUDGET if budget is None else budget, modes, approx,
                          model.dtype.itemsize)
