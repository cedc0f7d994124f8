"""CUDA kernels of the CUDA engine, each with a NumPy twin that computes the same numbers.

Every kernel here is a :class:`Kernel`: its CUDA C source (compiled lazily by ``cupy.RawKernel``
the first time a CuPy array reaches it; ``cupy`` is imported only then) and a NumPy *twin*, a
vectorised function with the same arguments that does the same arithmetic in the same order
wherever the order is fixed (a reduction's order is not: those are compared with a tolerance).
A step runs as a short list of launches through a :class:`Launcher`: on CuPy arrays it launches
the kernels (and cuBLAS for the products), on NumPy arrays it runs the twins; either way it
*counts* launches, so the launch budget of a step is tested on a machine without a GPU.

Only CuPy is needed on the GPU: no ``numba.cuda`` (it fails to import under NumPy 2.5, and each
of its launches costs ~0.1 ms of host time). This module replaces ``minilr/_cuda_kernels.py``.

**One recipe for the noise.** The counter-based Gaussian of :mod:`minilr.noise` is written in C by
:func:`noise_source` from that module's constants (``_M1``, ``_M2``, ``_C``, ``_T``, ``_T0``,
``_LN2``, ``_SQRT2``, emitted as exact bit patterns), step for step as ``_hash_py`` and
``_gauss_py`` do it: float32 throughout, every product and sum rounded on its own
(``__fmul_rn``/``__fadd_rn``, which the compiler never fuses into an FMA; the source is also
compiled with ``--fmad=false``) and an IEEE ``sqrtf``, so the GPU draws the very bits that
``minilr.noise.normal`` draws on the CPU. :func:`normal_twin` is the same recipe as NumPy array
code; the tests check both against ``minilr.noise.normal`` bit for bit (the C source by compiling
it with the host C compiler, intrinsics mapped to plain float arithmetic). CuPy compiles with
``-ftz=true`` (subnormals flushed to zero), so GPU and twins agree bit for bit away from
subnormals only; the noise never produces one.

Layouts (those of the reference estimators, ``minilr/estimators``):

* LR noise of copy ``k``, row ``b`` of the copy (a sample, or a sample's position: ``B`` is then
  the rows per copy), neuron ``i`` and call ``c`` of the site is counter
  ``c*CALL_STRIDE + k*B*m + b*m + i`` (the ``offset`` argument holds ``c*CALL_STRIDE``); with
  antithetic noise copy ``k`` uses counters of copy ``k // 2`` and odd copies negate them;
* ES noise of copy ``k`` is ``(m, d + wb)`` numbers from counter ``k*m*(d+wb)``: ``E_k`` then, where
  the site has a bias (``wb`` 1), ``e_k`` in the last column;
* packed signs: row ``n = k*B + b`` is bit ``n % 8`` of byte ``n // 8``, one column per neuron
  (:mod:`minilr.signbits`; ``"sign"`` has a second plane for the negatives).
"""
from __future__ import annotations

import numpy as np

from .. import noise as _noise

__all__ = ["ACTS", "Kernel", "Launcher", "noise_source", "normal_twin", "KERNELS", "NVRTC_OPTIONS", "full_source"]

ACTS = {"identity": 0, "relu": 1, "tanh": 2, "sigmoid": 3, "step": 4}
CODES = {"pm1": 0, "01": 1, "sign": 2}
THREADS = 256  # threads per CUDA block for every kernel here (one thread per item)
# The options each kernel is compiled with (cupy.RawKernel adds its own: -ftz=true, -arch=sm_XX,
# --std=c++17, its include dirs). --fmad=false: no product-add pair anywhere in a kernel is fused
# into an FMA (the noise uses __f*_rn intrinsics anyway), so the float arithmetic is the twin's.
# The sources include no header: NVRTC compiles them with no CUDA include dir on its path.
NVRTC_OPTIONS = ("--fmad=false",)

_F32 = np.float32
_U64 = np.uint64


# -- the noise recipe in C, from noise.py's constants ----------------------------------------------
def _flit(x) -> str:
    """An exact float32 constant in C: its bit pattern (no decimal round trip to trust)."""
    f = _F32(x)
    return f"__int_as_float(0x{int(f.view(np.uint32)):08x}) /* {float(f)!r} */"


# The inline constants of ``noise._gauss_py`` (its atanh series for log, the cut points, 2^-24):
# the same literals, in the same roles; the tests check that the C and the twin give
# noise.normal's bits, so a change to the recipe there shows up here at once.
_SERIES = (1 / 3, 0.2, 1 / 7, 1 / 9, 1 / 11)
_SQRT2_CUT = 1.4142135
_W_SPLIT = 5.0
_W_CENTRE = 2.5
_TWO_M24 = 5.9604645e-08


def _poly_c(coefs, var):
    """Horner lines ``p = c[n-1]; p = c[j] + p * v`` as in ``_gauss_py``, rounded op by op."""
    lines = [f"p = {_flit(coefs[-1])};"]
    for c in reversed(coefs[:-1]):
        lines.append(f"p = __fadd_rn({_flit(c)}, __fmul_rn(p, {var}));")
    return "\n        ".join(lines)


def noise_source() -> str:
    """CUDA C device functions ``minilr_hash``, ``minilr_gauss``, ``minilr_normal_at`` of the noise
    recipe of :mod:`minilr.noise`, generated from its constants."""
    series = [f"s = {_flit(_SERIES[-1])};"]
    for c in reversed((1.0,) + _SERIES[:-1]):
        series.append(f"s = __fadd_rn({_flit(c)}, __fmul_rn(r2, s));")
    series = "\n    ".join(series)
    return f"""
// counter-based Gaussian noise: generated from minilr/noise.py (_hash_py, _gauss_py)
__device__ __forceinline__ unsigned long long minilr_hash(unsigned long long k1,
        unsigned long long gamma, unsigned long long p) {{
    unsigned long long s = k1 + p * gamma + gamma;
    unsigned long long z = (s ^ (s >> 30)) * 0x{int(_noise._M1):016x}ULL;
    z = (z ^ (z >> 27)) * 0x{int(_noise._M2):016x}ULL;
    return z ^ (z >> 31);
}}

__device__ __forceinline__ float minilr_gauss(unsigned long long half) {{
    unsigned long long j = (half & 0xFFFFFFFFULL) >> 8;
    unsigned long long a = 2ULL * j + 1ULL;
    unsigned long long q = a * (33554432ULL - a);
    int e = 0;
    unsigned long long t = q;
    if (t >= 4294967296ULL) {{ t >>= 32; e += 32; }}
    if (t >= 65536ULL) {{ t >>= 16; e += 16; }}
    if (t >= 256ULL) {{ t >>= 8; e += 8; }}
    if (t >= 16ULL) {{ t >>= 4; e += 4; }}
    if (t >= 4ULL) {{ t >>= 2; e += 2; }}
    if (t >= 2ULL) {{ e += 1; }}
    float m = __fdiv_rn(__ull2float_rn(q), __ull2float_rn(1ULL << e));
    if (m > {_flit(_SQRT2_CUT)}) {{ m = __fmul_rn(m, 0.5f); e += 1; }}
    float r = __fdiv_rn(__fsub_rn(m, 1.0f), __fadd_rn(m, 1.0f));
    float r2 = __fmul_rn(r, r);
    float s;
    {series}
    float lm = __fmul_rn(__fmul_rn(2.0f, r), s);
    float w = __fsub_rn(__fmul_rn((float)(48 - e), {_flit(_noise._LN2)}), lm);
    float p, v;
    if (w < {_flit(_W_SPLIT)}) {{
        v = __fsub_rn(w, {_flit(_W_CENTRE)});
        {_poly_c(_noise._C, "v")}
    }} else {{
        v = __fsub_rn(__fsqrt_rn(w), {_flit(_noise._T0)});
        {_poly_c(_noise._T, "v")}
    }}
    float x = __fmul_rn((float)((long long)a - 16777216LL), {_flit(_TWO_M24)});
    return __fmul_rn(__fmul_rn({_flit(_noise._SQRT2)}, p), x);
}}

__device__ __forceinline__ float minilr_normal_at(unsigned long long k1, unsigned long long gamma,
        unsigned long long c) {{
    unsigned long long h = minilr_hash(k1, gamma, c >> 1);
    return minilr_gauss(h >> ((c & 1ULL) << 5));
}}

// noise of copy k (absolute), item `off` of the copy's `per` numbers, from counter `offset` on (a
// site's call); antithetic: copy k // 2's, negated for odd k
__device__ __forceinline__ float minilr_copy_noise(unsigned long long k1, unsigned long long gamma,
        long long k, long long per, long long off, int anti, unsigned long long offset) {{
    long long kk = anti ? (k >> 1) : k;
    float z = minilr_normal_at(k1, gamma, offset + (unsigned long long)(kk * per + off));
    return (anti && (k & 1)) ? -z : z;
}}
"""


def normal_twin(k1, gamma, counters) -> np.ndarray:
    """The noise at ``counters`` (uint64 array) by the recipe of :mod:`minilr.noise` as NumPy array
    code: float32 op by op, as the C of :func:`noise_source`. Equals ``noise.normal`` bit for bit."""
    c = np.asarray(counters, dtype=_U64)
    k1, gamma = _U64(k1), _U64(gamma)
    with np.errstate(over="ignore"):
        s = k1 + (c >> _U64(1)) * gamma + gamma
        z = (s ^ (s >> _U64(30))) * _noise._M1
        z = (z ^ (z >> _U64(27))) * _noise._M2
        h = z ^ (z >> _U64(31))
    return gauss_twin(h >> ((c & _U64(1)) << _U64(5)))


def gauss_twin(half) -> np.ndarray:
    """``noise._gauss_py`` over a uint64 array: the quantile of the top 24 of the low 32 bits."""
    half = np.asarray(half, dtype=_U64)
    j = (half & _U64(0xFFFFFFFF)) >> _U64(8)
    a = _U64(2) * j + _U64(1)
    q = a * (_U64(33554432) - a)
    e = np.zeros(q.shape, np.int64)
    t = q.copy()
    for sh in (32, 16, 8, 4, 2):
        big = t >= _U64(1 << sh)
        t = np.where(big, t >> _U64(sh), t)
        e += big * sh
    e += t >= _U64(2)
    m = q.astype(_F32) / (_U64(1) << e.astype(_U64)).astype(_F32)
    big = m > _F32(_SQRT2_CUT)
    m = np.where(big, m * _F32(0.5), m)
    e += big
    r = (m - _F32(1)) / (m + _F32(1))
    r2 = r * r
    s = np.full(r.shape, _F32(_SERIES[-1]))
    for cf in reversed((1.0,) + _SERIES[:-1]):
        s = _F32(cf) + r2 * s
    lm = (_F32(2) * r) * s
    w = (48 - e).astype(_F32) * _noise._LN2 - lm

    def horner(coefs, v):
        p = np.full(v.shape, _F32(coefs[-1]))
        for cf in reversed(coefs[:-1]):
            p = _F32(cf) + p * v
        return p

    centre = horner(_noise._C, w - _F32(_W_CENTRE))
    tail = horner(_noise._T, np.sqrt(np.maximum(w, _F32(0))) - _noise._T0)
    p = np.where(w < _F32(_W_SPLIT), centre, tail)
    x = (a.astype(np.int64) - 16777216).astype(_F32) * _F32(_TWO_M24)
    return (_noise._SQRT2 * p) * x


def _copy_noise_twin(k1, gamma, k, per, off, anti, offset=0):
    """:c:`minilr_copy_noise` over broadcast integer arrays ``k`` (absolute copy) and ``off``."""
    k = np.asarray(k, np.int64)
    kk = k >> 1 if anti else k
    z = normal_twin(k1, gamma, (kk * per + np.asarray(off, np.int64)).astype(_U64) + _U64(offset))
    return np.where((k & 1).astype(bool), -z, z) if anti else z


# -- activations ----------------------------------------------------------------------------------
_ACT_C = """
// t / d and t % d; in 32 bits when both fit (a 64-bit division costs several times a 32-bit one on a
// GPU, and an index is divided once or twice per value)
__device__ __forceinline__ long long minilr_div(long long t, long long d, long long* rem) {
    if (t < 4294967296LL && d < 4294967296LL) {
        const unsigned int a = (unsigned int)t, b = (unsigned int)d, q = a / b;
        *rem = (long long)(a - q * b);
        return (long long)q;
    }
    const long long q = t / d;
    *rem = t - q * d;
    return q;
}

// fp16-split ALR: L is scaled by 2^s, s chosen from max|L| so that max |L| 2^s is in [2^14, 2^15)
// (fp16's largest finite is 65504); a power of two, so the scaling and its undoing are exact.
__device__ __forceinline__ int minilr_l_exp(float amax) {
    if (!(amax > 0.0f) || isinf(amax)) return 0;
    const int s = 14 - ilogbf(amax);
    return s < -126 ? -126 : (s > 126 ? 126 : s);
}

__device__ __forceinline__ float minilr_act(float z, int act) {
    if (act == 1) return z < 0.0f ? 0.0f : z;                          // relu (NaN stays NaN)
    if (act == 2) return tanhf(z);                                     // tanh
    if (act == 3) return __fmul_rn(0.5f, __fadd_rn(1.0f, tanhf(__fmul_rn(0.5f, z))));  // sigmoid
    if (act == 4) return z > 0.0f ? 1.0f : 0.0f;                       // step
    return z;                                                          // identity
}

// float <-> IEEE binary16 bits, round to nearest even, in integer arithmetic: written here rather
// than taken from <cuda_fp16.h>, so the kernels need no CUDA header (NVRTC has none built in), and
// exact whatever -ftz says (no float arithmetic on the way). NaN keeps its top payload bits, as
// NumPy's float16 cast does.
__device__ __forceinline__ unsigned short minilr_f2h(float f) {
    const unsigned int x = __float_as_uint(f);
    const unsigned int sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) {                                            // NaN: stays a NaN
        const unsigned int p = (ax >> 13) & 0x3ffu;
        return (unsigned short)(sign | 0x7c00u | (p ? p : 1u));
    }
    if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);    // >= 65520 (and inf): inf
    if (ax >= 0x38800000u) {                                           // a normal half: rebias 127 -> 15
        unsigned int h = (ax - 0x38000000u) >> 13;
        const unsigned int rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;        // a carry moves the exponent on
        return (unsigned short)(sign | h);
    }
    const unsigned int shift = 126u - (ax >> 23);                      // a subnormal half: m 2^-24
    if (shift > 24u) return (unsigned short)sign;                      // below 2^-25: zero
    const unsigned int m = (ax & 0x7fffffu) | 0x800000u;
    unsigned int h = m >> shift;
    const unsigned int rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) h++;
    return (unsigned short)(sign | h);
}

__device__ __forceinline__ float minilr_h2f(unsigned short h) {
    const unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
    const unsigned int e = ((unsigned int)h >> 10) & 0x1fu, m = (unsigned int)h & 0x3ffu;
    if (e == 31u) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    if (e == 0u)  // zero or subnormal: m 2^-24, a normal float (exact; -ftz does not touch it)
        return __uint_as_float(sign | __float_as_uint(__fmul_rn((float)m, 5.9604644775390625e-08f)));
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}
"""


def _l_exp_twin(amax):
    """:c:`minilr_l_exp`: the power of two that brings max|L| into [2^14, 2^15)."""
    amax = float(amax)
    if not amax > 0 or np.isinf(amax):
        return 0
    return int(min(126, max(-126, 14 - (np.frexp(np.float32(amax))[1] - 1))))


def _act_twin(z, act):
    """The activations of :mod:`minilr.layers` as the kernels apply them (float32)."""
    if act == 1:
        return np.where(z < 0, _F32(0), z).astype(z.dtype)
    if act == 2:
        return np.tanh(z)
    if act == 3:
        return _F32(0.5) * (_F32(1) + np.tanh(_F32(0.5) * z))
    if act == 4:
        return (z > 0).astype(z.dtype)
    return z


def _pack_twin(a, code):
    """``a`` (rows, w) packed along the rows: planes (1 or 2, ceil(rows / 8), w), as signbits.pack."""
    if code == 0:
        return np.packbits(~np.signbit(a), axis=0, bitorder="little")[None]
    if code == 1:
        return np.packbits(a > 0, axis=0, bitorder="little")[None]
    return np.stack([np.packbits(a > 0, axis=0, bitorder="little"),
                     np.packbits(a < 0, axis=0, bitorder="little")])


def _bits_twin(planes, code, r0, r1):
    """Rows ``r0 .. r1 - 1`` of packed ``planes`` as float32 values (+-1, 0/1 or -1/0/1)."""
    rows = r1 - r0
    pos = np.unpackbits(planes[0, r0 // 8:], axis=0, count=rows, bitorder="little").astype(_F32)
    if code == 0:
        return _F32(2) * pos - _F32(1)
    if code == 1:
        return pos
    neg = np.unpackbits(planes[1, r0 // 8:], axis=0, count=rows, bitorder="little").astype(_F32)
    return pos - neg


# -- kernels ----------------------------------------------------------------------------------------
_PTR_DTYPES = {"float": np.float32, "double": np.float64, "unsigned char": np.uint8,
               "long long": np.int64}  # void*: float32 or float16 by the kernel's flag
_CTYPES = {"int": np.int32, "long long": np.int64, "unsigned long long": np.uint64, "float": np.float32,
           "double": np.float64}


class Kernel:
    """A CUDA kernel (one thread per item) and its NumPy twin.

    ``params``: ``(ctype, name)`` pairs, pointers written ``"float*"``; the twin takes the same
    arguments in the same order (NumPy arrays for pointers, with their logical shapes).
    """

    def __init__(self, name, params, body, twin):
        self.name, self.params, self.body, self.twin = name, params, body, twin
        self._compiled = None
        # per argument: (name, pointer?, element dtype of a pointer or scalar type), made once
        self._meta = [(n, t.endswith("*"), _PTR_DTYPES.get(t.replace("const ", "").rstrip("*"))
                       if t.endswith("*") else _CTYPES[t]) for t, n in params]

    @property
    def signature(self) -> str:
        return ", ".join(f"{t} {n}" for t, n in self.params)

    @property
    def source(self) -> str:
        """The whole translation unit handed to NVRTC."""
        return (noise_source() + _ACT_C
                + f'\nextern "C" __global__ void {self.name}({self.signature}) {{\n'
                + "    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
                + self.body + "\n}\n")

    def compiled(self):
        if self._compiled is None:
            import cupy  # noqa: PLC0415 (GPU only)

            self._compiled = cupy.RawKernel(self.source, self.name, options=NVRTC_OPTIONS)
        return self._compiled

    def check(self, args):
        """Raise ValueError unless each pointer argument is a C-contiguous array of its C type."""
        if len(args) != len(self._meta):
            raise ValueError(f"{self.name}: {len(self._meta)} arguments expected, got {len(args)}")
        for (name, ptr, want), a in zip(self._meta, args):
            if not ptr:
                continue
            flags = getattr(a, "flags", None)
            if flags is None or not flags.c_contiguous:
                raise ValueError(f"{self.name}: argument {name} must be a C-contiguous array")
            if want is not None and a.dtype != want:
                raise ValueError(f"{self.name}: argument {name} must be {np.dtype(want).name}, got {a.dtype}")

    def launch(self, n_threads, args):
        """Launch on the GPU with one thread per item, ``n_threads`` items."""
        vals = tuple(a if ptr else conv(a) for (_, ptr, conv), a in zip(self._meta, args))
        grid = max(1, -(-int(n_threads) // THREADS))
        self.compiled()((grid,), (THREADS,), vals)


# LR forward, one thread per value (row n of the block, neuron i): draw eps at its counter,
# v = (pre + bias) + sigma * eps (the reference's order), h = act(v); keep eps.
# pre: (B, m) when shared (the first layer's x W^T, computed once), else (rows, m); h may be pre.
def _lr_forward_twin(pre, pre_shared, bias, sigma, eps, h, k1, gamma, k0, B, m, rows, anti, act, offset):
    n = np.arange(rows)[:, None]
    eps[...] = _copy_noise_twin(k1, gamma, k0 + n // B, B * m, (n % B) * m + np.arange(m), anti, offset)
    v = pre[np.arange(rows) % B] if pre_shared else pre
    h[...] = _act_twin((v + bias) + sigma * eps, act)


LR_FORWARD = Kernel("lr_forward", [
    ("const float*", "pre"), ("int", "pre_shared"), ("const float*", "bias"), ("const float*", "sigma"),
    ("float*", "eps"), ("float*", "h"), ("unsigned long long", "k1"), ("unsigned long long", "gamma"),
    ("long long", "k0"), ("int", "B"), ("int", "m"), ("long long", "rows"), ("int", "anti"), ("int", "act"),
    ("unsigned long long", "offset")],
    """    if (t >= rows * m) return;
    long long i, b;
    const long long n = minilr_div(t, m, &i);
    const long long c = minilr_div(n, B, &b);
    const float e = minilr_copy_noise(k1, gamma, k0 + c, (long long)B * m, b * m + i, anti, offset);
    const float v = pre_shared ? pre[(long long)b * m + i] : pre[t];
    eps[t] = e;
    h[t] = minilr_act(__fadd_rn(__fadd_rn(v, bias[i]), __fmul_rn(sigma[i], e)), act);""",
    _lr_forward_twin)


# ALR forward, one thread per (byte row r, neuron i): eight rows 8r .. 8r + 7 of the block, each as
# lr_forward, keeping only bits: not signbit(eps) into sbits (packed "pm1") and, when hcode > 0,
# the next layer's input signs h > 0 ("01") or h > 0 / h < 0 ("sign", two planes) into hbits.
# byte0: the block's first byte row in the record (its first row is a multiple of 8).
def _alr_forward_twin(pre, pre_shared, bias, sigma, h, sbits, hbits, hcode, k1, gamma, k0, B, m,
                      rows, anti, act, byte0, nbytes_all, offset):
    eps = np.empty((rows, m), _F32)
    _lr_forward_twin(pre, pre_shared, bias, sigma, eps, h, k1, gamma, k0, B, m, rows, anti, act, offset)
    nb = -(-rows // 8)
    sbits[byte0:byte0 + nb] = _pack_twin(eps, 0)[0]
    if hcode:
        hp = _pack_twin(h, hcode)
        planes = hbits.reshape(-1, nbytes_all, m)
        planes[:hp.shape[0], byte0:byte0 + nb] = hp


ALR_FORWARD = Kernel("alr_forward", [
    ("const float*", "pre"), ("int", "pre_shared"), ("const float*", "bias"), ("const float*", "sigma"),
    ("float*", "h"), ("unsigned char*", "sbits"), ("unsigned char*", "hbits"), ("int", "hcode"),
    ("unsigned long long", "k1"), ("unsigned long long", "gamma"), ("long long", "k0"), ("int", "B"),
    ("int", "m"), ("long long", "rows"), ("int", "anti"), ("int", "act"), ("long long", "byte0"),
    ("long long", "nbytes_all"), ("unsigned long long", "offset")],
    """    const long long nb = (rows + 7) / 8;
    if (t >= nb * m) return;
    long long i, b;
    const long long r = minilr_div(t, m, &i);
    long long c = minilr_div(r * 8, B, &b);  // copy and sample of the first row; then counted on
    unsigned int sb = 0, hp = 0, hn = 0;
    for (int q = 0; q < 8; q++, b++) {
        const long long n = r * 8 + q;
        if (n >= rows) break;
        if (b == B) { b = 0; c++; }
        const float e = minilr_copy_noise(k1, gamma, k0 + c, (long long)B * m, b * m + i, anti, offset);
        const float v = pre_shared ? pre[(long long)b * m + i] : pre[n * m + i];
        const float z = minilr_act(__fadd_rn(__fadd_rn(v, bias[i]), __fmul_rn(sigma[i], e)), act);
        h[n * m + i] = z;
        sb |= (signbit(e) ? 0u : 1u) << q;
        hp |= (z > 0.0f ? 1u : 0u) << q;
        hn |= (z < 0.0f ? 1u : 0u) << q;
    }
    sbits[(byte0 + r) * m + i] = (unsigned char)sb;
    if (hcode > 0) hbits[(byte0 + r) * m + i] = (unsigned char)hp;
    if (hcode == 2) hbits[(nbytes_all + byte0 + r) * m + i] = (unsigned char)hn;""",
    _alr_forward_twin)


# Pack rows of a (rows, w) float array into bits from byte row byte0 (signbits.pack's layout), one
# thread per (byte row, column); used where no fused pass packed a layer's input already.
def _pack_kernel_twin(a, out, code, rows, w, byte0, nbytes_all):
    p = _pack_twin(a.reshape(rows, w), code)
    out.reshape(-1, nbytes_all, w)[:p.shape[0], byte0:byte0 + p.shape[1]] = p


_PACK_BODY = """    const long long nb = (rows + 7) / 8;
    if (t >= nb * w) return;
    long long c;
    const long long r = minilr_div(t, w, &c);
    unsigned int pos = 0, neg = 0;
    for (int q = 0; q < 8 && r * 8 + q < rows; q++) {
        const REAL v = a[(r * 8 + q) * w + c];
        pos |= ((code == 0 ? !signbit(v) : v > (REAL)0) ? 1u : 0u) << q;
        neg |= (v < (REAL)0 ? 1u : 0u) << q;
    }
    out[(byte0 + r) * w + c] = (unsigned char)pos;
    if (code == 2) out[(nbytes_all + byte0 + r) * w + c] = (unsigned char)neg;"""


def _typed(name, params, body, twin):
    """The float32 kernel ``name`` and its float64 twin ``name_f64`` (``REAL`` in the source)."""
    out = []
    for real, suffix in (("float", ""), ("double", "_f64")):
        ps = [(t.replace("REAL", real), n) for t, n in params]
        out.append(Kernel(name + suffix, ps, body.replace("REAL", real), twin))
    return out


PACK, PACK_F64 = _typed("pack_rows", [
    ("const REAL*", "a"), ("unsigned char*", "out"), ("int", "code"), ("long long", "rows"),
    ("int", "w"), ("long long", "byte0"), ("long long", "nbytes_all")], _PACK_BODY, _pack_kernel_twin)


# signbits.unpack's contract: out[r - r0, c] = scale[r - r0] * value(r, c), one thread per value,
# written as selects (+-f, f * 0) so that it stays exact, as the CPU kernel does.
def _unpack_rows_twin(p, code, r0, r1, scale, out, w, nbytes_all):
    planes = p.reshape(-1, nbytes_all, w)
    pos = np.unpackbits(planes[0, r0 // 8:], axis=0, count=r1 - r0, bitorder="little").astype(bool)
    f = scale.reshape(-1, 1)
    if code == 0:
        v = np.where(pos, f, -f)
    elif code == 1:
        v = np.where(pos, f, f * 0)
    else:
        neg = np.unpackbits(planes[1, r0 // 8:], axis=0, count=r1 - r0, bitorder="little").astype(bool)
        v = np.where(pos, f, np.where(neg, -f, f * 0))
    out.reshape(r1 - r0, w)[...] = v


UNPACK_ROWS, UNPACK_ROWS_F64 = _typed("unpack_rows", [
    ("const unsigned char*", "p"), ("int", "code"), ("long long", "r0"), ("long long", "r1"),
    ("const REAL*", "scale"), ("REAL*", "out"), ("int", "w"), ("long long", "nbytes_all")],
    """    if (t >= (r1 - r0) * w) return;
    long long c;
    const long long i = minilr_div(t, w, &c);
    const long long r = r0 + i;
    const unsigned int sh = (unsigned int)(r & 7);
    const REAL f = scale[i];
    REAL v;
    if ((p[(r >> 3) * w + c] >> sh) & 1) v = f;
    else if (code == 0) v = -f;
    else if (code == 2 && ((p[(nbytes_all + (r >> 3)) * w + c] >> sh) & 1)) v = -f;
    else v = f * (REAL)0;
    out[t] = v;""",
    _unpack_rows_twin)


# noise.fill_normal's contract: out[t] = the noise at counter start + t.
def _fill_twin(out, n, k1, gamma, start):
    out.reshape(-1)[:n] = normal_twin(k1, gamma, np.arange(n, dtype=_U64) + _U64(start))


FILL_NORMAL = Kernel("fill_normal", [
    ("float*", "out"), ("long long", "n"), ("unsigned long long", "k1"), ("unsigned long long", "gamma"),
    ("unsigned long long", "start")],
    """    if (t >= n) return;
    out[t] = minilr_normal_at(k1, gamma, start + (unsigned long long)t);""",
    _fill_twin)


# ES/AES weight noise of copies k0 .. k0 + kb - 1: E (kb, m, d) and e (kb, m) from the per-copy
# (m, d + wb) counters, one thread per number (wb = 0: no bias, e untouched).
def _es_noise_twin(E, e, k1, gamma, k0, kb, m, d, anti, wb):
    w = d + wb
    k = k0 + np.arange(kb)[:, None, None]
    off = np.arange(m)[:, None] * w + np.arange(w)
    full = _copy_noise_twin(k1, gamma, k, m * w, off, anti)
    E[...] = full[..., :d]
    if wb:
        e[...] = full[..., d]


ES_NOISE = Kernel("es_noise", [
    ("float*", "E"), ("float*", "e"), ("unsigned long long", "k1"), ("unsigned long long", "gamma"),
    ("long long", "k0"), ("long long", "kb"), ("int", "m"), ("int", "d"), ("int", "anti"), ("int", "wb")],
    """    const long long per = (long long)m * (d + wb);
    if (t >= kb * per) return;
    long long off, j;
    const long long c = minilr_div(t, per, &off);
    const long long i = minilr_div(off, d + wb, &j);
    const float z = minilr_copy_noise(k1, gamma, k0 + c, per, off, anti, 0ULL);
    if (j < d) E[(c * m + i) * d + j] = z; else e[c * m + i] = z;""",
    _es_noise_twin)


# ES forward of a block: v = (pre + bias) + sigma * (pert + e_k), h = act(v); one thread per value.
# pre: (B, m) shared or (kb, B, m); pert indexed k * pk + b * pb + i (the first layer's product is
# (B, kb * m), the others (kb, B, m)).
def _es_combine_twin(pre, pre_shared, pert, pk, pb, e, bias, sigma, h, kb, B, m, act):
    k = np.arange(kb)[:, None, None]
    b = np.arange(B)[None, :, None]
    i = np.arange(m)
    p = pert.reshape(-1)[k * pk + b * pb + i]
    v = pre[None] if pre_shared else pre.reshape(kb, B, m)
    h.reshape(kb, B, m)[...] = _act_twin((v + bias) + sigma * (p + e[:, None, :]), act)


ES_COMBINE = Kernel("es_combine", [
    ("const float*", "pre"), ("int", "pre_shared"), ("const float*", "pert"), ("long long", "pk"),
    ("long long", "pb"), ("const float*", "e"), ("const float*", "bias"), ("const float*", "sigma"),
    ("float*", "h"), ("long long", "kb"), ("int", "B"), ("int", "m"), ("int", "act")],
    """    if (t >= kb * B * m) return;
    long long i, b;
    const long long n = minilr_div(t, m, &i);
    const long long k = minilr_div(n, B, &b);
    const float v = pre_shared ? pre[(long long)b * m + i] : pre[t];
    const float p = __fadd_rn(pert[k * pk + (long long)b * pb + i], e[k * m + i]);
    h[t] = minilr_act(__fadd_rn(__fadd_rn(v, bias[i]), __fmul_rn(sigma[i], p)), act);""",
    _es_combine_twin)


# LR gradient pass (Eq. 1), one thread per value: w = L_n * eps / sigma_i in place over the kept eps;
# then sum_n w (bias) is one reduction and w^T x (weights) one cuBLAS product.
def _lr_scale_twin(w, L, sigma, rows, m):
    w[...] = (L.reshape(rows, 1) * w) / sigma


LR_SCALE = Kernel("lr_scale", [
    ("float*", "w"), ("const float*", "L"), ("const float*", "sigma"), ("long long", "rows"), ("int", "m")],
    """    if (t >= rows * m) return;
    long long i;
    const long long n = minilr_div(t, m, &i);
    w[t] = __fdiv_rn(__fmul_rn(L[n], w[t]), sigma[i]);""",
    _lr_scale_twin)


# First layer (its input is the batch, shared by the copies): A[b, i] = sum_k L[k, b] eps[k, b, i];
# P[c, b, i] sums the copies of part c (parts of `per` copies, in order) and is divided by sigma_i;
# the parts are then summed by one reduction. Exact LR reads eps; ALR ("bits") its packed signs.
def _part_sums(q, parts, per):
    """The twins' partial sums: part ``c`` adds rows ``c * per ...`` of ``q`` one at a time, in
    order, from zero (the order a kernel thread adds them in), in float32."""
    out = np.zeros((parts,) + q.shape[1:], _F32)
    for c in range(parts):
        for n in range(c * per, min(len(q), (c + 1) * per)):
            out[c] = out[c] + q[n]
    return out


def _sum_copies_twin(eps, L, sigma, P, K, B, m, per):
    parts = P.shape[0]
    w = L.reshape(K, B, 1) * eps.reshape(K, B, m)
    P[:] = _part_sums(w, parts, per) / sigma


SUM_COPIES = Kernel("sum_copies", [
    ("const float*", "eps"), ("const float*", "L"), ("const float*", "sigma"), ("float*", "P"),
    ("long long", "K"), ("int", "B"), ("int", "m"), ("long long", "per")],
    """    const long long parts = (K + per - 1) / per;
    if (t >= parts * B * m) return;
    const long long c = t / ((long long)B * m);
    const long long bi = t - c * B * m;
    const int b = (int)(bi / m);
    const int i = (int)(bi - (long long)b * m);
    const long long k1 = min(K, (c + 1) * per);
    float acc = 0.0f;
    for (long long k = c * per; k < k1; k++)
        acc = __fadd_rn(acc, __fmul_rn(L[k * B + b], eps[(k * B + b) * m + i]));
    P[t] = __fdiv_rn(acc, sigma[i]);""",
    _sum_copies_twin)


def _sign_sum_copies_twin(bits, L, P, K, B, m, per):
    s = _bits_twin(bits.reshape(1, -1, m), 0, 0, K * B).reshape(K, B, m)
    Lr = L.reshape(K, B)
    P[:] = _part_sums(np.where(s > 0, Lr[:, :, None], -Lr[:, :, None]), P.shape[0], per)


SIGN_SUM_COPIES = Kernel("sign_sum_copies", [
    ("const unsigned char*", "bits"), ("const float*", "L"), ("float*", "P"), ("long long", "K"),
    ("int", "B"), ("int", "m"), ("long long", "per")],
    """    const long long parts = (K + per - 1) / per;
    if (t >= parts * B * m) return;
    const long long c = t / ((long long)B * m);
    const long long bi = t - c * B * m;
    const int b = (int)(bi / m);
    const int i = (int)(bi - (long long)b * m);
    const long long k1 = min(K, (c + 1) * per);
    float acc = 0.0f;
    for (long long k = c * per; k < k1; k++) {
        const long long n = k * B + b;
        const float l = L[n];
        acc = __fadd_rn(acc, ((bits[(n >> 3) * m + i] >> (n & 7)) & 1) ? l : -l);
    }
    P[t] = acc;""",
    _sign_sum_copies_twin)


# ALR weight gradient (Eq. 3) for rows r0 .. r0 + rows - 1, one thread per (row, column):
# S = L_n s_i(n) and T = [t_j(n) | 1 | 0 ...] (width dw >= d + 1: the ones column gives the bias sum
# sum_n L_n s_i(n) in the same product S^T T). fp32: S float. fp16 ("split"): L is scaled by the power
# of two `scale` and split exactly-ish into Lh = fp16(L scale), Ll = fp16(L scale - Lh); S16 =
# [Lh s | Ll s] (2m columns), T16 holds 0/+-1/1, all exact in fp16, so the fp16 product with fp32
# accumulation (cuBLAS GemmEx) gives (Lh + Ll) s t, within 2^-22 |L| per term of L s t.
def _unpack_pair_twin(sbits, L, tbits, tcode, S, T, half, amax, r0, rows, m, d, dw, nbytes_all):
    s = _bits_twin(sbits.reshape(1, -1, m), 0, r0, r0 + rows)
    t = _bits_twin(tbits.reshape(-1, nbytes_all, d), tcode, r0, r0 + rows)
    Lr = L[r0:r0 + rows].reshape(rows, 1)
    Tv = np.zeros((rows, dw), _F32)
    Tv[:, :d] = t
    Tv[:, d] = 1
    if half:
        Ls = Lr * np.ldexp(_F32(1), _l_exp_twin(amax[0]))
        Lh = Ls.astype(np.float16)
        Ll = (Ls - Lh.astype(_F32)).astype(np.float16)
        S.reshape(rows, 2 * m)[:, :m] = np.where(s > 0, Lh, -Lh)
        S.reshape(rows, 2 * m)[:, m:] = np.where(s > 0, Ll, -Ll)
        T.reshape(rows, dw)[...] = Tv.astype(np.float16)
    else:
        S.reshape(rows, m)[...] = np.where(s > 0, Lr, -Lr)
        T.reshape(rows, dw)[...] = Tv


UNPACK_PAIR = Kernel("unpack_pair", [
    ("const unsigned char*", "sbits"), ("const float*", "L"), ("const unsigned char*", "tbits"),
    ("int", "tcode"), ("void*", "S"), ("void*", "T"), ("int", "half"), ("const float*", "amax"),
    ("long long", "r0"), ("long long", "rows"), ("int", "m"), ("int", "d"), ("int", "dw"),
    ("long long", "nbytes_all")],
    """    const int width = m + dw;
    if (t >= rows * width) return;
    long long c;
    const long long n = minilr_div(t, width, &c);
    const long long r = r0 + n;
    const unsigned int sh = (unsigned int)(r & 7);
    if (c < m) {
        const bool pos = (sbits[(r >> 3) * m + c] >> sh) & 1;
        const float l = L[r];
        if (half) {
            const float ls = __fmul_rn(l, ldexpf(1.0f, minilr_l_exp(amax[0])));
            const unsigned short lh = minilr_f2h(ls);
            const unsigned short ll = minilr_f2h(__fsub_rn(ls, minilr_h2f(lh)));
            unsigned short* S16 = (unsigned short*)S;  // fp16 bits; negation flips the sign bit
            S16[n * 2 * m + c] = pos ? lh : (unsigned short)(lh ^ 0x8000u);
            S16[n * 2 * m + m + c] = pos ? ll : (unsigned short)(ll ^ 0x8000u);
        } else {
            ((float*)S)[n * m + c] = pos ? l : -l;
        }
    } else {
        const int j = c - m;
        float v = 0.0f;
        if (j < d) {
            const unsigned int p = (tbits[(r >> 3) * d + j] >> sh) & 1;
            if (tcode == 0) v = p ? 1.0f : -1.0f;
            else if (tcode == 1) v = p ? 1.0f : 0.0f;
            else v = p ? 1.0f : (((tbits[(nbytes_all + (r >> 3)) * d + j] >> sh) & 1) ? -1.0f : 0.0f);
        } else if (j == d) {
            v = 1.0f;
        }
        if (half) ((unsigned short*)T)[n * dw + j] = minilr_f2h(v); else ((float*)T)[n * dw + j] = v;
    }""",
    _unpack_pair_twin)


# ES/AES gradient, regenerating the noise instead of storing it: thread (part c, i, j) sums over the
# copies of part c (in order) Lk * E_k[i, j] (AES: Lk * sign(E_k[i, j])); with one part it writes
# g (m, d + wb) divided by sigma_i for ES (the reference's order: sum, then divide).
def _es_grad_twin(Lk, sigma, P, k1, gamma, k0, K, m, d, anti, approx, per, divide, wb):
    parts = P.shape[0]
    full = np.empty((K, m, d + wb), _F32)
    E, e = np.empty((K, m, d), _F32), np.empty((K, m), _F32)
    _es_noise_twin(E, e, k1, gamma, k0, K, m, d, anti, wb)
    full[..., :d] = E
    if wb:
        full[..., d] = e
    if approx:
        full = np.where(np.signbit(full), _F32(-1), _F32(1))
    for c in range(parts):
        acc = np.zeros((m, d + wb), _F32)
        for k in range(c * per, min(K, (c + 1) * per)):
            acc = acc + Lk[k] * full[k]
        P[c] = acc / sigma[:, None] if divide else acc


ES_GRAD = Kernel("es_grad", [
    ("const float*", "Lk"), ("const float*", "sigma"), ("float*", "P"), ("unsigned long long", "k1"),
    ("unsigned long long", "gamma"), ("long long", "k0"), ("long long", "K"), ("int", "m"), ("int", "d"),
    ("int", "anti"), ("int", "approx"), ("long long", "per"), ("int", "divide"), ("int", "wb")],
    """    const long long width = (long long)m * (d + wb);
    const long long parts = (K + per - 1) / per;
    if (t >= parts * width) return;
    const long long c = t / width;
    const long long off = t - c * width;
    const int i = (int)(off / (d + wb));
    const long long kend = min(K, (c + 1) * per);
    float acc = 0.0f, prev = 0.0f;
    for (long long k = c * per; k < kend; k++) {
        const long long ka = k0 + k;
        float z;
        if (anti && (ka & 1) && k > c * per) z = -prev;   // the mirror of the copy just drawn
        else z = minilr_copy_noise(k1, gamma, ka, width, off, anti, 0ULL);
        prev = z;
        const float v = approx ? (signbit(z) ? -1.0f : 1.0f) : z;
        acc = __fadd_rn(acc, __fmul_rn(Lk[k], v));
    }
    P[t] = divide ? __fdiv_rn(acc, sigma[i]) : acc;""",
    _es_grad_twin)


# The sigma score of LR/ALR (kept exact, Eq. 1 and 3): P[part, i] = sum over the part's rows of
# L_n (eps_n,i^2 - 1), divided by sigma_i; one thread per (part, neuron), rows in order. eps is read
# (LR keeps it) or, with `regen`, drawn again from its counters (ALR keeps only its signs).
def _sigma_sums_twin(eps, L, sigma, P, rows, m, per, regen, k1, gamma, k0, B, anti, offset):
    if regen:
        n = np.arange(rows)[:, None]
        e = _copy_noise_twin(k1, gamma, k0 + n // B, B * m, (n % B) * m + np.arange(m), anti, offset)
    else:
        e = eps.reshape(rows, m)
    q = L.reshape(rows, 1) * (e * e - _F32(1))
    P[:] = _part_sums(q, P.shape[0], per) / sigma


SIGMA_SUMS = Kernel("sigma_sums", [
    ("const float*", "eps"), ("const float*", "L"), ("const float*", "sigma"), ("float*", "P"),
    ("long long", "rows"), ("int", "m"), ("long long", "per"), ("int", "regen"),
    ("unsigned long long", "k1"), ("unsigned long long", "gamma"), ("long long", "k0"), ("int", "B"),
    ("int", "anti"), ("unsigned long long", "offset")],
    """    long long i;
    const long long part = minilr_div(t, m, &i);
    if (part * per >= rows) return;
    const long long n1 = min(rows, (part + 1) * per);
    long long b;
    long long c = minilr_div(part * per, B, &b);
    float acc = 0.0f;
    for (long long n = part * per; n < n1; n++, b++) {
        if (b == B) { b = 0; c++; }
        const float e = regen ? minilr_copy_noise(k1, gamma, k0 + c, (long long)B * m, b * m + i, anti, offset)
                              : eps[n * m + i];
        acc = __fadd_rn(acc, __fmul_rn(L[n], __fsub_rn(__fmul_rn(e, e), 1.0f)));
    }
    P[t] = __fdiv_rn(acc, sigma[i]);""",
    _sigma_sums_twin)


# The sigma score of ES/AES: P[part, i] = sum over the part's copies of
# Lk (sum_j E_k[i, j]^2 [+ e_k[i]^2] - (d + wb)) / sigma_i, the noise drawn again from its counters.
def _es_sigma_twin(Lk, sigma, P, k1, gamma, k0, K, m, d, anti, per, wb):
    E, e = np.empty((K, m, d), _F32), np.empty((K, m), _F32)
    _es_noise_twin(E, e, k1, gamma, k0, K, m, d, anti, wb)
    sq = np.zeros((K, m), _F32)
    for j in range(d):
        sq = sq + E[:, :, j] * E[:, :, j]
    if wb:
        sq = sq + e * e
    q = Lk.reshape(K, 1) * (sq - _F32(d + wb))
    P[:] = _part_sums(q, P.shape[0], per) / sigma


ES_SIGMA = Kernel("es_sigma", [
    ("const float*", "Lk"), ("const float*", "sigma"), ("float*", "P"), ("unsigned long long", "k1"),
    ("unsigned long long", "gamma"), ("long long", "k0"), ("long long", "K"), ("int", "m"), ("int", "d"),
    ("int", "anti"), ("long long", "per"), ("int", "wb")],
    """    long long i;
    const long long part = minilr_div(t, m, &i);
    if (part * per >= K) return;
    const long long k1_ = min(K, (part + 1) * per), width = (long long)m * (d + wb);
    float acc = 0.0f;
    for (long long k = part * per; k < k1_; k++) {
        float sq = 0.0f;
        for (int j = 0; j < d + wb; j++) {
            const float z = minilr_copy_noise(k1, gamma, k0 + k, width, i * (d + wb) + j, anti, 0ULL);
            sq = __fadd_rn(sq, __fmul_rn(z, z));
        }
        acc = __fadd_rn(acc, __fmul_rn(Lk[k], __fsub_rn(sq, (float)(d + wb))));
    }
    P[t] = __fdiv_rn(acc, sigma[i]);""",
    _es_sigma_twin)


# fp16-split ALR: G = (C[:m] + C[m:]) / scale, split into weights (m, d) and bias (m,).
def _split_finish_twin(C, gW, gb, amax, m, d, dw):
    C2 = C.reshape(2 * m, dw)
    G = (C2[:m] + C2[m:]) * np.ldexp(_F32(1), -_l_exp_twin(amax[0]))
    gW[...] = G[:, :d]
    gb[...] = G[:, d]


SPLIT_FINISH = Kernel("split_finish", [
    ("const float*", "C"), ("float*", "gW"), ("float*", "gb"), ("const float*", "amax"), ("int", "m"),
    ("int", "d"), ("int", "dw")],
    """    if (t >= (long long)m * (d + 1)) return;
    const int i = (int)(t / (d + 1));
    const int j = (int)(t - (long long)i * (d + 1));
    const float inv = ldexpf(1.0f, -minilr_l_exp(amax[0]));
    const float g = __fmul_rn(__fadd_rn(C[(long long)i * dw + j], C[(long long)(m + i) * dw + j]), inv);
    if (j < d) gW[(long long)i * d + j] = g; else gb[i] = g;""",
    _split_finish_twin)


KERNELS = {k.name: k for k in (FILL_NORMAL, PACK_F64, UNPACK_ROWS, UNPACK_ROWS_F64,
                               LR_FORWARD, ALR_FORWARD, PACK, ES_NOISE, ES_COMBINE, LR_SCALE, SUM_COPIES,
                               SIGN_SUM_COPIES, UNPACK_PAIR, ES_GRAD, SPLIT_FINISH, SIGMA_SUMS, ES_SIGMA)}


def full_source() -> str:
    """Every kernel in one translation unit (the tests compile it with NVRTC and, where present,
    nvcc)."""
    parts = [noise_source(), _ACT_C]
    for k in KERNELS.values():
        parts.append(f'extern "C" __global__ void {k.name}({k.signature}) {{\n'
                     "    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
                     f"{k.body}\n}}\n")
    return "\n".join(parts)


# -- the launcher ---------------------------------------------------------------------------------------
class Launcher:
    """Runs a step's device work and counts it: a kernel, a cuBLAS product or a library reduction
    is one launch each. On NumPy arrays the kernels' twins run instead (how the CPU tests count a
    step's launches and check its numbers)."""

    def __init__(self, xp=np):
        self.xp = xp
        self.gpu = xp is not np
        self.count = 0
        self.log = []

    def _tick(self, what):
        self.count += 1
        self.log.append(what)

    def kernel(self, k: Kernel, n_threads, *args):
        """Launch ``k`` over ``n_threads`` items (or run its twin on NumPy arrays). Array arguments
        are checked first (C order, the pointer's element type), here as on the GPU: a raw
        pointer has no shape, so a wrong array would be read wrongly, not refused."""
        self._tick(k.name)
        k.check(args)
        if self.gpu:
            k.launch(n_threads, args)
        else:
            k.twin(*args)

    def matmul(self, a, b, out=None):
        """``a @ b`` (2-D or batched, float32): one cuBLAS call."""
        self._tick("gemm")
        return self.xp.matmul(a, b, out=out)

    def gemm_t_f16(self, S, T):
        """``S^T T`` for float16 ``S`` (rows, p), ``T`` (rows, q): float32 result (p, q), fp32
        accumulation. GPU: cublasGemmEx, fp16 inputs, fp32 output, ``CUBLAS_COMPUTE_32F`` (the
        tensor cores; each fp16 x fp16 product is exact in fp32). Not ``cupy.matmul``: on float16
        operands it returns float16, which would round the sums to 11 bits and overflow past
        65504. NumPy: the same products in float32 (exact: fp16 values are float32 values)."""
        self._tick("gemm_f16")
        rows, p = S.shape
        q = T.shape[1]
        if not self.gpu:
            return S.astype(_F32).T @ T.astype(_F32)
        return _gemm_ex_f16(self.xp, S, T, rows, p, q)

    def reduce(self, name, fn, *args, **kw):
        """A library reduction or elementwise op (``xp.sum`` and friends): one launch."""
        self._tick(name)
        return fn(*args, **kw)


class DryLauncher(Launcher):
    """Counts a step's launches on NumPy without running them: kernels do nothing, products return
    uninitialised arrays of the right shape (untouched pages cost no memory). For counting the
    launches of GPU-sized steps (784-256-256-10, thousands of copies) on a CPU."""

    def kernel(self, k, n_threads, *args):
        self._tick(k.name)

    def matmul(self, a, b, out=None):
        self._tick("gemm")
        if a.ndim == 1:
            shape = b.shape[:-2] + b.shape[-1:]
        elif b.ndim == 1:
            shape = a.shape[:-1]
        else:
            shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        return np.empty(shape, _F32) if out is None else out

    def gemm_t_f16(self, S, T):
        self._tick("gemm_f16")
        return np.empty((S.shape[1], T.shape[1]), _F32)

    def reduce(self, name, fn, *args, **kw):
        self._tick(name)
        a = args[0]
        if name in ("sum", "max", "min") and a.ndim:
            axis = kw.get("axis")
            shape = () if axis is None else tuple(n for i, n in enumerate(a.shape) if i != axis % a.ndim)
            return np.zeros(shape, _F32)
        return np.zeros(np.broadcast_shapes(*[np.shape(x) for x in args]), _F32)


def _gemm_ex_f16(cp, S, T, rows, p, q):
    """C (p, q) float32 = S^T T with S, T float16 row-major, by cublasGemmEx (column-major view:
    C^T (q x p) = T^T (q x rows) S (rows x p))."""
    from cupy.cuda import cublas, device, runtime  # noqa: PLC0415

    C = cp.empty((p, q), dtype=_F32)
    one, zero = np.array(1.0, _F32), np.array(0.0, _F32)  # host scalars: host pointer mode below
    compute = getattr(cublas, "CUBLAS_COMPUTE_32F", 68)
    algo = getattr(cublas, "CUBLAS_GEMM_DEFAULT_TENSOR_OP", 99)
    r16, r32 = getattr(runtime, "CUDA_R_16F", 2), getattr(runtime, "CUDA_R_32F", 0)
    handle = device.get_cublas_handle()
    mode = cublas.getPointerMode(handle)
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    try:
        cublas.gemmEx(handle, cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_T, q, p, rows, one.ctypes.data,
                      T.data.ptr, r16, q, S.data.ptr, r16, p, zero.ctypes.data, C.data.ptr, r32, q,
                      compute, algo)
    finally:
        cublas.setPointerMode(handle, mode)
    return C


# -- the contracts of noise.fill_normal and signbits.pack / unpack on CuPy arrays ----------------------
# (what minilr.engines.cuda.device_kernels() hands to those modules; NumPy arrays run the twins)
def _launcher_for(a):
    if isinstance(a, np.ndarray):
        return Launcher(np)
    import cupy  # noqa: PLC0415

    return Launcher(cupy)


def fill_normal(out, k1, gamma, start):
    """``out`` (C-contiguous float32) = the noise at counters ``start ...`` (noise.fill_normal)."""
    if out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("fill_normal needs a C-contiguous float32 array")
    n = out.size
    if n:
        _launcher_for(out).kernel(FILL_NORMAL, n, out, n, k1, gamma, start)
    return out


def pack(a, out_planes, code, byte0):
    """Pack the rows of ``a`` (rows, w) into ``out_planes`` (1 or 2, bytes, w) from byte row
    ``byte0`` (signbits.pack's layout)."""
    lnch = _launcher_for(a)
    a = lnch.xp.ascontiguousarray(a)
    rows, w = a.shape
    if rows and w:
        k = PACK_F64 if a.dtype == np.float64 else PACK
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float32)
        lnch.kernel(k, -(-rows // 8) * w, a, out_planes, code, rows, w, byte0, out_planes.shape[1])
    return out_planes


def unpack(p_planes, code, r0, r1, scale, out):
    """``out[r - r0, c] = scale[r - r0] * value(r, c)`` for rows ``r0 .. r1 - 1`` (signbits.unpack)."""
    w = out.shape[1]
    if r1 > r0 and w:
        if not out.flags.c_contiguous:
            raise ValueError("unpack needs a C-contiguous out")
        lnch = _launcher_for(out)
        k = UNPACK_ROWS_F64 if out.dtype == np.float64 else UNPACK_ROWS
        scale = lnch.xp.ascontiguousarray(scale, dtype=out.dtype)
        lnch.kernel(k, (r1 - r0) * w, lnch.xp.ascontiguousarray(p_planes), code, r0, r1, scale, out, w,
                    p_planes.shape[1])
    return out
