"""ES and AES: noise on each layer's weights, one perturbation per copy shared by the batch.

Copy ``k`` runs the batch through ``W + sigma E_k`` (``sigma_i`` scales row ``i``), ``b + sigma e_k``.
With ``Lk = sum_b L_{k,b}`` (centred, Eq. 2)::

    ES:   g_W = sum_k Lk * E_k / sigma          g_b = sum_k Lk * e_k / sigma
    AES:  g_W = sum_k Lk * sign(E_k)            g_b = sum_k Lk * sign(e_k)
    both: g_sigma[i] = sum_k Lk * (sum_j E_k[i, j]^2 + e_k[i]^2 - (d + 1)) / sigma_i

(the last is the score of ``N(W_i, sigma_i^2 I)`` over the ``d + 1`` numbers of neuron ``i``).
``E_k`` and ``e_k`` are drawn together as ``(m, d + 1)`` numbers per copy, ``[E_k | e_k]``; the
functions below take a block of them and return the ``(m, d + 1)`` sums (weight | bias).
"""
from __future__ import annotations

from .base import Noisy


def es_sums(Lk, E, sigma):
    """ES's ``sum_k Lk E_k / sigma`` over one block: ``Lk`` (K,), ``E`` (K, m, d + 1)."""
    return (Lk @ E.reshape(E.shape[0], -1)).reshape(E.shape[1:]) / sigma[:, None]


def aes_sums(Lk, E, xp):
    """AES's ``sum_k Lk sign(E_k)`` over one block (the noise is never 0, so the signs are +-1)."""
    return (Lk @ xp.sign(E).reshape(E.shape[0], -1)).reshape(E.shape[1:])


def es_sigma_sums(Lk, E, sigma):
    """The sigma score of ES and AES over one block: ``sum_k Lk (|[E_k | e_k]_i|^2 - (d + 1)) / sigma_i``."""
    return Lk @ ((E * E).sum(axis=-1) - E.shape[-1]) / sigma


class ES(Noisy):
    """Noise on every site's weights. ``approx=True`` is AES."""

    @property
    def name(self):
        return "aes" if self.approx else "es"

    def modes(self, n_sites: int, es_layers):
        return ["es"] * n_sites
