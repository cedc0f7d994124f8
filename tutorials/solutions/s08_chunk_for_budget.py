"""Tutorial 8, exercise 1: choose the chunk size for a memory budget and check the peak.

One LR estimate keeps every copy's records of its chunk at once, so its peak memory is close to
``a + b * chunk``. Measure the peak at two chunk sizes, fit the line, and take the largest chunk
whose fitted peak fits the budget. ``check()`` verifies the choice against an independent
measurement: the tracemalloc peak of an estimate run at that chunk.
"""
from __future__ import annotations

import tracemalloc

import numpy as np

import minilr


def peak_bytes(model, x, y, copies, chunk, estimator="lr"):
    """Peak bytes tracemalloc sees during one gradient estimate (NumPy reports its arrays to it)."""
    tracemalloc.start()
    minilr.estimate_gradient(model, x, y, estimator=estimator, copies=copies, seed=0, chunk=chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def chunk_for_budget(model, x, y, budget, copies, *, estimator="lr", probes=(20, 40)):
    """The largest chunk (at most ``copies``) whose fitted peak ``a + b * chunk`` fits ``budget`` bytes.

    The fit uses the measured peaks at the two chunk sizes ``probes``, both with ``copies`` copies,
    so the accumulators and the first (loss) pass of a chunked estimate are inside ``a``.
    """
    minilr.estimate_gradient(model, x, y, estimator=estimator, copies=2, seed=0)  # compile first
    c1, c2 = probes
    p1, p2 = (peak_bytes(model, x, y, copies, c, estimator) for c in (c1, c2))
    b = (p2 - p1) / (c2 - c1)  # bytes per copy in a chunk
    a = p1 - b * c1
    if b <= 0:
        return copies
    return int(max(1, min(copies, np.floor((budget - a) / b))))


def check():
    (x, y), _ = minilr.datasets.load("digits")
    xb, yb = x[:50], y[:50]
    model = minilr.MLP([64, 256, 256, 10], activation="relu", sigma=0.1, seed=0)
    budget, copies = 12 * 2**20, 400
    chunk = chunk_for_budget(model, xb, yb, budget, copies)
    assert 1 < chunk < copies, f"a 12 MiB budget should need chunks here, got chunk={chunk}"
    fits = peak_bytes(model, xb, yb, copies, chunk)
    assert fits <= budget, f"chunk={chunk}: measured peak {fits / 2**20:.2f} MiB exceeds the 12 MiB budget"
    # the choice is not needlessly small: a quarter more copies per chunk no longer fits (the peak
    # is linear in the chunk, ~0.2 MiB per copy here, so 25 % more is several MiB past the fit)
    over = peak_bytes(model, xb, yb, copies, int(np.ceil(1.25 * chunk)))
    assert over > budget, f"chunk={int(np.ceil(1.25 * chunk))} still fits ({over / 2**20:.2f} MiB): chunk too small"
    return chunk, fits


if __name__ == "__main__":
    c, p = check()
    print(f"chunk {c}: measured peak {p / 2**20:.2f} MiB within 12 MiB")
