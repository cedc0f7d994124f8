"""Does ``chunk`` keep the baseline? Cosine to the exact gradient with and without chunking.

Digits, MLP 64-64-10, the first 50 training samples, LR; mean cosine to the exact gradient
(``minilr.reference.gradient``) over 10 seeds, for the settings of issue 10 item 2. Before the fix
each chunk had its own leave-one-out baseline, so ``chunk=1`` had none (0.918 -> 0.117).

    PYTHONPATH=. python benchmarks/chunk_baseline.py
"""
from __future__ import annotations

import time

import numpy as np

import minilr

CASES = [(1000, None), (1000, 1), (1000, 100), (201, None), (201, 100), (201, 1)]


def main():
    (x, y), _ = minilr.datasets.load("digits")
    x, y = x[:50], y[:50]
    model = minilr.MLP([64, 64, 10], sigma=0.1, seed=0)
    g_true = minilr.reference.gradient(model, x, y)
    print(f"{'copies':>7} {'chunk':>6} {'estimator':>9} {'mean cosine':>12} {'s/estimate':>11}")
    for estimator in ("lr", "alr"):
        for copies, chunk in CASES:
            t0 = time.perf_counter()
            cos = [minilr.metrics.cosine_similarity(
                minilr.estimate_gradient(model, x, y, estimator=estimator, copies=copies, chunk=chunk,
                                         seed=s), g_true) for s in range(10)]
            secs = (time.perf_counter() - t0) / 10
            print(f"{copies:>7} {str(chunk):>6} {estimator:>9} {np.mean(cos):>12.3f} {secs:>11.3f}", flush=True)


if __name__ == "__main__":
    main()
