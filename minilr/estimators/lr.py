"""LR (Eq. 1-2) and ALR (Eq. 3): noise on each layer's output, one score per row.

For the ``n``-th row (copy x sample) with centred loss ``L_n``::

    LR:   g_W[i, j] = sum_n L_n * x_j(n) * eps_i(n) / sigma_i
          g_b[i]    = sum_n L_n * eps_i(n) / sigma_i
    ALR:  g_W[i, j] = sum_n L_n * sign(x_j(n)) * sign(eps_i(n))      (Eq. 3)
          g_b[i]    = sum_n L_n * sign(eps_i(n))                      (x_0 = 1 is the bias input)
    both: g_sigma[i] = sum_n L_n * (eps_i(n)^2 - 1) / sigma_i         (kept exact, Eq. 3)

The sums are divided by the number of rows by the caller. Each sum over rows is one matrix
product: ``(L * eps)^T @ x``.
"""
from __future__ import annotations

from .base import draw_noise


class LRSite:
    """What one LR-perturbed layer keeps from the forward pass, and its gradient."""

    def __init__(self, x, eps, sigma, approx, xp):
        self.shared = x.ndim == 2  # the model input: one copy for all K
        self.approx = approx
        self.sigma = sigma
        self.xp = xp
        if approx:
            # Only signs survive: sign(x) in {-1, 0, 1} and sign(eps) in {-1, 1}.
            self.x = xp.sign(x)
            self.s = xp.sign(eps)
        else:
            self.x, self.s = x, eps
        self.eps_sq_minus_1 = eps * eps - 1  # exact sigma score, needed by both

    @classmethod
    def forward(cls, h, W, b, sigma, copies, rng, dtype, antithetic, approx, xp):
        v = h @ W.T + b  # (B, m) for the shared input, else (K, B, m)
        B = v.shape[-2]
        eps = draw_noise(rng, (copies, B, W.shape[0]), dtype, antithetic, xp)
        return v + sigma * eps, cls(h, eps, sigma, approx, xp)

    def gradient(self, Lc):
        """Unnormalised sums over rows for weight, bias and sigma; ``Lc`` is (K, B)."""
        w = Lc[..., None] * self.s  # (K, B, m)
        m = w.shape[-1]
        if self.shared:
            gW = w.sum(axis=0).T @ self.x
        else:
            gW = w.reshape(-1, m).T @ self.x.reshape(-1, self.x.shape[-1])
        gb = w.sum(axis=(0, 1))
        gs = (Lc[..., None] * self.eps_sq_minus_1).sum(axis=(0, 1)) / self.sigma
        if not self.approx:
            gW = gW / self.sigma[:, None]
            gb = gb / self.sigma
        return {"weight": gW, "bias": gb, "sigma": gs}


class LR:
    """Noise on every layer's output. ``approx=True`` is ALR (Eq. 3)."""

    def __init__(self, approx: bool = False):
        self.approx = approx
        self.name = "alr" if approx else "lr"

    def modes(self, n_linear: int, es_layers: int):
        return ["lr"] * n_linear
