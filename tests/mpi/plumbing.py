"""Run under mpiexec by tests/test_mpi.py: the MPI plumbing on every rank; exits non-zero on a failure."""
import sys

import numpy as np
from mpi4py import MPI

from minilr.parallel import mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()

# copy ranges: contiguous, cover everything once, whole pairs
for copies, pair in [(7, 1), (10, 2), (1, 1), (2, 2)]:
    ranges = mpi.copy_ranges(copies, size, pair)
    assert mpi.copy_range(copies, comm, pair) == ranges[rank]
    assert ranges[0][0] == 0 and ranges[-1][1] == copies
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))

# one Allreduce of one buffer: each rank contributes (rank + 1) * base
base = {"0.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "0.bias": np.ones(2, np.float32),
        "2.weight": np.full((1, 2), 0.5, np.float32)}
stats = {}
mine = {k: (rank + 1) * v for k, v in base.items()}
out = mpi.allreduce_sum(mine, comm, stats)
total = size * (size + 1) / 2
for k, v in base.items():
    np.testing.assert_allclose(out[k], total * v, rtol=1e-6)
    assert out[k].shape == v.shape and out[k].dtype == v.dtype
assert stats["allreduce_calls"] == 1 and stats["allreduce_bytes"] == (6 + 2 + 2) * 4

# allgather of losses, uneven rows: rank r has r + 1 rows of value r
counts = [r + 1 for r in range(size)]
local = np.full((rank + 1, 3), rank, dtype=np.float32)
allL = mpi.allgather_rows(local, counts, comm, stats)
want = np.concatenate([np.full((r + 1, 3), r, np.float32) for r in range(size)])
np.testing.assert_array_equal(allL, want)
assert stats["allgather_bytes"] == local.nbytes
# a rank with no rows at all
counts = [0] + [2] * (size - 1)
local = np.full((counts[rank], 2), rank, dtype=np.float64)
allL = mpi.allgather_rows(local, counts, comm)
assert allL.shape == (2 * (size - 1), 2) and allL.dtype == np.float64
assert mpi.is_root(comm) == (rank == 0)
comm.Barrier()
if rank == 0:
    print("plumbing ok on", size, "ranks")
sys.exit(0)
