"""Layer-parallel gradients and the pipelined step (minilr.parallel.overlap): same numbers as plain.

OpenBLAS may add a product's terms in another order with another thread count, so the plain
estimate runs with BLAS on one thread, as the pipeline does; then the results are equal bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

import minilr
from minilr import kernels
from minilr.backend import get_backend, seed_sequence
from minilr.estimators import ESTIMATORS, SITES, estimate
from minilr.estimators.base import centred_losses, noise_keys, noisy_forward
from minilr.parallel import overlap

EST = ["lr", "alr", "es", "aes", "hybrid", "a-hybrid"]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 20)).astype(np.float32)
    y = rng.integers(0, 5, 9)
    model = minilr.MLP([20, 48, 24, 5], activation="relu", sigma=0.2, seed=2, learn_sigma=True)
    return model, x, y, get_backend("numpy")


@pytest.mark.parametrize("estimator", EST)
@pytest.mark.parametrize("copies, buckets, antithetic, baseline", [(30, 3, False, True), (25, 4, False, False),
                                                                   (20, 3, True, True), (5, 1, False, True)])
def test_pipelined_step_equals_plain_chunked_step(problem, estimator, copies, buckets, antithetic, baseline):
    model, x, y, bk = problem
    chunk = overlap.bucket_size(copies, buckets, antithetic)
    with kernels.blas_one_thread():
        g1, l1 = estimate(model, x, y, estimator, copies, seed_sequence(7), "cross_entropy", baseline,
                          antithetic, chunk, 1, bk)
    for threads in (1, 3):
        g2, l2 = overlap.pipelined_estimate(model, x, y, estimator, copies, seed_sequence(7), "cross_entropy",
                                            baseline, antithetic, buckets, 1, bk, layer_threads=threads)
        assert l1 == l2
        for k in g1:
            np.testing.assert_array_equal(g1[k], g2[k], err_msg=f"{estimator} {k} threads={threads}")


def test_pipelined_differs_with_another_seed(problem):
    # the equality above is not vacuous: another seed gives another gradient
    model, x, y, bk = problem
    g1, _ = overlap.pipelined_estimate(model, x, y, "lr", 20, seed_sequence(1), "cross_entropy", True, False, 2, 1, bk)
    g2, _ = overlap.pipelined_estimate(model, x, y, "lr", 20, seed_sequence(2), "cross_entropy", True, False, 2, 1, bk)
    assert not np.array_equal(g1["0.weight"], g2["0.weight"])


@pytest.mark.parametrize("estimator", EST)
def test_layer_gradients_in_threads_equal_sequential(problem, estimator):
    model, x, y, bk = problem
    est = ESTIMATORS[estimator]
    lin = model.linear_indices
    modes = est.modes(len(lin), 1)
    keys = noise_keys(seed_sequence(4), len(lin))
    out = []
    for threads in (1, 3):
        with kernels.blas_one_thread():
            L, sites = noisy_forward(model, x, y, 0, 16, modes, est.approx, keys, "cross_entropy", False, bk, SITES)
            Lc = centred_losses(L, False, True, np)
            out.append(overlap.layer_gradients(sites, Lc, threads))
    for a, b in zip(*out):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_bucket_size():
    assert overlap.bucket_size(10, 3) == 4 and overlap.bucket_size(10, 3, antithetic=True) == 4
    assert overlap.bucket_size(12, 4, antithetic=True) == 4 and overlap.bucket_size(14, 4, antithetic=True) == 4
    assert overlap.bucket_size(5, 1) == 5
