"""Data that needs no network: scikit-learn's bundled digits, synthetic sets, and loaders for
MNIST-format (IDX) and CIFAR-10 (binary or python batches) files already on disk.

Every loader returns ``((x_train, y_train), (x_test, y_test))`` with float32 features of shape
(n, d) and int64 class indices (``images=True``: digits (n, 1, 8, 8), CIFAR-10 (n, 3, 32, 32) images
for conv nets).
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np

from . import validation as _v

__all__ = ["load", "digits", "spirals", "mnist", "mnist1d", "cifar10", "sbm", "temporal_order", "Graph",
           "NAMES"]


def _split(x, y, test_fraction, seed):
    """A fixed, stratified train/test split: the same ``seed`` always gives the same split."""
    _check_fraction(test_fraction)
    seed = _v.seed_arg(seed)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[rng.permutation(idx)[: int(round(test_fraction * len(idx)))]] = True
    return (x[~test], y[~test]), (x[test], y[test])


def _check_fraction(test_fraction):
    f = _v.positive_float(test_fraction, "test_fraction")
    if f >= 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")


def digits(test_fraction: float = 0.2, seed: int = 0, images: bool = False):
    """The 1,797 8x8 handwritten digits bundled with scikit-learn, pixels scaled to [0, 1].

    A stratified split: 1,438 training and 359 test images with the defaults. ``images=True``
    gives them as (n, 1, 8, 8) images (one channel) for ``Conv2d`` models; else (n, 64).
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    _check_fraction(test_fraction)
    _v.seed_arg(seed)
    if not isinstance(images, (bool, np.bool_)):
        raise TypeError(f"images must be True or False, got {images!r}")
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    if images:
        x = x.reshape(-1, 1, 8, 8)
    return _split(x, d.target.astype(np.int64), test_fraction, seed)


# -- MNIST-1D (Greydanus, 2020) ----------------------------------------------------------------------
# The ten hand-designed 12-point templates of the published generator (github.com/greydanus/mnist1d),
# one row per digit 0..9: the data of the recipe, which the code below implements afresh.
_MNIST1D_TEMPLATES = np.array([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
])


def _mnist1d_templates():
    """Each template standardised (mean 0, sd 1), shifted to start at 0, divided by 6."""
    x = _MNIST1D_TEMPLATES - _MNIST1D_TEMPLATES.mean(axis=1, keepdims=True)
    x = x / x.std(axis=1, keepdims=True)
    return (x - x[:, :1]) / 6.0


def _resample(x, n):
    """Linear interpolation of ``x`` (on an even grid over [0, 1]) to ``n`` evenly spaced points."""
    return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(x)), x)


def _smooth(noise, sd=2.0):
    """Gaussian smoothing (standard deviation ``sd`` points, cut at 4 sd) with mirrored edges."""
    r = int(4 * sd + 0.5)
    t = np.arange(-r, r + 1)
    w = np.exp(-0.5 * (t / sd) ** 2)
    w /= w.sum()
    return np.convolve(np.pad(noise, r, mode="symmetric"), w, mode="valid")


def mnist1d(n: int = 5000, train_fraction: float = 0.8, length: int = 40, seed: int = 42):
    """MNIST-1D (Greydanus, 2020): ten 1-D "digits" made hard to classify, generated here.

    Each sample is one of ten 12-point templates, then (the published recipe, with its defaults):
    padded with 36..60 zeros, stretched to 72 points, scaled by a factor in [0.8, 1.2], rolled by
    0..47 points; its zero (padding) points replaced by correlated noise (Gaussian smoothing, sd 2
    points, of white noise of scale 0.25); white noise of scale 0.02 added everywhere; sheared (a
    linear ramp of slope in [-0.375, 0.375]); resampled to ``length`` points. ``n // 10`` samples
    per class, shuffled, standardised by the whole set's mean and sd, the first
    ``train_fraction`` for training: 4,000 / 1,000 with the defaults.

    The random draws follow the reference generator's order with a ``RandomState(seed)`` of our
    own (no global seeding), so the default ``seed=42`` reproduces the published dataset's
    generator (checked against the ``mnist1d`` package in tests/test_conv_data.py when it is installed).
    Returns float32 x of shape (n, length), int64 labels.
    """
    n = _v.positive_int(n, "n", minimum=10)
    length = _v.positive_int(length, "length", minimum=2)
    f = _v.positive_float(train_fraction, "train_fraction")
    if f >= 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    seed = _v.seed_arg(seed)
    rs = np.random.RandomState(seed)
    templates = _mnist1d_templates()
    pad_lo, pad_hi, stretched = 36, 60, 12 + 60
    xs, ys = [], []
    for label in range(10):
        for _ in range(n // 10):
            x = templates[label] + 1e-8  # never exactly 0: the zero test below finds the padding
            x = np.concatenate([x, np.zeros(pad_lo + int(rs.rand() * (pad_hi - pad_lo + 1)))])
            x = _resample(x, stretched)
            x = x * (1 + 0.4 * (rs.rand() - 0.5))
            k = rs.choice(48)
            x = np.concatenate([x[-k:], x[:-k]])  # roll right by k (k = 0: unchanged)
            pad = x == 0
            x = np.where(pad, _smooth(0.25 * rs.randn(stretched)), x)
            x = x + 0.02 * rs.randn(stretched)
            x = x - 0.75 * (rs.rand() - 0.5) * np.linspace(-0.5, 0.5, stretched)
            xs.append(_resample(x, length))
            ys.append(label)
    order = rs.permutation(len(ys))
    x = np.stack(xs)[order]
    y = np.asarray(ys, dtype=np.int64)[order]
    x = (x - x.mean()) / x.std()
    cut = int(len(y) * f)
    return (x[:cut].astype(np.float32), y[:cut]), (x[cut:].astype(np.float32), y[cut:])


def spirals(n: int = 1000, noise: float = 0.2, turns: float = 1.5, classes: int = 2, seed: int = 0,
            test_fraction: float = 0.2):
    """Interleaved spirals in the plane: a quick, non-linearly separable toy set.

    ``n`` points in all, ``classes`` arms of ``turns`` turns each, Gaussian jitter ``noise``.
    """
    n = _v.positive_int(n, "n", minimum=2)
    classes = _v.positive_int(classes, "classes", minimum=2)
    noise = _v.positive_float(noise, "noise", allow_zero=True)
    turns = _v.positive_float(turns, "turns")
    _check_fraction(test_fraction)
    seed = _v.seed_arg(seed)
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


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and NumPy arrays: a data file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path):
    """One CIFAR-10 python batch: a pickled dict with ``data`` (n, 3072) uint8 and ``labels``."""
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"{path} is not a CIFAR-10 python batch file ({exc})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a CIFAR-10 python batch file (no dict inside)")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{path} is not a CIFAR-10 python batch file (needs 'data' and 'labels', "
                         f"has {sorted(d)})")
    data, labels = np.asarray(d["data"]), np.asarray(d["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: expected uint8 data of shape (n, 3072) and n labels, got data "
                         f"{data.dtype}{data.shape} and {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must lie in [0, 9]")
    return data, labels


_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_RECORD = 1 + 3072  # the binary format: one label byte, then the 3,072 pixel bytes


def _read_cifar_bin(path: Path):
    """One CIFAR-10 binary batch: records of one label byte and 3,072 pixel bytes (no pickle)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise ValueError(f"{path} is truncated or not a CIFAR-10 binary batch: {raw.size} bytes is not a "
                         f"positive multiple of {_CIFAR_RECORD} (one label byte + 3,072 pixel bytes per image)")
    rec = raw.reshape(-1, _CIFAR_RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path}: labels must lie in [0, 9], found {int(labels.max())}")
    return rec[:, 1:], labels


def _cifar_folder(root: Path):
    """``(folder, format)``: the binary batches are preferred (they need no unpickling)."""
    for folder in (root, root / "cifar-10-batches-bin"):
        if (folder / "data_batch_1.bin").exists() or (folder / "test_batch.bin").exists():
            return folder, "bin"
    for folder in (root, root / "cifar-10-batches-py"):
        if (folder / "data_batch_1").exists() or (folder / "test_batch").exists():
            return folder, "py"
    raise FileNotFoundError(
        f"cifar10: no CIFAR-10 batches in folder {root} (nor in its cifar-10-batches-bin/ or "
        f"cifar-10-batches-py/). minilr does not download data: put the binary batches "
        f"(data_batch_1.bin ... data_batch_5.bin, test_batch.bin; from cifar-10-binary.tar.gz) or the "
        f"python batches (data_batch_1 ... test_batch; from cifar-10-python.tar.gz) there, or pass "
        f"root=... (or set MINILR_DATA)")


def cifar10(root=None, images: bool = False):
    """CIFAR-10 from the batches in a local folder (no download is attempted).

    ``root`` is the folder holding the batches, or its parent holding ``cifar-10-batches-bin/`` or
    ``cifar-10-batches-py/``; it defaults to ``$MINILR_DATA/cifar10`` or ``~/.minilr/data/cifar10``.
    Two formats are read: the **binary** batches (``data_batch_1.bin`` ... ``data_batch_5.bin``,
    ``test_batch.bin``: per image one label byte, then 3,072 pixel bytes), preferred where both
    are present as they need no unpickling; and the **python** batches (``data_batch_1`` ...
    ``test_batch``), read by an unpickler that refuses every global but NumPy's array rebuilders.

    Pixels are scaled to [0, 1], float32: 50,000 training and 10,000 test images. Each image's
    3,072 bytes are 1,024 red, then green, then blue, each plane row-major 32x32; flat (n, 3072)
    by default, ``images=True`` gives (n, 3, 32, 32) for ``Conv2d`` models (``resnet5((3, 32, 32))``).
    """
    if not isinstance(images, (bool, np.bool_)):
        raise TypeError(f"images must be True or False, got {images!r}")
    if root is None:
        root = Path(os.environ.get("MINILR_DATA") or Path.home() / ".minilr" / "data") / "cifar10"
    folder, fmt = _cifar_folder(Path(root))
    ext, read = (".bin", _read_cifar_bin) if fmt == "bin" else ("", _read_cifar_batch)
    for stem in _CIFAR_TRAIN + ("test_batch",):
        if not (folder / (stem + ext)).exists():
            what = ("binary batches (data_batch_1.bin ... data_batch_5.bin, test_batch.bin; from "
                    "cifar-10-binary.tar.gz)" if fmt == "bin" else "python batches (data_batch_1 ... "
                    "data_batch_5, test_batch; from cifar-10-python.tar.gz)")
            raise FileNotFoundError(
                f"cifar10: no file {stem}{ext} in folder {folder}. minilr does not download data: put "
                f"the {what} there, or pass root=... (or set MINILR_DATA)")
    out = []
    for stems in (_CIFAR_TRAIN, ("test_batch",)):
        parts = [read(folder / (stem + ext)) for stem in stems]
        data = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        x = (data / 255.0).astype(np.float32)
        out.append((x.reshape(-1, 3, 32, 32) if images else x, labels))
    return tuple(out)


NAMES = ("digits", "spirals", "mnist1d", "mnist", "fashion-mnist", "cifar10", "sbm", "temporal_order")


def load(name: str, **kwargs):
    """Load a dataset by name: ``"digits"``, ``"spirals"``, ``"mnist1d"`` (generated, (n, 40)),
    ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"`` (the last three from local files: pass
    ``root=...``), ``"sbm"`` (a generated graph as one sample, see :class:`Graph`) or
    ``"temporal_order"`` (generated sequences (N, T, F))."""
    _v.choice(name, "dataset", NAMES)
    if name == "digits":
        return digits(**kwargs)
    if name == "mnist1d":
        return mnist1d(**kwargs)
    if name == "spirals":
        return spirals(**kwargs)
    if name == "cifar10":
        return cifar10(**kwargs)
    if name == "sbm":  # the whole graph as one sample; its edges: datasets.sbm(...).edges
        return sbm(**kwargs).split()
    if name == "temporal_order":
        return temporal_order(**kwargs)
    return mnist(name=name, **kwargs)


# -- a graph and a sequence task, generated in code (issue 8) -----------------------------------
class Graph:
    """A node-classification graph: features ``x`` (n_nodes, F) float32, ``edges`` (2, E) int64
    (row 0 the source node, row 1 the target node; both directions are listed), labels ``y``
    (n_nodes,) int64, boolean ``train_mask`` and ``test_mask`` (n_nodes,), disjoint.

    :meth:`split` gives the graph in minilr's sample layout: **the whole graph is one sample**, so
    ``x`` is (1, n_nodes, F) and ``y`` is (1, n_nodes) with ``-1`` on every node outside the split's
    mask (its loss and accuracy skip those nodes). The edge list belongs to the model
    (``minilr.GraphAttention(..., edges=graph.edges)``): transductive node classification.
    """

    def __init__(self, x, edges, y, train_mask, test_mask, n_classes):
        self.x, self.edges, self.y = x, edges, y
        self.train_mask, self.test_mask, self.n_classes = train_mask, test_mask, n_classes

    @property
    def n_nodes(self) -> int:
        return self.x.shape[0]

    def split(self):
        """``((x, y_train), (x, y_test))`` with ``x`` (1, n, F) and labels -1 outside each mask."""
        x = self.x[None]
        ytr = np.where(self.train_mask, self.y, -1)[None]
        yte = np.where(self.test_mask, self.y, -1)[None]
        return (x, ytr), (x, yte)

    def __repr__(self):
        return (f"Graph(n_nodes={self.n_nodes}, features={self.x.shape[1]}, edges={self.edges.shape[1]}, "
                f"classes={self.n_classes}, train={int(self.train_mask.sum())}, "
                f"test={int(self.test_mask.sum())})")


def sbm(n_nodes: int = 300, classes: int = 4, features: int = 16, p_in: float = 0.08,
        p_out: float = 0.01, feature_noise: float = 3.0, train_per_class: int = 20,
        seed: int = 0) -> Graph:
    """A stochastic block model with class-dependent features: a small, Cora-like node task.

    Node ``i`` belongs to class ``y_i`` (balanced, ``n_nodes // classes`` or one more each); an
    undirected edge joins two nodes with probability ``p_in`` inside a class and ``p_out``
    across. Features are a class mean (a random unit-variance vector per class, fixed by the seed)
    plus Gaussian noise of scale ``feature_noise``: noisy enough that a node's own features
    mislabel many nodes, so averaging over neighbours (what a graph layer does) pays. The train
    mask holds ``train_per_class`` nodes of each class (the Planetoid convention: 20), the test
    mask all the others. No self-loops and no duplicate edges are listed (layers add self-loops).
    """
    n_nodes = _v.positive_int(n_nodes, "n_nodes", minimum=2)
    classes = _v.positive_int(classes, "classes", minimum=2)
    features = _v.positive_int(features, "features")
    train_per_class = _v.positive_int(train_per_class, "train_per_class")
    for value, name in ((p_in, "p_in"), (p_out, "p_out")):
        p = _v.positive_float(value, name, allow_zero=True)
        if p > 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    feature_noise = _v.positive_float(feature_noise, "feature_noise", allow_zero=True)
    if train_per_class * classes >= n_nodes:
        raise ValueError(f"train_per_class * classes ({train_per_class * classes}) must be below "
                         f"n_nodes ({n_nodes}) to leave test nodes")
    rng = np.random.default_rng(_v.seed_arg(seed))
    y = rng.permutation(np.arange(n_nodes) % classes).astype(np.int64)
    iu, ju = np.triu_indices(n_nodes, k=1)
    p = np.where(y[iu] == y[ju], p_in, p_out)
    keep = rng.random(iu.size) < p
    src, dst = iu[keep], ju[keep]
    edges = np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])]).astype(np.int64)
    means = rng.standard_normal((classes, features))
    x = (means[y] + feature_noise * rng.standard_normal((n_nodes, features))).astype(np.float32)
    train_mask = np.zeros(n_nodes, dtype=bool)
    for c in range(classes):
        train_mask[rng.permutation(np.flatnonzero(y == c))[:train_per_class]] = True
    return Graph(x, edges, y, train_mask, ~train_mask, classes)


def temporal_order(n: int = 3000, length: int = 12, symbols: int = 4, seed: int = 0,
                   test_fraction: float = 0.2):
    """The temporal-order task (Hochreiter & Schmidhuber, 1997, experiment 6a), as sequences.

    Each sequence holds ``length`` one-hot symbols, shape (n, length, symbols + 2): random
    distractors from the first ``symbols`` symbols, except at two random times ``t1`` in the first
    half and ``t2`` in the second, which hold one of the two relevant symbols X or Y. The class
    (4 of them: XX, XY, YX, YY) is the ordered pair, so a model must remember what it saw at
    ``t1`` until ``t2``: no single time step, and no bag of symbols, tells the class (chance 25 %).
    Returns ``((x_train, y_train), (x_test, y_test))``; x float32 (N, T, F), y int64 in 0..3.
    """
    n = _v.positive_int(n, "n", minimum=8)
    length = _v.positive_int(length, "length", minimum=4)
    symbols = _v.positive_int(symbols, "symbols")
    _check_fraction(test_fraction)
    seed = _v.seed_arg(seed)
    rng = np.random.default_rng(seed)
    half = length // 2
    seq = rng.integers(0, symbols, (n, length))
    t1 = rng.integers(0, half, n)
    t2 = rng.integers(half, length, n)
    y = rng.integers(0, 4, n).astype(np.int64)
    rows = np.arange(n)
    seq[rows, t1] = symbols + y // 2  # X = symbols, Y = symbols + 1
    seq[rows, t2] = symbols + y % 2
    x = np.eye(symbols + 2, dtype=np.float32)[seq]
    return _split(x, y, test_fraction, seed)
