"""Hybrid and A-Hybrid (Jiang et al., 2023; paper Sec. 4.1): ES on the first layers, LR on the rest.

ES on a wide first layer costs one weight-sized noise draw per copy instead of one activation-sized
draw per row; LR on the rest keeps per-row credit assignment. The last site is always left to LR,
so a two-layer MLP gets ES on its first layer only.
"""
from __future__ import annotations

from .base import Noisy


class Hybrid(Noisy):
    """ES on the first ``es_layers`` noise sites, LR after; the last site always uses LR, so
    ``es_layers`` is at most the number of sites minus one (a ValueError names it otherwise).
    ``None``: the paper's two, at most all but the last.

    ``approx=True`` is A-Hybrid: sign approximation in both parts (AES + ALR).
    """

    uses_es_layers = True

    @property
    def name(self):
        return "a-hybrid" if self.approx else "hybrid"

    def modes(self, n_sites: int, es_layers):
        n_es = min(2, n_sites - 1) if es_layers is None else es_layers
        return ["es"] * n_es + ["lr"] * (n_sites - n_es)
