"""CIFAR-10 from the binary batches (no pickle) and the python batches: same numbers, images=True."""
import pickle

import numpy as np
import pytest

from minilr import datasets

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def _batches(n=3, seed=0):
    """A few random images per batch: uint8 (n, 3072) data and labels in 0..9."""
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 256, (n, 3072)).astype(np.uint8), rng.integers(0, 10, n).astype(np.uint8))
            for name in TRAIN + ["test_batch"]}


def _write_bin(folder, batches):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        # the published layout: per image, its label byte then its 3,072 pixel bytes
        (folder / f"{name}.bin").write_bytes(np.concatenate([labels[:, None], data], axis=1).tobytes())


def _write_py(folder, batches):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": [int(v) for v in labels], b"data": data}, f, protocol=2)


def test_binary_batches_values_shapes_labels(tmp_path):
    b = _batches()
    _write_bin(tmp_path / "cifar-10-batches-bin", b)
    (x, y), (xt, yt) = datasets.load("cifar10", root=tmp_path)  # the parent of the extracted folder
    assert x.shape == (15, 3072) and xt.shape == (3, 3072)
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(y, np.concatenate([b[n][1] for n in TRAIN]))
    np.testing.assert_array_equal(yt, b["test_batch"][1])
    np.testing.assert_allclose(x, np.concatenate([b[n][0] for n in TRAIN]) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(xt, b["test_batch"][0] / 255.0, rtol=1e-6)


def test_images_are_channel_major_planes(tmp_path):
    """images=True: pixel (c, i, j) of an image is byte 1024 c + 32 i + j of its record."""
    b = _batches(n=2)
    _write_bin(tmp_path / "c", b)
    (x, _), (xt, _) = datasets.load("cifar10", root=tmp_path / "c", images=True)
    assert x.shape == (10, 3, 32, 32) and xt.shape == (2, 3, 32, 32) and x.dtype == np.float32
    raw = b["data_batch_1"][0][1]
    for c, i, j in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (2, 31, 31), (1, 17, 5)]:
        assert x[1, c, i, j] == np.float32(raw[1024 * c + 32 * i + j] / 255.0)


@pytest.mark.parametrize("images", [False, True])
def test_the_two_formats_give_identical_arrays(tmp_path, images):
    b = _batches(seed=3)
    _write_bin(tmp_path / "bin", b)
    _write_py(tmp_path / "py", b)
    got_bin = datasets.cifar10(root=tmp_path / "bin", images=images)
    got_py = datasets.cifar10(root=tmp_path / "py", images=images)
    for (xb, yb), (xp, yp) in zip(got_bin, got_py):
        assert xb.dtype == xp.dtype == np.float32 and yb.dtype == yp.dtype == np.int64
        np.testing.assert_array_equal(xb, xp)
        np.testing.assert_array_equal(yb, yp)


def test_binary_read_needs_no_unpickling(tmp_path, monkeypatch):
    _write_bin(tmp_path / "c", _batches())

    def refuse(*a, **k):
        raise AssertionError("the binary batches must not be unpickled")

    monkeypatch.setattr(datasets.pickle, "Unpickler", refuse)
    monkeypatch.setattr(datasets, "_ArrayUnpickler", refuse)
    (x, _), _ = datasets.cifar10(root=tmp_path / "c")
    assert x.shape == (15, 3072)


def test_truncated_binary_batch_is_named(tmp_path):
    _write_bin(tmp_path / "c", _batches())
    path = tmp_path / "c" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="data_batch_3.bin") as info:
        datasets.cifar10(root=tmp_path / "c")
    assert "truncated" in str(info.value)


def test_missing_binary_batch_names_file_and_folder(tmp_path):
    _write_bin(tmp_path / "c", _batches())
    (tmp_path / "c" / "data_batch_5.bin").unlink()
    with pytest.raises(FileNotFoundError) as info:
        datasets.cifar10(root=tmp_path / "c")
    msg = str(info.value)
    assert "data_batch_5.bin" in msg and str(tmp_path / "c") in msg and "download" in msg


def test_binary_label_out_of_range_is_named(tmp_path):
    b = _batches()
    b["test_batch"][1][0] = 10
    _write_bin(tmp_path / "c", b)
    with pytest.raises(ValueError, match="test_batch.bin"):
        datasets.cifar10(root=tmp_path / "c")


def test_empty_folder_names_it_and_both_formats(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        datasets.load("cifar10", root=tmp_path / "e")
    msg = str(info.value)
    assert str(tmp_path / "e") in msg and ".bin" in msg and "python" in msg


def test_images_must_be_bool(tmp_path):
    with pytest.raises(TypeError, match="images"):
        datasets.cifar10(root=tmp_path, images="yes")
