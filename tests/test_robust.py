"""Failures that must be loud and early (issue 10): each test here failed before its fix.

* item 3: finite inputs that overflow the model's dtype (1e39 in float32) are rejected by name;
* item 8: huge ``copies`` fail at once, naming ``copies`` and suggesting ``chunk=``;
* item 9: ``import minilr`` works on a read-only install with a read-only home (Numba's cache);
* item 10: sigma that underflows the dtype, arrays set by hand with the wrong shape, a bad
  ``MINILR_NOISE_THREADS``, one Linear object used twice: clear errors at the entry point.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import minilr
from minilr import memory


def batch(n=6, d=4):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, d)), np.arange(n) % 3


# -- item 3: overflow on the cast to the model's dtype -------------------------------------------------
def test_predict_rejects_x_that_overflows_float32_naming_x():
    model = minilr.MLP([4, 5, 3], seed=0)
    x, _ = batch()
    x[2, 1] = 1e39  # finite in float64, inf in float32
    with pytest.raises(ValueError, match=r"x holds 1e\+39.*float32"):
        model.predict(x)
    x[2, 1] = -1e39
    with pytest.raises(ValueError, match=r"x holds -1e\+39"):
        model.predict(x)


def test_a_float64_model_accepts_what_float32_cannot_hold():
    model = minilr.MLP([4, 5, 3], seed=0, dtype=np.float64)
    x, _ = batch()
    x[2, 1] = 1e39
    model.forward(x)  # no error: 1e39 is representable


def test_predict_refuses_non_finite_outputs():
    model = minilr.MLP([4, 5, 3], seed=0)
    x, _ = batch()
    x[:] = 3e38  # fits float32, but the products overflow inside the network
    model.layers[0].weight[:] = 10
    with pytest.raises(FloatingPointError, match="not finite"):
        model.predict(x)


# -- item 10: late or unclear errors -----------------------------------------------------------------
@pytest.mark.parametrize("sigma", [1e-46, 1e-40, 1e39])
def test_sigma_outside_the_dtype_is_rejected_at_construction(sigma):
    with pytest.raises(ValueError, match="sigma of layer 0.*float32"):
        minilr.MLP([4, 5, 3], sigma=sigma, seed=0)
    minilr.MLP([4, 5, 3], sigma=sigma if sigma < 1 else 1e30, seed=0, dtype=np.float64)  # fits float64


def test_per_layer_sigma_underflow_names_its_layer():
    with pytest.raises(ValueError, match="sigma of layer 2"):
        minilr.Sequential([minilr.Linear(2, 3), "relu", minilr.Linear(3, 2, sigma=1e-45)], seed=0)


def test_the_same_linear_twice_is_an_error_naming_both_positions():
    lin = minilr.Linear(3, 3)
    with pytest.raises(ValueError, match=r"layers\[2\] is the same Linear object as layers\[0\]"):
        minilr.Sequential([lin, "relu", lin], seed=0)


def _by_hand_cases():
    yield "0-d sigma", lambda m: setattr(m.layers[0], "sigma", np.array(0.1, np.float32)), "layer 0.*sigma.*shape"
    yield "scalar sigma", lambda m: setattr(m.layers[0], "sigma", 0.1), "layer 0.*sigma.*array"
    yield "weight shape", lambda m: setattr(m.layers[2], "weight", np.zeros((3, 4), np.float32)), \
        r"layer 2.*weight.*shape \(3, 5\)"
    yield "bias shape", lambda m: setattr(m.layers[0], "bias", np.zeros(4, np.float32)), "layer 0.*bias"
    yield "int weight", lambda m: setattr(m.layers[0], "weight", np.zeros((5, 4), np.int64)), "layer 0.*weight.*float"
    yield "zero sigma", lambda m: m.layers[0].sigma.__setitem__(1, 0.0), "layer 0.*sigma. must be > 0"
    yield "nan bias", lambda m: m.layers[2].bias.__setitem__(0, np.nan), "layer 2.*bias.*NaN"
    yield "tied", lambda m: m.layers.__setitem__(2, m.layers[0]), r"layers\[2\].*same Linear"


@pytest.mark.parametrize("case", list(_by_hand_cases()), ids=lambda c: c[0])
def test_arrays_set_by_hand_fail_at_predict_naming_layer_and_parameter(case):
    _, breaks, pattern = case
    model = minilr.MLP([4, 5, 3], seed=0)
    breaks(model)
    x, _ = batch()
    with pytest.raises((ValueError, TypeError), match=pattern):
        model.predict(x)


# -- item 8: memory checked before allocating ----------------------------------------------------------
def test_huge_copies_name_copies_and_suggest_chunk():
    plan = _plan(minilr.MLP([784, 256, 256, 10], seed=0), 50, "lr")
    with pytest.raises(ValueError, match=r"copies=10000000 .*chunk=\d+"):
        memory.check_copies(plan, 50, 10**7, None)
    memory.check_copies(plan, 50, 10**7, 100)  # chunked: fits
    with pytest.raises(ValueError, match=r"copies=10{30} is too many.*counters"):
        memory.check_copies(plan, 50, 10**30, 10)
    cnn = _plan(minilr.resnet5(input_shape=(3, 32, 32), seed=0), 10, "lr")  # conv nets are checked too
    with pytest.raises(ValueError, match=r"copies=100000 .*chunk=\d+"):
        memory.check_copies(cnn, 10, 100_000, None)


def _plan(model, B, estimator):
    from minilr.estimators import ESTIMATORS, Plan, Settings

    x = np.zeros((B,) + model.input_shape, model.dtype)
    return Plan.make(model, x, Settings(estimator, 2), np.random.SeedSequence(0), ESTIMATORS[estimator])


def test_record_estimate_is_the_recorded_arrays():
    """LR on 4-5-3, B=6, K=10, float32: losses 2*60 + site 0 noise 60*5 + site 1 noise and input
    60*(3+5), times 4 bytes; ALR keeps 60*(5 + 3 + 2*5) bits instead of the sites' floats."""
    model = minilr.MLP([4, 5, 3], seed=0)
    assert memory.record_bytes(_plan(model, 6, "lr"), 6, 10) == 4 * (120 + 300 + 480)
    assert memory.record_bytes(_plan(model, 6, "alr"), 6, 10) == 4 * 120 + 38 + 98  # bytes rounded up


def test_memory_limit_env_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("MINILR_MEMORY_LIMIT", "1M")
    assert memory.budget_bytes() == 1 << 20
    model = minilr.MLP([4, 5, 3], seed=0)
    with pytest.raises(ValueError, match="copies=100000 .*chunk="):
        memory.check_copies(_plan(model, 6, "lr"), 6, 100_000, None)
    monkeypatch.setenv("MINILR_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="MINILR_MEMORY_LIMIT"):
        memory.budget_bytes()


# -- item 9: read-only install, read-only home ------------------------------------------------------------
def _read_only_tree(root):
    for folder, dirs, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)


def test_import_on_a_read_only_install_with_a_read_only_home(tmp_path):
    """A copy of the package that nothing may write to, and a home whose cache cannot be created.

    Tests run as root here, for whom permissions do not stop writes, so the cache folders Numba
    would create are blocked by plain files of the same name (``__pycache__``, ``~/.cache``) as well
    as made read-only. Before the fix ``import minilr`` raised "cannot cache function ...: no
    locator available"."""
    src = os.path.dirname(minilr.__file__)
    pkg = tmp_path / "site" / "minilr"
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "__pycache__").write_text("blocked")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").write_text("blocked")
    _read_only_tree(tmp_path / "site")
    _read_only_tree(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "XDG_", "PYTHON"))}
    env.update(HOME=str(home), PYTHONPATH=str(tmp_path / "site"), PYTHONDONTWRITEBYTECODE="1")
    code = textwrap.dedent("""
        import numpy as np, minilr
        assert minilr.__file__.startswith(%r), minilr.__file__
        m = minilr.MLP([4, 5, 3], seed=0)  # the cache=True kernels were decorated at import
        assert m.predict(np.ones((2, 4))).shape == (2,)
        import numba; print("cache:", numba.config.CACHE_DIR)
    """ % str(pkg))
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path), capture_output=True,
                           text=True, timeout=600)
    finally:
        for folder, dirs, files in os.walk(tmp_path):
            os.chmod(folder, stat.S_IRWXU)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "minilr-numba-cache" in r.stdout


# -- the same checks at the entry points -------------------------------------------------------------
def test_estimate_gradient_and_train_reject_x_and_y_that_overflow_float32():
    model = minilr.MLP([4, 5, 3], seed=0)
    x, y = batch()
    big = x.copy()
    big[0, 0] = 1e39
    with pytest.raises(ValueError, match=r"^x holds 1e\+39"):
        minilr.estimate_gradient(model, big, y, copies=4)
    with pytest.raises(ValueError, match=r"data\[0\] \(x\) holds 1e\+39"):
        minilr.train(model, (big, y), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"val_data\[0\] \(x\) holds 1e\+39"):
        minilr.train(model, (x, y), val_data=(big, y), epochs=1, progress=False)
    target = np.zeros((6, 3))
    target[1, 2] = -1e39
    with pytest.raises(ValueError, match=r"^y holds -1e\+39"):
        minilr.estimate_gradient(model, x, target, copies=4, loss="mse")


def test_overflow_inside_the_network_is_an_error_not_a_nan_gradient():
    model = minilr.MLP([4, 5, 3], seed=0)
    x, y = batch()
    model.layers[0].weight[:] = 3e38  # finite, but x W^T overflows float32
    with pytest.raises(FloatingPointError, match="not finite.*overflow float32"):
        minilr.estimate_gradient(model, x, y, copies=4)


@pytest.mark.parametrize("case", list(_by_hand_cases()), ids=lambda c: c[0])
def test_arrays_set_by_hand_fail_at_estimate_gradient_and_train(case):
    _, breaks, pattern = case
    x, y = batch()
    for call in (lambda m: minilr.estimate_gradient(m, x, y, copies=4),
                 lambda m: minilr.train(m, (x, y), epochs=1, progress=False)):
        model = minilr.MLP([4, 5, 3], seed=0)
        breaks(model)
        with pytest.raises((ValueError, TypeError), match=pattern):
            call(model)


def test_huge_copies_fail_at_the_entry_points_before_any_work():
    model = minilr.MLP([784, 256, 256, 10], seed=0)
    x = np.zeros((50, 784), np.float32)
    y = np.zeros(50, np.int64)
    for est in ("lr", "alr", "hybrid"):  # ES keeps only its losses (2 GB here) and redraws its noise: it fits
        with pytest.raises(ValueError, match=r"copies=10000000 .*chunk="):
            minilr.estimate_gradient(model, x, y, estimator=est, copies=10**7)
    with pytest.raises(ValueError, match=r"copies=10{30} is too many"):
        minilr.estimate_gradient(model, x, y, copies=10**30)
    with pytest.raises(ValueError, match=r"copies=10000000 .*chunk="):
        minilr.train(model, (x, y), copies=10**7, progress=False)


# -- item 2: chunk keeps the baseline -------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["lr", "alr", "es", "aes", "hybrid", "a-hybrid"])
@pytest.mark.parametrize("chunk,antithetic", [(1, False), (3, False), (2, True), (6, True)])
def test_chunked_estimate_equals_the_unchunked_one(estimator, chunk, antithetic):
    """The same noise (counter-based) and, now, the same leave-one-out baseline over all copies:
    chunking changes only the order of the sums. Before the fix each chunk had its own baseline
    (none at chunk=1): digits, copies=1000, chunk=1, LR, mean cosine to the exact gradient 0.117
    instead of 0.918 (``benchmarks/chunk_baseline.py``; now 0.918 both)."""
    model = minilr.MLP([4, 6, 5, 3], sigma=0.2, seed=0, dtype=np.float64)
    x, y = batch(7)
    kw = dict(estimator=estimator, copies=14, seed=3, antithetic=antithetic)
    whole = minilr.estimate_gradient(model, x, y, **kw)
    parts = minilr.estimate_gradient(model, x, y, chunk=chunk, **kw)
    for k in whole:
        np.testing.assert_allclose(parts[k], whole[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_chunk_1_keeps_the_cosine_on_digits():
    """Issue 10's case in small: digits, MLP 64-64-10, 50 samples, LR, 1000 copies, 3 seeds."""
    (x, y), _ = minilr.datasets.load("digits")
    model = minilr.MLP([64, 64, 10], sigma=0.1, seed=0)
    g_true = minilr.reference.gradient(model, x[:50], y[:50])
    cos = {c: np.mean([minilr.metrics.cosine_similarity(minilr.estimate_gradient(
        model, x[:50], y[:50], copies=1000, chunk=c, seed=s), g_true) for s in range(3)]) for c in (None, 1)}
    assert abs(cos[1] - cos[None]) < 0.05 and cos[None] > 0.85, cos


@pytest.mark.parametrize("value", ["abc", "2.5", ""])
def test_bad_noise_threads_variable_is_named(monkeypatch, value):
    monkeypatch.setenv("MINILR_NOISE_THREADS", value)
    model = minilr.MLP([4, 5, 3], seed=0)
    x, y = batch()
    if not value:  # empty: unset, the default
        minilr.estimate_gradient(model, x, y, copies=4)
        return
    with pytest.raises(ValueError, match="MINILR_NOISE_THREADS must be a positive integer"):
        minilr.estimate_gradient(model, x, y, estimator="alr", copies=400)
