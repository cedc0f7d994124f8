"""Hybrid and A-Hybrid (Jiang et al., 2023; paper Sec. 4.1): ES on the first layers, LR on the rest.

ES on a wide first layer costs one weight-sized noise draw per copy instead of one activation-sized
draw per row; LR on the rest keeps per-row credit assignment. The last layer is always left to LR,
so a two-layer MLP gets ES on its first layer only.
"""
from __future__ import annotations

from .base import Noisy


class Hybrid(Noisy):
    """ES on the first ``es_layers`` Linear layers (at most all but the last), LR after.

    ``approx=True`` is A-Hybrid: sign approximation in both parts (AES + ALR).
    """

    def __init__(self, approx: bool = False):
        self.approx = approx
        self.name = "a-hybrid" if approx else "hybrid"

    def modes(self, n_linear: int, es_layers: int):
        n_es = min(es_layers, n_linear - 1)
        return ["es"] * n_es + ["lr"] * (n_linear - n_es)
