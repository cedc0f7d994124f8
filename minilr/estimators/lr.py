"""LR (Eq. 1-2) and ALR (Eq. 3): noise on each layer's output, one score per row.

For the ``n``-th row (copy x sample) with centred loss ``L_n`` (Eq. 2, :func:`~.base.centred_losses`)::

    LR:   g_W[i, j] = sum_n L_n * x_j(n) * eps_i(n) / sigma_i               (Eq. 1)
          g_b[i]    = sum_n L_n * eps_i(n) / sigma_i
    ALR:  g_W[i, j] = sum_n L_n * sign(x_j(n)) * sign(eps_i(n))           (Eq. 3)
          g_b[i]    = sum_n L_n * sign(eps_i(n))                           (x_0 = 1 is the bias input)
    both: g_sigma[i] = sum_n L_n * (eps_i(n)^2 - 1) / sigma_i              (kept exact, Eq. 3)

The sums are divided by the number of rows by the caller. Each weight sum is one matrix product
``(L * eps)^T @ x``. These functions are the plain statement of the sums over one block of rows;
the engines (:mod:`minilr.engines`) decide what a forward pass keeps for them (ALR: only packed
sign bits) and how they run, and are tested equal to these.
"""
from __future__ import annotations

from .base import Noisy


def lr_sums(L, x, eps, sigma):
    """Eq. 1 summed over the rows of one block: ``(g_W, g_b)``.

    ``L``: (K, B) centred losses; ``eps``: (K, B, m) the layer's output noise; ``x``: (K, B, d) its
    input, or (B, d) when every copy shares it (the first layer: then ``sum_k`` goes first).
    """
    w = L[..., None] * eps  # L_n eps_i(n)
    if x.ndim == 2:
        wx = w.sum(axis=0).T @ x
    else:
        wx = w.reshape(-1, w.shape[-1]).T @ x.reshape(-1, x.shape[-1])
    return wx / sigma[:, None], w.sum(axis=(0, 1)) / sigma


def alr_sums(L, sign_x, sign_eps):
    """Eq. 3 summed over the rows of one block: ``(g_W, g_b)``, with ``sign_eps`` (K, B, m) in
    place of ``eps / sigma`` and ``sign_x`` (K, B, d) or shared (B, d) in place of ``x``."""
    w = L[..., None] * sign_eps
    if sign_x.ndim == 2:
        wx = w.sum(axis=0).T @ sign_x
    else:
        wx = w.reshape(-1, w.shape[-1]).T @ sign_x.reshape(-1, sign_x.shape[-1])
    return wx, w.sum(axis=(0, 1))


def lr_sigma_sums(L, eps, sigma):
    """The sigma score of LR and ALR summed over one block: ``sum_n L_n (eps_n^2 - 1) / sigma``."""
    return (L[..., None] * (eps * eps - 1)).sum(axis=(0, 1)) / sigma


class LR(Noisy):
    """Noise on every site's output. ``approx=True`` is ALR (Eq. 3)."""

    @property
    def name(self):
        return "alr" if self.approx else "lr"

    def modes(self, n_sites: int, es_layers):
        return ["lr"] * n_sites
