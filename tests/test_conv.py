"""Convolutional layers, pooling, normalisation, residual blocks: reference, estimators, shapes.

Reference (the oracle) against central finite differences in float64, per layer: parameter
gradients and the input gradient (through a random linear read-out, so ``dx`` is checked whole).

Estimators on one ``Conv1d`` with squared loss. Write ``U`` for the unfolded input (im2col, one row
``U_p`` of ``C_in * k`` numbers per output position ``p``) and ``u_ip = W_i . U_p + b_i - y_ip`` for
the noiseless residual of channel ``i`` at position ``p``. The loss is
``L = 0.5 sum_{i,p} (u_ip + n_ip)^2`` with the noise ``n`` of the site:

* LR: ``n_ip = sigma_i eps_ip``, independent per position, so ``E[L] = noiseless + 0.5 P ||sigma||^2``:
  LR is unbiased for the exact weight and bias gradient, and ``dE[L]/dsigma_i = P sigma_i``.
* ES: ``n_ip = sigma_i (E_i . U_p + e_i)``, one ``E`` for all positions (a weight perturbation);
  still zero-mean and independent of ``W``, so again unbiased for the exact gradient, and
  ``dE[L]/dsigma_i = sigma_i mean_b sum_p (||U_bp||^2 + 1)``.
* ALR: only ``n_ip`` correlates with ``sign(eps_ip)``: ``E[L sign(eps_ip)] = sqrt(2/pi) sigma_i u_ip``,
  so ``E[g_W[i, j]] = sqrt(2/pi) sigma_i mean_b sum_p u_ip sign(U_pj)`` (Eq. 3 summed over positions).
* AES: ``E[L sign(E_ij)] = sqrt(2/pi) sigma_i sum_p u_ip U_pj``: ``sqrt(2/pi) sigma_i`` times the exact.

Each target is tested as in tests/test_statistics.py (``assert_unbiased``: every component within a
Bonferroni z of its target, false-failure probability 1e-5 per test, and a power check that a 25 %
bias would be caught).

Two sites (Conv1d -> Flatten -> Linear, identity in between) check the general path's chaining and
the hybrid: the first site's noise reaches the loss through ``W2``. With ``f = (i, p)`` the
flattened feature, LR's noise on ``f`` is independent with variance ``sigma_i^2``, so the target
for ``W2`` gains ``W2[o, f] sigma_i^2``; ES's noise (the hybrid's first layer) has covariance
``sigma_i^2 (U_p . U_p' + 1)`` between ``(i, p)`` and ``(i, p')``, so the ``W2`` target gains
``sigma_i^2 mean_b sum_p' W2[o, (i, p')] (U_bp . U_bp' + 1)``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import minilr
from minilr import reference
from strategies import float_record_signs, lr_records

from test_statistics import SQRT_2_PI, assert_unbiased, z_for

F64 = np.float64


# -- reference vs finite differences -------------------------------------------------------------
def _fd_check(layer, x, rng, h=1e-6, rtol=1e-6, atol=1e-8):
    """Parameters and input of one layer: exact backward vs central differences of <r, f(x)>."""
    out = reference.forward64(layer, x)
    r = rng.standard_normal(out.shape)
    dx, grads = reference.backward(layer, x, r)

    def obj():
        return float((reference.forward64(layer, x) * r).sum())

    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        up = obj()
        x[idx] = old - h
        dn = obj()
        x[idx] = old
        num[idx] = (up - dn) / (2 * h)
    np.testing.assert_allclose(dx, num, rtol=rtol, atol=atol, err_msg="dx")
    for name, g in grads.items():
        *path, attr = name.split(".")
        obj_ = layer
        for part in path:
            obj_ = obj_[int(part)] if part.isdigit() else getattr(obj_, part)
        p = getattr(obj_, attr)
        numg = np.zeros(p.shape)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            up = obj()
            p[idx] = old - h
            dn = obj()
            p[idx] = old
            numg[idx] = (up - dn) / (2 * h)
        np.testing.assert_allclose(g, numg, rtol=rtol, atol=atol, err_msg=name)
    return grads


def _built(layer, in_shape, seed=0):
    """The layer initialised inside a float64 model (weights and sigma drawn)."""
    minilr.Sequential([layer], seed=seed, dtype=F64, input_shape=in_shape)
    return layer


LAYERS = [
    ("conv1d", lambda: minilr.Conv1d(2, 3, 3), (2, 7)),
    ("conv1d stride padding", lambda: minilr.Conv1d(2, 3, 4, stride=2, padding=2), (2, 9)),
    ("conv2d", lambda: minilr.Conv2d(2, 3, 3, padding=1), (2, 5, 4)),
    ("conv2d stride pair", lambda: minilr.Conv2d(1, 2, (2, 3), stride=(2, 1), padding=(1, 0)), (1, 6, 5)),
    ("maxpool1d", lambda: minilr.MaxPool1d(2), (3, 8)),
    ("maxpool1d overlapping odd", lambda: minilr.MaxPool1d(3, stride=2), (2, 9)),
    ("maxpool2d", lambda: minilr.MaxPool2d(2), (2, 4, 6)),
    ("avgpool1d", lambda: minilr.AvgPool1d(2), (3, 7)),
    ("avgpool2d overlapping", lambda: minilr.AvgPool2d((2, 3), stride=1), (2, 4, 5)),
    ("flatten", lambda: minilr.Flatten(), (2, 3, 2)),
    ("global avg pool", lambda: minilr.GlobalAvgPool(), (3, 2, 4)),
    ("groupnorm 1", lambda: minilr.GroupNorm(1), (4, 5)),
    ("groupnorm 2", lambda: minilr.GroupNorm(2), (4, 2, 3)),
    ("residual identity", lambda: minilr.Residual([minilr.Conv1d(3, 3, 3, padding=1), "tanh",
                                                   minilr.Conv1d(3, 3, 3, padding=1)]), (3, 6)),
    ("residual conv skip", lambda: minilr.Residual([minilr.Conv2d(2, 3, 3, padding=1), minilr.GroupNorm(1),
                                                    "relu", minilr.Conv2d(3, 3, 1)],
                                                   skip=minilr.Conv2d(2, 3, 1)), (2, 4, 4)),
]


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[l[0] for l in LAYERS])
def test_reference_matches_finite_differences(name, make, shape):
    rng = np.random.default_rng(1)
    layer = _built(make(), shape)
    # continuous values, no ties (max pooling's derivative is defined away from ties)
    x = rng.standard_normal((3,) + shape)
    grads = _fd_check(layer, x, rng)
    if layer.sites or getattr(layer, "children", ()):
        assert grads, "a layer with parameters must return their gradients"


def test_reference_whole_model_matches_finite_differences():
    """A small ResNet-shaped stack, gradient of the mean cross-entropy by hand vs central differences."""
    rng = np.random.default_rng(2)
    model = minilr.Sequential([
        minilr.Conv1d(1, 4, 3, padding=1), "relu",
        minilr.Residual([minilr.Conv1d(4, 4, 3, padding=1), minilr.GroupNorm(2), "relu",
                         minilr.Conv1d(4, 4, 3, padding=1)]), "relu", minilr.AvgPool1d(2),
        minilr.Residual([minilr.Conv1d(4, 6, 3, padding=1), "relu"], skip=minilr.Conv1d(4, 6, 1)),
        minilr.MaxPool1d(2), minilr.Flatten(), minilr.Linear(12, 3)], seed=0, dtype=F64)
    x = rng.standard_normal((4, 1, 8))
    y = np.array([0, 1, 2, 1])
    g = reference.gradient(model, x, y)
    assert list(g) == list(model.parameters())
    for k, p in model.parameters().items():
        for idx in list(np.ndindex(p.shape))[:6]:
            old = p[idx]
            p[idx] = old + 1e-6
            up = reference.loss(model, x, y)
            p[idx] = old - 1e-6
            dn = reference.loss(model, x, y)
            p[idx] = old
            assert abs((up - dn) / 2e-6 - g[k][idx]) < 1e-7 * max(1.0, abs(g[k][idx])), k


def test_feedback_alignment_is_backprop_when_the_feedback_is_the_weights():
    """FA with B = W is backprop exactly; with random B the read-out's gradient is still BP's
    (nothing is sent back through it) while the earlier layers' differ."""
    rng = np.random.default_rng(5)
    model = minilr.resnet5((1, 16), width=4, seed=0, dtype=F64)
    x = rng.standard_normal((3, 1, 16))
    y = np.array([1, 2, 3])
    g = reference.gradient(model, x, y)
    own = {k: v.copy() for k, v in model.parameters().items() if k.endswith("weight")}
    fa = reference.feedback_alignment(model, x, y, own)
    for k in g:
        np.testing.assert_allclose(fa[k], g[k], rtol=1e-12, atol=1e-15)
    fb = reference.feedback_matrices(model, seed=1)
    assert {k: v.shape for k, v in fb.items()} == {k: v.shape for k, v in own.items()}
    fa = reference.feedback_alignment(model, x, y, fb)
    last = [k for k in g if k.endswith("weight")][-1]
    np.testing.assert_allclose(fa[last], g[last], rtol=1e-12)
    assert not np.allclose(fa["0.weight"], g["0.weight"])


@pytest.mark.parametrize("builder,n_sites", [(minilr.cnn, 4), (minilr.resnet5, 5), (minilr.resnet9, 9)])
@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8)])
def test_builders(builder, n_sites, shape):
    model = builder(shape, seed=0)
    assert len(model.noise_sites()) == n_sites  # ResNet-5 / -9: 5 / 9 weight layers
    x = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    assert model.forward(x).shape == (2, 10)
    assert model.out_features == 10
    g = minilr.estimate_gradient(model, x, np.array([0, 1]), estimator="alr", copies=8)
    assert {k: v.shape for k, v in g.items()} == {k: v.shape for k, v in model.parameters().items()}
    assert builder(shape, seed=0).parameters()["0.weight"].tobytes() == model.parameters()["0.weight"].tobytes()


# -- estimators on one Conv1d --------------------------------------------------------------------------
def conv_problem(learn_sigma=False, seed=0):
    """Conv1d(2 -> 2, k=3, stride 2, padding 1) on length 5 (3 positions), mse on all outputs."""
    rng = np.random.default_rng(seed)
    conv = minilr.Conv1d(2, 2, 3, stride=2, padding=1)
    model = minilr.Sequential([conv, minilr.Flatten()], sigma=0.5, seed=seed, dtype=F64,
                              learn_sigma=learn_sigma, input_shape=(2, 5))
    conv.sigma = np.array([0.4, 0.7])
    x = rng.standard_normal((4, 2, 5))
    x[0, 0, 1] = 0.0  # sign(0) = 0 matters for ALR's target
    y = rng.standard_normal((4, 6))
    U, _ = conv.unfold(x, np)  # (B, P, d)
    u = (model.forward(x) - y).reshape(4, 2, 3)  # (B, m, P)
    return model, x, y, U, u


def _repeat(model, x, y, estimator, copies, reps, **kw):
    return np.stack([np.concatenate([np.ravel(v) for v in minilr.estimate_gradient(
        model, x, y, estimator=estimator, copies=copies, seed=5000 + r, loss="mse", **kw).values()])
        for r in range(reps)])


@pytest.mark.parametrize("estimator", ["lr", "es", "alr", "aes"])
def test_conv_estimators_match_their_closed_form(estimator):
    model, x, y, U, u = conv_problem(learn_sigma=True)
    conv = model.layers[0]
    s = conv.sigma
    B = len(x)
    exact_w = np.einsum("bip,bpd->id", u, U) / B
    exact_b = u.sum(axis=2).mean(axis=0)
    P = U.shape[1]
    if estimator in ("lr", "alr"):
        s_target = P * s
    else:
        s_target = s * np.mean(((U * U).sum(axis=2) + 1).sum(axis=1))
    if estimator == "lr" or estimator == "es":
        w, b = exact_w, exact_b
    elif estimator == "alr":
        w = SQRT_2_PI * s[:, None] * np.einsum("bip,bpd->id", u, np.sign(U)) / B
        b = SQRT_2_PI * s * exact_b
    else:
        w, b = SQRT_2_PI * s[:, None] * exact_w, SQRT_2_PI * s * exact_b
    target = np.concatenate([w.ravel(), b, s_target])
    reps = 1500 if estimator in ("lr", "alr") else 4000
    samples = _repeat(model, x, y, estimator, copies=4, reps=reps)
    se = assert_unbiased(samples, target, f"conv {estimator}")
    if estimator in ("alr", "aes"):  # the test tells the sign target from the exact gradient
        exact = np.concatenate([exact_w.ravel(), exact_b, s_target])
        assert np.max(np.abs(exact - target) / se) > 3 * z_for(len(target))


def two_site_problem(seed=1):
    rng = np.random.default_rng(seed)
    conv = minilr.Conv1d(2, 2, 3, stride=2, padding=1)
    lin = minilr.Linear(6, 2)
    model = minilr.Sequential([conv, minilr.Flatten(), lin], sigma=0.3, seed=seed, dtype=F64)
    conv.sigma = np.array([0.3, 0.5])
    x = rng.standard_normal((4, 2, 5))
    y = rng.standard_normal((4, 2))
    return model, x, y


@pytest.mark.parametrize("estimator", ["lr", "hybrid"])
def test_two_sites_unbiased_for_the_smoothed_loss(estimator):
    model, x, y = two_site_problem()
    conv, lin = model.layers[0], model.layers[2]
    g = reference.gradient(model, x, y, loss="mse")
    s1 = conv.sigma
    W2 = lin.weight.reshape(2, 2, 3)  # (o, i, p): Flatten orders features channel-major
    if estimator == "lr":
        extra = W2 * (s1 ** 2)[None, :, None]
    else:  # ES on the conv (hybrid's first site): noise correlated across positions
        U, _ = conv.unfold(x, np)
        C = np.einsum("bpd,bqd->bpq", U, U).mean(axis=0) + 1  # mean_b (U_p . U_q + 1)
        extra = (s1 ** 2)[None, :, None] * np.einsum("oiq,pq->oip", W2, C)
    target = np.concatenate([g["0.weight"].ravel(), g["0.bias"], (g["2.weight"] + extra.reshape(2, 6)).ravel(),
                             g["2.bias"]])
    reps = 2000 if estimator == "lr" else 6000
    assert_unbiased(_repeat(model, x, y, estimator, copies=4, reps=reps), target, f"two sites {estimator}")


# -- records: packed signs equal the plain ones ---------------------------------------------------------
@pytest.mark.parametrize("shared", [True, False])
def test_packed_sign_records_equal_the_plain_signs(shared):
    """ALR's gradient from packed bits = the same sums formed from the float record's signs."""
    rng = np.random.default_rng(3)
    model = minilr.Sequential([minilr.Conv1d(2, 3, 3, padding=1), "relu", minilr.Conv1d(3, 4, 3),
                               minilr.Flatten(), minilr.Linear(16, 3)], sigma=0.2, seed=0)
    x = rng.standard_normal((5, 2, 6)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    _, plain, Lc = lr_records(model, x, y, 12, approx=False, seed=9)
    _, packed, Lc2 = lr_records(model, x, y, 12, approx=True, seed=9)
    np.testing.assert_array_equal(Lc, Lc2)  # the same noise, the same forward pass
    j = 0 if shared else 1  # site 0 sees the shared batch; site 1 the copies' rows
    site_f, site_a = plain[j], packed[j]
    assert all(rec[2] == shared for rec in site_a.records.values())
    if not shared:  # ReLU output: 1 bit per sign, packed along rows
        assert all(rec[5] == "01" and rec[4].dtype == np.uint8 for rec in site_a.records.values())
    G, g_bias = float_record_signs(site_f, Lc)
    got = site_a.gradient(Lc)
    np.testing.assert_allclose(got["weight"].reshape(G.shape), G, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["bias"], g_bias, rtol=1e-5, atol=1e-5)


# -- the API of issue 8 ------------------------------------------------------------------------------
def api_model():
    return minilr.Sequential([
        minilr.Conv1d(1, 16, kernel_size=5, padding=2), minilr.ReLU(), minilr.MaxPool1d(2),
        minilr.Flatten(), minilr.Linear(16 * 20, 10)], sigma=0.1, seed=0)


def test_api_example_runs_with_every_estimator():
    model = api_model()
    assert list(model.parameters()) == ["0.weight", "0.bias", "4.weight", "4.bias"]
    assert model.parameters()["0.weight"].shape == (16, 1, 5)
    x = np.random.default_rng(0).standard_normal((6, 1, 40)).astype(np.float32)
    y = np.arange(6) % 10
    assert model.forward(x).shape == (6, 10)
    assert model.predict(x).shape == (6,)
    g_true = reference.gradient(model, x, y)
    for est in ("lr", "alr", "es", "aes", "hybrid", "a-hybrid", "bp"):
        g = minilr.estimate_gradient(model, x, y, estimator=est, copies=40, seed=0)
        assert {k: v.shape for k, v in g.items()} == {k: v.shape for k, v in model.parameters().items()}
        assert all(np.all(np.isfinite(v)) for v in g.values())
        if est in ("lr", "hybrid", "bp"):
            assert minilr.metrics.cosine_similarity(g, g_true) > 0.2, est
    h = minilr.train(model, (x, y), val_data=(x, y), estimator="alr", copies=8, epochs=1, batch_size=3,
                     progress=False)
    assert len(h.val_accuracy) == 1


def test_same_seed_same_bits_and_chunks_keep_the_noise():
    model = api_model()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 1, 40))
    y = rng.integers(0, 10, 4)
    for est in ("lr", "alr", "es", "hybrid"):
        a = minilr.estimate_gradient(model, x, y, estimator=est, copies=16, seed=3, baseline=False)
        b = minilr.estimate_gradient(model, x, y, estimator=est, copies=16, seed=3, baseline=False)
        c = minilr.estimate_gradient(model, x, y, estimator=est, copies=16, seed=3, baseline=False, chunk=8)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            np.testing.assert_allclose(c[k], a[k], rtol=1e-4, atol=1e-6 * np.abs(a[k]).max())


def test_learned_sigma_and_conv2d_model_trains():
    (x, y), _ = minilr.datasets.load("digits", images=True)
    model = minilr.Sequential([minilr.Conv2d(1, 4, 3, padding=1), "relu", minilr.MaxPool2d(2),
                               minilr.Flatten(), minilr.Linear(64, 10)], sigma=0.1, seed=0, learn_sigma=True)
    assert "0.sigma" in model.parameters() and model.parameters()["0.sigma"].shape == (4,)
    before = model.layers[0].sigma.copy()
    minilr.train(model, (x[:100], y[:100]), estimator="lr", copies=10, epochs=1, batch_size=50, progress=False)
    assert not np.array_equal(before, model.layers[0].sigma)


# -- bad shapes and arguments ---------------------------------------------------------------------
BAD = [
    ("in_channels 0", lambda: minilr.Conv1d(0, 3, 3), ValueError, "in_channels"),
    ("kernel_size str", lambda: minilr.Conv1d(1, 3, "3"), TypeError, "kernel_size"),
    ("stride 0", lambda: minilr.Conv2d(1, 3, 3, stride=0), ValueError, "stride"),
    ("padding -1", lambda: minilr.Conv1d(1, 3, 3, padding=-1), ValueError, "padding"),
    ("kernel triple", lambda: minilr.Conv2d(1, 3, (3, 3, 3)), ValueError, "kernel_size"),
    ("pool 0", lambda: minilr.MaxPool1d(0), ValueError, "kernel_size"),
    ("groups 0", lambda: minilr.GroupNorm(0), ValueError, "groups"),
    ("residual body", lambda: minilr.Residual([]), TypeError, "body"),
    ("residual skip", lambda: minilr.Residual([minilr.Flatten()], skip="relu"), TypeError, "skip"),
    ("channels do not chain", lambda: minilr.Sequential([minilr.Conv1d(1, 4, 3), minilr.Conv1d(3, 4, 3)],
                                                        input_shape=(1, 10)), ValueError, "in_channels"),
    ("flatten width", lambda: minilr.Sequential([minilr.Conv1d(1, 4, 3), minilr.Flatten(), minilr.Linear(10, 2)],
                                                input_shape=(1, 10)), ValueError, "Linear"),
    ("residual shapes", lambda: minilr.Sequential([minilr.Residual([minilr.Conv1d(2, 3, 3, padding=1)])],
                                                  input_shape=(2, 6)), ValueError, "skip"),
    ("kernel too big", lambda: minilr.Sequential([minilr.Conv1d(1, 2, 9)], input_shape=(1, 5)),
     ValueError, "kernel_size"),
    ("input_shape bad", lambda: minilr.Sequential([minilr.Conv1d(1, 2, 3)], input_shape=(1, -5)),
     TypeError, "input_shape"),
]


@pytest.mark.parametrize("name,make,exc,word", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments_are_named(name, make, exc, word):
    with pytest.raises(exc, match=word):
        make()


def test_bad_inputs_name_x():
    model = api_model()
    y = np.zeros(3, dtype=int)
    for x, word in ((np.zeros((3, 40)), "x"), (np.zeros((3, 2, 40)), "in_channels"),
                    (np.zeros((3, 1, 44)), "Linear"), (np.full((3, 1, 40), np.nan), "NaN")):
        with pytest.raises(ValueError, match=word):
            minilr.estimate_gradient(model, x, y, copies=4)
        with pytest.raises(ValueError, match=word):
            model.predict(x)
    with pytest.raises(ValueError, match="data"):
        minilr.train(model, (np.zeros((3, 2, 40)), y), progress=False)
    with pytest.raises(ValueError, match=r"y holds labels"):
        minilr.estimate_gradient(model, np.zeros((3, 1, 40)), np.array([0, 1, 10]), copies=4)
