"""The generated graph (stochastic block model) and sequence (temporal order) tasks: shapes,
types, determinism by seed, and that each task is what its docstring promises."""
from __future__ import annotations

import numpy as np
import pytest

from minilr import datasets


# -- stochastic block model -------------------------------------------------------------------------
def test_sbm_shapes_types_and_masks():
    g = datasets.sbm(n_nodes=120, classes=3, features=5, train_per_class=10, seed=1)
    assert g.x.shape == (120, 5) and g.x.dtype == np.float32
    assert g.y.shape == (120,) and g.y.dtype == np.int64 and set(np.unique(g.y)) == {0, 1, 2}
    assert g.edges.shape[0] == 2 and g.edges.dtype == np.int64
    assert g.edges.min() >= 0 and g.edges.max() < 120
    assert not np.any(g.edges[0] == g.edges[1])  # no self-loops listed
    pairs = set(map(tuple, g.edges.T))
    assert len(pairs) == g.edges.shape[1]  # no duplicates
    assert all((j, i) in pairs for i, j in pairs)  # undirected: both directions listed
    assert not np.any(g.train_mask & g.test_mask) and np.all(g.train_mask | g.test_mask)
    assert [int(np.sum(g.train_mask & (g.y == c))) for c in range(3)] == [10, 10, 10]


def test_sbm_split_is_one_sample_with_masked_labels():
    g = datasets.sbm(seed=0)
    (x, y), (xt, yt) = datasets.load("sbm", seed=0)
    assert x.shape == (1, g.n_nodes, g.x.shape[1]) and np.array_equal(x[0], g.x) and xt is not None
    assert y.shape == yt.shape == (1, g.n_nodes)
    np.testing.assert_array_equal(y[0] >= 0, g.train_mask)
    np.testing.assert_array_equal(yt[0] >= 0, g.test_mask)
    np.testing.assert_array_equal(y[0][g.train_mask], g.y[g.train_mask])
    np.testing.assert_array_equal(yt[0][g.test_mask], g.y[g.test_mask])


def test_sbm_is_deterministic_by_seed():
    a, b, c = datasets.sbm(seed=3), datasets.sbm(seed=3), datasets.sbm(seed=4)
    for name in ("x", "edges", "y", "train_mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.x, c.x)


def test_sbm_is_homophilous_and_features_are_noisy():
    """Edges mostly join same-class nodes (p_in >> p_out), and neighbour averaging beats a
    node's own features by nearest class mean: the graph is needed."""
    g = datasets.sbm(seed=0)
    same = np.mean(g.y[g.edges[0]] == g.y[g.edges[1]])
    assert same > 0.6
    means = np.stack([g.x[g.y == c].mean(0) for c in range(g.n_classes)])
    A = np.zeros((g.n_nodes, g.n_nodes))
    A[g.edges[1], g.edges[0]] = 1
    A += np.eye(g.n_nodes)
    smooth = (A / A.sum(1, keepdims=True)) @ g.x
    own = np.mean(np.argmin(((g.x[:, None] - means) ** 2).sum(-1), 1) == g.y)
    nbr = np.mean(np.argmin(((smooth[:, None] - means) ** 2).sum(-1), 1) == g.y)
    assert own < 0.75 and nbr > own + 0.15, (own, nbr)


@pytest.mark.parametrize("kw, name", [(dict(n_nodes=1), "n_nodes"), (dict(p_in=1.5), "p_in"),
                                      (dict(p_out=-0.1), "p_out"), (dict(classes=1), "classes"),
                                      (dict(train_per_class=100), "train_per_class")])
def test_sbm_rejects_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        datasets.sbm(**kw)


# -- temporal order ---------------------------------------------------------------------------------
def test_temporal_order_shapes_and_types():
    (x, y), (xt, yt) = datasets.load("temporal_order", n=400, length=10, symbols=3, seed=2)
    assert x.shape[1:] == xt.shape[1:] == (10, 5) and len(x) + len(xt) == 400
    assert x.dtype == np.float32 and y.dtype == np.int64 and set(np.unique(y)) == {0, 1, 2, 3}
    assert np.all(x.sum(-1) == 1)  # one-hot symbols


def test_temporal_order_labels_follow_the_two_relevant_symbols():
    (x, y), _ = datasets.temporal_order(n=300, length=12, symbols=4, seed=0)
    sym = x.argmax(-1)
    for seq, label in zip(sym, y):
        t = np.flatnonzero(seq >= 4)
        assert len(t) == 2 and t[0] < 6 <= t[1]  # one in each half
        assert (seq[t[0]] - 4) * 2 + (seq[t[1]] - 4) == label


def test_temporal_order_needs_order_not_counts():
    """The bag of symbols of XY equals that of YX: a count-only model cannot beat ~50 %."""
    (x, y), _ = datasets.temporal_order(n=2000, seed=0)
    counts = x.sum(1)[:, 4:]  # how many X and Y
    for c in (1, 2):
        assert np.array_equal(np.unique(counts[y == c], axis=0), np.array([[1.0, 1.0]]))


def test_temporal_order_is_deterministic_by_seed():
    a = datasets.temporal_order(seed=5)
    b = datasets.temporal_order(seed=5)
    c = datasets.temporal_order(seed=6)
    np.testing.assert_array_equal(a[0][0], b[0][0])
    np.testing.assert_array_equal(a[1][1], b[1][1])
    assert not np.array_equal(a[0][0], c[0][0])


@pytest.mark.parametrize("kw, name", [(dict(length=2), "length"), (dict(n=3), "n"),
                                      (dict(symbols=0), "symbols"), (dict(test_fraction=1.5), "test_fraction")])
def test_temporal_order_rejects_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        datasets.temporal_order(**kw)
