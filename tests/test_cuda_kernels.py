"""The CUDA engine's kernels (minilr/engines/cuda_kernels.py) and its sites (cuda.py).

Three layers of checking, so most of it runs without a GPU:

1. each kernel's NumPy *twin* against the reference code it replaces (noise.normal, signbits'
   packing, the LR/ALR/ES sums, the losses, the baseline): bit for bit where the arithmetic is
   the same, else to float rounding with the tolerance stated;
2. each kernel's *CUDA C* against its twin, by compiling the very source NVRTC gets with the host
   C compiler (CUDA intrinsics mapped to plain IEEE float arithmetic, the grid run as a loop;
   every kernel here is one thread per item, no shared memory, so a loop is a faithful model),
   and the whole source with ``nvcc --ptx`` where nvcc is present (NVRTC itself: test_nvrtc.py);
3. on a GPU (``-m gpu``): each kernel on the device against its twin, and the CUDA engine against
   the reference engine.

"Bit for bit" between the GPU and the twins holds **away from subnormals** only: CuPy compiles
every kernel with ``-ftz=true``, so on the device a subnormal float32 input or result (below
2^-126 ~ 1.2e-38) is flushed to zero, where the host C and NumPy keep it. The noise never meets
one (its smallest magnitude is ~2^-24); the kernel cases below hold none among their inputs and
results (checked). The host C of layer 2 keeps IEEE subnormals, so it is bit for bit with the
twins everywhere.

The CUDA engine's sites on the twins are compared with the reference engine for every model of
``tests/strategies.py::model_zoo`` and their launches are counted: the count must not grow with
the copies.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import minilr
from minilr import noise, signbits
from minilr.engines import cuda_kernels as ck
from minilr.engines.cuda import CUDAEngine
from minilr.engines.reference import CALL_STRIDE, ReferenceEngine

draw_noise = lambda key, k0, k1, per, anti, xp: ReferenceEngine(xp).noise(key, k0, k1, per, anti)  # noqa: E731
from strategies import model_zoo

ESTIMATORS = ["lr", "alr", "es", "aes", "hybrid", "a-hybrid"]
SIZES = [64, 32, 32, 10]  # 784-256-256-10 scaled down


def _key(seed):
    return noise.key_from_seed(np.random.SeedSequence(seed))


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8 if a.dtype.itemsize == 1 else
                                        {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


# -- 1. twins against the reference code ----------------------------------------------------------
@pytest.mark.parametrize("seed,start", [(0, 0), (1, 12345), (2, 7), (3, 2**40 + 3)])
def test_noise_twin_equals_noise_normal_bit_for_bit(seed, start):
    key = _key(seed)
    n = 1 << 18
    ref = noise.normal(key, n, start=start)
    twin = ck.normal_twin(key.origin, key.gamma, np.arange(start, start + n, dtype=np.uint64))
    assert np.array_equal(_bits(ref), _bits(twin))


def test_gauss_twin_equals_the_scalar_recipe_on_the_tails():
    """All 2^24 levels would take long through the scalar recipe; the extremes (both tails, where
    the sqrt piece runs), the centre and a random sample of the levels, bit for bit."""
    j = np.concatenate([np.arange(0, 4096), np.arange(2**24 - 4096, 2**24),
                        np.arange(2**23 - 2048, 2**23 + 2048),
                        np.random.default_rng(0).integers(0, 2**24, 4000)]).astype(np.uint64)
    half = (j << np.uint64(8)) | np.uint64(0xAB)  # the low 8 bits are ignored
    twin = ck.gauss_twin(half)
    with np.errstate(over="ignore"):
        ref = np.array([noise._gauss_py(h) for h in half], dtype=np.float32)
    assert np.array_equal(_bits(ref), _bits(twin))
    assert np.abs(twin).max() > 5.4  # the tail piece was exercised


def test_noise_source_is_generated_from_noise_constants():
    src = ck.noise_source()
    for c in list(noise._C) + list(noise._T) + [noise._T0, noise._LN2, noise._SQRT2]:
        assert f"0x{int(np.float32(c).view(np.uint32)):08x}" in src, c
    assert f"0x{int(noise._M1):016x}" in src and f"0x{int(noise._M2):016x}" in src
    # no float arithmetic outside the rounding intrinsics in the recipe's lines (no FMA to fuse)
    gauss = src[src.index("minilr_gauss"):src.index("minilr_normal_at")]
    assert "__fsqrt_rn" in gauss and " * " not in gauss.split("float m =")[1]


@pytest.mark.parametrize("offset", [0, 3 * CALL_STRIDE])
def test_lr_forward_twin_draws_the_estimators_noise_and_activation(offset):
    """The noise of the reference sites at the same counters (a site's call ``c`` starts at
    ``c * CALL_STRIDE``), bias, and the fused ReLU."""
    B, m, k0, nb = 5, 7, 6, 4
    key = _key(4)
    rng = np.random.default_rng(0)
    for anti in (False, True):
        pre = rng.standard_normal((B, m)).astype(np.float32)
        bias, sigma = rng.standard_normal(m).astype(np.float32), (rng.random(m) + 0.1).astype(np.float32)
        eps = np.empty((nb * B, m), np.float32)
        h = np.empty_like(eps)
        ck.LR_FORWARD.twin(pre, 1, bias, sigma, eps, h, key.origin, key.gamma, k0, B, m, nb * B, anti, 1, offset)
        ref = ReferenceEngine(np).noise(key, k0, k0 + nb, B * m, anti, offset).reshape(nb * B, m)
        assert np.array_equal(_bits(eps), _bits(ref))
        v = np.broadcast_to(pre + bias, (nb, B, m)) + sigma * ref.reshape(nb, B, m)
        assert np.array_equal(h.reshape(nb, B, m), np.maximum(v, 0))


@pytest.mark.parametrize("hcode", [0, 1, 2])
def test_alr_forward_twin_packs_like_signbits(hcode):
    B, m, nb, byte0, nball = 3, 9, 5, 2, 5  # 15 rows: the last byte is partial
    key = _key(5)
    rng = np.random.default_rng(1)
    pre = rng.standard_normal((nb * B, m)).astype(np.float32)
    bias, sigma = rng.standard_normal(m).astype(np.float32), np.full(m, 0.5, np.float32)
    h = np.empty_like(pre)
    sbits = np.zeros((nball, m), np.uint8)
    hbits = np.zeros((2, nball, m), np.uint8)
    act = 2 if hcode == 2 else 1
    ck.ALR_FORWARD.twin(pre, 0, bias, sigma, h, sbits, hbits, hcode, key.origin, key.gamma, 8, B, m,
                        nb * B, 0, act, byte0, nball, 2 * CALL_STRIDE)
    eps = ReferenceEngine(np).noise(key, 8, 8 + nb, B * m, False, 2 * CALL_STRIDE).reshape(-1, m)
    assert np.array_equal(sbits[byte0:byte0 + 2], signbits.pack_reference(eps, "pm1"))
    ref_h = ck._act_twin((pre + bias) + sigma * eps, act)
    assert np.array_equal(h, ref_h)
    if hcode:
        kind = "01" if hcode == 1 else "sign"
        want = signbits.pack_reference(h, kind)
        got = hbits[0, byte0:byte0 + 2] if hcode == 1 else hbits[:, byte0:byte0 + 2]
        assert np.array_equal(got, want)


@pytest.mark.parametrize("kind", signbits.KINDS)
def test_pack_and_unpack_twins_match_signbits(kind):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((21, 6)).astype(np.float32)
    a[::4, 1] = 0.0
    a[1, 2] = -0.0
    code = ck.CODES[kind]
    out = np.zeros((2, 3, 6), np.uint8)
    ck.PACK.twin(a, out, code, 21, 6, 0, 3)
    ref = signbits.pack_reference(a, kind)
    assert np.array_equal(out[:2] if kind == "sign" else out[0], ref)
    vals = ck._bits_twin(out, code, 8, 21)
    assert np.array_equal(vals, signbits.unpack_reference(ref, kind, 21)[8:])


def test_sum_kernels_twins_equal_plain_sums():
    """LR's first-layer sum, ALR's sum from bits, ES's regenerated sum against the plain formulas
    of the reference sites in float64: relative 1e-5 (float32 sums of <= 16 terms)."""
    rng = np.random.default_rng(5)
    K, B, m = 16, 3, 5
    eps = rng.standard_normal((K * B, m)).astype(np.float32)
    L = rng.standard_normal(K * B).astype(np.float32)
    sigma = (rng.random(m) + 0.5).astype(np.float32)
    P = np.empty((3, B, m), np.float32)
    ck.SUM_COPIES.twin(eps, L, sigma, P, K, B, m, 6)
    ref = (L[:, None].astype(np.float64) * eps).reshape(K, B, m).sum(axis=0) / sigma
    np.testing.assert_allclose(P.sum(axis=0), ref, rtol=1e-5, atol=1e-5)
    bits = signbits.pack_reference(eps, "pm1")
    ck.SIGN_SUM_COPIES.twin(bits, L, P, K, B, m, 6)
    ref = (L[:, None].astype(np.float64) * np.sign(eps)).reshape(K, B, m).sum(axis=0)
    np.testing.assert_allclose(P.sum(axis=0), ref, rtol=1e-5, atol=1e-5)
    key, d = _key(6), 4
    Lk = rng.standard_normal(K).astype(np.float32)
    for anti, wb in ((False, 1), (True, 1), (False, 0)):  # wb 0: a site without a bias
        Eb = draw_noise(key, 2, 2 + K, m * (d + wb), anti, np).reshape(K, m, d + wb).astype(np.float64)
        for approx in (False, True):
            P = np.empty((2, m, d + wb), np.float32)
            ck.ES_GRAD.twin(Lk, sigma, P, key.origin, key.gamma, 2, K, m, d, anti, approx, 8, 0, wb)
            ref = np.tensordot(Lk.astype(np.float64), np.sign(Eb) if approx else Eb, axes=1)
            np.testing.assert_allclose(P.sum(axis=0), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("half", [0, 1])
@pytest.mark.parametrize("kind", ["01", "sign"])
def test_unpack_pair_gives_the_alr_sums(half, kind):
    """``S^T T`` of the unpacked blocks = Eq. 3's sums; fp32: exact up to the product's float32
    rounding; fp16 split: each L within 2^-22 |L| (two fp16 parts), checked on L itself too."""
    rng = np.random.default_rng(6)
    rows, m, d = 40, 6, 5
    dw = 8
    eps = rng.standard_normal((rows, m)).astype(np.float32)
    x = np.maximum(rng.standard_normal((rows, d)), 0).astype(np.float32) if kind == "01" else \
        rng.standard_normal((rows, d)).astype(np.float32)
    x[::3, 0] = 0
    L = (rng.standard_normal(rows) * 1e-3).astype(np.float32)
    sb = signbits.pack_reference(eps, "pm1")
    tb = signbits.pack_reference(x, kind)
    tb = tb if kind == "sign" else tb[None]
    amax = np.abs(L).max(keepdims=True)
    S = np.empty((rows, 2 * m if half else m), np.float16 if half else np.float32)
    T = np.empty((rows, dw), np.float16 if half else np.float32)
    ck.UNPACK_PAIR.twin(sb, L, tb, ck.CODES[kind], S, T, half, amax, 0, rows, m, d, dw, tb.shape[1])
    G = S.astype(np.float64).T @ T.astype(np.float64)
    if half:
        G = (G[:m] + G[m:]) * 2.0 ** -ck._l_exp_twin(amax[0])
        Lrec = (S[:, 0].astype(np.float64) + S[:, m].astype(np.float64)) * np.sign(eps[:, 0]) \
            * 2.0 ** -ck._l_exp_twin(amax[0])
        assert np.all(np.abs(Lrec - L) <= 2.0**-22 * np.abs(L) + 1e-45)
    ref = signbits.packed_gradient_reference(L, sb, "pm1", tb if kind == "sign" else tb[0], kind, rows)
    tol = 2.0**-21 * np.abs(L).sum()
    np.testing.assert_allclose(G[:, :d], ref, atol=tol, rtol=0)
    np.testing.assert_allclose(G[:, d], (L[:, None] * np.sign(eps)).sum(axis=0), atol=tol, rtol=0)
    assert np.all(G[:, d + 1:] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_kernel_contracts_on_numpy_match_noise_and_signbits(dtype):
    """fill_normal / pack / unpack (what device_kernels() gives noise.py and signbits.py) through
    their twins: the CPU modules' results, bit for bit."""
    key = _key(11)
    out = np.empty((7, 9), np.float32)
    ck.fill_normal(out, key.origin, key.gamma, np.uint64(5))
    assert np.array_equal(_bits(out), _bits(noise.normal(key, (7, 9), start=5)))
    rng = np.random.default_rng(12)
    a = rng.standard_normal((37, 5)).astype(dtype)
    a[::3, 0] = 0
    for kind in signbits.KINDS:
        planes = np.zeros((2 if kind == "sign" else 1, 6, 5), np.uint8)
        ck.pack(a[:21], planes, ck.CODES[kind], 0)
        ref = signbits.pack_reference(a[:21], kind)
        assert np.array_equal(planes[:, :3] if kind == "sign" else planes[0, :3], ref)
        scale = rng.standard_normal(13).astype(dtype)
        got = ck.unpack(planes, ck.CODES[kind], 8, 21, scale, np.empty((13, 5), dtype))
        want = signbits.unpack(ref, kind, 8, 21, scale=scale, dtype=dtype)
        assert np.array_equal(got, want)


def test_launcher_refuses_arrays_a_raw_pointer_would_misread():
    w, L, sigma = np.zeros((8, 5), np.float32), np.zeros(8, np.float32), np.ones(5, np.float32)
    lnch = ck.Launcher(np)
    with pytest.raises(ValueError, match="C-contiguous"):
        lnch.kernel(ck.LR_SCALE, 40, w.T.copy().T, L, sigma, 8, 5)
    with pytest.raises(ValueError, match="float32"):
        lnch.kernel(ck.LR_SCALE, 40, w.astype(np.float64), L, sigma, 8, 5)
    with pytest.raises(ValueError, match="arguments expected"):
        lnch.kernel(ck.LR_SCALE, 40, w)


# -- 2. the CUDA C itself, on the host ----------------------------------------------------------------
_SHIM = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <stdbool.h>
typedef struct { unsigned x, y, z; } minilr_u3;
static minilr_u3 threadIdx, blockIdx, blockDim = {256, 1, 1};
#define __global__
#define __device__
#define __forceinline__ static inline
static inline float __int_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float __ull2float_rn(unsigned long long a) { return (float)a; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
#define min(a, b) ((a) < (b) ? (a) : (b))
"""

_C_TYPES = {"int": ctypes.c_int, "long long": ctypes.c_longlong,
            "unsigned long long": ctypes.c_ulonglong, "float": ctypes.c_float, "double": ctypes.c_double}


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    """The kernels' CUDA C compiled for the host: ``emu_<name>(n_threads, args...)`` runs the grid
    as a loop (IEEE float32 with no contraction: -ffp-contract=off, SSE arithmetic)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no host C compiler to run the CUDA C on the CPU")
    d = tmp_path_factory.mktemp("cuda_host")
    src = _SHIM + ck.full_source().replace('extern "C" ', "")
    for k in ck.KERNELS.values():
        args = ", ".join(n for _, n in k.params)
        src += textwrap.dedent(f"""
            void emu_{k.name}(long long emu_n_, {k.signature}) {{
                for (long long g = 0; g * 256 < emu_n_; g++) {{
                    blockIdx.x = (unsigned)g;
                    for (unsigned t = 0; t < 256; t++) {{ threadIdx.x = t; {k.name}({args}); }}
                }}
            }}""")
    src += textwrap.dedent("""
        void emu_f2h(const float* x, unsigned short* out, long long n) {
            for (long long i = 0; i < n; i++) out[i] = minilr_f2h(x[i]);
        }
        void emu_h2f(const unsigned short* h, float* out, long long n) {
            for (long long i = 0; i < n; i++) out[i] = minilr_h2f(h[i]);
        }""")
    (d / "k.c").write_text(src)
    so = d / "k.so"
    r = subprocess.run([cc, "-std=gnu11", "-O2", "-ffp-contract=off", "-fno-fast-math", "-fPIC",
                        "-shared", "-o", str(so), str(d / "k.c"), "-lm"], capture_output=True, text=True)
    if r.returncode:
        raise AssertionError(r.stderr)
    return ctypes.CDLL(str(so))


def _host_run(lib, k, n, args):
    cargs = [ctypes.c_longlong(int(n))]
    for (ctype, _), a in zip(k.params, args):
        if ctype.endswith("*"):
            assert a.flags.c_contiguous
            cargs.append(ctypes.c_void_p(a.ctypes.data))
        else:
            cargs.append(_C_TYPES[ctype](a))
    getattr(lib, f"emu_{k.name}")(*cargs)


def _cases():
    """(kernel, threads, args, exact) for every kernel: small shapes with partial bytes, odd
    starts, antithetic copies, both code paths of each flag."""
    rng = np.random.default_rng(7)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    key = _key(8)
    out = []
    B, m, nb = 5, 7, 3
    rows = nb * B
    for anti in (0, 1):
        for act in range(5):
            for shared in (1, 0):
                pre = f(B, m) if shared else f(rows, m)
                out.append((ck.LR_FORWARD, rows * m, [pre, shared, f(m), np.abs(f(m)) + 0.1,
                            np.zeros((rows, m), np.float32), np.zeros((rows, m), np.float32), key.origin,
                            key.gamma, 5 + anti, B, m, rows, anti, act, shared * CALL_STRIDE],
                            act not in (2, 3)))
    for hcode in (0, 1, 2):
        nball = 4
        out.append((ck.ALR_FORWARD, 2 * m, [f(rows, m), 0, f(m), np.full(m, 0.3, np.float32),
                    np.zeros((rows, m), np.float32), np.zeros((nball, m), np.uint8),
                    np.zeros((2, nball, m), np.uint8), hcode, key.origin, key.gamma, 8, B, m, rows, 1,
                    2 if hcode == 2 else 1, 1, nball, hcode * CALL_STRIDE], hcode != 2))
    for code in (0, 1, 2):
        a = f(21, 6)
        a[::4, 1] = 0.0
        a[1, 2] = -0.0
        out.append((ck.PACK, 3 * 6, [a, np.zeros((2, 4, 6), np.uint8), code, 21, 6, 1, 4], True))
    for anti, wb in ((0, 1), (1, 1), (1, 0)):
        out.append((ck.ES_NOISE, 3 * 4 * (5 + wb), [np.zeros((3, 4, 5), np.float32),
                    np.zeros((3, 4), np.float32), key.origin, key.gamma, 3, 3, 4, 5, anti, wb], True))
    out.append((ck.ES_COMBINE, 3 * B * m, [f(B, m), 1, f(B, 3 * m), m, 3 * m, f(3, m), f(m), f(m),
                np.zeros((3 * B, m), np.float32), 3, B, m, 1], True))
    out.append((ck.ES_COMBINE, 3 * B * m, [f(3 * B, m), 0, f(3, B, m), B * m, m, f(3, m), f(m), f(m),
                np.zeros((3 * B, m), np.float32), 3, B, m, 0], True))
    out.append((ck.LR_SCALE, 40 * 6, [f(40, 6), f(40), np.abs(f(6)) + 0.1, 40, 6], True))
    K = 16
    out.append((ck.SUM_COPIES, 3 * 3 * 5, [f(K * 3, 5), f(K * 3), np.abs(f(5)) + 0.1,
                np.zeros((3, 3, 5), np.float32), K, 3, 5, 6], True))
    out.append((ck.SIGN_SUM_COPIES, 3 * 3 * 5, [signbits.pack_reference(f(K * 3, 5), "pm1"), f(K * 3),
                np.zeros((3, 3, 5), np.float32), K, 3, 5, 6], True))
    for half in (0, 1):
        for tcode, kind in ((1, "01"), (2, "sign")):
            r, mm, d, dw = 24, 6, 5, 8
            x = f(40, d)
            tb = signbits.pack_reference(np.maximum(x, 0) if kind == "01" else x, kind)
            tb = np.ascontiguousarray(tb if kind == "sign" else tb[None])
            Lf = f(40) * np.float32(1e-3)
            dt = np.float16 if half else np.float32
            out.append((ck.UNPACK_PAIR, r * (mm + dw), [signbits.pack_reference(f(40, mm), "pm1"), Lf, tb,
                        tcode, np.zeros((r, 2 * mm if half else mm), dt), np.zeros((r, dw), dt), half,
                        np.abs(Lf).max(keepdims=True), 8, r, mm, d, dw, tb.shape[1]], True))
    for anti in (0, 1):
        for approx in (0, 1):
            for per, divide, wb in ((16, 1, 1), (6, 0, 1), (6, 1, 0)):
                parts = -(-K // per)
                out.append((ck.ES_GRAD, parts * 4 * (5 + wb), [f(K), np.abs(f(4)) + 0.1,
                            np.zeros((parts, 4, 5 + wb), np.float32), key.origin, key.gamma, 3, K, 4, 5, anti,
                            approx, per, divide, wb], True))
    out.append((ck.FILL_NORMAL, 1000, [np.zeros(1001, np.float32), 1000, key.origin, key.gamma, 2**33 + 1], True))
    for k, dt in ((ck.PACK_F64, np.float64),):
        a = rng.standard_normal((13, 4))
        a[0, 0], a[1, 1] = 0.0, -0.0
        for code in (0, 1, 2):
            out.append((k, 2 * 4, [a.astype(dt), np.zeros((2, 3, 4), np.uint8), code, 13, 4, 1, 3], True))
    for k, dt in ((ck.UNPACK_ROWS, np.float32), (ck.UNPACK_ROWS_F64, np.float64)):
        x = rng.standard_normal((29, 6))
        x[::5, 2] = 0
        for code, kind in enumerate(signbits.KINDS):
            p = signbits.pack_reference(x, kind)
            p = np.ascontiguousarray(p if kind == "sign" else p[None])
            out.append((k, 13 * 6, [p, code, 16, 29, rng.standard_normal(13).astype(dt),
                        np.zeros((13, 6), dt), 6, p.shape[1]], True))
    for regen in (0, 1):
        for anti in (0, 1):
            rows_, m_ = 30, 6
            out.append((ck.SIGMA_SUMS, 4 * m_, [f(rows_, m_), f(rows_), np.abs(f(m_)) + 0.1,
                        np.zeros((4, m_), np.float32), rows_, m_, 8, regen, key.origin, key.gamma, 2, 5, anti,
                        regen * 5 * CALL_STRIDE], True))
    for anti, wb in ((0, 1), (1, 1), (1, 0)):
        out.append((ck.ES_SIGMA, 3 * 4, [f(10), np.abs(f(4)) + 0.1, np.zeros((3, 4), np.float32), key.origin,
                    key.gamma, 4, 10, 4, 5, anti, 4, wb], True))
    out.append((ck.SPLIT_FINISH, 4 * 6, [f(8, 8), np.zeros((4, 5), np.float32), np.zeros(4, np.float32),
                np.array([3e-3], np.float32), 4, 5, 8], True))
    return out


def test_every_kernel_has_a_case():
    assert {c[0].name for c in _cases()} == set(ck.KERNELS)


def test_kernel_cases_hold_no_subnormals():
    """The GPU runs with -ftz=true (subnormals flushed to zero): the bit-for-bit cases must not
    meet one, in their inputs or their twins' results."""
    for k, n, args, exact in _cases():
        a = [copy.deepcopy(x) for x in args]
        k.twin(*a)
        for x in list(args) + a:
            if isinstance(x, np.ndarray) and x.dtype.kind == "f":
                v = np.abs(x.astype(np.float32))
                assert not ((v > 0) & (v < np.finfo(np.float32).tiny)).any(), k.name


@pytest.mark.parametrize("i", range(len(_cases())))
def test_cuda_c_on_the_host_equals_its_twin(host_kernels, i):
    """Bit for bit, except where libm's tanhf/expf/logf and NumPy's differ (within 4 ulp)."""
    k, n, args, exact = _cases()[i]
    a_twin = [copy.deepcopy(a) for a in args]
    a_c = [copy.deepcopy(a) for a in args]
    k.twin(*a_twin)
    _host_run(host_kernels, k, n, a_c)
    for (ctype, name), x, y in zip(k.params, a_twin, a_c):
        if isinstance(x, np.ndarray) and not ctype.startswith("const"):
            if exact:
                assert np.array_equal(_bits(x), _bits(y)), (k.name, name)
            else:
                np.testing.assert_allclose(y, x, rtol=4 * 2**-23, atol=4 * 2**-23, err_msg=f"{k.name} {name}")


def test_half_conversions_in_c_equal_numpys_float16(host_kernels):
    """unpack_pair's own float <-> fp16 conversion (no <cuda_fp16.h>): NumPy's float16 cast bit for
    bit, round to nearest even, over every fp16 value, the ties and their neighbours, the
    subnormals, the overflow edge and random floats; NaN stays NaN."""
    rng = np.random.default_rng(5)
    h = np.arange(1 << 16, dtype=np.uint16)
    f = np.empty(h.size, np.float32)
    host_kernels.emu_h2f(ctypes.c_void_p(h.ctypes.data), ctypes.c_void_p(f.ctypes.data), ctypes.c_longlong(h.size))
    ref = h.view(np.float16).astype(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(_bits(f[~nan]), _bits(ref[~nan])) and np.isnan(f[nan]).all()
    # every fp16 value, the midpoints between neighbours (ties) and one float ulp either side of them
    fin = np.isfinite(ref[:-1]) & np.isfinite(ref[1:])
    mids = ((ref[:-1][fin].astype(np.float64) + ref[1:][fin]) / 2).astype(np.float32)
    x = np.concatenate([ref[~nan], mids, np.nextafter(mids, np.float32(np.inf)),
                        np.nextafter(mids, np.float32(-np.inf)),
                        np.float32([65504, 65519.99, 65520, 1e6, np.inf, -np.inf, 2.0**-25, 2.0**-26, 1e-40]),
                        (rng.standard_normal(200_000) * np.exp2(rng.uniform(-30, 17, 200_000))).astype(np.float32),
                        rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    out = np.empty(x.size, np.uint16)
    host_kernels.emu_f2h(ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(out.ctypes.data), ctypes.c_longlong(x.size))
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    isn = np.isnan(x)
    assert np.array_equal(out[~isn], want.view(np.uint16)[~isn])
    assert np.isnan(out[isn].view(np.float16)).all()


def test_host_c_noise_equals_noise_normal(host_kernels):
    """The generated C recipe through ES_NOISE (all counters of its copies) = noise.normal, bits."""
    key = _key(9)
    m, d, kb = 16, 63, 40
    E, e = np.zeros((kb, m, d), np.float32), np.zeros((kb, m), np.float32)
    _host_run(host_kernels, ck.ES_NOISE, kb * m * (d + 1), [E, e, key.origin, key.gamma, 11, kb, m, d, 0, 1])
    ref = noise.normal(key, (kb, m, d + 1), start=11 * m * (d + 1))
    assert np.array_equal(_bits(E), _bits(np.ascontiguousarray(ref[..., :d])))
    assert np.array_equal(_bits(e), _bits(np.ascontiguousarray(ref[..., d])))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed here")
def test_the_cuda_source_compiles_with_nvcc(tmp_path):
    """Each kernel's translation unit (what NVRTC gets) compiles; the kernels without tanh/exp/log
    (whose library code uses FMA on purpose) contain no fused multiply-add at all."""
    for k in ck.KERNELS.values():
        (tmp_path / "k.cu").write_text(k.source)
        r = subprocess.run(["nvcc", "--ptx", "-arch=sm_80", "--fmad=false", "-o", str(tmp_path / "k.ptx"),
                            str(tmp_path / "k.cu")], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (k.name, r.stderr)
        ptx = (tmp_path / "k.ptx").read_text()
        assert f".entry {k.name}(" in ptx
        if k.name not in ("lr_forward", "alr_forward", "es_combine"):
            assert "fma.rn.f32" not in ptx, k.name


@pytest.fixture
def fake_cupy(host_kernels, monkeypatch):
    """A stand-in ``cupy`` whose ``RawKernel`` runs the kernel's C on the host (the grid the
    launcher asks for, as a loop) and whose array functions are NumPy's: the launcher's *GPU*
    path (argument types, grid sizes, RawKernel options) runs end to end on the CPU."""
    import types

    fake = types.ModuleType("cupy")
    fake.__getattr__ = lambda name: getattr(np, name)
    calls = []

    class RawKernel:
        def __init__(self, source, name, options=()):
            assert "--fmad=false" in options
            assert source == ck.KERNELS[name].source
            self.k = ck.KERNELS[name]

        def __call__(self, grid, block, args):
            assert len(args) == len(self.k.params)
            for (ctype, _), a in zip(self.k.params, args):  # the types RawKernel would marshal
                if not ctype.endswith("*"):
                    assert type(a) is ck._CTYPES[ctype], (self.k.name, ctype, type(a))
            calls.append(self.k.name)
            _host_run(host_kernels, self.k, grid[0] * block[0], list(args))

    fake.RawKernel = RawKernel
    fake.calls = calls
    monkeypatch.setitem(sys.modules, "cupy", fake)
    for k in ck.KERNELS.values():
        monkeypatch.setattr(k, "_compiled", None)
    return fake


@pytest.mark.parametrize("name", ["mlp", "resnet5"])
@pytest.mark.parametrize("est", ESTIMATORS)
def test_gpu_launch_path_with_the_c_kernels_equals_the_reference(fake_cupy, name, est):
    """The CUDA engine's sites through the launcher's GPU branch, every kernel the compiled C (on
    the host), for an MLP and a ResNet-5 (positions, learned sigma): the reference engine's numbers
    to float rounding, as on the twins."""
    model, x, y = model_zoo()[name]()
    kw = dict(estimator=est, copies=16, seed=3, antithetic=True)
    ref = minilr.estimate_gradient(model, x, y, backend=_reference(), **kw)
    bk = _engine_backend(fake_cupy, memory_budget=1 << 30)
    g = minilr.estimate_gradient(model, x, y, backend=bk, **kw)
    assert bk.engine.lnch.gpu and len(fake_cupy.calls) >= 6
    assert _rel(g, ref) < 2e-5


# -- the CUDA engine (minilr/engines/cuda.py): its sites on the twins --------------------------------------
def _data(B=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], B)


def _rel(g, ref):
    return max(float(np.abs(np.asarray(g[k]) - ref[k]).max() / (np.abs(ref[k]).max() + 1e-30)) for k in ref)


def _reference():
    return minilr.Backend("numpy", engine="reference")


def _engine_backend(xp=np, dry=False, **kw):
    """A NumPy backend whose engine is the CUDA engine: its sites run the kernels' twins (a stand-in
    ``xp``: the launcher's GPU branch; ``dry``: counted, not run, by a DryLauncher)."""
    bk = minilr.Backend("numpy", engine="reference")
    bk.engine = CUDAEngine(xp, **kw)
    if dry:
        bk.engine.new_launcher = lambda: ck.DryLauncher(np)
    return bk


def _dry_estimate(bk, model, x, y, **kw):
    """``estimate_gradient`` with a DryLauncher: nothing the kernels compute is real, so the caller
    gets no gradient (it may not even be finite); the launches and allocations are the point."""
    with np.errstate(all="ignore"), contextlib.suppress(FloatingPointError):
        minilr.estimate_gradient(model, x, y, backend=bk, **kw)
    return bk.engine.launches


@pytest.mark.parametrize("anti,chunk,baseline", [(False, None, True), (False, 6, False)])
@pytest.mark.parametrize("est", ESTIMATORS)
@pytest.mark.parametrize("name", sorted(model_zoo()))
def test_cuda_engine_on_twins_equals_the_reference_engine(name, est, anti, chunk, baseline):
    """Every model (conv, residual, recurrent, graph, spiking; learned sigma in the MLP and the
    ResNet-5) and every estimator through the CUDA engine's sites on the twins, against the
    reference engine: the same noise and equations, sums in other orders, so 1e-4 of each key's
    largest entry (the engines' suite's tolerance; measured <= 4e-6). Antithetic chunks of 8:
    tests/test_engines.py."""
    model, x, y = model_zoo()[name]()
    kw = dict(estimator=est, copies=16, seed=5, antithetic=anti, chunk=chunk, baseline=baseline)
    ref = minilr.estimate_gradient(model, x, y, backend=_reference(), **kw)
    bk = _engine_backend()
    got = minilr.estimate_gradient(model, x, y, backend=bk, **kw)
    assert got.keys() == ref.keys() == model.parameters().keys()
    assert bk.engine.launches > 0
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-4 * np.abs(ref[key]).max(), err_msg=key)


@pytest.mark.parametrize("est", ESTIMATORS)
def test_cuda_engine_on_an_irregular_stack_equals_the_reference(est):
    """Two activations in a row (one not fused), Linear after Linear, sigmoid and step: every
    activation and every way a site's input is recorded (fused bits, packed, kept)."""
    from minilr.layers import Linear

    model = minilr.Sequential([Linear(64, 32), "relu", "tanh", Linear(32, 16), Linear(16, 12), "sigmoid",
                               Linear(12, 10), "step", Linear(10, 10)], seed=1, learn_sigma=True)
    x, y = _data(seed=5)
    kw = dict(estimator=est, copies=16, seed=2, antithetic=True)
    ref = minilr.estimate_gradient(model, x, y, backend=_reference(), **kw)
    assert _rel(minilr.estimate_gradient(model, x, y, backend=_engine_backend(), **kw), ref) < 2e-5


@pytest.mark.parametrize("est", ["alr", "es", "aes", "a-hybrid"])
def test_blocks_do_not_change_the_estimate(est):
    """A small budget splits the copies into blocks: same noise, same formulas, so equal up to
    float32 sum order (GEMMs over fewer rows), for more launches."""
    model, x, y = model_zoo()["resnet5"]()
    kw = dict(estimator=est, copies=64, seed=3)
    one, split = _engine_backend(memory_budget=1 << 30), _engine_backend(memory_budget=100_000)
    g1, g2 = (minilr.estimate_gradient(model, x, y, backend=bk, **kw) for bk in (one, split))
    assert split.engine.launches > one.engine.launches
    assert _rel(g2, g1) < 1e-5


@pytest.mark.parametrize("name", ["mlp", "resnet5"])
@pytest.mark.parametrize("est", ["alr", "a-hybrid"])
def test_fp16_split_is_within_its_stated_tolerance(name, est):
    """fp16 operands: signs exact, L = Lh + Ll to 2^-22 relative: gradient within ~2^-22 * sum|L|
    of the fp32 path; relative to the largest entry, 1e-5 is a loose bound (measured ~2e-7)."""
    model, x, y = model_zoo()[name]()
    kw = dict(estimator=est, copies=64, seed=3)
    g1 = minilr.estimate_gradient(model, x, y, backend=_engine_backend(), **kw)
    bk = _engine_backend(precision="fp16")
    g2 = minilr.estimate_gradient(model, x, y, backend=bk, **kw)
    assert "gemm_f16" in bk.engine.lnch.log
    assert _rel(g2, g1) < 1e-5


# Launches of one estimate (one block, one chunk) on the twins' count: MLP 784-256-256-10 (B = 50)
# and ResNet-5 on (1, 40) (B = 10). The loss and the layers' other operations (norms, pooling) run
# as CuPy code beside them and are not counted.
MLP_LAUNCHES = {("lr", "fp32"): 18, ("alr", "fp32"): 15, ("alr", "fp16"): 21, ("es", "fp32"): 24,
                ("aes", "fp32"): 21, ("a-hybrid", "fp32"): 20}
MAX_MLP_LAUNCHES, MAX_RESNET5_LAUNCHES = 24, 50


def _gpu_sized(name):
    rng = np.random.default_rng(0)
    if name == "mlp":
        return minilr.MLP([784, 256, 256, 10], seed=0), np.ones((50, 784), np.float32), np.zeros(50, np.int64)
    return minilr.resnet5(seed=0), rng.standard_normal((10, 1, 40)).astype(np.float32), np.arange(10)


@pytest.mark.parametrize("name", ["mlp", "resnet5"])
@pytest.mark.parametrize("est,precision", sorted(MLP_LAUNCHES))
def test_launches_per_estimate_do_not_grow_with_copies(name, est, precision):
    """A budget that holds every copy (a large GPU): one block, so the same launches at K = 16, 128
    and 1,024 (counted without running, DryLauncher): per site and call one product and one fused
    kernel forward, a few for its gradient."""
    model, x, y = _gpu_sized(name)
    counts = [_dry_estimate(_engine_backend(dry=True, memory_budget=64 << 30, precision=precision), model, x, y,
                            estimator=est, copies=K) for K in (16, 128, 1024)]
    assert counts[0] == counts[1] == counts[2], counts
    if name == "mlp":
        assert counts[0] == MLP_LAUNCHES[est, precision], counts
    assert counts[0] <= (MAX_MLP_LAUNCHES if name == "mlp" else MAX_RESNET5_LAUNCHES), counts


@pytest.mark.parametrize("est", ["lr", "alr", "es"])
def test_dry_launcher_counts_what_the_twins_launch(est):
    """The DryLauncher's count is the launches the twins really run (same code path)."""
    model, x, y = model_zoo()["resnet5"]()
    real = _engine_backend()
    minilr.estimate_gradient(model, x, y, estimator=est, copies=16, backend=real)
    dry = _engine_backend(dry=True)
    assert _dry_estimate(dry, model, x, y, estimator=est, copies=16) == real.engine.launches
    assert dry.engine.lnch.log == real.engine.lnch.log


def _engine_launches(est, K, free):
    """Launches of the CUDA engine's default plan (no ``memory_budget``) at 784-256-256-10, B = 50,
    with ``free`` bytes of device memory reported free: counted on the CPU (DryLauncher)."""
    bk = _engine_backend(dry=True)
    bk.engine.free_memory = lambda: free  # the figure cupy.cuda.runtime.memGetInfo would give
    model, x, y = _gpu_sized("mlp")
    return _dry_estimate(bk, model, x, y, estimator=est, copies=K), bk.engine


@pytest.mark.parametrize("est", ["alr", "es", "a-hybrid"])
def test_engine_default_budget_is_a_share_of_free_memory(est):
    """The CUDA engine's default block budget is FREE_SHARE of the free device memory, at least
    MIN_BUDGET. With 79 GiB free (an 80 GB GPU), K = 10,000 runs in one block: the launches of
    K = 200, at most MAX_MLP_LAUNCHES. With 60 MB free the floor holds: 40 MB, and the copies run
    in the blocks the plan gives for it (one forward kernel per site and block)."""
    from minilr.engines import cuda as cuda_engine
    from minilr.estimators import ESTIMATORS as E
    from minilr.estimators import Plan, Settings

    big = 79 << 30
    n200, eng = _engine_launches(est, 200, big)
    n10k, _ = _engine_launches(est, 10_000, big)
    assert eng.budget() == cuda_engine.FREE_SHARE * big
    assert n10k == n200 <= MAX_MLP_LAUNCHES, (n200, n10k)
    small, eng = _engine_launches(est, 10_000, 60 << 20)
    assert eng.budget() == cuda_engine.MIN_BUDGET == 40 << 20
    model, x, _ = _gpu_sized("mlp")
    blocks = eng.plan_blocks(Plan.make(model, x, Settings(est, 10_000), np.random.SeedSequence(0), E[est]), 50,
                             10_000)
    forward = [n for n in eng.lnch.log if n in ("lr_forward", "alr_forward", "es_combine")]
    assert len(blocks) > 1 and len(forward) == 3 * len(blocks)
    assert small > n10k


def test_engine_free_memory_counts_cupys_pool():
    """On CuPy the free figure is the device's free memory plus the pool's unused blocks; the
    budget is half of it, at least MIN_BUDGET (a stand-in cupy module here)."""
    import types

    from minilr.engines.cuda import MIN_BUDGET, CUDAEngine

    free = {"dev": 10 << 30, "pool": 2 << 30}
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(memGetInfo=lambda: (free["dev"], 80 << 30)))
    fake.get_default_memory_pool = lambda: types.SimpleNamespace(free_bytes=lambda: free["pool"])
    eng = CUDAEngine(fake)
    assert eng.free_memory() == 12 << 30 and eng.budget() == 6 << 30
    free.update(dev=10 << 20, pool=0)
    assert eng.budget() == MIN_BUDGET
    assert CUDAEngine(fake, memory_budget=123).budget() == 123


def test_alr_holds_16x_less_than_lr_at_10000_copies():
    """Issue 7's memory target, counted on the CPU: the arrays an estimate allocates through the
    CUDA engine (DryLauncher: the same allocations, the kernels not run, NumPy reporting them to
    tracemalloc), 784-256-256-10, B = 50, K = 10,000, the default budget (40 MB without a
    device): LR keeps eps and x of every row (~2 GB), ALR its bits and a budget's floats; peak
    ratio >= 16."""
    import tracemalloc

    model, x, y = _gpu_sized("mlp")
    peaks = {}
    for est, prec in (("lr", "fp32"), ("alr", "fp32"), ("alr", "fp16")):
        tracemalloc.start()
        _dry_estimate(_engine_backend(dry=True, precision=prec), model, x, y, estimator=est, copies=10_000)
        peaks[est, prec] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks["lr", "fp32"] > 1.9 * 2**30
    assert peaks["lr", "fp32"] >= 16 * peaks["alr", "fp32"], peaks
    assert peaks["lr", "fp32"] >= 16 * peaks["alr", "fp16"], peaks


@pytest.mark.parametrize("est", ["lr", "alr"])
def test_chunked_100000_copies_run_in_the_memory_of_one_chunk(est):
    """K = 100,000 in chunks of 10,000: the peak of the allocations stays that of one chunk (plus
    the gradient's sums), counted as above."""
    import tracemalloc

    model, x, y = _gpu_sized("mlp")
    peaks = []
    for K in (10_000, 100_000):
        tracemalloc.start()
        _dry_estimate(_engine_backend(dry=True), model, x, y, estimator=est, copies=K, chunk=10_000)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] <= 1.05 * peaks[0] + 4 * 2**20, peaks


def test_gpu_path_needs_no_numba_cuda():
    """With ``numba.cuda`` failing to import (as under NumPy 2.5), the CUDA engine's modules import
    and an estimate runs through its sites (on the twins here)."""
    code = textwrap.dedent("""
        import sys, types
        class Broken(types.ModuleType):
            def __getattr__(self, name):
                raise AttributeError("module 'numpy' has no attribute 'row_stack'")
        sys.modules["numba.cuda"] = Broken("numba.cuda")
        import numpy as np, minilr
        from minilr.engines.cuda import CUDAEngine, device_kernels
        bk = minilr.Backend("numpy", engine="reference")
        bk.engine = CUDAEngine(np)
        x = np.ones((2, 64), np.float32); y = np.array([1, 2])
        g = minilr.estimate_gradient(minilr.MLP([64, 8, 10]), x, y, estimator="alr", copies=8, backend=bk)
        assert device_kernels().__name__ == "minilr.engines.cuda_kernels"
        assert "numba.cuda" not in [m for m in sys.modules if m.startswith("numba.cuda.")]
        print("ok", bk.engine.launches)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")


def test_gpu_bench_without_a_gpu_says_so():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "gpu_bench.py")], cwd=root,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": root},
                       timeout=300)
    if r.returncode == 0:
        pytest.skip("a GPU is here")
    assert r.returncode == 2 and "no GPU" in r.stdout and "Traceback" not in r.stderr


def test_gpu_bench_runs_end_to_end_on_a_stand_in_gpu(monkeypatch, tmp_path):
    """The benchmark's code (timing, memory hook, table) on a stand-in CuPy whose kernels are the
    twins and whose events read the host clock; tiny sizes. Checks that it runs and writes its
    tables, nothing about speed."""
    import importlib.util
    import time
    import types

    fake = types.ModuleType("cupy")
    fake.__getattr__ = lambda name: getattr(np, name)
    fake.__version__ = "stand-in"

    class Pool:
        def malloc(self, n):
            return None

        def used_bytes(self):
            return 0

        def free_bytes(self):
            return 0

        def free_all_blocks(self):
            pass

    class Event:
        def record(self):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

    class RawKernel:
        def __init__(self, source, name, options=()):
            self.k = ck.KERNELS[name]

        def compile(self):  # the backend's toolchain check
            pass

        def __call__(self, grid, block, args):
            self.k.twin(*args)

    pool = Pool()
    fake.get_default_memory_pool = lambda: pool
    fake.RawKernel = RawKernel
    fake.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, memGetInfo=lambda: (2**30, 2**34),
                                      getDeviceProperties=lambda i: {"name": b"Stand-in", "totalGlobalMem": 2**34}),
        Event=Event, get_elapsed_time=lambda a, b: 1e3 * (b.t - a.t), set_allocator=lambda f: None,
        Device=lambda: types.SimpleNamespace(synchronize=lambda: None))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    for k in ck.KERNELS.values():
        monkeypatch.setattr(k, "_compiled", None)
    monkeypatch.setattr(ck, "_gemm_ex_f16", lambda cp, S, T, rows, p, q:
                        S.astype(np.float32).T @ T.astype(np.float32))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("gpu_bench", os.path.join(root, "benchmarks", "gpu_bench.py"))
    gb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gb)
    monkeypatch.setattr(gb, "SIZES", [16, 8, 8, 4])
    monkeypatch.setattr(gb, "B", 4)
    monkeypatch.setattr(gb, "QUICK_KS", [16, 160])
    monkeypatch.setattr(gb, "torch_case", lambda K: "torch is not installed")
    # not the library entry point: Backend("cupy") on the stand-in would be a real backend object
    monkeypatch.setattr(gb, "library_case", lambda cupy, est, K: "not run here")
    # ResNet-5 through estimate_gradient, on NumPy here (the same code as backend="cupy" runs)
    resnet_case = gb.resnet_case
    monkeypatch.setattr(gb, "resnet_case", lambda cupy, est, K: resnet_case(cupy, est, K, backend="numpy"))
    monkeypatch.setattr(gb, "QUICK_RESNET_KS", [8])
    out, rows = tmp_path / "R.md", tmp_path / "R.rows.tsv"
    # every figure is on disk when the next one is measured
    minilr_case, seen = gb.minilr_case, []

    def checked_case(cupy, est, K, precision="fp32"):
        assert rows.read_text().count("\n") == 2 + len(seen) + (2 if K == 160 else 0), rows.read_text()
        seen.append((est, K))
        return minilr_case(cupy, est, K, precision)

    monkeypatch.setattr(gb, "minilr_case", checked_case)
    assert gb.main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "Stand-in" in text and "| 160 |" in text and "launches" in text and "Partial" not in text
    assert "Error" not in text.split("estimate_gradient")[0], text
    assert "ResNet-5" in text and "| 8 | alr |" in text and "Error" not in text.split("ResNet-5")[1], text
    lines = rows.read_text().splitlines()
    assert len(lines) == 2 + 2 * (5 + 2) + 2 and lines[-1].startswith("estimate_gradient ResNet-5 alr")


def test_gpu_bench_cut_short_keeps_what_it_measured(monkeypatch, tmp_path):
    """A run killed in the middle (a timeout) leaves the rows measured so far, and a table of
    them marked partial."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("gpu_bench", os.path.join(root, "benchmarks", "gpu_bench.py"))
    gb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gb)
    import types

    fake = types.SimpleNamespace(
        __version__="stand-in", get_default_memory_pool=lambda: types.SimpleNamespace(free_all_blocks=lambda: None),
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(
            getDeviceProperties=lambda i: {"name": "Stand-in", "totalGlobalMem": 2**34})))
    monkeypatch.setattr(gb, "_need_gpu", lambda: fake)
    monkeypatch.setattr(gb, "torch_case", lambda K: "torch is not installed")
    monkeypatch.setattr(gb, "library_case", lambda cupy, est, K: 1.0)

    def case(cupy, est, K, precision="fp32"):
        if K == 2000 and est == "es":
            raise KeyboardInterrupt  # the timeout's signal, in the middle of K = 2,000
        return (1.5, 2.0, 19)

    monkeypatch.setattr(gb, "minilr_case", case)
    out = tmp_path / "R.md"
    with pytest.raises(KeyboardInterrupt):
        gb.main(["--quick", "--out", str(out)])
    rows = (tmp_path / "R.rows.tsv").read_text().splitlines()
    assert sum(r.startswith("MLP ") and "\t200\t" in r for r in rows) == 5
    assert sum(r.startswith("MLP ") and "\t2000\t" in r for r in rows) == 3  # LR, ALR fp32, ALR fp16
    assert "MLP ALR fp32 (ms, MB, launches)\t200\t1.50\t2.00\t19" in rows
    text = out.read_text()
    assert "Partial" in text and "| 200 |" in text and "| 2,000 |" not in text


def _gpu_check(tmp_path, *args, env=None, python="python3"):
    """Run benchmarks/gpu_check.sh with a PATH holding only ``python`` (as ``python`` or
    ``python3``) and the few tools the script calls."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, target in [(python, sys.executable)] + [(t, shutil.which(t)) for t in ("dirname", "mkdir", "timeout")]:
        if target and not (bindir / name).exists():
            (bindir / name).symlink_to(target)
    e = {"PATH": str(bindir), "HOME": str(tmp_path), **(env or {})}
    return subprocess.run([shutil.which("bash"), os.path.join(root, "benchmarks", "gpu_check.sh"), *args],
                          capture_output=True, text=True, env=e, timeout=300)


def test_gpu_check_uses_python3_starts_quick_and_takes_an_output_folder(tmp_path):
    """Only ``python3`` on PATH: the script runs it; the quick benchmark comes before the full one;
    results go to --out-dir, else to $MINILR_GPU_OUT (checked with --dry-run: no GPU needed)."""
    r = _gpu_check(tmp_path, "--dry-run", env={"MINILR_GPU_OUT": str(tmp_path / "env_out")})
    assert r.returncode == 0, r.stderr
    assert "python: python3" in r.stdout and f"results in: {tmp_path / 'env_out'}" in r.stdout
    steps = [line for line in r.stdout.splitlines() if line.startswith("timeout ")]
    assert len(steps) == 3 and steps[0].split()[2] == "python3"
    assert "--quick" in steps[1] and f"{tmp_path / 'env_out'}/RESULTS_GPU_quick.md" in steps[1]
    assert "--quick" not in steps[2] and f"{tmp_path / 'env_out'}/RESULTS_GPU.md" in steps[2]
    r = _gpu_check(tmp_path, "--dry-run", "--out-dir", str(tmp_path / "opt_out"),
                   env={"MINILR_GPU_OUT": str(tmp_path / "env_out")})
    assert r.returncode == 0 and "opt_out/RESULTS_GPU.md" in r.stdout and "env_out" not in r.stdout
    assert (tmp_path / "opt_out").is_dir()


def test_gpu_check_without_a_gpu_says_so(tmp_path):
    if minilr.cupy_available():
        pytest.skip("a GPU is here")
    r = _gpu_check(tmp_path, python="python")
    assert r.returncode == 1 and "nothing to check" in r.stdout, (r.stdout, r.stderr)
    assert "python: python" not in r.stdout  # it stopped before any step


# -- 3. on a GPU ---------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not minilr.cupy_available(), reason="CuPy with a CUDA GPU is not available here")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("i", range(len(_cases())))
def test_gpu_kernel_equals_its_twin(i):
    """On the device: bit for bit away from subnormals (``-ftz=true``; the cases hold none), except
    tanh (CUDA's tanhf within 2 ulp of correctly rounded, NumPy's within 1: 4 ulp)."""
    import cupy

    k, n, args, exact = _cases()[i]
    a_twin = [copy.deepcopy(a) for a in args]
    a_gpu = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    k.twin(*a_twin)
    ck.Launcher(cupy).kernel(k, n, *a_gpu)
    for (ctype, name), x, y in zip(k.params, a_twin, a_gpu):
        if isinstance(x, np.ndarray) and not ctype.startswith("const"):
            y = cupy.asnumpy(y)
            if exact:
                assert np.array_equal(_bits(x), _bits(y)), (k.name, name)
            else:
                np.testing.assert_allclose(y, x, rtol=4 * 2**-23, atol=4 * 2**-23, err_msg=f"{k.name} {name}")


@gpu
@pytest.mark.gpu
def test_gpu_noise_equals_noise_normal_bit_for_bit():
    """Bit for bit under -ftz=true too: the noise recipe meets no subnormal (|z| >= ~2^-24)."""
    import cupy

    key = _key(10)
    m, d, kb = 256, 784, 64
    E, e = cupy.empty((kb, m, d), np.float32), cupy.empty((kb, m), np.float32)
    ck.Launcher(cupy).kernel(ck.ES_NOISE, kb * m * (d + 1), E, e, key.origin, key.gamma, 5, kb, m, d, 0, 1)
    ref = noise.normal(key, (kb, m, d + 1), start=5 * m * (d + 1))
    assert np.array_equal(_bits(cupy.asnumpy(E)), _bits(np.ascontiguousarray(ref[..., :d])))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mlp", "resnet5"])
@pytest.mark.parametrize("est", ESTIMATORS)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_engine_equals_the_reference(name, est, precision):
    """The CUDA engine's sites on the GPU against the NumPy reference engine, same seed: cuBLAS and
    NumPy sum in different orders, so 2e-5 of each gradient's largest entry (as on the twins); the
    launches those of the twins (the same code path)."""
    import cupy

    from minilr.engines.cuda import CUDAEngine

    model, x, y = model_zoo()[name]()
    kw = dict(estimator=est, copies=64, seed=3)
    ref = minilr.estimate_gradient(model, x, y, backend=_reference(), **kw)
    bk = minilr.Backend("cupy")
    bk.engine = CUDAEngine(cupy, precision=precision)
    g = minilr.estimate_gradient(model, x, y, backend=bk, **kw)
    assert _rel(g, ref) < 2e-5
    twins = _engine_backend(precision=precision)
    minilr.estimate_gradient(model, x, y, backend=twins, **kw)
    assert bk.engine.launches == twins.engine.launches > 0


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("est", ESTIMATORS)
def test_gpu_estimate_gradient_on_cupy_equals_numpy(est):
    """What a user calls: backend="cupy" (the CUDA engine's sites) against backend="numpy", same
    seed, learned sigma included: float32 rounding only."""
    model = minilr.MLP(SIZES, seed=0, learn_sigma=True)
    x, y = _data()
    ref = minilr.estimate_gradient(model, x, y, estimator=est, copies=64, seed=3, antithetic=True)
    bk = minilr.Backend("cupy")
    g = minilr.estimate_gradient(model, x, y, estimator=est, copies=64, seed=3, antithetic=True, backend=bk)
    assert 0 < bk.engine.launches <= MAX_MLP_LAUNCHES + 6  # + the sigma score: a kernel (+ a sum) per site
    assert _rel(g, ref) < 2e-5


def test_cuda_engine_runs_the_reference_sites_for_a_float64_model():
    """The kernels are float32: a float64 model runs the reference sites (no launches counted),
    with the same numbers."""
    model = minilr.MLP(SIZES, seed=0, dtype=np.float64)
    x, y = _data()
    ref = minilr.estimate_gradient(model, x, y, estimator="alr", copies=16, seed=3, backend=_reference())
    bk = _engine_backend(memory_budget=1 << 30)
    g = minilr.estimate_gradient(model, x, y, estimator="alr", copies=16, seed=3, backend=bk)
    assert bk.engine.launches == 0
    assert _rel(g, ref) < 1e-12
