"""The fused CPU engine's LR site (minilr.engines.cpu) against the reference engine it stands beside."""
from __future__ import annotations

import numpy as np
import pytest

import minilr
from minilr import noise
from minilr.engines.cpu import kernels, threads


def _grads(fast, model, x, y, estimator="lr", **kw):
    bk = minilr.Backend("numpy", engine="cpu" if fast else "reference")
    return minilr.estimate_gradient(model, x, y, estimator=estimator, backend=bk, **kw)


def _data(sizes, B, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, sizes[0])).astype(dtype), rng.integers(0, sizes[-1], B)


@pytest.mark.parametrize("estimator", ["lr", "alr"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "identity"])
@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_fast_path_equals_plain_path(estimator, activation, antithetic, learn_sigma):
    """Same noise, same forward arithmetic: the gradients agree to float32 rounding of the sums
    (summed in another order; the sigma sums cancel a lot, hence 1e-4 of the largest entry)."""
    sizes = [7, 33, 17, 5]
    model = minilr.MLP(sizes, activation=activation, seed=1, learn_sigma=learn_sigma)
    x, y = _data(sizes, 6)
    kw = dict(copies=40, seed=3, antithetic=antithetic)
    fast, plain = (_grads(f, model, x, y, estimator, **kw) for f in (True, False))
    assert fast.keys() == plain.keys()
    for key in plain:
        scale = np.abs(plain[key]).max()
        np.testing.assert_allclose(fast[key], plain[key], rtol=0, atol=1e-4 * scale, err_msg=key)


@pytest.mark.parametrize("chunk", [None, 16])
def test_fast_path_float64_and_chunks(chunk):
    sizes = [5, 12, 3]
    model = minilr.MLP(sizes, seed=2, dtype=np.float64)
    x, y = _data(sizes, 4, np.float64)
    kw = dict(copies=50, seed=5, chunk=chunk)
    fast, plain = _grads(True, model, x, y, **kw), _grads(False, model, x, y, **kw)
    for key in plain:
        np.testing.assert_allclose(fast[key], plain[key], rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("estimator", ["lr", "alr"])
def test_same_bits_whatever_the_threads(monkeypatch, estimator):
    """Blocks and parts are fixed by the sizes, summed in order: 1 or 3 threads, the same bits."""
    sizes = [9, 20, 20, 4]
    model = minilr.MLP(sizes, seed=0, learn_sigma=True)
    x, y = _data(sizes, 5)
    out = []
    for nt in ("1", "3", "1"):
        monkeypatch.setenv("MINILR_NOISE_THREADS", nt)
        out.append(minilr.estimate_gradient(model, x, y, estimator=estimator, copies=64, seed=7))
    for g in out[1:]:
        for key in out[0]:
            np.testing.assert_array_equal(g[key], out[0][key], err_msg=key)


def test_lr_forward_matches_numpy():
    """One fused pass = draw the noise, add bias and scaled noise, ReLU: the same bits as NumPy."""
    key = noise.key_from_seed(np.random.SeedSequence(4))
    K, B, m = 6, 3, 10
    rng = np.random.default_rng(0)
    b = rng.standard_normal(m).astype(np.float32)
    sigma = rng.uniform(0.1, 1, m).astype(np.float32)
    for v in (rng.standard_normal((K, B, m)).astype(np.float32), rng.standard_normal((B, m)).astype(np.float32)):
        for k0, anti in ((0, False), (5, False), (4, True)):
            eps, h = np.empty((K, B, m), np.float32), np.empty((K, B, m), np.float32)
            kernels.lr_forward(v, b, sigma, "relu", eps=eps, h=h, key=key, k0=k0, antithetic=anti)
            if anti:
                half = noise.normal(key, (K // 2, B * m), start=(k0 // 2) * B * m)
                want = np.repeat(half, 2, axis=0) * np.array([1, -1] * (K // 2), np.float32)[:, None]
            else:
                want = noise.normal(key, (K, B * m), start=k0 * B * m)
            np.testing.assert_array_equal(eps, want.reshape(K, B, m))
            np.testing.assert_array_equal(h, np.maximum((v + b) + sigma * eps, 0))


def test_scale_rows_and_sum_copies():
    rng = np.random.default_rng(1)
    eps = rng.standard_normal((5, 4, 7)).astype(np.float64)
    L = rng.standard_normal((5, 4))
    A, S = np.zeros((4, 7)), np.zeros((4, 7))
    kernels.sum_copies(eps, L, A, S)
    np.testing.assert_allclose(A, (L[..., None] * eps).sum(0), rtol=1e-12)
    np.testing.assert_allclose(S, (L[..., None] * (eps * eps - 1)).sum(0), rtol=1e-12)
    w = eps.reshape(-1, 7).copy()
    gb, gs = kernels.scale_rows(w, L, True)
    np.testing.assert_allclose(w, L.reshape(-1, 1) * eps.reshape(-1, 7), rtol=1e-15)
    np.testing.assert_allclose(gb, w.sum(0), rtol=1e-12)
    np.testing.assert_allclose(gs, (L.reshape(-1, 1) * (eps.reshape(-1, 7) ** 2 - 1)).sum(0), rtol=1e-12)


def _blas_threads(by_file=False):
    from threadpoolctl import threadpool_info

    info = [i for i in threadpool_info() if i["user_api"] == "blas"]
    return {i["filepath"]: i["num_threads"] for i in info} if by_file else [i["num_threads"] for i in info]


def _numpy_blas_threads():
    from threadpoolctl import threadpool_info

    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]}


def test_blas_one_thread_restores():
    """NumPy's BLAS (the one minilr's products use) at 1 inside; every BLAS as before after."""
    before = _blas_threads()
    if not _numpy_blas_threads():
        pytest.skip("no NumPy BLAS library that threadpoolctl controls")
    with kernels.blas_one_thread() as held:
        assert held and _numpy_blas_threads() == {1}
        with kernels.blas_one_thread():  # nested (or another thread's): still 1, restored once
            assert _numpy_blas_threads() == {1}
        assert _numpy_blas_threads() == {1}
    assert _blas_threads() == before


def test_blas_limit_restored_after_concurrent_estimates():
    """Issue 7: with ctypes get/set, the second of two concurrent calls saved "1" as the value to
    restore. Counted limits restore what was there before the first call."""
    import threading

    before = _blas_threads(by_file=True)
    if not before:
        pytest.skip("no BLAS library that threadpoolctl controls")
    model = minilr.MLP([20, 30, 5], seed=0)
    x, y = _data([20, 30, 5], 8)
    go = threading.Barrier(2)
    errors = []  # an exception in a thread would only be a warning: collect it

    def work():
        go.wait()
        try:
            for s in range(5):
                minilr.estimate_gradient(model, x, y, estimator="lr", copies=64, seed=s)
        except Exception as exc:
            errors.append(repr(exc))

    ts = [threading.Thread(target=work) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    after = _blas_threads(by_file=True)  # a library loaded meanwhile (SciPy's) is not compared
    assert {f: after[f] for f in before} == before


_THREADS_AFTER_MAIN = """
import threading, numpy as np, minilr
from minilr.engines.cpu import kernels
from threadpoolctl import threadpool_info

def blas():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

rng = np.random.default_rng(0)
x, y = rng.standard_normal((50, 64)).astype(np.float32), rng.integers(0, 10, 50)
m = minilr.MLP([64, 64, 10], seed=0)
want = {e: minilr.estimate_gradient(m, x, y, estimator=e, copies=300, seed=1) for e in ("lr", "alr")}
before = blas()  # after the first call: it may load a second BLAS (SciPy's)
got, errors = {}, []

def work(e):
    try:
        got[e] = minilr.estimate_gradient(m, x, y, estimator=e, copies=300, seed=1)
    except Exception as exc:
        errors.append(repr(exc))

ts = [threading.Thread(target=work, args=(e,)) for e in ("lr", "alr")]
for t in ts:
    t.start()
for t in ts:
    t.join()
assert not errors, errors
assert kernels._BLAS["users"] == 0, kernels._BLAS["users"]
assert blas() == before, (blas(), before)
for e in want:
    for k in want[e]:
        assert np.array_equal(got[e][k], want[e][k]), (e, k)
print("ok", before)
"""


@pytest.mark.parametrize("openblas_threads", [None, "1"])
def test_threads_after_a_first_call_in_the_main_thread(openblas_threads):
    """Issue 14: after one estimate in the main thread, every estimate in a worker thread raised
    "could not hold the BLAS library at one thread" (threadpoolctl 3.8 let only the main thread
    set OpenBLAS's limit), and the failed call left the user count at 1. Two threads at once, in
    a fresh process (the first set is what matters), with and without OPENBLAS_NUM_THREADS:
    no error, the count back at 0, BLAS as before, and each thread's numbers those of the main
    thread's call."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env.pop("OPENBLAS_NUM_THREADS", None)
    if openblas_threads is not None:
        env["OPENBLAS_NUM_THREADS"] = openblas_threads
    root = os.path.dirname(os.path.dirname(os.path.abspath(minilr.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _THREADS_AFTER_MAIN], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("ok")


class _Lib:
    """A BLAS library controller whose set fails for one value."""

    internal_api, threading_layer = "fake", "pthreads"

    def __init__(self, fail_at):
        self.n, self.fail_at = 4, fail_at

    def get_num_threads(self):
        return self.n

    def set_num_threads(self, n):
        if n == self.fail_at:
            raise OSError("set failed")
        self.n = n


class _Controller:
    def __init__(self, libs):
        self.lib_controllers = libs

    def select(self, **_):
        return self


def test_failed_blas_set_leaves_count_and_limits_as_they_were(monkeypatch):
    """Issue 14: the user count went up before the limit was set, outside the try, so a set that
    raised left it up for good (and BLAS never restored). A failed set leaves the count at 0,
    restores the libraries it had already set, and the next estimate works."""
    good, bad = _Lib(fail_at=None), _Lib(fail_at=1)
    monkeypatch.setitem(kernels._BLAS, "controller", _Controller([good, bad]))
    # from no hold, whatever ran before (a Ctrl-C landing in the hold's own bookkeeping, as
    # test_checkpoint's SIGINT-at-every-line does, can leave one counted: ~5 of 3,200 points)
    monkeypatch.setitem(kernels._BLAS, "users", 0)
    monkeypatch.setitem(kernels._BLAS, "saved", [])
    with pytest.raises(OSError, match="set failed"):
        with kernels.blas_one_thread():
            pass
    assert kernels._BLAS["users"] == 0 and (good.n, bad.n) == (4, 4)
    bad.fail_at = None
    with kernels.blas_one_thread() as held:
        assert held and (good.n, bad.n) == (1, 1)
    assert kernels._BLAS["users"] == 0 and (good.n, bad.n) == (4, 4)


def test_split_covers_once():
    for n in (0, 1, 7, 100):
        for nt in (1, 2, 3):
            for align in (1, 2):
                r = threads.split(n, nt, align)
                assert [i for lo, hi in r for i in range(lo, hi)] == list(range(n))
                assert all(lo % align == 0 for lo, _ in r)


def test_lr_forward_packs_signs_of_eps_and_h():
    """ALR's pass: only sign(eps) kept, packed, and (for the next layer) h > 0 packed alike."""
    from minilr import signbits

    key = noise.key_from_seed(np.random.SeedSequence(5))
    K, B, m = 7, 3, 19  # 21 rows: the last byte is partial
    rng = np.random.default_rng(2)
    v = rng.standard_normal((K, B, m)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    sigma = rng.uniform(0.1, 1, m).astype(np.float32)
    eps, h = np.empty((K, B, m), np.float32), np.empty((K, B, m), np.float32)
    kernels.lr_forward(v, b, sigma, "relu", eps=eps, h=h, key=key, k0=0, antithetic=False)
    bits = np.full(((K * B + 7) // 8, m), 255, np.uint8)
    hbits = bits.copy()
    h2 = np.empty_like(h)
    kernels.lr_forward(v, b, sigma, "relu", eps=None, h=h2, key=key, k0=0, antithetic=False, bits=bits,
                       hbits=hbits)
    np.testing.assert_array_equal(h2, h)
    np.testing.assert_array_equal(bits, signbits.pack_reference(eps.reshape(-1, m), "pm1"))
    np.testing.assert_array_equal(hbits, signbits.pack_reference(h.reshape(-1, m), "01"))


def test_gemm_acc_adds_into_a_view():
    rng = np.random.default_rng(3)
    A = rng.integers(-3, 4, (40, 9)).astype(np.float32)
    B = rng.integers(-3, 4, (40, 13)).astype(np.float32)
    C = rng.integers(-3, 4, (20, 30)).astype(np.float32)
    want = C.copy()
    want[5:14, 7:20] += A.T @ B
    kernels.gemm_acc(C[5:14, 7:20], A, B)
    np.testing.assert_array_equal(C, want)


@pytest.mark.parametrize("copies,kb,unit,threads", [(200, 8, 1, 2), (2000, 24, 2, 2), (7, 8, 1, 3),
                                                    (101, 16, 1, 3), (16, 8, 2, 4)])
def test_balanced_starts(copies, kb, unit, threads):
    """ALR's forward blocks: starts on whole units (2: antithetic pairs), at most kb copies (or one
    unit), a multiple of the threads where there are enough units, each thread's share even. (Each
    block keeps its own bit records, so no block needs to start on a whole byte of rows.)"""
    from minilr.engines.cpu import balanced_starts

    starts = balanced_starts(copies, kb, unit, threads)
    ends = starts[1:] + [copies]
    assert starts[0] == 0 and all(c0 < c1 for c0, c1 in zip(starts, ends))
    assert all(c0 % unit == 0 for c0 in starts)
    assert all(c1 - c0 <= max(kb, unit) for c0, c1 in zip(starts, ends))
    n = len(starts)
    if n >= threads:
        assert n % threads == 0
        shares = [sum(e - s for s, e in list(zip(starts, ends))[n * g // threads:n * (g + 1) // threads])
                  for g in range(threads)]
        assert max(shares) - min(shares) <= max(kb, unit)
