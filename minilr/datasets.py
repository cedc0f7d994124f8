"""Data that needs no network: scikit-learn's bundled digits, synthetic sets, and loaders for
MNIST-format files already on disk.

Every loader returns ``((x_train, y_train), (x_test, y_test))`` with float32 features of shape
(n, d) and int64 class indices.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from . import validation as _v

__all__ = ["load", "digits", "spirals", "mnist", "NAMES"]


def _split(x, y, test_fraction, seed):
    """A fixed, stratified train/test split: the same ``seed`` always gives the same split."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[rng.permutation(idx)[: int(round(test_fraction * len(idx)))]] = True
    return (x[~test], y[~test]), (x[test], y[test])


def digits(test_fraction: float = 0.2, seed: int = 0):
    """The 1,797 8x8 handwritten digits bundled with scikit-learn, pixels scaled to [0, 1].

    A stratified split: 1,437 training and 360 test images with the defaults.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return _split(x, d.target.astype(np.int64), test_fraction, seed)


def spirals(n: int = 1000, noise: float = 0.2, turns: float = 1.5, classes: int = 2, seed: int = 0,
            test_fraction: float = 0.2):
    """Interleaved spirals in the plane: a quick, non-linearly separable toy set.

    ``n`` points in all, ``classes`` arms of ``turns`` turns each, Gaussian jitter ``noise``.
    """
    n = _v.positive_int(n, "n", minimum=2)
    classes = _v.positive_int(classes, "classes", minimum=2)
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    t = rng.uniform(0.05, 1.0, n)
    angle = 2 * np.pi * (turns * t + y / classes)
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) * 2
    x += noise * t[:, None] * rng.standard_normal((n, 2))
    return _split(x.astype(np.float32), y.astype(np.int64), test_fraction, seed)


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {arr.size} values")
    return arr.reshape(shape)


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def mnist(root=None, name: str = "mnist"):
    """MNIST or Fashion-MNIST from IDX files in a local folder (no download is attempted).

    ``root`` defaults to ``$MINILR_DATA/<name>`` or ``~/.minilr/data/<name>``. The folder must hold
    the four standard files (``train-images-idx3-ubyte`` etc., optionally ``.gz``).
    """
    if root is None:
        base = os.environ.get("MINILR_DATA") or Path.home() / ".minilr" / "data"
        root = Path(base) / name
    root = Path(root)
    out = []
    for split, names in _MNIST_FILES.items():
        arrays = []
        for stem in names:
            found = [root / f"{stem}{ext}" for ext in ("", ".gz") if (root / f"{stem}{ext}").exists()]
            if not found:
                raise FileNotFoundError(
                    f"{name}: no file {stem}[.gz] in folder {root}. minilr does not download data: "
                    f"put the four IDX files there, or pass root=... (or set MINILR_DATA)")
            arrays.append(_read_idx(found[0]))
        images, labels = arrays
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{name} {split}: {images.shape[0]} images but {labels.shape[0]} labels")
        out.append(((images.reshape(len(images), -1) / 255.0).astype(np.float32), labels.astype(np.int64)))
    return tuple(out)


NAMES = ("digits", "spirals", "mnist", "fashion-mnist")


def load(name: str, **kwargs):
    """Load a dataset by name: ``"digits"``, ``"spirals"``, ``"mnist"`` or ``"fashion-mnist"``."""
    _v.choice(name, "dataset", NAMES)
    if name == "digits":
        return digits(**kwargs)
    if name == "spirals":
        return spirals(**kwargs)
    return mnist(name=name, **kwargs)
