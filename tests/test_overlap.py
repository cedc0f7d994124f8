"""Layer-parallel gradients and the pipelined step (minilr.parallel.overlap): same numbers as plain.

Both run inside the engine's session (on the CPU: BLAS on one thread), so the results are equal
bit for bit; each engine (the fused CPU one and the plain reference) is checked.
"""
from __future__ import annotations

import numpy as np
import pytest

import minilr
from minilr.backend import Backend, seed_sequence
from minilr.estimators import ESTIMATORS, Plan, Settings, centred_losses, estimate
from minilr.parallel import overlap

from strategies import model_zoo

EST = ["lr", "alr", "es", "aes", "hybrid", "a-hybrid"]


@pytest.fixture(params=["cpu", "reference"])  # a fresh engine per test: no scratch shared between tests
def problem(request):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 20)).astype(np.float32)
    y = rng.integers(0, 5, 9)
    model = minilr.MLP([20, 48, 24, 5], activation="relu", sigma=0.2, seed=2, learn_sigma=True)
    return model, x, y, Backend("numpy", engine=request.param)


@pytest.mark.parametrize("estimator", EST)
@pytest.mark.parametrize("copies, buckets, antithetic, baseline", [(30, 3, False, True), (25, 4, False, False),
                                                                   (20, 3, True, True), (5, 1, False, True)])
def test_pipelined_step_equals_plain_chunked_step(problem, estimator, copies, buckets, antithetic, baseline):
    model, x, y, bk = problem
    chunk = overlap.bucket_size(copies, buckets, antithetic)
    s = Settings(estimator, copies, "cross_entropy", baseline, antithetic, chunk, es_layers=1)
    with bk.engine.session():
        g1, l1 = estimate(model, x, y, s, seed_sequence(7), bk)
    for threads in (1, 3):
        g2, l2 = overlap.pipelined_estimate(model, x, y, s, seed_sequence(7), bk, buckets=buckets, layer_threads=threads)
        assert l1 == l2
        for k in g1:
            np.testing.assert_array_equal(g1[k], g2[k], err_msg=f"{estimator} {k} threads={threads}")


def test_pipelined_differs_with_another_seed(problem):
    # the equality above is not vacuous: another seed gives another gradient
    model, x, y, bk = problem
    s = Settings("lr", 20)
    g1, _ = overlap.pipelined_estimate(model, x, y, s, seed_sequence(1), bk, buckets=2)
    g2, _ = overlap.pipelined_estimate(model, x, y, s, seed_sequence(2), bk, buckets=2)
    assert not np.array_equal(g1["0.weight"], g2["0.weight"])


@pytest.mark.parametrize("estimator", EST)
def test_layer_gradients_in_threads_equal_sequential(problem, estimator):
    model, x, y, bk = problem
    s = Settings(estimator, 16, es_layers=1)
    plan = Plan.make(model, x, s, seed_sequence(4), ESTIMATORS[estimator])
    out = []
    for threads in (1, 3):
        with bk.engine.session():
            L, sites = bk.engine.forward(plan, x, y, range(16))
            Lc = centred_losses(L, False, True, np)
            out.append(overlap.layer_gradients(sites, Lc, threads))
    for a, b in zip(*out):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_bp_cannot_be_pipelined(problem):
    model, x, y, bk = problem
    with pytest.raises(ValueError, match="bp"):
        overlap.pipelined_estimate(model, x, y, Settings("bp"), seed_sequence(1), bk, buckets=2)


def test_bucket_size():
    assert overlap.bucket_size(10, 3) == 4 and overlap.bucket_size(10, 3, antithetic=True) == 4
    assert overlap.bucket_size(12, 4, antithetic=True) == 4 and overlap.bucket_size(14, 4, antithetic=True) == 4
    assert overlap.bucket_size(5, 1) == 5


@pytest.mark.parametrize("estimator", ["lr", "alr", "es", "a-hybrid"])
@pytest.mark.parametrize("name", sorted(model_zoo()))
def test_pipelined_step_equals_plain_for_every_model(name, estimator):
    """The pipeline is a schedule of the one loop: conv, residual, recurrent, graph and spiking
    nets give the plain chunked estimate bit for bit (issue 13: they were wrong before)."""
    model, x, y = model_zoo()[name]()
    bk = Backend("numpy")
    s = Settings(estimator, 12, chunk=overlap.bucket_size(12, 3))
    with bk.engine.session():
        g1, l1 = estimate(model, x, y, s, seed_sequence(7), bk)
    g2, l2 = overlap.pipelined_estimate(model, x, y, s, seed_sequence(7), bk, buckets=3, layer_threads=2)
    assert l1 == l2 and g1.keys() == g2.keys()
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=f"{name} {estimator} {k}")
