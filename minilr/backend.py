"""The backend: which array module (``xp``) runs the numbers, its engine, and how arrays and
randomness get there.

Estimators are written against ``backend.xp`` (NumPy or CuPy); the backend's *engine*
(:mod:`minilr.engines`) decides how a step runs on that device. CuPy is imported lazily, so minilr
imports and tests on a machine without a GPU. Randomness is explicit: every generator comes from a
:class:`numpy.random.SeedSequence`, never from global state.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Backend", "get_backend", "cupy_available", "seed_sequence", "child"]

_CUPY_FIX = (
    "backend='cupy' needs CuPy and a CUDA GPU. Install the GPU extra that matches your CUDA "
    "(e.g. `pip install cupy-cuda12x`, or `pip install minilr[gpu]`) on a machine with an NVIDIA "
    "GPU, or use backend='numpy'."
)


def _import_cupy():
    """Return the cupy module if it imports and sees a GPU, else raise RuntimeError naming the fix."""
    try:
        import cupy  # noqa: PLC0415  (optional dependency)
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        raise RuntimeError(f"CuPy could not be imported ({exc}). {_CUPY_FIX}") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise RuntimeError(f"CuPy found no usable CUDA device ({exc}). {_CUPY_FIX}") from None
    if n < 1:
        raise RuntimeError(f"CuPy sees no CUDA device. {_CUPY_FIX}")
    try:  # the GPU kernels for noise and sign bits: checked now, not at the first noise draw
        from .engines.cuda import device_kernels  # noqa: PLC0415

        kernels = device_kernels()
    except Exception as exc:
        raise RuntimeError(f"minilr's GPU kernels could not be loaded ({type(exc).__name__}: {exc}). "
                           f"{_CUPY_FIX}") from None
    _check_toolchain(kernels.FILL_NORMAL)
    return cupy


def _check_toolchain(kernel):
    """Compile and load one GPU kernel now (CuPy caches it for the first step), so that a broken
    toolchain (no NVRTC, no CUDA headers, a driver too old for the code) is named when the backend
    is made, not at the first step."""
    try:
        kernel.compiled().compile()
    except Exception as exc:  # CuPy raises RuntimeError, CompileException, CUDA errors ...
        lines = str(exc).strip().splitlines() or [""]
        why = " / ".join(lines[:3]) + (" ..." if len(lines) > 3 else "")
        raise RuntimeError(
            f"the CUDA toolchain cannot compile minilr's GPU kernels: NVRTC (through CuPy) failed on "
            f"the kernel {kernel.name!r} ({type(exc).__name__}: {why}). CuPy needs NVRTC and the CUDA "
            "headers: `pip install \"cupy-cuda12x[ctk]\"` (or `pip install minilr[gpu]`) brings both as "
            "wheels, or point CUDA_PATH at a CUDA toolkit; else use backend='numpy'.") from None


def cupy_available() -> bool:
    """True when CuPy imports, sees at least one GPU, and minilr's GPU kernels load."""
    try:
        _import_cupy()
    except RuntimeError:
        return False
    return True


def seed_sequence(seed) -> np.random.SeedSequence:
    """Turn ``seed`` (int, None or SeedSequence) into a SeedSequence.

    ``None`` draws fresh entropy (a non-reproducible run); anything else is reproducible.
    """
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if seed is None:
        return np.random.SeedSequence()
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, None or numpy.random.SeedSequence, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    return np.random.SeedSequence(int(seed))


class Backend:
    """Owns the array module ``xp``, its engine, and the moves between host (NumPy) and device.

    Parameters
    ----------
    name : {"numpy", "cupy"}
    engine : None, "cpu", "cuda" or "reference"
        How estimates run (:mod:`minilr.engines`): None picks the device's fast engine ("cpu" on
        NumPy, "cuda" on CuPy); "reference" runs the plain ``xp`` code the tests check against.

    The engine keeps scratch memory between calls for as long as this object lives: pass a Backend
    you hold as ``backend=`` to reuse it across calls (``backend.engine.release()`` frees it); a
    name such as ``backend="numpy"`` makes a fresh one per call, freed when the call returns.
    """

    def __init__(self, name: str = "numpy", engine=None):
        if name == "numpy":
            self.xp = np
        elif name == "cupy":
            self.xp = _import_cupy()
        else:
            raise ValueError(f"backend must be 'numpy' or 'cupy', got {name!r}")
        if engine is not None and not isinstance(engine, str):
            raise TypeError(f"engine must be None or an engine name, got {type(engine).__name__}")
        self.name = name
        from .engines import make_engine  # noqa: PLC0415 (engines import this module)

        self.engine = make_engine(engine, self.xp, name)

    def __repr__(self):
        return f"Backend({self.name!r}, engine={self.engine.name!r})"

    # -- arrays ---------------------------------------------------------------------------------
    def asarray(self, a, dtype=None):
        """Move ``a`` (a NumPy array, or an array already on this backend) onto this backend."""
        if self.name == "cupy":
            return self.xp.asarray(a, dtype=dtype)
        if not isinstance(a, np.ndarray) and type(a).__module__.split(".")[0] == "cupy":
            raise TypeError("got a CuPy (device) array on backend='numpy'; call .get() on it first "
                            "or pass backend='cupy'")
        return np.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        """Copy ``a`` back to a host NumPy array."""
        if self.name == "cupy" and not isinstance(a, np.ndarray):
            return self.xp.asnumpy(a)
        return np.asarray(a)

    # -- randomness -----------------------------------------------------------------------------
    def generator(self, ss: np.random.SeedSequence):
        """A general-purpose random generator on this backend, seeded from ``ss``
        (``Generator(SFC64)`` on NumPy), for users' own sampling.

        The estimators do not use it: their noise is counter-based (:mod:`minilr.noise`), so any
        block of it can be drawn again from the seed instead of stored.
        """
        if self.name == "cupy":
            return self.xp.random.default_rng(int(ss.generate_state(1, np.uint64)[0]))
        return np.random.Generator(np.random.SFC64(ss))


def get_backend(backend="numpy", engine=None) -> Backend:
    """Return a :class:`Backend` for ``"numpy"`` or ``"cupy"`` (a new one, with a new ``engine``:
    nothing is shared between calls), or the Backend object given."""
    if isinstance(backend, Backend):
        if engine is not None and engine != backend.engine.name:
            raise ValueError(f"engine={engine!r} given with a Backend whose engine is {backend.engine.name!r}")
        return backend
    if not isinstance(backend, str):
        raise TypeError(f"backend must be 'numpy', 'cupy' or a Backend, got {type(backend).__name__}")
    return Backend(backend, engine)


def child(ss: np.random.SeedSequence, *keys: int) -> np.random.SeedSequence:
    """The child stream ``keys`` of ``ss``, without the side effect of ``ss.spawn``.

    ``SeedSequence.spawn`` counts how often it was called, so calling it twice gives different
    streams; deriving children by explicit key keeps every stream a pure function of the seed.
    """
    return np.random.SeedSequence(ss.entropy, spawn_key=tuple(ss.spawn_key) + tuple(int(k) for k in keys),
                                  pool_size=ss.pool_size)
