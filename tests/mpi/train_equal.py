"""Run under mpiexec by tests/test_mpi.py: minilr.train(..., comm=) gives the one-process result.

Every rank trains the same model twice, alone and with the copies shared over the ranks; the
parameters agree to float summation order (1e-5 relative after a few steps: Adam's steps amplify
ulps only slightly over so few steps), and every rank ends with exactly the same parameters.
The callback runs on every rank; the library prints nothing on the other ranks.
"""
import numpy as np
from mpi4py import MPI

import minilr

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
(x, y), (xt, yt) = minilr.datasets.load("digits")
x, y = x[:120], y[:120]
for est, kw in [("alr", {}), ("lr", {"antithetic": True, "copies": 10}), ("hybrid", {"es_layers": 1})]:
    args = dict(estimator=est, copies=9, epochs=2, batch_size=40, lr=1e-2, seed=3, progress=False)
    args.update(kw)
    m1 = minilr.MLP([64, 16, 10], sigma=0.1, seed=1)
    h1 = minilr.train(m1, (x, y), val_data=(xt, yt), **args)
    m2 = minilr.MLP([64, 16, 10], sigma=0.1, seed=1)
    seen = []
    h2 = minilr.train(m2, (x, y), val_data=(xt, yt), comm=comm, callback=lambda e, h: seen.append(e), **args)
    assert seen == [0, 1], seen
    p1, p2 = m1.parameters(), m2.parameters()
    for k in p1:
        rel = float(np.abs(p1[k] - p2[k]).max()) / float(np.abs(p1[k]).max())
        assert rel <= 1e-5, (est, k, rel)
        assert np.array_equal(comm.bcast(p2[k], root=0), p2[k]), (est, k, "ranks disagree")
    np.testing.assert_allclose(h1.train_loss, h2.train_loss, rtol=1e-5)
    assert h1.val_accuracy == h2.val_accuracy, (h1.val_accuracy, h2.val_accuracy)
# the comm argument is checked before any work
try:
    minilr.train(m2, (x, y), comm="world")
except TypeError as e:
    assert "comm" in str(e)
else:
    raise AssertionError("comm='world' was accepted")
comm.Barrier()
if rank == 0:
    print(f"train equal on {comm.Get_size()} ranks")
