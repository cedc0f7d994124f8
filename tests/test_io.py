"""minilr.save / minilr.load: round trips, files that are not ours, and writes that survive a kill.

The format (``minilr/io.py``): an ``.npz`` read with ``allow_pickle=False`` whose ``__minilr__``
entry is JSON (format version, minilr version, kind, architecture, dtype) beside one array per
parameter. Loading never runs code; a bad file raises FileFormatError (a ValueError) naming it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

import minilr
from minilr import io as mio


def models():
    yield minilr.MLP([4, 5, 3], seed=1)
    yield minilr.MLP([4, 6, 6, 2], activation="tanh", sigma=0.3, seed=2, learn_sigma=True, dtype=np.float64)
    m = minilr.Sequential([minilr.Linear(3, 4, sigma=[0.1, 0.2, 0.3, 0.4], learn_sigma=True), "sigmoid",
                           minilr.Linear(4, 2), minilr.Step(), minilr.Linear(2, 2)], sigma=0.05, seed=3)
    yield m


def same(a, b):
    assert type(a) is type(b) and a.dtype == b.dtype and repr(a) == repr(b)
    for la, lb in zip(a.layers, b.layers):
        assert type(la) is type(lb)
        if isinstance(la, minilr.Linear):
            assert la.learn_sigma == lb.learn_sigma
            for name in ("weight", "bias", "sigma"):
                x, y = getattr(la, name), getattr(lb, name)
                assert x.dtype == y.dtype and x.shape == y.shape
                assert x.tobytes() == y.tobytes(), name


@pytest.mark.parametrize("i", range(3))
def test_round_trip_is_bit_exact_and_predicts_the_same(tmp_path, i):
    model = list(models())[i]
    path = tmp_path / "m.npz"
    minilr.save(model, path)
    loaded = minilr.load(path)
    same(model, loaded)
    x = np.random.default_rng(0).standard_normal((7, model.in_features)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    assert loaded.parameters().keys() == model.parameters().keys()
    g0 = minilr.estimate_gradient(model, x, np.arange(7) % model.out_features, copies=8, seed=4)
    g1 = minilr.estimate_gradient(loaded, x, np.arange(7) % model.out_features, copies=8, seed=4)
    for k in g0:
        assert g0[k].tobytes() == g1[k].tobytes()


def test_the_file_is_a_plain_npz_with_a_json_header(tmp_path):
    path = tmp_path / "m.npz"
    minilr.save(minilr.MLP([4, 5, 3], seed=1, learn_sigma=True), path)
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["__minilr__"].tobytes())
        assert sorted(z.files) == sorted(["__minilr__"] + [f"layers.{i}.{a}" for i in (0, 2)
                                                            for a in ("weight", "bias", "sigma")])
    assert meta["format"] == "minilr" and meta["format_version"] == mio.FORMAT_VERSION
    assert meta["minilr_version"] == minilr.__version__ and meta["kind"] == "model"
    assert meta["architecture"]["dtype"] == "float32"
    assert [l["type"] for l in meta["architecture"]["layers"]] == ["Linear", "ReLU", "Linear"]
    assert meta["architecture"]["layers"][0]["config"] == {"in_features": 4, "out_features": 5,
                                                           "learn_sigma": True}


def test_path_is_used_as_given_and_no_temp_file_is_left(tmp_path):
    path = tmp_path / "model.bin"
    minilr.save(minilr.MLP([2, 2], seed=0), str(path))
    assert os.listdir(tmp_path) == ["model.bin"]
    minilr.load(str(path))


def test_saving_over_an_existing_file_replaces_it(tmp_path):
    path = tmp_path / "m.npz"
    minilr.save(minilr.MLP([2, 3], seed=0), path)
    minilr.save(minilr.MLP([2, 5, 4], seed=1), path)
    assert minilr.load(path).out_features == 4


# -- files that are not ours: a clear error naming the file -------------------------------------------
def _bad(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _check_named(path, *words):
    with pytest.raises(mio.FileFormatError) as e:
        minilr.load(path)
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value), str(e.value)
    assert isinstance(e.value, ValueError)


def test_truncated_file_is_named(tmp_path):
    good = tmp_path / "good.npz"
    minilr.save(minilr.MLP([8, 16, 4], seed=0), good)
    data = good.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        _check_named(_bad(tmp_path, f"cut{cut}.npz", data[:cut]))


def test_corrupt_bytes_are_named(tmp_path):
    good = tmp_path / "good.npz"
    minilr.save(minilr.MLP([8, 16, 4], seed=0), good)
    data = bytearray(good.read_bytes())
    data[len(data) // 3: len(data) // 3 + 50] = b"\xff" * 50
    _check_named(_bad(tmp_path, "corrupt.npz", bytes(data)))
    _check_named(_bad(tmp_path, "text.npz", b"hello, I am not a zip file\n"))


def test_foreign_npz_and_wrong_kind_are_named(tmp_path):
    p = tmp_path / "plain.npz"
    np.savez(p, a=np.ones(3))
    _check_named(p, "not a minilr file")
    p = tmp_path / "kind.npz"
    mio.write_atomic(p, {**mio.header("model"), "kind": "spreadsheet"}, {})
    _check_named(p, "spreadsheet")


def test_newer_format_is_named_with_the_fix(tmp_path):
    p = tmp_path / "future.npz"
    minilr.save(minilr.MLP([2, 2], seed=0), p)
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("__minilr__").tobytes())
    meta["format_version"] = mio.FORMAT_VERSION + 1
    mio.write_atomic(p, meta, arrays)
    _check_named(p, "newer", "upgrade minilr")


def test_pickled_content_is_refused_and_never_run(tmp_path):
    """An object array (pickle inside the npz) must not be unpickled: that could run code."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    p = tmp_path / "evil.npz"
    header = np.frombuffer(json.dumps(mio.header("model")).encode(), np.uint8)
    with open(p, "wb") as f:
        np.savez(f, __minilr__=header, **{"layers.0.weight": np.array([Evil()], dtype=object)})
    _check_named(p)
    assert not marker.exists()


def test_unknown_layer_type_and_bad_config_are_named(tmp_path):
    p = tmp_path / "m.npz"
    model = minilr.MLP([2, 3], seed=0)
    arch, arrays = mio.model_state(model)
    arch["layers"][0]["type"] = "os.system"
    mio.write_atomic(p, {**mio.header("model"), "architecture": arch}, arrays)
    _check_named(p, "unknown type")
    arch["layers"][0] = {"type": "Linear", "config": {"in_features": 2, "out_features": 3, "evil": 1}}
    mio.write_atomic(p, {**mio.header("model"), "architecture": arch}, arrays)
    _check_named(p, "evil")
    arch["layers"][0]["config"] = {"in_features": 2, "out_features": 4}  # shapes disagree
    mio.write_atomic(p, {**mio.header("model"), "architecture": arch}, arrays)
    _check_named(p)


def test_nan_parameters_in_a_file_are_named(tmp_path):
    p = tmp_path / "m.npz"
    arch, arrays = mio.model_state(minilr.MLP([2, 3], seed=0))
    arrays["layers.0.bias"][1] = np.nan
    mio.write_atomic(p, {**mio.header("model"), "architecture": arch}, arrays)
    _check_named(p, "NaN")


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        minilr.load(tmp_path / "nope.npz")


# -- atomic writes: a kill at any moment leaves a valid file ----------------------------------------------
WRITER = textwrap.dedent("""
    import sys, numpy as np, minilr
    path = sys.argv[1]
    models = [minilr.MLP([784, 1024, 1024, 10], seed=s) for s in (0, 1)]
    i = 0
    while True:
        minilr.save(models[i % 2], path)
        i += 1
        print(i, flush=True)
""")


def test_sigkill_while_saving_repeatedly_leaves_the_old_or_the_new_file(tmp_path):
    """A writer saves two ~7 MB models alternately; it is SIGKILLed at random moments (many land
    mid-write: one save takes tens of ms). The file must always load and equal one of the two."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    expect = [minilr.MLP([784, 1024, 1024, 10], seed=s) for s in (0, 1)]
    rng = np.random.default_rng(0)
    path = tmp_path / "m.npz"
    root = os.path.dirname(os.path.dirname(os.path.abspath(minilr.__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for trial in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                                env=env, text=True)
        proc.stdout.readline()  # one save done: from here on every kill lands in the loop
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        loaded = minilr.load(path)
        ok = [all(loaded.parameters()[k].tobytes() == m.parameters()[k].tobytes()
                  for k in m.parameters()) for m in expect]
        assert any(ok), f"trial {trial}: the file matches neither model"
    # a kill mid-write may leave its temporary file (a dot-file) behind, never a broken target
    assert [f for f in os.listdir(tmp_path) if not f.startswith(".")] == ["m.npz", "writer.py"]
