"""Engines: *how* a gradient estimate runs on a device. The estimators (:mod:`minilr.estimators`)
say *what* is computed; the backend owns one engine (``Backend("numpy").engine``).

* ``"reference"`` (:mod:`.reference`): plain ``xp`` code, NumPy or CuPy, blocks one after another;
  what a student reads, and the oracle of the tests (``Backend("numpy", engine="reference")``).
* ``"cpu"`` (:mod:`.cpu`): fused Numba kernels + OpenBLAS, blocks side by side on every core; the
  default on NumPy.
* ``"cuda"`` (:mod:`.cuda`): CuPy, blocks sized by GPU memory (one per chunk when it fits); the
  default on CuPy.

The interface (every engine subclasses :class:`~.reference.ReferenceEngine`)::

    engine.xp                                   # numpy or cupy
    engine.session()                            # context around one estimate (BLAS limits, ...)
    engine.forward(model, x, y, k0, copies, modes, approx, keys, loss, antithetic) -> (L, sites)
        # L: (copies, B) losses; sites: one record per Linear layer, built from engine.sites[mode]
    site.gradient(Lc) -> {"weight", "bias"[, "sigma"]}  # the paper's sums over the chunk's rows
    engine.done(sites)                          # the chunk's records are dead (reuse their blocks)
    engine.release()                            # free what the engine keeps between calls
    # hooks a subclass overrides: sites (record classes by "lr"/"es"), plan(model, B, copies,
    # modes, approx) -> [(c0, c1)], run_blocks(fn, blocks), prepare(model, lin, sites)

A site class is constructed as ``Site(W, b, sigma, learn_sigma, copies, B, k0, key, antithetic,
approx, nonneg, first, engine)`` and has ``forward_block(h, c0, c1, act=None)`` (returns the
layer's output for copies ``c0 .. c1 - 1``; ``act`` given only when ``fuses(act)`` is True),
``fuses(act)``, ``buffers()`` and ``gradient(Lc)``. The shared suite ``tests/test_engines.py``
checks every engine against the reference.
"""
from __future__ import annotations

__all__ = ["ENGINES", "make_engine"]

ENGINES = {"numpy": ("cpu", "reference"), "cupy": ("cuda", "reference")}  # the first is the default


def make_engine(name, xp, backend_name):
    """The engine ``name`` (None: the default) for the backend ``backend_name`` and its ``xp``."""
    names = ENGINES[backend_name]
    name = names[0] if name is None else name
    if name not in names:
        raise ValueError(f"engine must be one of {names} for backend={backend_name!r}, got {name!r}")
    if name == "reference":
        from .reference import ReferenceEngine  # noqa: PLC0415
        return ReferenceEngine(xp)
    if name == "cpu":
        from .cpu import CPUEngine  # noqa: PLC0415
        return CPUEngine(xp)
    from .cuda import CUDAEngine  # noqa: PLC0415
    return CUDAEngine(xp)
