"""Gradient estimators: *what* is computed, device-free; the backend's engine decides *how*.

Each paper equation is one plainly written function: :func:`~.lr.lr_sums` (Eq. 1),
:func:`~.base.centred_losses` (Eq. 2), :func:`~.lr.alr_sums` (Eq. 3), :func:`~.es.es_sums` and
:func:`~.es.aes_sums` (ES, AES), the sigma scores :func:`~.lr.lr_sigma_sums` and
:func:`~.es.es_sigma_sums`. An estimator says how every noise site is perturbed (``modes``) and
whether only signs are kept (``approx``); :func:`~.base.estimate` is the one loop that runs it on
the backend's engine (:mod:`minilr.engines`), for every model.
"""
from __future__ import annotations

from .base import Plan, Schedule, Settings, Share, centred_losses, noise_keys
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

__all__ = ["ESTIMATORS", "NAMES", "Settings", "Plan", "Share", "Schedule", "estimate", "lr_sums",
           "alr_sums", "lr_sigma_sums", "es_sums", "aes_sums", "es_sigma_sums", "centred_losses",
           "noise_keys"]


def estimate(model, x, y, settings: Settings, ss, bk, *, share=None, schedule=None):
    """One estimate on device arrays ``x``, ``y``: (grads by key on the device, mean loss).

    ``"bp"`` is the exact reference; every other estimator runs :func:`.base.estimate`, the one
    loop, with the ``share`` (processes) and ``schedule`` (overlap) hooks."""
    if settings.estimator == "bp":
        return ESTIMATORS["bp"].estimate(model, x, y, settings, ss, bk)
    from . import base  # noqa: PLC0415

    return base.estimate(model, x, y, settings, ss, bk, share=share, schedule=schedule)
