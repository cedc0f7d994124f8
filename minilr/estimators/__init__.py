"""Gradient estimators: *what* is computed, device-free; the backend's engine decides *how*.

Each paper equation is one plainly written function: :func:`~.lr.lr_sums` (Eq. 1),
:func:`~.base.centred_losses` (Eq. 2), :func:`~.lr.alr_sums` (Eq. 3), :func:`~.es.es_sums` and
:func:`~.es.aes_sums` (ES, AES). Each estimator object has ``estimate(model, x, y, settings, ss,
backend)``; the noisy ones say how every ``Linear`` layer is perturbed (``modes``) and whether only
signs are kept (``approx``), and :mod:`minilr.engines` runs their forward pass and sums.
"""
from __future__ import annotations

from .base import Settings, centred_losses, draw_noise, noise_keys
from .es import ES, aes_sums, es_sigma_sums, es_sums
from .exact import Exact
from .hybrid import Hybrid
from .lr import LR, alr_sums, lr_sigma_sums, lr_sums

ESTIMATORS = {
    "lr": LR(False), "alr": LR(True),
    "es": ES(False), "aes": ES(True),
    "hybrid": Hybrid(False), "a-hybrid": Hybrid(True),
    "bp": Exact(),
}
NAMES = tuple(ESTIMATORS)

__all__ = ["ESTIMATORS", "NAMES", "Settings", "estimate", "lr_sums", "alr_sums", "lr_sigma_sums",
           "es_sums", "aes_sums", "es_sigma_sums", "centred_losses", "draw_noise", "noise_keys"]


def estimate(model, x, y, settings: Settings, ss, bk):
    """One estimate on device arrays ``x``, ``y``: (grads by key on the device, mean loss)."""
    return ESTIMATORS[settings.estimator].estimate(model, x, y, settings, ss, bk)
