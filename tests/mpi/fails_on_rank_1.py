"""Run under mpiexec by tests/test_mpi.py: rank 1 fails, so the whole job must fail."""
from mpi4py import MPI

assert MPI.COMM_WORLD.Get_rank() != 1, "rank 1 fails on purpose"
