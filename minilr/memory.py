"""How much memory one gradient estimate holds at once, checked before anything is allocated.

``copies`` multiplies what a training forward pass records (paper Sec. 3: memory grows with the
copies K): ``copies=10**7`` on a 784-256-256-10 MLP would grow to many GB before failing deep in
NumPy with a MemoryError about some small array. :func:`check_copies` estimates the records of
one chunk of copies and refuses, naming ``copies`` and suggesting ``chunk=``, when they would not
fit a budget: ``MINILR_MEMORY_LIMIT`` (bytes, or with a K/M/G/T suffix) or 80 % of the machine's
physical memory.

The estimate (per chunk of ``c`` copies, batch ``B``, ``itemsize`` bytes per float):

* the losses and their centred copy: ``2 c B`` floats;
* an LR site (``m`` outputs, ``d`` inputs, ``P`` positions per call): its noise ``c B P m`` and,
  past the shared batch, its input ``c B P d`` floats per call; ALR keeps signs only:
  ``c B P (m + 2 d) / 8`` bytes;
* an ES site keeps its weight noise ``c m (d + 1)`` floats when small (at most
  :data:`minilr.engines.reference.KEEP_FLOATS`), else redraws it (nothing kept).

The streamed forward blocks add a bounded few MB, not counted.
"""
from __future__ import annotations

import os
import re

__all__ = ["record_bytes", "budget_bytes", "check_copies"]

_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# Noise counters are 64-bit: copy k of a site starts at k * (values per copy).
_COUNTERS = 1 << 63
_ES_KEEP_FLOATS = 1 << 24  # as minilr.engines.reference.KEEP_FLOATS


def record_bytes(plan, batch: int, copies: int) -> int:
    """Bytes one chunk of ``copies`` copies records for the estimate ``plan``
    (:class:`minilr.estimators.Plan`; see the module docstring); exact Python ints."""
    item = plan.model.dtype.itemsize
    total = 2 * copies * batch * item
    for j, (calls, mode) in enumerate(zip(plan.calls, plan.modes)):
        for c, (P, d, m) in enumerate(calls):
            rows = copies * batch * P
            shared = j == 0 and c == 0  # the batch itself: its input is kept once
            if mode == "es":
                n = copies * m * (d + 1)
                total += n * item if c == 0 and n <= _ES_KEEP_FLOATS else 0
            elif plan.approx:
                total += -(-rows * (m + (0 if shared else 2 * d)) // 8)
            else:
                total += rows * (m + (0 if shared else d)) * item
    return total


def budget_bytes() -> int:
    """``MINILR_MEMORY_LIMIT`` or 80 % of the physical memory (8 GiB if it cannot be read)."""
    env = os.environ.get("MINILR_MEMORY_LIMIT")
    if env:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kKmMgGtT]?)i?[bB]?\s*", env)
        if not match:
            raise ValueError(f"MINILR_MEMORY_LIMIT must be a number of bytes, optionally with a K, M, "
                             f"G or T suffix (e.g. 16G), got {env!r}")
        return int(float(match.group(1)) * _SUFFIX[match.group(2).lower()])
    try:
        return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _fmt(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def check_copies(plan, batch: int, copies: int, chunk) -> None:
    """ValueError naming ``copies`` (and suggesting ``chunk=``) if one chunk would not fit the
    budget, or if the copies would run past the 64-bit noise counters."""
    per_copy = max([batch * P * m for calls in plan.calls for P, _, m in calls]
                   + [m * (d + 1) for calls in plan.calls for _, d, m in calls] + [1])
    if copies * per_copy >= _COUNTERS:
        raise ValueError(f"copies={copies} is too many: the noise of that many copies would run past "
                         f"2**63 counters (at most {(_COUNTERS - 1) // per_copy} copies for this "
                         f"model and batch)")
    c = copies if chunk is None else min(chunk, copies)
    need = record_bytes(plan, batch, c)
    budget = budget_bytes()
    if need <= budget:
        return
    one = max(1, record_bytes(plan, batch, 1))
    fit = max(1, budget // (2 * one))
    what = f"copies={copies}" if chunk is None else f"chunk={chunk} (of copies={copies})"
    raise ValueError(f"{what} with a batch of {batch} would hold about {_fmt(need)} at once, more "
                     f"than the memory limit of {_fmt(budget)} (80% of this machine's memory, or "
                     f"MINILR_MEMORY_LIMIT): pass chunk={min(fit, copies)} (or fewer) to process "
                     f"the copies that many at a time, or use fewer copies")
