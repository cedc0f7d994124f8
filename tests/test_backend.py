"""The backend contract: NumPy always works; CuPy runs the same code where a GPU exists."""
from __future__ import annotations

import numpy as np
import pytest

import minilr
from minilr.backend import child, get_backend, seed_sequence

gpu = pytest.mark.skipif(not minilr.cupy_available(), reason="CuPy with a CUDA GPU is not available here")


def test_numpy_backend_and_seeding():
    bk = get_backend("numpy")
    assert bk.xp is np and get_backend(bk) is bk
    ss = seed_sequence(3)
    a = bk.generator(child(ss, 1)).standard_normal(5)
    b = bk.generator(child(seed_sequence(3), 1)).standard_normal(5)
    c = bk.generator(child(ss, 2)).standard_normal(5)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_child_streams_do_not_depend_on_call_order():
    ss = seed_sequence(7)
    first = child(ss, 0).generate_state(2)
    ss.spawn(3)  # spawn has side effects; child must not
    assert np.array_equal(child(ss, 0).generate_state(2), first)


def test_cupy_without_gpu_fails_at_once_naming_the_fix():
    if minilr.cupy_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="backend='numpy'|cupy-cuda"):
        get_backend("cupy")
    model = minilr.MLP([2, 2], seed=0)
    before = {k: v.copy() for k, v in model.parameters().items()}
    with pytest.raises(RuntimeError, match="CuPy"):
        minilr.train(model, (np.ones((4, 2)), np.array([0, 1, 0, 1])), backend="cupy", epochs=1)
    for k, v in model.parameters().items():
        assert np.array_equal(v, before[k])


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("estimator", ["lr", "alr", "es", "aes", "hybrid", "a-hybrid", "bp"])
def test_cupy_matches_numpy_statistically(estimator):
    """Different generators, so not bit-equal: both estimates of the same gradient must agree in
    cosine with the exact gradient to within the spread of seeds on NumPy."""
    (x, y), _ = minilr.datasets.load("digits")
    model = minilr.MLP([64, 32, 10], sigma=0.1, seed=0)
    g_true = minilr.reference.gradient(model, x[:50], y[:50])
    cos = {b: [minilr.metrics.cosine_similarity(minilr.estimate_gradient(
        model, x[:50], y[:50], estimator=estimator, copies=500, seed=s, backend=b), g_true) for s in range(4)]
        for b in ("numpy", "cupy")}
    spread = max(np.std(cos["numpy"]), 0.01)
    assert abs(np.mean(cos["cupy"]) - np.mean(cos["numpy"])) < 6 * spread, cos


@gpu
@pytest.mark.gpu
def test_cupy_training_is_deterministic_and_learns():
    (x, y), (xt, yt) = minilr.datasets.load("digits")
    runs = []
    for _ in range(2):
        model = minilr.MLP([64, 64, 10], seed=0)
        h = minilr.train(model, (x, y), val_data=(xt, yt), estimator="alr", copies=100, epochs=3,
                         backend="cupy", progress=False)
        runs.append((model.parameters(), h))
    for k in runs[0][0]:
        assert isinstance(runs[0][0][k], np.ndarray)  # the model comes home to the host
        assert np.array_equal(runs[0][0][k], runs[1][0][k])
    assert runs[0][1].val_accuracy[-1] > 0.8


def _fake_cupy(monkeypatch, compile_error=None):
    """A stand-in ``cupy`` that sees one GPU and whose RawKernel.compile raises ``compile_error``
    (None: compiles); returns the list of the kernels it compiled."""
    import sys
    import types

    from minilr.engines import cuda_kernels as ck

    compiled = []

    class RawKernel:
        def __init__(self, source, name, options=()):
            self.name = name

        def compile(self, log_stream=None):
            if compile_error is not None:
                raise compile_error
            compiled.append(self.name)

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    fake.RawKernel = RawKernel
    monkeypatch.setitem(sys.modules, "cupy", fake)
    for k in ck.KERNELS.values():
        monkeypatch.setattr(k, "_compiled", None)
    return compiled


@pytest.mark.parametrize("error,named", [
    # CuPy >= 13 on an image without the CUDA headers (its own message)
    (RuntimeError("Failed to find CUDA headers. Please install CUDA toolkit headers (e.g., pip install "
                  "cupy-cuda12x[ctk]) or specify CUDA_PATH environment variable."), "Failed to find CUDA headers"),
    # NVRTC missing or broken
    (OSError("libnvrtc.so.12: cannot open shared object file: No such file or directory"), "libnvrtc.so.12"),
])
def test_cupy_backend_compiles_a_kernel_and_names_a_broken_toolchain(monkeypatch, error, named):
    """Backend("cupy") compiles one kernel at once: a toolchain that cannot is named then (what
    failed and the fix), not at the first step."""
    _fake_cupy(monkeypatch, error)
    with pytest.raises(RuntimeError, match="CUDA toolchain cannot compile") as info:
        get_backend("cupy")
    msg = str(info.value)
    assert named in msg and "fill_normal" in msg and "cupy-cuda12x[ctk]" in msg and "backend='numpy'" in msg


def test_cupy_backend_compiles_one_kernel_when_made(monkeypatch):
    compiled = _fake_cupy(monkeypatch)
    bk = get_backend("cupy")
    assert bk.name == "cupy" and compiled == ["fill_normal"]
