"""One suite for every engine (minilr.engines): each equals the reference engine for every estimator
and option, the engines' fused sums equal the paper's equations (minilr.estimators), and the CPU
engine keeps no global state: same bits whatever the threads, beside another thread, after a fork;
nothing kept after a call."""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc

import numpy as np
import pytest

import minilr
from minilr import signbits
from minilr.engines.cpu import kernels, signs, threads
from minilr.engines.cuda import CUDAEngine, block_plan
from minilr.estimators import alr_sums, lr_sigma_sums, lr_sums

from strategies import model_zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISY = ["lr", "alr", "es", "aes", "hybrid", "a-hybrid"]


def _backend(engine):
    if engine == "cuda":
        if not minilr.cupy_available():
            pytest.skip("the CUDA engine needs CuPy and a CUDA GPU")
        return minilr.Backend("cupy")
    if engine == "cuda-plan-on-numpy":  # the CUDA engine's plan and sites, its kernels' twins on NumPy
        bk = minilr.Backend("numpy", engine="reference")
        bk.engine = CUDAEngine(np, memory_budget=200_000)  # a few blocks at this size
        return bk
    return minilr.Backend("numpy", engine=engine)


@pytest.mark.parametrize("engine", ["cpu", "cuda-plan-on-numpy", "cuda"])
@pytest.mark.parametrize("estimator", NOISY)
@pytest.mark.parametrize("name", sorted(model_zoo()))
def test_every_layer_type_on_every_engine(name, engine, estimator):
    """The one path: every layer type (conv, residual, recurrent, graph, spiking) on every engine
    equals the reference engine, with a baseline, antithetic pairs and chunks (1e-4 of each key's
    largest entry, as above)."""
    model, x, y = model_zoo()[name]()
    kw = dict(estimator=estimator, copies=16, seed=5, antithetic=True, chunk=8)
    ref = minilr.estimate_gradient(model, x, y, backend=_backend("reference"), **kw)
    got = minilr.estimate_gradient(model, x, y, backend=_backend(engine), **kw)
    assert got.keys() == ref.keys() == model.parameters().keys()
    for key in ref:
        scale = np.abs(ref[key]).max()
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-4 * scale, err_msg=key)


def _problem(sizes=(7, 16, 12, 4), B=5, learn_sigma=True, seed=0):
    model = minilr.MLP(list(sizes), seed=seed, learn_sigma=learn_sigma)
    rng = np.random.default_rng(seed)
    return model, rng.standard_normal((B, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], B)


@pytest.mark.parametrize("engine", ["cpu", "cuda-plan-on-numpy", "cuda"])
@pytest.mark.parametrize("estimator", NOISY)
@pytest.mark.parametrize("baseline,antithetic,chunk", [(True, False, None), (False, False, None),
                                                       (True, True, None), (True, False, 24),
                                                       (False, True, 16)])
def test_engine_equals_reference(engine, estimator, baseline, antithetic, chunk):
    """Same noise, same equations, sums in other blocks: equal to float32 rounding of the sums.
    The sigma score cancels a lot (``L (eps^2 - 1)``), hence 1e-4 of each key's largest entry."""
    model, x, y = _problem()
    kw = dict(estimator=estimator, copies=64, seed=3, baseline=baseline, antithetic=antithetic, chunk=chunk)
    ref = minilr.estimate_gradient(model, x, y, backend=_backend("reference"), **kw)
    got = minilr.estimate_gradient(model, x, y, backend=_backend(engine), **kw)
    assert got.keys() == ref.keys()
    for key in ref:
        scale = np.abs(ref[key]).max()
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-4 * scale, err_msg=key)


def test_backend_owns_its_engine():
    assert minilr.Backend("numpy").engine.name == "cpu"
    assert minilr.Backend("numpy", engine="reference").engine.name == "reference"
    assert minilr.get_backend("numpy", engine="reference").engine.name == "reference"
    with pytest.raises(ValueError, match="engine"):
        minilr.Backend("numpy", engine="cuda")
    with pytest.raises(TypeError, match="engine"):
        minilr.Backend("numpy", engine=3)


# -- the engines' sums are the paper's equations ---------------------------------------------------
def test_lr_sums_is_eq1():
    """lr_sums against Eq. 1 written as a loop over rows in float64."""
    rng = np.random.default_rng(0)
    K, B, m, d = 3, 2, 4, 5
    L, x, eps = rng.standard_normal((K, B)), rng.standard_normal((K, B, d)), rng.standard_normal((K, B, m))
    sigma = rng.uniform(0.5, 2, m)
    gW, gb = np.zeros((m, d)), np.zeros(m)
    for k in range(K):
        for b in range(B):
            gW += L[k, b] * np.outer(eps[k, b] / sigma, x[k, b])
            gb += L[k, b] * eps[k, b] / sigma
    got = lr_sums(L, x, eps, sigma)
    np.testing.assert_allclose(got[0], gW, rtol=1e-12)
    np.testing.assert_allclose(got[1], gb, rtol=1e-12)
    shared = lr_sums(L, x[0], eps, sigma)  # the first layer: one x for every copy
    np.testing.assert_allclose(shared[0], lr_sums(L, np.broadcast_to(x[0], x.shape), eps, sigma)[0], rtol=1e-12)
    s = sum(L[k, b] * (eps[k, b] ** 2 - 1) for k in range(K) for b in range(B)) / sigma
    np.testing.assert_allclose(lr_sigma_sums(L, eps, sigma), s, rtol=1e-12)


def test_fused_lr_sums_equal_lr_sums():
    """The CPU engine's in-place ``L * eps`` (scale_rows) then one GEMM is lr_sums' arithmetic in
    the same order: the weight sums are the same bits. The bias sum runs over rows in order
    (NumPy's is pairwise): equal to float32 rounding."""
    rng = np.random.default_rng(1)
    K, B, m, d = 6, 5, 16, 12
    L = rng.standard_normal((K, B)).astype(np.float32)
    x = rng.standard_normal((K, B, d)).astype(np.float32)
    eps = rng.standard_normal((K, B, m)).astype(np.float32)
    sigma = rng.uniform(0.5, 2, m).astype(np.float32)
    want = lr_sums(L, x, eps, sigma)
    w = eps.reshape(-1, m).copy()
    gb, _ = kernels.scale_rows(w, L, False)
    np.testing.assert_array_equal((w.T @ x.reshape(-1, d)) / sigma[:, None], want[0])
    np.testing.assert_allclose(gb / sigma, want[1], rtol=1e-5, atol=1e-5)
    A = kernels.sum_copies(eps, L, np.zeros((B, m), np.float32))  # the first layer's sum_k L eps
    np.testing.assert_allclose((A.T @ x[0]) / sigma[:, None], lr_sums(L, x[0], eps, sigma)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t_kind", ["01", "sign"])
def test_packed_alr_sums_equal_alr_sums(t_kind):
    """The CPU engine's packed sums (bits unpacked block by block, sgemm accumulation) equal Eq. 3's
    alr_sums exactly on integer losses (every partial sum is an exact integer in float32)."""
    rng = np.random.default_rng(2)
    K, B, m, d = 9, 5, 24, 20
    eps = rng.standard_normal((K * B, m)).astype(np.float32)
    h = rng.standard_normal((K * B, d)).astype(np.float32)
    if t_kind == "01":
        h = np.maximum(h, 0)
    L = rng.integers(-500, 501, K * B).astype(np.float32)
    s, t = signbits.pack(eps, "pm1"), signbits.pack(h, t_kind)
    G, g = np.zeros((m, d), np.float32), np.zeros(m, np.float32)
    signs.packed_gradient_block(L, s, "pm1", t, t_kind, G=G, g=g, rows=(0, K * B), cols=(0, m, 0, d),
                                gemm=kernels.gemm_acc)
    want = alr_sums(L.reshape(K, B), np.sign(h).reshape(K, B, d), np.sign(eps).reshape(K, B, m))
    np.testing.assert_array_equal(G, want[0])
    np.testing.assert_array_equal(g, want[1])


# -- the CUDA engine's block plan (pure: checked here without a GPU) ----------------------------------
SIZES = [784, 256, 256, 10]


def _plan(estimator, B=50, antithetic=False, model=None):
    from minilr.estimators import ESTIMATORS, Plan, Settings

    model = model or minilr.MLP(SIZES, seed=0)
    x = np.zeros((B,) + model.input_shape, np.float32)
    s = Settings(estimator, 2, antithetic=antithetic)
    return Plan.make(model, x, s, np.random.SeedSequence(0), ESTIMATORS[estimator])


@pytest.mark.parametrize("estimator", ["lr", "alr", "es", "a-hybrid"])
def test_gpu_sized_budget_gives_one_block(estimator):
    """80 GB GPU, half free for the plan: K=200, 2,000 and 10,000 (B=50) run as one block each,
    so the launches per step do not grow with K. ES keeps its weight noise per copy, 784 x 257
    floats: 10,000 copies need 8 GB, still one block."""
    engine = CUDAEngine(np, memory_budget=40e9)
    for K in (200, 2000, 10_000):
        assert engine.plan_blocks(_plan(estimator), 50, K) == [(0, K)]


def test_small_budget_chunks_the_plan():
    """K=100,000 with a 1 GB budget: near-equal blocks within the budget, covering every copy once,
    starting on whole antithetic pairs."""
    for B, antithetic in ((50, False), (50, True), (3, False)):
        plan = _plan("lr", B, antithetic)
        per = 4 * plan.floats_per_copy(B) * 4
        blocks = CUDAEngine(np, memory_budget=1e9).plan_blocks(plan, B, 100_000)
        assert len(blocks) > 1 and blocks[0][0] == 0 and blocks[-1][1] == 100_000
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        assert all(c0 % 2 == 0 for c0, _ in blocks) or not antithetic
        sizes = [c1 - c0 for c0, c1 in blocks]
        assert max(sizes) * per <= 1e9
        assert max(sizes) - min(sizes) <= 2
        assert len(blocks) == -(-100_000 * per // int(1e9))
    assert block_plan(10, 7, 1.0, unit=2) == [(0, 2), (2, 4), (4, 6), (6, 7)]  # tiny: one unit each


@pytest.mark.parametrize("builder", [minilr.MLP, minilr.cnn, minilr.resnet5])
def test_cuda_engine_forward_calls_do_not_grow_with_copies(builder):
    """Counted on the CPU (the launcher's log, kernels not run): with the CUDA engine's plan and a
    GPU-sized budget, a step runs one fused forward kernel per site and call whatever K (one
    block), for an MLP and conv nets."""
    import contextlib

    from minilr.engines import cuda_kernels as ck

    model = builder(SIZES, seed=0) if builder is minilr.MLP else builder(seed=0)
    x = np.random.default_rng(0).standard_normal((5,) + model.input_shape).astype(np.float32)
    y = np.arange(5) % 10
    bk = minilr.Backend("numpy", engine="reference")
    bk.engine = CUDAEngine(np, memory_budget=40e9)
    bk.engine.new_launcher = lambda: ck.DryLauncher(np)
    for K in (8, 200, 2000):
        with np.errstate(all="ignore"), contextlib.suppress(FloatingPointError):  # nothing computed
            minilr.estimate_gradient(model, x, y, estimator="lr", copies=K, backend=bk)
        assert bk.engine.lnch.log.count("lr_forward") == len(model.noise_sites()), K


def test_cuda_engine_rejects_a_bad_budget():
    with pytest.raises(ValueError, match="memory_budget"):
        CUDAEngine(np, memory_budget=-1)


# -- no global state --------------------------------------------------------------------------------
def _all(model, x, y, **kw):
    return {e: minilr.estimate_gradient(model, x, y, estimator=e, copies=48, seed=11, **kw)
            for e in NOISY + ["bp"]}


def _assert_same_bits(a, b):
    for e in a:
        for k in a[e]:
            np.testing.assert_array_equal(a[e][k], b[e][k], err_msg=f"{e} {k}")


def test_two_threads_get_what_each_gets_alone():
    """Issue 7: ES and A-Hybrid moved by ~2e-7 when an LR call ran beside them (the other thread's
    BLAS limit changed their summation order). Every estimator, beside a running LR loop."""
    model, x, y = _problem((30, 64, 32, 5), B=12)
    alone = _all(model, x, y)
    stop = threading.Event()
    go = threading.Barrier(2)

    def other():
        go.wait()
        while not stop.is_set():
            minilr.estimate_gradient(model, x, y, estimator="lr", copies=200, seed=1)

    t = threading.Thread(target=other)
    t.start()
    try:
        go.wait()
        beside = _all(model, x, y)
    finally:
        stop.set()
        t.join()
    _assert_same_bits(alone, beside)


BITS_SCRIPT = textwrap.dedent("""
    import hashlib, numpy as np, minilr
    model = minilr.MLP([30, 96, 64, 5], seed=0, learn_sigma=True)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 30)).astype(np.float32), rng.integers(0, 5, 16)
    h = hashlib.sha256()
    for e in ["lr", "alr", "es", "aes", "hybrid", "a-hybrid", "bp"]:
        g = minilr.estimate_gradient(model, x, y, estimator=e, copies=80, seed=5)
        for k in sorted(g):
            h.update(g[k].tobytes())
    print("HASH", h.hexdigest())
""")


def test_same_bits_whatever_blas_and_minilr_threads():
    """Issue 10 item 7: same seed, same bits for every estimator whatever OPENBLAS_NUM_THREADS and
    MINILR_NOISE_THREADS (fresh processes: the BLAS thread count is read at load)."""
    hashes = set()
    for blas, nt in (("1", "1"), ("2", "2"), ("2", "3"), ("1", "3")):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=blas, MINILR_NOISE_THREADS=nt)
        r = subprocess.run([sys.executable, "-c", BITS_SCRIPT], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
        hashes.add(r.stdout.split("HASH")[-1].strip())
    assert len(hashes) == 1, hashes


def _child_work(seed):
    model, x, y = _problem()
    g = minilr.estimate_gradient(model, x, y, estimator="lr", copies=64, seed=seed)
    g2 = minilr.estimate_gradient(model, x, y, estimator="es", copies=64, seed=seed, backend=HELD)
    return float(g["0.weight"].sum() + g2["0.weight"].sum())


HELD = None


@pytest.mark.skipif(sys.platform != "linux", reason="the fork start method is Linux's default only")
def test_fork_after_use_does_not_hang():
    """Issue 10 item 1: after estimate_gradient (and with a Backend held across the fork), children
    of a fork-started pool run estimates and return (a hang was forever; 20 s is generous)."""
    global HELD
    HELD = minilr.Backend("numpy")
    for s in range(2):
        _child_work(s)  # threads and pools started in the parent
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map_async(_child_work, range(2)).get(timeout=20)
    assert got == [_child_work(0), _child_work(1)]


def test_nothing_kept_after_a_call():
    """Issue 7: a call with backend="numpy" leaves no block arrays allocated (was 349 MB at
    K=2000, B=50); a held Backend keeps one step's blocks until released."""
    model, x, y = _problem((64, 128, 128, 10), B=20, learn_sigma=False)
    minilr.estimate_gradient(model, x, y, estimator="lr", copies=16, seed=0)  # compile first
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        minilr.estimate_gradient(model, x, y, estimator="lr", copies=400, seed=0)
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base > 5e6  # the call held its blocks (400 x 20 x 256 floats of eps alone: 8 MB)
    assert now - base < 0.2e6, (now - base, peak - base)
    bk = minilr.Backend("numpy")
    minilr.estimate_gradient(model, x, y, estimator="lr", copies=400, seed=0, backend=bk)
    assert bk.engine.scratch.nbytes() > 5e6
    bk.engine.release()
    assert bk.engine.scratch.nbytes() == 0


NO_NUMBA_CUDA = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "numba.cuda" or name.startswith("numba.cuda."):
                raise ImportError("numba.cuda blocked by the test")
    sys.meta_path.insert(0, Block())
    import numpy as np, minilr
    import minilr.engines, minilr.engines.cuda, minilr.engines.reference, minilr.engines.cpu
    model = minilr.MLP([5, 8, 3], seed=0)
    x, y = np.ones((2, 5), np.float32), np.array([0, 1])
    for e in ["lr", "alr", "es", "a-hybrid"]:
        minilr.estimate_gradient(model, x, y, estimator=e, copies=8)
    assert "numba.cuda" not in sys.modules
    assert isinstance(minilr.cupy_available(), bool)
    try:
        minilr.Backend("cupy")
    except RuntimeError as exc:
        assert "backend='numpy'" in str(exc), exc
    print("IMPORT-OK")
""")


def test_gpu_path_imports_without_numba_cuda():
    """Issue 7: numba-cuda failed to import on NumPy 2.5. minilr, its engines and the GPU path's
    modules must import without it; Backend("cupy") fails at once with a clear message."""
    r = subprocess.run([sys.executable, "-c", NO_NUMBA_CUDA], cwd=ROOT, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0 and "IMPORT-OK" in r.stdout, r.stderr[-3000:]


def test_workers_close_and_restart():
    w = threads.Workers()
    out = []
    w.run_groups(out.append, [[1], [2], [3]])
    w.close()
    w.run_groups(out.append, [[4], [5]])
    assert sorted(x for g in out for x in g) == [1, 2, 3, 4, 5]
    w.close()


def test_held_backend_survives_hybrid_then_chunked_lr():
    """A Backend held across calls: a hybrid step keeps an ES site's transposed output as the next
    LR site's input; the scratch pool must not hand that view back as a block (it crashed the next
    chunked LR step in Numba: 'reshape() supports contiguous array only')."""
    from minilr.backend import Backend

    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 20)).astype(np.float32)
    y = rng.integers(0, 5, 9)
    m = minilr.MLP([20, 48, 24, 5], activation="relu", sigma=0.2, seed=2, learn_sigma=True)
    bk = Backend("numpy", engine="cpu")
    minilr.estimate_gradient(m, x, y, estimator="hybrid", copies=30, chunk=10, es_layers=1, backend=bk)
    held = minilr.estimate_gradient(m, x, y, estimator="lr", copies=25, chunk=7, backend=bk)
    fresh = minilr.estimate_gradient(m, x, y, estimator="lr", copies=25, chunk=7)
    for k in fresh:
        np.testing.assert_array_equal(held[k], fresh[k], err_msg=k)
