"""Run under mpiexec by tests/test_mpi.py: the distributed gradient equals the one-process one.

For every estimator, baseline on/off, antithetic pairs, chunks, and copy counts not divisible by
the ranks: max |g_dist - g_one| / max |g_one| <= 1e-5 for every parameter array (float32 sums in
another order differ by a few ulps; a wrong copy, noise or baseline differs by O(1)).
"""
import sys

import numpy as np
from mpi4py import MPI

import minilr
from minilr.backend import get_backend, seed_sequence
from minilr.estimators import Settings
from minilr.estimators import estimate as estimate_one
from minilr.parallel import distributed, mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
TOL = 1e-5

rng = np.random.default_rng(0)
x = rng.normal(size=(6, 12)).astype(np.float32)
y = rng.integers(0, 4, 6)
model = minilr.MLP([12, 16, 8, 4], activation="relu", sigma=0.2, seed=1, learn_sigma=True)
bk = get_backend("numpy")

cases = []
for est in ["lr", "alr", "es", "aes", "hybrid", "a-hybrid"]:  # (+ "bp" below)
    for copies, baseline, antithetic, chunk in [(7, True, False, None), (10, False, False, None),
                                                (10, True, True, None), (22, True, False, 8),
                                                (2, True, False, None), (1, True, False, None)]:
        cases.append((est, copies, baseline, antithetic, chunk))

worst = 0.0
for est, copies, baseline, antithetic, chunk in cases:
    s = Settings(est, copies, "cross_entropy", baseline, antithetic, chunk, es_layers=1)
    g1, l1 = estimate_one(model, x, y, s, seed_sequence(5), bk)
    stats = {}
    g2, l2 = distributed.estimate(model, x, y, s, seed_sequence(5), bk, comm=comm, stats=stats)
    assert set(g1) == set(g2)
    for k in g1:
        scale = float(np.abs(g1[k]).max()) or 1.0
        rel = float(np.abs(g1[k] - g2[k]).max()) / scale
        worst = max(worst, rel)
        assert rel <= TOL, (est, copies, baseline, antithetic, chunk, k, rel)
    assert abs(l1 - l2) <= 1e-6 * abs(l1), (est, l1, l2)
    # every rank holds the very same gradient (the reduction's result is the same everywhere)
    for k in g2:
        ref = comm.bcast(g2[k], root=0)
        assert np.array_equal(ref, g2[k]), (est, k, "ranks disagree")
    # chunks with a baseline: one more Allreduce, of each sample's loss summed over all copies
    totals = int(baseline and chunk is not None and chunk < copies)
    if est in ("es", "aes"):  # seeds and losses only: no gradient Allreduce at all
        assert stats.get("allreduce_calls", 0) == totals, stats
        assert mpi.bytes_sent(stats) == stats["allgather_bytes"] + stats.get("allreduce_bytes", 0)
    else:
        assert stats["allreduce_calls"] == 1 + totals, stats
# every model builder and layer type takes the same path (issue 13: conv nets were 100 % off here)
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from strategies import model_zoo  # noqa: E402

for name, make in sorted(model_zoo().items()):
    zmodel, zx, zy = make()
    for est in ["lr", "alr", "es", "aes", "hybrid", "a-hybrid"]:
        for copies, antithetic, chunk in [(7, False, None), (12, True, 4)]:
            s = Settings(est, copies, "cross_entropy", True, antithetic, chunk)
            g1, l1 = estimate_one(zmodel, zx, zy, s, seed_sequence(3), bk)
            g2, l2 = distributed.estimate(zmodel, zx, zy, s, seed_sequence(3), bk, comm=comm)
            assert set(g1) == set(g2) == set(zmodel.parameters()), name
            for k in g1:
                scale = float(np.abs(g1[k]).max()) or 1.0
                rel = float(np.abs(g1[k] - g2[k]).max()) / scale
                worst = max(worst, rel)
                assert rel <= TOL, (name, est, copies, antithetic, chunk, k, rel)
            cases.append((name, est, copies, antithetic, chunk))
# "bp" is exact: every rank computes it alone, nothing is sent
g1, _ = estimate_one(model, x, y, Settings("bp"), seed_sequence(5), bk)
stats = {}
g2, _ = distributed.estimate(model, x, y, Settings("bp"), seed_sequence(5), bk, comm=comm, stats=stats)
assert all(np.array_equal(g1[k], g2[k]) for k in g1) and stats == {}
# the public entry point
g3 = minilr.estimate_gradient(model, x, y, estimator="alr", copies=13, seed=4, comm=comm)
g4 = minilr.estimate_gradient(model, x, y, estimator="alr", copies=13, seed=4)
assert all(float(np.abs(g3[k] - g4[k]).max()) <= TOL * float(np.abs(g4[k]).max()) for k in g4)
comm.Barrier()
if rank == 0:
    print(f"equal gradients on {size} ranks, {len(cases)} cases, worst relative difference {worst:.2e}")
