"""Copies across MPI ranks: small scripts in tests/mpi/ run under ``mpiexec -n 2`` and ``-n 3``.

Each script checks its results on every rank and exits non-zero on a failure (an assertion on
any rank aborts the job). Skipped, with the reason, where mpi4py or mpiexec is missing; the
README's test command installs both (``pip install -e ".[test,mpi]"``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minilr.parallel import mpi

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "mpi"


def _mpiexec():
    # the mpich wheel puts mpiexec beside the interpreter; a PATH one also does
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(not mpi.available() or _mpiexec() is None,
                               reason="needs mpi4py and mpiexec: pip install -e '.[mpi]'")


def run_mpi(script, ranks, *args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MINILR_NOISE_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1", MPLBACKEND="Agg")
    cmd = [_mpiexec(), "-n", str(ranks), sys.executable, str(SCRIPTS / script), *map(str, args)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_plumbing(ranks):
    assert f"plumbing ok on {ranks} ranks" in run_mpi("plumbing.py", ranks)


@needs_mpi
def test_a_failing_rank_fails_the_test():
    # the harness itself must be able to fail: a script that asserts False on rank 1
    with pytest.raises(AssertionError, match="failed"):
        run_mpi("fails_on_rank_1.py", 2)


# -- in one process: no MPI needed -----------------------------------------------------------------
@pytest.mark.parametrize("copies, size, pair", [(10, 3, 1), (7, 2, 1), (12, 4, 2), (10, 3, 2), (3, 4, 1), (1, 1, 1)])
def test_copy_ranges_cover_once_evenly(copies, size, pair):
    ranges = mpi.copy_ranges(copies, size, pair)
    assert len(ranges) == size and ranges[0][0] == 0 and ranges[-1][1] == copies
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    lengths = [b - a for a, b in ranges]
    assert all(n % pair == 0 for n in lengths) and max(lengths) - min(lengths) <= pair
    assert mpi.copy_range(copies, None, pair) == (0, copies)


@pytest.mark.parametrize("args, match", [((10, 0, 1), "size"), ((0, 2, 1), "copies"), ((5, 2, 2), "multiple")])
def test_copy_ranges_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        mpi.copy_ranges(*args)


def test_pack_unpack_roundtrip_and_no_comm():
    import numpy as np

    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float32), np.zeros((1, 1), np.float32)]
    flat = mpi.pack(arrays)
    assert flat.shape == (11,)
    for a, b in zip(mpi.unpack(flat, arrays), arrays):
        np.testing.assert_array_equal(a, b)
    d = {"a": arrays[0]}
    assert mpi.allreduce_sum(d, None) is d
    assert mpi.allgather_rows(arrays[1], [4], None) is arrays[1]
    assert mpi.rank_size(None) == (0, 1) and mpi.is_root(None)
    with pytest.raises(TypeError, match="comm"):
        mpi.check_comm(object())


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_distributed_gradient_equals_one_process(ranks):
    # every estimator; 7 and 22 copies (not divisible by the ranks), baseline on and off,
    # antithetic pairs, chunks, and fewer copies than ranks (ranks with nothing to run); then
    # every model of the zoo (conv, ResNet-5/9, LSTM, GRU, GAT, LIF): 9 models x 6 x 2 cases
    out = run_mpi("equal_gradients.py", ranks, timeout=600)
    assert f"equal gradients on {ranks} ranks, {36 + 9 * 6 * 2} cases" in out


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_distributed_training_equals_one_process(ranks):
    assert f"train equal on {ranks} ranks" in run_mpi("train_equal.py", ranks)


@needs_mpi
def test_cli_distributed_only_rank_0_prints():
    env = dict(os.environ, PYTHONPATH=str(ROOT), MINILR_NOISE_THREADS="1", OPENBLAS_NUM_THREADS="1")
    base = [sys.executable, "-m", "minilr", "train", "--data", "digits", "--copies", "20", "--epochs", "1",
            "--hidden", "16", "--no-progress"]
    one = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    two = subprocess.run([_mpiexec(), "-n", "2", *base, "--distributed"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert two.stdout.count("final test accuracy") == 1 and "2 MPI ranks" in two.stdout
    final = lambda out: [l for l in out.splitlines() if l.startswith("final test accuracy")][0].split("(")[0]
    assert final(one.stdout) == final(two.stdout)
