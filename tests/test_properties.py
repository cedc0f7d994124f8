"""Properties of ``estimate_gradient`` over layer widths, depth, sigma, batch, copies and every
estimator (hypothesis). Each invariance below is *exactly* true; where floating point can only
keep it approximately, the test runs in float64 and says why.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minilr
from minilr import losses
from strategies import batches, estimators, models, noisy_estimators, seeds, sigmas, smooth_activations

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
copies_st = st.integers(1, 6)


def grad(model, x, y, estimator, copies, seed=0, **kw):
    return minilr.estimate_gradient(model, x, y, estimator=estimator, copies=copies, seed=seed, **kw)


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# -- structure ------------------------------------------------------------------------------------
@FAST
@given(data=st.data(), estimator=estimators, copies=copies_st,
       dtype=st.sampled_from([np.float32, np.float64]))
def test_keys_shapes_and_dtype_match_parameters(data, estimator, copies, dtype):
    """The estimate has exactly the keys and shapes of ``model.parameters()`` (``<i>.sigma`` too
    when sigma is learned), the model's dtype (float32 by default), and finite entries."""
    model = data.draw(models(dtype=dtype))
    x, y = data.draw(batches(model))
    g = grad(model, x, y, estimator, copies)
    params = model.parameters()
    assert list(g) == list(params)
    for k, p in params.items():
        assert g[k].shape == p.shape, k
        assert g[k].dtype == np.dtype(dtype), k
        assert isinstance(g[k], np.ndarray)
        assert np.all(np.isfinite(g[k])), k
    assert any(k.endswith(".sigma") for k in g) == any(l.learn_sigma for l in model.layers
                                                        if isinstance(l, minilr.Linear))


def test_default_dtype_is_float32():
    model = minilr.MLP([3, 4, 2], seed=0)
    g = grad(model, np.ones((2, 3)), np.array([0, 1]), "alr", 3)  # float64 input, float32 model
    assert all(v.dtype == np.float32 for v in g.values())
    assert all(p.dtype == np.float32 for p in model.parameters().values())


# -- randomness -----------------------------------------------------------------------------------
@FAST
@given(data=st.data(), estimator=estimators, copies=copies_st, seed=seeds)
def test_same_seed_bit_identical(data, estimator, copies, seed):
    model = data.draw(models())
    x, y = data.draw(batches(model))
    assert_bitwise_equal(grad(model, x, y, estimator, copies, seed), grad(model, x, y, estimator, copies, seed))


@FAST
@given(data=st.data(), estimator=noisy_estimators, copies=copies_st, seed=seeds)
def test_different_seed_different_estimate(data, estimator, copies, seed):
    """Another seed draws other noise. The last layer is always noisy (LR or ES) and its noise
    moves every copy's loss continuously, so the estimates differ with probability one."""
    model = data.draw(models(learn_sigma=False))
    x, y = data.draw(batches(model))
    a = grad(model, x, y, estimator, copies, seed)
    b = grad(model, x, y, estimator, copies, seed + 1)
    assert any(not np.array_equal(a[k], b[k]) for k in a)


@FAST
@given(data=st.data(), estimator=estimators, copies=copies_st, antithetic=st.booleans(),
       baseline=st.booleans())
def test_estimate_does_not_modify_the_model(data, estimator, copies, antithetic, baseline):
    model = data.draw(models())
    x, y = data.draw(batches(model))
    x0, y0 = x.copy(), y.copy()
    before = {i: (l.weight.copy(), l.bias.copy(), l.sigma.copy(), l.learn_sigma)
              for i, l in enumerate(model.layers) if isinstance(l, minilr.Linear)}
    grad(model, x, y, estimator, 2 * copies if antithetic else copies, antithetic=antithetic, baseline=baseline)
    for i, (w, b, s, ls) in before.items():
        layer = model.layers[i]
        np.testing.assert_array_equal(layer.weight, w)
        np.testing.assert_array_equal(layer.bias, b)
        np.testing.assert_array_equal(layer.sigma, s)
        assert layer.learn_sigma == ls and layer.weight.dtype == model.dtype
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


# -- exact identities -----------------------------------------------------------------------------
@FAST
@given(data=st.data(), estimator=noisy_estimators, copies=copies_st, extra=st.integers(0, 3))
def test_chunk_of_all_copies_is_no_chunking(data, estimator, copies, extra):
    """``chunk >= copies`` is one chunk holding every copy, which is what ``chunk=None`` means:
    the same noise streams and the same arithmetic, so the same bits."""
    model = data.draw(models())
    x, y = data.draw(batches(model))
    ref = grad(model, x, y, estimator, copies, chunk=None)
    assert_bitwise_equal(grad(model, x, y, estimator, copies, chunk=copies + extra), ref)


@FAST
@given(data=st.data(), estimator=noisy_estimators, antithetic=st.booleans())
def test_baseline_needs_another_independent_copy(data, estimator, antithetic):
    """The leave-one-out baseline of a copy averages the *other* copies that are independent of it.
    With K=1 (or one antithetic pair, K=2) there are none, so ``baseline`` has no effect."""
    model = data.draw(models())
    x, y = data.draw(batches(model))
    k = 2 if antithetic else 1
    assert_bitwise_equal(grad(model, x, y, estimator, k, antithetic=antithetic, baseline=True),
                         grad(model, x, y, estimator, k, antithetic=antithetic, baseline=False))


@FAST
@given(data=st.data(), copies=copies_st)
def test_baseline_matters_with_two_or_more_copies(data, copies):
    """Counterpart of the test above, so that it can fail: with K >= 2 the baseline changes the
    LR estimate (it subtracts a non-zero, copy-dependent amount from each loss)."""
    model = data.draw(models(learn_sigma=False))
    x, y = data.draw(batches(model))
    k = copies + 1
    a = grad(model, x, y, "lr", k, baseline=True)
    b = grad(model, x, y, "lr", k, baseline=False)
    assert any(not np.array_equal(a[key], b[key]) for key in a)


@FAST
@given(data=st.data(), estimator=estimators, copies=copies_st)
def test_bp_is_the_reference_gradient_in_the_model_dtype(data, estimator, copies):
    """``estimator="bp"`` returns ``reference.gradient`` (float64) cast to the model's dtype, and
    zeros for a learned sigma (the noiseless loss does not depend on sigma). ``copies`` and
    ``seed`` do not matter to it."""
    model = data.draw(models())
    x, y = data.draw(batches(model))
    g = grad(model, x, y, "bp", copies, seed=copies)
    ref = minilr.reference.gradient(model, x, y)
    for k, v in g.items():
        if k.endswith(".sigma"):
            assert not np.any(v)
        else:
            np.testing.assert_array_equal(v, ref[k].astype(np.float32), err_msg=k)
    assert_bitwise_equal(g, grad(model, x, y, "bp", 1, seed=12345))


@FAST
@given(data=st.data(), loss=st.sampled_from(["cross_entropy", "mse"]))
def test_bp_invariant_to_permuting_the_batch(data, loss):
    """The mean loss is a symmetric function of the samples, so permuting samples together with
    their labels leaves the exact gradient unchanged (up to the order of float64 sums)."""
    model = data.draw(models())
    x, y = data.draw(batches(model, max_batch=8))
    if loss == "mse":
        y = np.random.default_rng(0).standard_normal((len(x), model.out_features))
    perm = np.random.default_rng(data.draw(seeds)).permutation(len(x))
    a = minilr.reference.gradient(model, x, y, loss=loss)
    b = minilr.reference.gradient(model, x[perm], y[perm], loss=loss)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-10, atol=1e-12, err_msg=k)


def _ce(out, y, xp):
    return losses.cross_entropy(out, y, xp)


def _ce_times(c):
    return lambda out, y, xp: c * losses.cross_entropy(out, y, xp)


@FAST
@given(data=st.data(), estimator=noisy_estimators, copies=copies_st, baseline=st.booleans())
def test_named_and_callable_loss_agree(data, estimator, copies, baseline):
    """``loss="cross_entropy"`` and the same function passed as a callable are one computation."""
    model = data.draw(models())
    x, y = data.draw(batches(model))
    assert_bitwise_equal(grad(model, x, y, estimator, copies, loss=_ce, baseline=baseline),
                         grad(model, x, y, estimator, copies, baseline=baseline))


@FAST
@given(data=st.data(), estimator=noisy_estimators, copies=copies_st, baseline=st.booleans(),
       power=st.integers(-3, 3))
def test_estimate_is_linear_in_the_loss_exactly_for_powers_of_two(data, estimator, copies, baseline, power):
    """Every estimator is linear in the (centred) losses, and the baseline is too. Multiplying by
    ``2**p`` is exact in binary floating point and commutes with every rounding (no overflow or
    underflow at these magnitudes), so scaling the loss by ``2**p`` scales the estimate by ``2**p``
    bit for bit."""
    model = data.draw(models())
    x, y = data.draw(batches(model))
    c = 2.0 ** power
    a = grad(model, x, y, estimator, copies, loss=_ce, baseline=baseline)
    b = grad(model, x, y, estimator, copies, loss=_ce_times(c), baseline=baseline)
    for k in a:
        np.testing.assert_array_equal(b[k], (a[k] * np.float32(c)).astype(a[k].dtype), err_msg=k)


@FAST
@given(data=st.data(), estimator=noisy_estimators, copies=st.integers(2, 6), antithetic=st.booleans(),
       shift=st.floats(-100, 100))
def test_baseline_makes_the_estimate_shift_invariant(data, estimator, copies, antithetic, shift):
    """With the leave-one-out baseline, copy k's centred loss is ``L_k - mean(L_j, j independent
    of k)``: a constant added to every loss cancels. Exactly true in real arithmetic; float64
    keeps it to rounding (~1e-16 relative to the shift), hence the tolerance."""
    model = data.draw(models(dtype=np.float64))
    x, y = data.draw(batches(model))
    k = 2 * copies if antithetic else copies
    shifted = lambda out, yy, xp: losses.cross_entropy(out, yy, xp) + shift
    a = grad(model, x, y, estimator, k, loss=_ce, antithetic=antithetic)
    b = grad(model, x, y, estimator, k, loss=shifted, antithetic=antithetic)
    scale = max(1.0, abs(shift)) * max(1.0, max(float(np.abs(v).max()) for v in a.values()))
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-9 * scale, err_msg=key)


@FAST
@given(data=st.data(), estimator=noisy_estimators, copies=st.integers(2, 6), antithetic=st.booleans())
def test_constant_loss_has_zero_estimate_with_baseline(data, estimator, copies, antithetic):
    """A loss that ignores the output gives equal losses for all copies, so every centred loss is
    ``1 - (K - 1) / (K - 1) = 0`` exactly (small integers are exact in floating point): the
    estimate is exactly zero. Without the baseline (and without antithetic pairs, whose mirrored
    scores cancel) it is the mean score: with Gaussian scores (LR, ES, Hybrid) that is non-zero with
    probability one; with sign scores (+-1) an even number of them can cancel exactly (ALR, one
    layer, 4 copies, batch 1 does), so those are not asserted non-zero."""
    model = data.draw(models())
    x, y = data.draw(batches(model))
    k = 2 * copies if antithetic else copies
    ones = lambda out, yy, xp: xp.ones(out.shape[:-1], out.dtype)
    g = grad(model, x, y, estimator, k, loss=ones, antithetic=antithetic)
    for key, v in g.items():
        assert not np.any(v), key
    if not antithetic and estimator in ("lr", "es", "hybrid"):
        g0 = grad(model, x, y, estimator, k, loss=ones, baseline=False)
        assert any(np.any(v) for v in g0.values())


@FAST
@given(data=st.data(), approx=st.booleans(), copies=copies_st, antithetic=st.booleans())
def test_hybrid_without_es_layers_is_lr(data, approx, copies, antithetic):
    """``es_layers=0`` leaves every layer to LR, with the same per-layer noise streams: the hybrid
    (A-hybrid) is then LR (ALR), bit for bit."""
    model = data.draw(models())
    x, y = data.draw(batches(model))
    k = 2 * copies if antithetic else copies
    hy, lr = ("a-hybrid", "alr") if approx else ("hybrid", "lr")
    assert_bitwise_equal(grad(model, x, y, hy, k, es_layers=0, antithetic=antithetic),
                         grad(model, x, y, lr, k, antithetic=antithetic))


@FAST
@given(data=st.data(), approx=st.booleans(), copies=copies_st, es_layers=st.integers(1, 4))
def test_hybrid_always_leaves_the_last_layer_to_lr(data, approx, copies, es_layers):
    """With a single Linear layer there is only the last layer, which the hybrids always give to
    LR: by default hybrid == lr and a-hybrid == alr, and asking for ES layers there is a ValueError
    naming ``es_layers`` (issue 14: never silently clamped)."""
    model = data.draw(models(min_layers=1, max_layers=1))
    x, y = data.draw(batches(model))
    hy, lr = ("a-hybrid", "alr") if approx else ("hybrid", "lr")
    assert_bitwise_equal(grad(model, x, y, hy, copies), grad(model, x, y, lr, copies))
    with pytest.raises(ValueError, match="es_layers"):
        grad(model, x, y, hy, copies, es_layers=es_layers)


@FAST
@given(data=st.data(), estimator=st.sampled_from(["es", "aes"]), copies=copies_st, baseline=st.booleans())
def test_es_invariant_to_duplicating_the_batch(data, estimator, copies, baseline):
    """ES draws one weight perturbation per copy, shared by the whole batch (its shape does not
    depend on the batch), so the batch ``[x; x]`` sees the same noise as ``x``; every per-copy
    loss sum doubles and so does the number of rows: the mean estimate is unchanged. Exact in real
    arithmetic; float64 keeps it to the rounding of the reordered sums. (LR draws noise per row,
    so it has no such invariance.)"""
    model = data.draw(models(dtype=np.float64))
    x, y = data.draw(batches(model))
    a = grad(model, x, y, estimator, copies, baseline=baseline)
    b = grad(model, np.concatenate([x, x]), np.concatenate([y, y]), estimator, copies, baseline=baseline)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-9, atol=1e-12 * max(1.0, float(np.abs(a[k]).max())),
                                   err_msg=k)


@FAST
@given(data=st.data(), estimator=st.sampled_from(["alr", "aes", "a-hybrid"]), copies=copies_st)
def test_sign_estimates_are_bounded_by_the_mean_loss(data, estimator, copies):
    """The sign approximations replace ``x_j eps_i / sigma_i`` (or ``E_ij / sigma_i``) by products
    of signs in {-1, 0, 1} (Eq. 3), so without a baseline every weight and bias entry is a mean of
    ``+-L_n`` or 0: ``|g| <= mean_n L_n`` (cross-entropy losses are >= 0). The losses of the very
    same forward pass are recorded by a callable loss. LR, which divides by sigma, has no such bound."""
    model = data.draw(models(learn_sigma=False))
    x, y = data.draw(batches(model))
    seen = []

    def recording(out, yy, xp):
        value = losses.cross_entropy(out, yy, xp)
        seen.append(np.array(value, dtype=np.float64))
        return value

    g = grad(model, x, y, estimator, copies, loss=recording, baseline=False)
    mean_loss = float(np.concatenate([v.ravel() for v in seen]).mean())
    for k, v in g.items():
        assert np.all(np.abs(v.astype(np.float64)) <= mean_loss * (1 + 1e-5) + 1e-7), k


@pytest.mark.parametrize("estimator", ["lr", "alr", "es", "aes", "hybrid", "a-hybrid"])
def test_learned_sigma_gets_a_gradient(estimator):
    """With learn_sigma the sigma entries are estimated (Eq. 1, second line), not left at zero."""
    model = minilr.MLP([3, 4, 2], sigma=0.3, seed=1, learn_sigma=True)
    x = np.random.default_rng(0).standard_normal((4, 3))
    g = grad(model, x, np.array([0, 1, 1, 0]), estimator, 8)
    assert all(np.any(g[k]) for k in g if k.endswith(".sigma"))


@settings(max_examples=15, deadline=None)
@given(sigma=sigmas, act=smooth_activations, seed=seeds)
def test_same_seed_same_model(sigma, act, seed):
    """Model construction is a pure function of its arguments (weights from ``seed``)."""
    a = minilr.MLP([3, 4, 2], activation=act, sigma=sigma, seed=seed)
    b = minilr.MLP([3, 4, 2], activation=act, sigma=sigma, seed=seed)
    c = minilr.MLP([3, 4, 2], activation=act, sigma=sigma, seed=seed + 1)
    assert_bitwise_equal(a.parameters(), b.parameters())
    assert not np.array_equal(a.parameters()["0.weight"], c.parameters()["0.weight"])


@FAST
@given(data=st.data(), estimator=noisy_estimators, copies=st.integers(1, 4), chunk=st.integers(1, 4),
       antithetic=st.booleans())
def test_without_baseline_chunking_changes_no_noise(data, estimator, copies, chunk, antithetic):
    """Copy ``k``'s noise depends only on the seed, the layer and ``k`` (counter-based streams), so
    processing copies in chunks changes no noise value. Without a baseline (which is per chunk) the
    estimate is then the same sum, only added up in another order: equal up to float64 rounding."""
    model = data.draw(models(dtype=np.float64))
    x, y = data.draw(batches(model))
    k, c = (2 * copies, 2 * chunk) if antithetic else (copies, chunk)
    a = grad(model, x, y, estimator, k, baseline=False, antithetic=antithetic)
    b = grad(model, x, y, estimator, k, baseline=False, antithetic=antithetic, chunk=c)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-9, atol=1e-12 * max(1.0, float(np.abs(a[key]).max())),
                                   err_msg=key)
