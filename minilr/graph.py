"""Graph attention (Velickovic et al., 2018) on a graph given as an edge list.

**Layout.** Node classification on one graph is *transductive*: the graph (its edge list) is part
of the model, and the whole graph is one sample. Inputs are node features ``(N, n_nodes, F)``
(``N = 1`` for one graph; several graphs with the same edges may be stacked), outputs are
``(N, n_nodes, F')``. Labels are ``(N, n_nodes)`` class indices with ``-1`` on nodes outside the
loss (the train or test mask): :func:`minilr.datasets.sbm` gives a graph in exactly this form,
and the per-sample loss is the mean over the labelled nodes.

**The layer** (one head), for every edge ``j -> i`` (self-loops added)::

    z        = x W^T + b                                  (n_nodes, F')   noise site 1
    [s, d]   = z A^T                                      (n_nodes, 2)    noise site 2
    e_ij     = LeakyReLU(s_j + d_i)
    alpha_ij = softmax over the edges into i of e_ij
    out_i    = sum_j alpha_ij z_j

**Where the noise goes.** LR perturbs the projected features ``z`` (one ``sigma`` per output
feature) and the attention logits' two halves ``s``, ``d`` (one ``sigma`` each: the attention
vector ``A`` is a noise site of its own, so it is trained too); ES perturbs ``W``, ``b`` and ``A``.
Every node is a position of the site, so a weight gradient sums over rows *and* nodes.
"""
from __future__ import annotations

import numpy as np

from . import validation as _v
from .layers import Layer, _check_sigma

__all__ = ["GraphAttention", "segment_softmax"]


def check_edges(edges, n_nodes=None, name="edges"):
    """An edge list ``(2, E)`` of non-negative integer node ids (row 0 sources, row 1 targets)."""
    e = _v.as_host_array(edges, name)
    if e.ndim != 2 or e.shape[0] != 2:
        raise ValueError(f"{name} must be an edge list of shape (2, E) (sources, targets), got shape {e.shape}")
    if e.size and e.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer node ids, got dtype {e.dtype}")
    e = e.astype(np.int64)
    if e.size and e.min() < 0:
        raise ValueError(f"{name} holds a negative node id ({e.min()})")
    if n_nodes is not None and e.size and e.max() >= n_nodes:
        raise ValueError(f"{name} names node {e.max()} but n_nodes is {n_nodes}")
    return e


def segment_softmax(e, dst, starts, xp):
    """Softmax of ``e`` (..., E) over each target's incoming edges (edges sorted by ``dst``,
    ``starts`` the first edge of each target; every target has one: its self-loop)."""
    if xp is np:
        m = np.maximum.reduceat(e, starts, axis=-1)[..., dst]
    else:  # no ufunc.reduceat on CuPy: the row's max is a constant shift of every segment too
        m = e.max(axis=-1, keepdims=True)
    a = xp.exp(e - m)
    return a / segment_sum(a, dst, starts, xp)[..., dst]


def segment_sum(v, dst, starts, xp, axis=-1):
    """Sum ``v`` over each target's edges along ``axis`` (edges sorted by target ``dst``)."""
    if xp is np:
        return np.add.reduceat(v, starts, axis=axis)
    v = xp.moveaxis(v, axis, -1)
    out = xp.zeros(v.shape[:-1] + (len(starts),), dtype=v.dtype)
    xp.add.at(out, (Ellipsis, xp.asarray(dst)), v)
    return xp.moveaxis(out, -1, axis)


class GraphAttention(Layer):
    """One graph-attention head on a fixed graph (see the module docstring for the layout).

    Parameters
    ----------
    in_features, out_features : int
    edges : int array (2, E)
        Sources in row 0, targets in row 1; a self-loop is added to every node (and any listed
        one dropped), so every node attends at least to itself.
    n_nodes : int, optional
        Number of nodes (default: one more than the largest id in ``edges``).
    negative_slope : float, default 0.2
        Of the LeakyReLU on the attention logits.
    sigma, att_sigma : noise scales of the projected features (out_features,) and of the two
        attention logits (2,); ``None`` takes the model's.

    Parameters: ``weight`` (F', F), ``bias`` (F',) of the projection; ``att_weight`` (2, F'), the
    attention vector (row 0 for the source node, row 1 for the target), with no bias.
    """

    sites = ("", "att_")
    children = ()

    def __init__(self, in_features, out_features, edges, n_nodes=None, negative_slope=0.2,
                 sigma=None, att_sigma=None, learn_sigma=None):
        self.in_features = _v.positive_int(in_features, "in_features")
        self.out_features = _v.positive_int(out_features, "out_features")
        e = check_edges(edges)
        if n_nodes is None:
            if not e.size:
                raise ValueError("n_nodes is needed when edges is empty")
            n_nodes = int(e.max()) + 1
        self.n_nodes = _v.positive_int(n_nodes, "n_nodes")
        e = check_edges(e, self.n_nodes)
        self.negative_slope = _v.positive_float(negative_slope, "negative_slope", allow_zero=True)
        e = e[:, e[0] != e[1]]
        loops = np.arange(self.n_nodes)
        src = np.concatenate([e[0], loops])
        dst = np.concatenate([e[1], loops])
        order = np.lexsort((src, dst))  # by target, then source: segments of incoming edges
        self.src, self.dst = src[order], dst[order]
        self.starts = np.searchsorted(self.dst, loops)
        self.sigma = None if sigma is None else _check_sigma(sigma, self.out_features)
        self.att_sigma = None if att_sigma is None else _check_sigma(att_sigma, 2)
        self.att_bias = None
        if learn_sigma is not None and not isinstance(learn_sigma, (bool, np.bool_)):
            raise TypeError(f"learn_sigma must be True, False or None, got {learn_sigma!r}")
        self.learn_sigma = learn_sigma

    def array_shapes(self):
        G = self.out_features
        return {"weight": (G, self.in_features), "bias": (G,), "att_weight": (2, G)}

    def config(self):
        # the edges with their self-loops: every node is listed, so a file's n_nodes is bounded
        # by the size of its edge list (see from_config)
        return {"in_features": self.in_features, "out_features": self.out_features,
                "edges": [self.src.tolist(), self.dst.tolist()], "n_nodes": self.n_nodes,
                "negative_slope": self.negative_slope, "learn_sigma": bool(self.learn_sigma)}

    @classmethod
    def from_config(cls, config):
        edges, n = config.get("edges"), config.get("n_nodes")
        if not (isinstance(edges, list) and len(edges) == 2 and all(isinstance(e, list) for e in edges)):
            raise ValueError("GraphAttention: edges must be two lists of node ids")
        if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= len(edges[0]):
            raise ValueError(f"GraphAttention: n_nodes {n!r} must be a positive int no larger than the "
                             f"edge list ({len(edges[0])} edges, self-loops included)")
        return cls(**{**config, "edges": np.array(edges, dtype=np.int64).reshape(2, -1)})

    def backward(self, x, delta, feedback=None):
        from .reference import layer_gradient

        return layer_gradient(self, x, delta)

    @property
    def n_edges(self) -> int:
        """Edges attended over, self-loops included."""
        return self.src.size

    def init(self, rng, dtype):
        """Glorot-uniform ``W`` and ``A`` (as GAT does), zero bias."""
        F, G = self.in_features, self.out_features
        bound = np.sqrt(6.0 / (F + G))
        self.weight = rng.uniform(-bound, bound, (G, F)).astype(dtype)
        self.bias = np.zeros(G, dtype)
        bound = np.sqrt(6.0 / (G + 1))
        self.att_weight = rng.uniform(-bound, bound, (2, G)).astype(dtype)

    def out_shape(self, in_shape):
        """Node features ``(n_nodes, F)`` -> ``(n_nodes, F')``."""
        if tuple(in_shape) != (self.n_nodes, self.in_features):
            raise ValueError(f"{self!r} expects node features of shape (batch, {self.n_nodes}, "
                             f"{self.in_features}) (the whole graph is one sample), got "
                             f"(batch, {', '.join(map(str, in_shape))})")
        return (self.n_nodes, self.out_features)

    def forward(self, x, xp):
        """Noiseless pass on node features ``x`` (N, n_nodes, F)."""
        from .layers import NoiselessContext

        return self.train_forward(x, NoiselessContext(xp))

    def train_forward(self, x, ctx):
        """Node features (rows, n_nodes, F) -> (rows, n_nodes, F'): every node is a position of
        both noise sites (the projection, then the attention logits)."""
        z = ctx.affine(self, x)
        sd = ctx.affine(self, z, "att_")
        return attend(z, sd, self.src, self.dst, self.starts, self.negative_slope, ctx.xp)[0]

    def __repr__(self):
        return f"GraphAttention({self.in_features}, {self.out_features}, n_nodes={self.n_nodes}, edges={self.n_edges})"


def attend(z, sd, src, dst, starts, slope, xp):
    """Attention over the edges: returns ``out`` (..., n, F') and ``(pre, alpha)`` for the reference."""
    pre = sd[..., src, 0] + sd[..., dst, 1]  # (..., E)
    e = xp.where(pre > 0, pre, slope * pre)
    alpha = segment_softmax(e, dst, starts, xp)
    out = segment_sum(alpha[..., None] * z[..., src, :], dst, starts, xp, axis=-2)
    return out, (pre, alpha)
