"""Engines: *how* a gradient estimate runs on a device. The estimators (:mod:`minilr.estimators`)
say *what* is computed; the backend owns one engine (``Backend("numpy").engine``).

* ``"reference"`` (:mod:`.reference`): plain ``xp`` code, NumPy or CuPy, blocks one after another;
  what a student reads, and the oracle of the tests (``Backend("numpy", engine="reference")``).
* ``"cpu"`` (:mod:`.cpu`): fused Numba kernels + OpenBLAS, blocks side by side on every core; the
  default on NumPy.
* ``"cuda"`` (:mod:`.cuda`): CuPy, the sites as a few large kernel launches (one product and one
  fused kernel per site call), blocks sized by GPU memory (one per chunk when it fits); the
  default on CuPy. On NumPy arrays its kernels' twins run (the tests).

The interface (every engine subclasses :class:`~.reference.ReferenceEngine`), used by the one
estimate loop :func:`minilr.estimators.base.estimate`::

    engine.xp                                   # numpy or cupy
    engine.session()                            # context around one estimate (BLAS limits, launcher)
    engine.forward(plan, x, y, span) -> (L, sites)
        # L: (len(span), B) losses; sites: one record per noise site of plan.entries, built by
        # engine.make_sites from engine.sites[mode] ("lr" or "es")
    site.gradient(Lc) -> {"weight"[, "bias"][, "sigma"]}  # the paper's sums over the span's rows
    engine.done(sites)                          # the span's records are dead (reuse their blocks)
    engine.release()                            # free what the engine keeps between calls
    # primitives a subclass may replace: sites, normal, noise, pack, unpack, fuses(act),
    # plan_blocks(plan, B, copies) -> [(c0, c1)], run_blocks(fn, blocks), new_pass, make_sites

A layer reaches its site through ``ctx.affine(layer, U, name, act=None)`` (:class:`~.reference.Block`),
which calls ``site.affine(U, P, blk, call, act, bits) -> (v, hbits)``: ``U`` (rows P, d), ``v``
(K B P, m); ``act`` is given only when ``engine.fuses(act)``; ``hbits``, the output's packed
"01" signs where the site packed them, reach the next site as ``bits``. The shared suite
``tests/test_engines.py`` checks every engine against the reference for every layer type.
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
