"""Engines: *how* a gradient estimate runs on a device. The estimators (:mod:`minilr.estimators`)
say *what* is computed; the backend owns one engine (``Backend("numpy").engine``).

* ``"reference"`` (:mod:`.reference`): plain ``xp`` code, NumPy or CuPy, blocks one after another;
  what a student reads, and the oracle of the tests (``Backend("numpy", engine="reference")``).
* ``"cpu"`` (:mod:`.cpu`): fused Numba kernels + OpenBLAS, blocks side by side on every core; the
  default on NumPy.
* ``"cuda"`` (:mod:`.cuda`): CuPy, blocks sized by GPU memory (one per chunk when it fits); the
  default on CuPy.

The interface (every engine subclasses :class:`~.reference.ReferenceEngine`), what the one estimate
loop (:func:`minilr.estimators.base.estimate`) calls, for every model::

    engine.session()                          # context around one estimate (BLAS limits, ...)
    engine.forward(plan, x, y, span) -> (L, sites)
        # the noisy pass of the copies in `span` (a range): L (copies, B); one record per noise
        # site of `plan` (a minilr.estimators.Plan), made from engine.sites[mode]
    site.gradient(Lc) -> {"weight", "bias"?, "sigma"?}   # the paper's sums over the span's rows
    engine.done(sites)                        # the span's records are dead (reuse their blocks)
    engine.release()                          # free what the engine keeps between calls

and the primitives a subclass replaces: ``sites`` (record classes by ``"lr"`` / ``"es"``, each with
``affine(U, P, blk, call, act, bits)`` for a layer's ``ctx.affine`` and ``gradient``), ``normal`` /
``noise`` (the counter-based draws), ``pack`` / ``unpack`` (sign bits), ``fuses(act)`` (activations
applied inside ``affine``), ``plan_blocks`` and ``run_blocks`` (blocks of copies and how they run),
``new_pass`` (what one pass's blocks share). The shared suite ``tests/test_engines.py`` checks every
engine against the reference on every layer type.
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
