"""Sign packing (minilr.signbits): the Numba and CUDA kernels against the np.packbits reference.

Every comparison is exact: packing is bit-for-bit, and the packed gradient is exact whenever the
losses are small integers (every partial sum is then an integer below 2^24, which float32 holds
exactly, so no summation order can change it).
"""
from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minilr
import minilr.engines.cpu.threads
from minilr import signbits as sb

from strategies import kinds, rows, seeds, signed_array, widths

EXPECT = {  # value read back for inputs (+x, +0.0, -0.0, -x)
    "pm1": (1, 1, -1, -1),
    "01": (1, 0, 0, 0),
    "sign": (1, 0, 0, -1),
}


def test_codes_read_back_as_documented():
    a = np.array([[2.5], [0.0], [-0.0], [-1.0]], np.float32)
    for kind, want in EXPECT.items():
        assert sb.unpack(sb.pack(a, kind), kind, 0, 4)[:, 0].tolist() == list(want)


@settings(deadline=None, max_examples=60)
@given(seeds, rows, widths, kinds)
def test_pack_equals_reference_and_round_trips(seed, n, w, kind):
    a = signed_array(seed, (n, w))
    p = sb.pack(a, kind)
    ref = sb.pack_reference(a, kind)
    assert p.dtype == np.uint8 and p.shape == ref.shape
    np.testing.assert_array_equal(p, ref)
    back = sb.unpack(p, kind, 0, n)
    np.testing.assert_array_equal(back, sb.unpack_reference(ref, kind, n))
    want = {"pm1": np.where(np.signbit(a), -1, 1), "01": (a > 0) * 1, "sign": np.sign(a)}[kind]
    np.testing.assert_array_equal(back, want.astype(np.float32))


@settings(deadline=None, max_examples=40)
@given(seeds, st.integers(1, 12), st.integers(1, 30), widths, kinds)
def test_streamed_blocks_pack_like_one_call(seed, blocks8, n, w, kind):
    """Packing rows block by block (blocks of a multiple of 8 rows, the last one ragged)."""
    a = signed_array(seed, (n, w))
    out = sb._empty(kind, n, w, np)
    step = 8 * blocks8
    for r0 in range(0, n, step):
        sb.pack(a[r0:r0 + step], kind, out=out, row0=r0)
    np.testing.assert_array_equal(out, sb.pack_reference(a, kind))


@settings(deadline=None, max_examples=40)
@given(seeds, rows, widths, kinds, st.integers(0, 3))
def test_unpack_of_a_row_range_with_scale(seed, n, w, kind, start8):
    a = signed_array(seed, (n, w))
    p = sb.pack(a, kind)
    r0 = min(8 * start8, (n - 1) // 8 * 8)
    scale = np.random.default_rng(seed).standard_normal(n - r0).astype(np.float32)
    got = sb.unpack(p, kind, r0, n, scale=scale)
    np.testing.assert_array_equal(got, scale[:, None] * sb.unpack_reference(p, kind, n)[r0:])


@settings(deadline=None, max_examples=60)
@given(seeds, rows, widths, widths, kinds, kinds, st.sampled_from([8, 16, 24, 1024]))
def test_packed_gradient_equals_reference_exactly(seed, n, m, d, s_kind, t_kind, block):
    rng = np.random.default_rng(seed)
    s = sb.pack(signed_array(seed, (n, m)), s_kind)
    t = sb.pack(signed_array(seed + 1, (n, d)), t_kind)
    L = rng.integers(-1000, 1001, n).astype(np.float32)  # |partial sums| < 2^24: exact in float32
    G, g = sb.packed_gradient(L, s, s_kind, t, t_kind, n, block_rows=block)
    ref = sb.packed_gradient_reference(L, s, s_kind, t, t_kind, n)
    np.testing.assert_array_equal(G, ref.astype(np.float32))
    np.testing.assert_array_equal(g, (L[:, None] * sb.unpack_reference(s, s_kind, n)).sum(axis=0))


def test_packed_gradient_real_losses_float64():
    """Real-valued losses: float64 accumulation agrees with the reference to rounding."""
    rng = np.random.default_rng(3)
    n, m, d = 1003, 37, 70
    s = sb.pack(rng.standard_normal((n, m)), "pm1")
    t = sb.pack(np.maximum(rng.standard_normal((n, d)), 0), "01")
    L = rng.standard_normal(n)
    G, _ = sb.packed_gradient(L, s, "pm1", t, "01", n, dtype=np.float64)
    np.testing.assert_allclose(G, sb.packed_gradient_reference(L, s, "pm1", t, "01", n), rtol=0, atol=1e-11)


def test_misaligned_rows_and_unknown_kind_raise():
    a = np.ones((16, 3), np.float32)
    with pytest.raises(ValueError, match="row0"):
        sb.pack(a, "pm1", out=sb._empty("pm1", 32, 3, np), row0=4)
    with pytest.raises(ValueError, match="r0"):
        sb.unpack(sb.pack(a, "pm1"), "pm1", 3, 16)
    with pytest.raises(ValueError, match="kind"):
        sb.pack(a, "int8")


def test_alr_records_keep_only_bits():
    """After an ALR forward pass no record keeps a float array that grows with the copies: only
    bits (and the shared batch's signs, B rows); a ReLU input is kept in 1 bit per row."""
    from minilr.backend import Backend, seed_sequence
    from minilr.estimators import ESTIMATORS, Plan, Settings

    model = minilr.MLP([6, 9, 7, 3], seed=0)
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1])
    for engine in ("cpu", "reference"):
        for est in ("alr", "a-hybrid"):
            s = Settings(est, 40, es_layers=1)
            plan = Plan.make(model, x, s, seed_sequence(0), ESTIMATORS[est])
            L, sites = Backend("numpy", engine).engine.forward(plan, x, y, range(40))
            for site in sites:
                for rec in site.records.values():
                    for v in rec if isinstance(rec, tuple) else ():
                        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                            assert v.size < 40 * 5, (engine, est, type(site).__name__, v.shape)
                for v in site.shared.values():
                    assert v.shape[0] == 5
            lr_site = sites[1]
            bits = [rec for rec in lr_site.records.values()]
            assert all(rec[5] == "01" and rec[4].dtype == np.uint8 for rec in bits)  # ReLU input
            assert sum(rec[0] for rec in bits) == 40
            assert sum(rec[4].shape[0] for rec in bits) == sum(-(-rec[0] * 5 // 8) for rec in bits)


@pytest.mark.gpu
@pytest.mark.skipif(not minilr.cupy_available(), reason="needs CuPy and a CUDA GPU")
def test_gpu_kernels_match_reference():
    import cupy as cp

    rng = np.random.default_rng(1)
    n, m, d = 1003, 70, 33
    a = signed_array(1, (n, m))
    for kind in sb.KINDS:
        p = sb.pack(cp.asarray(a), kind, xp=cp)
        np.testing.assert_array_equal(cp.asnumpy(p), sb.pack_reference(a, kind))
    s = sb.pack(cp.asarray(a), "pm1", xp=cp)
    t = sb.pack(cp.asarray(signed_array(2, (n, d))), "sign", xp=cp)
    L = rng.integers(-1000, 1001, n).astype(np.float32)
    G, _ = sb.packed_gradient(cp.asarray(L), s, "pm1", t, "sign", n, xp=cp)
    ref = sb.packed_gradient_reference(L, cp.asnumpy(s), "pm1", cp.asnumpy(t), "sign", n)
    np.testing.assert_array_equal(cp.asnumpy(G), ref.astype(np.float32))


@pytest.mark.gpu
@pytest.mark.skipif(not minilr.cupy_available(), reason="needs CuPy and a CUDA GPU")
def test_gpu_estimates_are_deterministic_per_seed():
    model = minilr.MLP([8, 16, 3], seed=0)
    x = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    for est in ("lr", "alr", "aes", "a-hybrid"):
        g1 = minilr.estimate_gradient(model, x, y, estimator=est, copies=64, seed=3, backend="cupy")
        g2 = minilr.estimate_gradient(model, x, y, estimator=est, copies=64, seed=3, backend="cupy")
        for k in g1:
            np.testing.assert_array_equal(g1[k], g2[k])


@settings(deadline=None, max_examples=60)
@given(seeds, rows, widths, widths, kinds, st.sampled_from(["01", "sign"]), st.integers(1, 3),
       st.sampled_from(["rows", "s", "t"]), st.sampled_from([64, 1000, 1 << 16]))
def test_packed_gradient_block_parts_add_up_exactly(seed, n, m, d, s_kind, t_kind, parts, split,
                                                    floats):
    """The fast path's parts (ranges of rows, of s's columns or of t's columns), each into its share
    of G and g, add up to the reference exactly (integer losses), with sgemm or NumPy products."""
    from minilr.engines.cpu import kernels, signs

    rng = np.random.default_rng(seed)
    s = sb.pack(signed_array(seed, (n, m)), s_kind)
    t = sb.pack(signed_array(seed + 1, (n, d)), t_kind)
    L = rng.integers(-1000, 1001, n).astype(np.float32)
    ref = sb.packed_gradient_reference(L, s, s_kind, t, t_kind, n).astype(np.float32)
    gref = (L[:, None] * sb.unpack_reference(s, s_kind, n)).sum(axis=0)
    for gemm in (None, kernels.gemm_acc):
        G, g = np.zeros((m, d), np.float32), np.zeros(m, np.float32)
        if split == "rows":
            cuts = [(r0 * 8, min(n, r1 * 8), 0, m, 0, d) for r0, r1 in
                    minilr.engines.cpu.threads.split(-(-n // 8), parts)]
        elif split == "s":
            cuts = [(0, n, i0, i1, 0, d) for i0, i1 in minilr.engines.cpu.threads.split(m, parts)]
        else:
            cuts = [(0, n, 0, m, j0, j1) for j0, j1 in minilr.engines.cpu.threads.split(d, parts)]
        for cut in cuts:
            signs.packed_gradient_block(L, s, s_kind, t, t_kind, G=G, g=g, rows=cut[:2], cols=cut[2:], gemm=gemm,
                                        block_floats=floats)
        np.testing.assert_array_equal(G, ref)
        np.testing.assert_array_equal(g, gref)


@settings(deadline=None, max_examples=40)
@given(seeds, st.integers(1, 9), st.integers(1, 40), widths, st.integers(1, 3))
def test_sign_sum_copies_from_bits(seed, B, K, m, parts):
    """The first layer's A[b] = sum_k L sign(eps) read from the bits, by column ranges: exact."""
    from minilr.engines.cpu import signs

    rng = np.random.default_rng(seed)
    a = signed_array(seed, (K * B, m))
    s = sb.pack(a, "pm1")
    L = rng.integers(-1000, 1001, K * B).astype(np.float32)
    A = np.zeros((B, m), np.float32)
    for c0, c1 in minilr.engines.cpu.threads.split(m, parts):
        signs.sign_sum_copies(s, L, B, A, c0, c1)
    want = (L[:, None] * sb.unpack_reference(s, "pm1", K * B)).reshape(K, B, m).sum(axis=0)
    np.testing.assert_array_equal(A, want)
