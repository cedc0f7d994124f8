"""Tutorial 11, exercise: split a batch's copies across two workers.

The LR estimate (paper Eq. 1) of a ReLU MLP with squared loss ``L = 1/2 |out - y|^2``, written by
hand. Copy ``k``'s noise comes from a generator seeded by ``(seed, k)``: a pure function of the
seed and the copy, so a worker can draw exactly the copies it owns. A step takes two exchanges:

1. each worker runs its copies forward and returns their losses; all losses are gathered, so every
   worker centres its copies on the leave-one-out baseline over *all* copies;
2. each worker forms its partial sums ``sum_k L_k eps_k x_k^T / sigma``; the sums are added (MPI's
   Allreduce) and divided by ``copies * batch``.

``check()`` compares the two-worker sum with a one-process estimate written independently
(all copies at once, one ``einsum`` per layer), and, on a single linear layer where the smoothed
loss has the exact gradient, tests that the estimate is unbiased.
"""
from __future__ import annotations

import numpy as np


def copy_noise(seed, k, shapes):
    """Copy ``k``'s noise for every layer: a pure function of ``(seed, k)``."""
    rng = np.random.default_rng([seed, k])
    return [rng.standard_normal(s) for s in shapes]


def forward(params, x, y, sigma, eps):
    """One noisy copy of the batch: per-sample losses ``(B,)`` and every layer's input."""
    h, inputs = x, []
    for layer, (W, b) in enumerate(params):
        inputs.append(h)
        v = h @ W.T + b + sigma * eps[layer]
        h = np.maximum(v, 0.0) if layer < len(params) - 1 else v
    return 0.5 * ((h - y) ** 2).sum(axis=1), inputs


class Worker:
    """Owns the copies ``[c0, c1)``; keeps their records between the two exchanges."""

    def __init__(self, params, x, y, sigma, seed, c0, c1):
        self.params, self.x, self.y, self.sigma, self.seed = params, x, y, sigma, seed
        self.copies = range(c0, c1)
        self.records = {}

    def losses(self):
        """Exchange 1: this worker's losses, shape ``(c1 - c0, B)``."""
        shapes = [(self.x.shape[0], W.shape[0]) for W, _ in self.params]
        out = []
        for k in self.copies:
            eps = copy_noise(self.seed, k, shapes)
            L, inputs = forward(self.params, self.x, self.y, self.sigma, eps)
            self.records[k] = (eps, inputs)
            out.append(L)
        return np.array(out)

    def sums(self, Lc):
        """Exchange 2: ``sum_k sum_n Lc eps x^T / sigma`` per layer (weights, biases), for this
        worker's copies; ``Lc`` is the centred losses of ALL copies, ``(K, B)``."""
        out = [[np.zeros_like(W), np.zeros_like(b)] for W, b in self.params]
        for k in self.copies:
            eps, inputs = self.records[k]
            for layer, (e, h) in enumerate(zip(eps, inputs)):
                w = Lc[k][:, None] * e / self.sigma  # (B, m)
                out[layer][0] += w.T @ h
                out[layer][1] += w.sum(axis=0)
        return out


def leave_one_out(L):
    """Centre each copy's loss on the mean of the other copies of the same sample (unbiased)."""
    K = L.shape[0]
    return L - (L.sum(axis=0, keepdims=True) - L) / (K - 1)


def lr_split(params, x, y, sigma, seed, copies, workers=2):
    """The LR gradient with the copies split across ``workers`` (contiguous ranges)."""
    bounds = [copies * r // workers for r in range(workers + 1)]
    team = [Worker(params, x, y, sigma, seed, bounds[r], bounds[r + 1]) for r in range(workers)]
    L = np.concatenate([w.losses() for w in team])  # exchange 1: gather every copy's losses
    Lc = leave_one_out(L)
    parts = [w.sums(Lc) for w in team]
    total = [[sum(p[layer][i] for p in parts) for i in (0, 1)] for layer in range(len(params))]
    n = copies * x.shape[0]  # exchange 2: the summed partial sums, then the mean
    return [(gW / n, gb / n) for gW, gb in total]


def lr_one_process(params, x, y, sigma, seed, copies):
    """The same estimate in one process, all copies at once; also each copy's contribution, whose
    mean over copies is the estimate (for a standard error)."""
    shapes = [(x.shape[0], W.shape[0]) for W, _ in params]
    draws = [copy_noise(seed, k, shapes) for k in range(copies)]
    eps = [np.stack([d[layer] for d in draws]) for layer in range(len(params))]  # (K, B, m)
    h, inputs = np.broadcast_to(x, (copies,) + x.shape), []
    for layer, (W, b) in enumerate(params):
        inputs.append(h)
        v = h @ W.T + b + sigma * eps[layer]
        h = np.maximum(v, 0.0) if layer < len(params) - 1 else v
    Lc = leave_one_out(0.5 * ((h - y) ** 2).sum(axis=2))
    B = x.shape[0]
    per_copy = [(np.einsum("kn,knm,knd->kmd", Lc, e, u) / (sigma * B), np.einsum("kn,knm->km", Lc, e) / (sigma * B))
                for e, u in zip(eps, inputs)]
    return [(gW.mean(axis=0), gb.mean(axis=0)) for gW, gb in per_copy], per_copy


def _params(sizes, rng):
    return [(rng.standard_normal((m, d)) / np.sqrt(d), 0.1 * rng.standard_normal(m)) for d, m in zip(sizes, sizes[1:])]


def check():
    rng = np.random.default_rng(0)
    # 1. two workers = one process, on a 3-layer ReLU MLP (an odd copy count: uneven ranges)
    params = _params([6, 8, 8, 3], rng)
    x, y = rng.standard_normal((5, 6)), rng.standard_normal((5, 3))
    split = lr_split(params, x, y, sigma=0.1, seed=3, copies=41, workers=2)
    one, _ = lr_one_process(params, x, y, sigma=0.1, seed=3, copies=41)
    for layer, ((a, b), (c, d)) in enumerate(zip(split, one)):
        # float64 sums of the same terms in another order: relative rounding ~1e-15, checked at 1e-10
        for got, want in ((a, c), (b, d)):
            rel = np.abs(got - want).max() / np.abs(want).max()
            assert rel < 1e-10, f"layer {layer}: two workers differ from one process by {rel:.1e}"
    # 2. unbiased: one linear layer with squared loss; the noise adds sigma^2 |eps|^2 / 2 to the
    # loss, a constant in W, so the smoothed loss's gradient is the exact one, mean_n u_n x_n^T
    params = _params([4, 3], rng)
    x, y = rng.standard_normal((16, 4)), rng.standard_normal((16, 3))
    (W, b), = params
    u = x @ W.T + b - y
    exact = [u.T @ x / len(x), u.mean(axis=0)]
    K = 4000
    split = lr_split(params, x, y, sigma=0.1, seed=1, copies=K, workers=2)
    _, per_copy = lr_one_process(params, x, y, sigma=0.1, seed=1, copies=K)
    for est, contrib, target in zip(split[0], per_copy[0], exact):
        se = contrib.std(axis=0, ddof=1) / np.sqrt(K)
        z = np.abs(est - target) / se
        # 15 coordinates, each ~N(0, 1) if unbiased: P(max |z| > 4.5) < 15 * 6.8e-6 = 1e-4 (union bound)
        assert z.max() < 4.5, f"biased? max |z| = {z.max():.2f} over {z.size} coordinates"
    return True


if __name__ == "__main__":
    check()
    print("two workers = one process; unbiased on a linear layer")
