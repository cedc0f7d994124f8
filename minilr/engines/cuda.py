"""The CUDA engine: CuPy arrays, blocks sized by GPU memory, so a step's kernel launches do not grow
with the copies.

A GPU wants one big block and a few large kernels per layer; the reference engine's cache-sized
blocks gave it thousands of tiny launches (issue 7: ~3,800 per ALR step at K=2000). Here a chunk
runs as **one block whenever it fits** in :attr:`CUDAEngine.memory_budget` bytes (default: half of
the GPU memory free when the plan is made), else in the fewest equal blocks that fit
(:func:`block_plan`, a pure function of the sizes, tested on the CPU). The sites are the reference
ones for now; fused CUDA sites plug in through :attr:`CUDAEngine.sites` (see
:mod:`minilr.engines`). The GPU kernels that CuPy arrays need outside the sites (noise fill, sign
packing) come from :func:`device_kernels`.
"""
from __future__ import annotations

import math

from ..layers import Linear
from .reference import ReferenceEngine

# Of the free GPU memory, the share a default plan may fill (the rest: CuPy's pool, cuBLAS, the caller).
FREE_SHARE = 0.5


def device_kernels():
    """The GPU kernels for CuPy arrays: ``fill_normal(out, k1, gamma, start)``, ``pack(a, planes,
    code, byte0)``, ``unpack(planes, code, r0, r1, scale, out)`` (the contracts of
    :func:`minilr.noise.fill_normal` and :func:`minilr.signbits.pack` / ``unpack``).

    ``minilr.engines.cuda_kernels`` (CuPy ``RawKernel``s: CuPy alone) when it is there, else the
    older ``numba.cuda`` kernels of ``minilr._cuda_kernels``. Imported on first use only."""
    try:
        from . import cuda_kernels  # noqa: PLC0415
        return cuda_kernels
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.cuda_kernels":
            raise
    from .. import _cuda_kernels  # noqa: PLC0415
    return _cuda_kernels


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
    the free GPU memory at each plan)."""

    name = "cuda"

    def __init__(self, xp, memory_budget=None):
        super().__init__(xp)
        if memory_budget is not None and not (isinstance(memory_budget, (int, float)) and memory_budget > 0):
            raise ValueError(f"memory_budget must be a positive number of bytes or None, got {memory_budget!r}")
        self.memory_budget = memory_budget

    def budget(self):
        """Bytes a block may use: ``memory_budget``, or a share of the GPU memory free now."""
        if self.memory_budget is not None:
            return self.memory_budget
        free, _ = self.xp.cuda.runtime.memGetInfo()
        return FREE_SHARE * free

    def plan(self, model, B, copies, modes, approx):
        lin = [l for l in model.layers if isinstance(l, Linear)]
        sizes = [lin[0].in_features] + [l.out_features for l in lin]
        return block_plan(sizes, B, copies, self.budget(), modes, approx, model.dtype.itemsize)
