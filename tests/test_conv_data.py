"""MNIST-1D generated offline, and the digits as 8x8 images."""
from __future__ import annotations

import numpy as np
import pytest

import minilr


@pytest.fixture(scope="module")
def mnist1d():
    return minilr.datasets.load("mnist1d")


def test_mnist1d_shapes_and_balance(mnist1d):
    (x, y), (xt, yt) = mnist1d
    assert x.shape == (4000, 40) and xt.shape == (1000, 40)
    assert x.dtype == np.float32 and y.dtype == np.int64
    counts = np.bincount(np.concatenate([y, yt]), minlength=10)
    assert np.all(counts == 500)  # n // 10 per class before the shuffle and split
    assert np.all(np.bincount(y, minlength=10) > 300)  # the shuffle spreads them
    allx = np.concatenate([x, xt]).astype(np.float64)
    assert abs(allx.mean()) < 1e-5 and abs(allx.std() - 1) < 1e-5  # standardised as a whole
    assert np.all(np.isfinite(allx))


def test_mnist1d_is_a_pure_function_of_its_seed(mnist1d):
    (x, y), _ = mnist1d
    (x2, y2), _ = minilr.datasets.mnist1d()
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    (x3, _), _ = minilr.datasets.mnist1d(seed=7)
    assert not np.allclose(x, x3)
    state = np.random.get_state()[1].copy()
    minilr.datasets.mnist1d(n=100)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # no global seeding


def test_mnist1d_classes_differ_in_their_means(mnist1d):
    """The class templates survive the transforms: class-mean signals are far apart compared with
    their standard errors (a broken generator, e.g. labels shuffled apart from x, fails this)."""
    (x, y), _ = mnist1d
    means = np.stack([x[y == c].mean(axis=0) for c in range(10)])
    se = x.std() / np.sqrt(400)
    dist = np.linalg.norm(means[:, None] - means[None], axis=2)
    assert dist[np.triu_indices(10, 1)].min() > 5 * se


def test_mnist1d_equals_the_reference_package_when_installed(mnist1d):
    """Same recipe, same draws: equal to float32 rounding to the ``mnist1d`` package's generator."""
    pkg = pytest.importorskip("mnist1d.data")
    d = pkg.make_dataset(pkg.get_dataset_args())
    (x, y), (xt, yt) = mnist1d
    np.testing.assert_allclose(x, d["x"], atol=1e-6)
    np.testing.assert_allclose(xt, d["x_test"], atol=1e-6)
    np.testing.assert_array_equal(y, d["y"])
    np.testing.assert_array_equal(yt, d["y_test"])


def test_mnist1d_arguments_checked():
    with pytest.raises(ValueError, match="train_fraction"):
        minilr.datasets.mnist1d(train_fraction=1.5)
    with pytest.raises(TypeError, match="n"):
        minilr.datasets.mnist1d(n=10.5)


def test_digits_as_images():
    (x, y), (xt, yt) = minilr.datasets.load("digits", images=True)
    (xf, _), _ = minilr.datasets.load("digits")
    assert x.shape == (1438, 1, 8, 8) and xt.shape == (359, 1, 8, 8)
    np.testing.assert_array_equal(x.reshape(len(x), -1), xf)
    with pytest.raises(TypeError, match="images"):
        minilr.datasets.load("digits", images="yes")
