"""minilr.save / minilr.load: round trips, files that are not ours, and writes that survive a kill.

The format (``minilr/io.py``): an ``.npz`` read with ``allow_pickle=False`` whose ``__minilr__``
entry is JSON (format version, minilr version, kind, architecture, dtype) beside one array per
parameter. Loading never runs code; a bad file raises FileFormatError (a ValueError) naming it.
"""
from __future__ import annotations

import json
import os
import signal
import stat
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


# -- crafted files: nothing is allocated that the file does not hold (issue 14, item 3) -------------------
def _npy(shape, payload: bytes, descr="<f4") -> bytes:
    """A .npy entry whose header declares ``shape`` but whose data are ``payload``."""
    import io

    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return f.getvalue() + payload


def _craft(path, arch, entries):
    """A minilr model file written by hand: ``entries`` {name: npy bytes} beside the header."""
    meta = {**mio.header("model"), "architecture": arch}
    head = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__minilr__.npy", _npy(head.shape, head.tobytes(), "|u1"))
        for name, data in entries.items():
            zf.writestr(name + ".npy", data)
    return path


def _linear_arch(m, d):
    return {"model": "Sequential", "dtype": "float32", "input_shape": [d],
            "layers": [{"type": "Linear", "config": {"in_features": d, "out_features": m, "learn_sigma": False}}]}


def _linear_entries(m, d, weight_shape=None, fill=20_000):
    w = weight_shape or (m, d)
    return {"layers.0.weight": _npy(w, b"\0" * fill), "layers.0.bias": _npy((m,), b"\0" * 4 * m),
            "layers.0.sigma": _npy((m,), np.full(m, 0.1, np.float32).tobytes())}


LOADER = textwrap.dedent("""
    import resource, sys
    limit = 2 << 30  # 2 GiB of address space: enough for minilr, far too little for what was declared
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import minilr
    try:
        minilr.load(sys.argv[1])
    except BaseException as exc:
        print(type(exc).__name__, exc)
    else:
        print("loaded")
""")


def _load_limited(tmp_path, path):
    """Load ``path`` in a process whose memory is capped: a file that makes minilr allocate what it
    declares ends in MemoryError there, not in swapping the machine."""
    resource = pytest.importorskip("resource")
    if not hasattr(resource, "RLIMIT_AS"):
        pytest.skip("no RLIMIT_AS on this platform")
    script = tmp_path / "loader.py"
    script.write_text(LOADER)
    root = os.path.dirname(os.path.dirname(os.path.abspath(minilr.__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, str(script), str(path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_a_20kb_file_declaring_a_huge_weight_is_named_before_any_allocation(tmp_path):
    # the architecture is a small Linear; the weight's header declares (200000, 100000) floats (74.5 GiB)
    p = _craft(tmp_path / "huge_header.npz", _linear_arch(10, 64), _linear_entries(10, 64, (200_000, 100_000)))
    assert 20_000 <= p.stat().st_size < 25_000
    said = _load_limited(tmp_path, p)
    assert said.startswith("FileFormatError") and str(p) in said, said
    assert "(200000, 100000)" in said
    # the same header under an architecture that agrees with it: the size does not fit the file
    p = _craft(tmp_path / "huge_both.npz", _linear_arch(200_000, 100_000),
               _linear_entries(200_000, 100_000, fill=0) | {"layers.0.weight": _npy((200_000, 100_000), b"\0" * 20_000)})
    said = _load_limited(tmp_path, p)
    assert said.startswith("FileFormatError") and str(p) in said and "more than" in said, said


def test_a_2kb_file_declaring_a_huge_layer_is_named_without_drawing_its_weights(tmp_path):
    # Linear(200000, 200000): drawing its weights first would allocate 298 GiB
    p = _craft(tmp_path / "huge_arch.npz", _linear_arch(200_000, 200_000), _linear_entries(3, 2, fill=24))
    assert p.stat().st_size < 2_500
    said = _load_limited(tmp_path, p)
    assert said.startswith("FileFormatError") and str(p) in said, said
    assert "(200000, 200000)" in said


def test_declared_sizes_are_checked_in_process_too(tmp_path):
    p = _craft(tmp_path / "short.npz", _linear_arch(3, 2), _linear_entries(3, 2, fill=8))  # 24 bytes needed
    _check_named(p, "more than")
    good = _craft(tmp_path / "good.npz", _linear_arch(3, 2), {
        "layers.0.weight": _npy((3, 2), np.ones(6, np.float32).tobytes()),
        "layers.0.bias": _npy((3,), np.zeros(3, np.float32).tobytes()),
        "layers.0.sigma": _npy((3,), np.full(3, 0.1, np.float32).tobytes())})
    m = minilr.load(good)
    assert m.layers[0].weight.tolist() == [[1, 1]] * 3


def test_a_graph_file_cannot_declare_more_nodes_than_it_lists(tmp_path):
    m = minilr.Sequential([minilr.GraphAttention(2, 3, np.array([[0, 1], [1, 2]]))], seed=0)
    p = tmp_path / "gat.npz"
    minilr.save(m, p)
    arch, arrays = mio.model_state(m)
    arch["layers"][0]["config"]["n_nodes"] = 10 ** 12  # np.arange(n_nodes) would take 8 TB
    mio.write_atomic(p, {**mio.header("model"), "architecture": arch}, arrays)
    _check_named(p, "n_nodes")


# -- leftovers and modes: temporary files of killed writes, the umask (issue 14, items 4 and 10) --------
SLOW_WRITER = textwrap.dedent("""
    import sys, time, numpy as np, minilr
    real = np.savez

    def slow(f, *a, **k):  # stop mid-write, the temporary file half written
        real(f, *a, **k)
        print("writing", flush=True)
        time.sleep(600)

    np.savez = slow
    minilr.save(minilr.MLP([4, 3], seed=0), sys.argv[1])
""")


def _killed_mid_write(tmp_path, target):
    script = tmp_path / "slow_writer.py"
    script.write_text(SLOW_WRITER)
    root = os.path.dirname(os.path.dirname(os.path.abspath(minilr.__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script), str(target)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def test_temporary_files_of_killed_writes_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "m.npz"
    decoys = [".m.npz.abc.tmp", ".m.npz.abcd1234.tmp.bak", "m.npz.abcd1234.tmp", ".other.npz.abcd1234.tmp",
              ".m.npz.x.abcd1234.tmp", ".m.npz.ABCD1234.tmp", "notes.txt"]
    for name in decoys:
        (tmp_path / name).write_text("not minilr's")
    (tmp_path / ".m.npz.1234abcd.tmp").mkdir()  # of our pattern, but a folder: not ours either
    seen = set()
    for _ in range(3):
        _killed_mid_write(tmp_path, target)
        left = {f for f in os.listdir(tmp_path) if f.startswith(".m.npz.") and f not in decoys and
                f != ".m.npz.1234abcd.tmp"}
        assert len(left) == 1 and not left & seen, left  # each write removed the one before it
        seen |= left
    minilr.save(minilr.MLP([2, 2], seed=1), target)
    assert sorted(os.listdir(tmp_path)) == sorted(decoys + [".m.npz.1234abcd.tmp", "m.npz", "slow_writer.py"])
    for name in decoys:
        assert (tmp_path / name).read_text() == "not minilr's"


def test_a_live_writers_temporary_file_is_left_alone(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    live = tmp_path / ".m.npz.live0001.tmp"
    with open(live, "wb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # as a writer at work holds it
        minilr.save(minilr.MLP([2, 2], seed=1), tmp_path / "m.npz")
        assert live.exists()
    minilr.save(minilr.MLP([2, 2], seed=1), tmp_path / "m.npz")
    assert not live.exists()


def test_resume_removes_the_temporary_files_of_a_killed_checkpoint_write(tmp_path):
    (x, y), _ = minilr.datasets.load("spirals", n=40, seed=0)
    path = tmp_path / "run.npz"
    kw = dict(estimator="lr", copies=4, batch_size=16, progress=False, seed=0, checkpoint=path)
    minilr.train(minilr.MLP([2, 4, 2], seed=0), (x, y), epochs=1, **kw)
    stale = tmp_path / ".run.npz.k1ll3d00.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".run.npz.k1ll3d00.tmp.keep"
    other.write_bytes(b"someone else's")
    m = minilr.MLP([2, 4, 2], seed=0)
    minilr.train(m, (x, y), epochs=1, resume=True, **kw)  # nothing left to train: only the resume
    assert not stale.exists() and other.read_bytes() == b"someone else's"


@pytest.mark.skipif(not hasattr(os, "umask") or os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_follow_the_umask_as_np_save_does(tmp_path, umask, mode):
    (x, y), _ = minilr.datasets.load("spirals", n=40, seed=0)
    old = os.umask(umask)
    try:
        np.save(tmp_path / "numpy.npy", np.ones(2))
        minilr.save(minilr.MLP([2, 2], seed=0), tmp_path / "m.npz")
        minilr.train(minilr.MLP([2, 4, 2], seed=0), (x, y), estimator="lr", copies=4, epochs=1,
                     progress=False, checkpoint=tmp_path / "run.npz")
    finally:
        os.umask(old)
    for name in ("numpy.npy", "m.npz", "run.npz"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name
    os.chmod(tmp_path / "m.npz", 0o640)  # replacing a file keeps its mode, as np.save does
    minilr.save(minilr.MLP([2, 2], seed=1), tmp_path / "m.npz")
    assert stat.S_IMODE(os.stat(tmp_path / "m.npz").st_mode) == 0o640


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
    # a kill mid-write may leave its temporary file (a dot-file) behind, never a broken target;
    # the next write removes such leftovers
    assert [f for f in os.listdir(tmp_path) if not f.startswith(".")] == ["m.npz", "writer.py"]
    minilr.save(expect[0], path)
    assert sorted(os.listdir(tmp_path)) == ["m.npz", "writer.py"]


def test_a_header_or_an_architecture_nested_too_deep_is_named(tmp_path):
    head = np.frombuffer(b"[" * 100_000, np.uint8)
    p = tmp_path / "deep_json.npz"
    with open(p, "wb") as f:
        np.savez(f, __minilr__=head)
    _check_named(p)
    depth = 5_000  # written by hand: json.dumps itself cannot nest that deep
    spec = '{"type": "Residual", "config": {"body": [' * depth + '{"type": "Flatten"}' + ']}}' * depth
    arch = '{"model": "Sequential", "dtype": "float32", "input_shape": [2], "layers": [' + spec + ']}'
    meta = json.dumps(mio.header("model"))[:-1] + ', "architecture": ' + arch + '}'
    p = tmp_path / "deep_arch.npz"
    with open(p, "wb") as f:
        np.savez(f, __minilr__=np.frombuffer(meta.encode(), np.uint8))
    _check_named(p)
