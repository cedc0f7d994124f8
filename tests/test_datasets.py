"""Datasets: bundled digits, synthetic spirals, and the local-file loaders (MNIST IDX, CIFAR-10
python batches) on small files the tests write, including the errors for missing or broken files."""
from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

import minilr
from minilr import datasets


# -- digits ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


def test_digits_shapes_and_types(digits):
    (x, y), (xt, yt) = digits
    assert x.shape == (1438, 64) and xt.shape == (359, 64)  # 8x8 pixels, 1,797 images in all
    assert y.shape == (1438,) and yt.shape == (359,)
    assert x.dtype == xt.dtype == np.float32
    assert y.dtype == yt.dtype == np.int64
    assert set(np.unique(y)) == set(np.unique(yt)) == set(range(10))


def test_digits_scaled_to_unit_interval(digits):
    (x, _), (xt, _) = digits
    for a in (x, xt):
        assert a.min() == 0.0 and a.max() == 1.0  # pixels 0..16 divided by 16


def test_digits_split_is_fixed_disjoint_and_stratified(digits):
    (x, y), (xt, yt) = digits
    (x2, y2), (xt2, yt2) = datasets.load("digits")
    for a, b in ((x, x2), (y, y2), (xt, xt2), (yt, yt2)):
        np.testing.assert_array_equal(a, b)
    # The split partitions the 1,797 images: no test image is also a training image.
    from sklearn.datasets import load_digits

    full = (load_digits().data / 16.0).astype(np.float32)
    assert len(x) + len(xt) == len(full)
    rows = {r.tobytes() for r in x}
    dup_in_full = len(full) - len({r.tobytes() for r in full})
    assert sum(r.tobytes() in rows for r in xt) <= dup_in_full
    # Stratified: every class is about 20% test.
    for c in range(10):
        n_test, n_all = np.sum(yt == c), np.sum(yt == c) + np.sum(y == c)
        assert abs(n_test - 0.2 * n_all) <= 0.5, (c, n_test, n_all)


def test_digits_other_seed_other_split(digits):
    (x3, _), _ = datasets.digits(seed=1)
    assert not np.array_equal(x3, digits[0][0])


# -- spirals --------------------------------------------------------------------------------------
def test_spirals_shapes_balance_and_determinism():
    (x, y), (xt, yt) = datasets.load("spirals", n=500, classes=3, seed=2)
    assert x.shape[1] == xt.shape[1] == 2 and len(x) + len(xt) == 500
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert set(np.unique(np.concatenate([y, yt]))) == {0, 1, 2}
    assert abs(len(xt) - 100) <= 3
    (x2, y2), _ = datasets.load("spirals", n=500, classes=3, seed=2)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    (x3, _), _ = datasets.load("spirals", n=500, classes=3, seed=3)
    assert not np.array_equal(x, x3)
    assert np.all(np.isfinite(x)) and np.abs(x).max() < 5


def test_spirals_without_noise_lie_on_the_arms():
    """With noise=0 each point is ``2 t (cos a, sin a)`` with ``a = 2 pi (turns t + y / classes)``:
    recover ``t`` from the radius and check the angle matches the class's arm."""
    (x, y), _ = datasets.spirals(n=200, noise=0.0, turns=1.5, classes=2, seed=0)
    t = np.linalg.norm(x, axis=1) / 2
    angle = 2 * np.pi * (1.5 * t + y / 2)
    np.testing.assert_allclose(x, 2 * t[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1), atol=1e-5)


# -- MNIST IDX files ------------------------------------------------------------------------------
def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder, n_train=7, n_test=3, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, a in arrays.items():
        data = _idx(a)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("via_load", [False, True], ids=["mnist()", "load()"])
def test_mnist_idx_roundtrip(tmp_path, gz, via_load):
    arrays = _write_mnist(tmp_path / "m", gz=gz)
    if via_load:
        (x, y), (xt, yt) = datasets.load("mnist", root=tmp_path / "m")
    else:
        (x, y), (xt, yt) = datasets.mnist(root=str(tmp_path / "m"))
    assert x.shape == (7, 784) and xt.shape == (3, 784)
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x, arrays["train-images-idx3-ubyte"].reshape(7, -1) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(xt, arrays["t10k-images-idx3-ubyte"].reshape(3, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(yt, arrays["t10k-labels-idx1-ubyte"])
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_fashion_mnist_uses_the_same_format(tmp_path):
    _write_mnist(tmp_path / "f")
    (x, _), (xt, _) = datasets.load("fashion-mnist", root=tmp_path / "f")
    assert x.shape == (7, 784) and xt.shape == (3, 784)


def test_mnist_default_root_from_environment(tmp_path, monkeypatch):
    _write_mnist(tmp_path / "mnist")
    monkeypatch.setenv("MINILR_DATA", str(tmp_path))
    (x, _), _ = datasets.load("mnist")
    assert x.shape == (7, 784)


def test_mnist_missing_files_name_the_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        datasets.load("mnist", root=folder)
    msg = str(info.value)
    assert str(folder) in msg and "train-images-idx3-ubyte" in msg and "download" in msg


def test_mnist_one_missing_file_is_named(tmp_path):
    _write_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        datasets.mnist(root=tmp_path / "m")


def test_mnist_bad_magic_and_truncated_file(tmp_path):
    _write_mnist(tmp_path / "m")
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + bytes(8))
    with pytest.raises(ValueError, match="magic"):
        datasets.mnist(root=tmp_path / "m")
    _write_mnist(tmp_path / "m")
    good = (tmp_path / "m" / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "m" / "train-images-idx3-ubyte").write_bytes(good[:-5])
    with pytest.raises(ValueError, match="shape"):
        datasets.mnist(root=tmp_path / "m")


def test_mnist_image_and_label_counts_must_agree(tmp_path):
    _write_mnist(tmp_path / "m")
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(5)))
    with pytest.raises(ValueError, match="7 images but 5 labels"):
        datasets.mnist(root=tmp_path / "m")


def test_mnist_trains(tmp_path):
    """The loaded arrays go straight into a model and train (no reshaping by the user)."""
    _write_mnist(tmp_path / "m", n_train=20, n_test=5)
    (x, y), (xt, yt) = datasets.load("mnist", root=tmp_path / "m")
    model = minilr.MLP([784, 8, 10], seed=0)
    h = minilr.train(model, (x, y), val_data=(xt, yt), copies=4, epochs=1, batch_size=10, progress=False)
    assert len(h.val_accuracy) == 1


# -- CIFAR-10 python batches ----------------------------------------------------------------------
def _write_cifar(folder, n=4, protocol=2, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batches[name] = (data, labels)
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, f, protocol=protocol)
    return batches


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_roundtrip(tmp_path, protocol):
    batches = _write_cifar(tmp_path / "c", protocol=protocol)
    (x, y), (xt, yt) = datasets.load("cifar10", root=tmp_path / "c")
    assert x.shape == (20, 3072) and xt.shape == (4, 3072)
    assert x.dtype == np.float32 and y.dtype == np.int64
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_allclose(x, train / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)]))
    np.testing.assert_allclose(xt, batches["test_batch"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(yt, batches["test_batch"][1])


def test_cifar10_accepts_the_parent_of_the_extracted_folder(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    (x, _), _ = datasets.cifar10(root=tmp_path)
    assert x.shape == (20, 3072)


def test_cifar10_missing_files_name_the_folder(tmp_path):
    _write_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError) as info:
        datasets.load("cifar10", root=tmp_path / "c")
    msg = str(info.value)
    assert str(tmp_path / "c") in msg and "data_batch_4" in msg and "download" in msg


def test_cifar10_refuses_a_pickle_that_would_run_code(tmp_path):
    """The loader unpickles only containers and NumPy arrays: a data file cannot run code."""
    _write_cifar(tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    with open(tmp_path / "c" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="not a CIFAR-10"):
        datasets.cifar10(root=tmp_path / "c")


@pytest.mark.parametrize("content", [
    {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},      # wrong width
    {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},        # label count
    {b"labels": [0, 1]},                                             # no data
    {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},    # label out of range
    [1, 2, 3],                                                       # not a dict
])
def test_cifar10_malformed_batch(tmp_path, content):
    _write_cifar(tmp_path / "c")
    with open(tmp_path / "c" / "data_batch_2", "wb") as f:
        pickle.dump(content, f)
    with pytest.raises(ValueError, match="data_batch_2"):
        datasets.cifar10(root=tmp_path / "c")
