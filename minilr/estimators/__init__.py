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
from . import sites as _sites

ESTIMATORS = {
    "lr": LR(False), "alr": LR(True),
    "es": ES(False), "aes": ES(True),
    "hybrid": Hybrid(False), "a-hybrid": Hybrid(True),
    "bp": Exact(),
}
NAMES = tuple(ESTIMATORS)
# True sends MLPs through the general path too (tests compare the two paths)
GENERAL = False

__all__ = ["ESTIMATORS", "NAMES", "Settings", "estimate", "lr_sums", "alr_sums", "lr_sigma_sums",
           "es_sums", "aes_sums", "es_sigma_sums", "centred_losses", "draw_noise", "noise_keys"]


def estimate(model, x, y, settings: Settings, ss, bk):
    """One estimate on device arrays ``x``, ``y``: (grads by key on the device, mean loss).

    Models with layers beyond Linear and activations (or any model while :data:`GENERAL`) take
    the general path of :mod:`minilr.estimators.sites`; "bp" always takes the reference."""
    est = ESTIMATORS[settings.estimator]
    if settings.estimator != "bp" and (not getattr(model, "is_mlp", True) or GENERAL):
        s = settings
        return _sites.estimate(model, x, y, est, s.copies, ss, s.loss, s.baseline, s.antithetic,
                               s.chunk, s.es_layers, bk)
    return est.estimate(model, x, y, settings, ss, bk)
