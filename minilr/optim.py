"""Optimizers, step-size schedules and the projection Pi_Omega of Eq. 4.

An optimizer turns a gradient dict into an in-place update of the parameter dict:
``omega_{k+1} = Pi_Omega(omega_k - lambda_k g_k)``. Plain SGD with the Robbins-Monro schedule and
the projection is exactly the recursion whose convergence the paper proves (Theorem 2); momentum
and Adam are what people use in practice.
"""
from __future__ import annotations

import copy as _copy
import math

import numpy as np

from . import validation as _v

__all__ = ["SGD", "SignSGD", "Adam", "constant", "robbins_monro", "Projection", "make_optimizer", "OPTIMIZERS",
           "trial_step"]


def constant(lr: float):
    """``lambda_k = lr`` for every step."""
    lr = _v.positive_float(lr, "lr")
    return lambda k: lr


def robbins_monro(lr: float, decay_steps: float = 1000.0, power: float = 1.0):
    """``lambda_k = lr / (1 + k / decay_steps) ** power``.

    With ``0.5 < power <= 1`` this meets Assumption 3: ``sum lambda_k = inf`` (power <= 1) and
    ``sum lambda_k^2 < inf`` (2 * power > 1).
    """
    lr = _v.positive_float(lr, "lr")
    decay_steps = _v.positive_float(decay_steps, "decay_steps")
    power = _v.positive_float(power, "power")
    if not 0.5 < power <= 1.0:
        raise ValueError(f"power must be in (0.5, 1] so the steps satisfy Assumption 3, got {power}")
    return lambda k: lr / (1.0 + k / decay_steps) ** power


class _State:
    """What a checkpoint needs of an optimizer: its step count and per-parameter arrays.

    ``state()`` is ``{"k": int, <name>: {param key: array}}`` (the arrays are never changed in place
    by :meth:`step`, which builds new ones, so a shallow copy is a snapshot); ``set_state`` puts one
    back; ``clone()`` is an independent optimizer in the same state (for a trial step).
    """

    _arrays = ()

    def state(self) -> dict:
        return {"k": self.k, **{name: dict(getattr(self, name)) for name in self._arrays}}

    def set_state(self, state: dict) -> None:
        self.k = int(state["k"])
        for name in self._arrays:
            setattr(self, name, dict(state.get(name, {})))

    def clone(self):
        other = _copy.copy(self)
        other.set_state(self.state())
        return other


class SGD(_State):
    """Stochastic gradient descent with optional (heavy-ball) momentum."""

    _arrays = ("velocity",)

    def __init__(self, lr=1e-2, momentum: float = 0.0, schedule=None):
        self.schedule = schedule or constant(lr)
        self.momentum = _v.positive_float(momentum, "momentum", allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.k = 0
        self.velocity = {}

    def step(self, params: dict, grads: dict) -> None:
        lr = self.schedule(self.k)
        for key, g in grads.items():
            if self.momentum:
                v = self.velocity.get(key)
                v = g if v is None else self.momentum * v + g
                self.velocity[key] = v
                g = v
            params[key] -= (lr * g).astype(params[key].dtype, copy=False)
        self.k += 1


class SignSGD(_State):
    """signSGD (Bernstein et al., 2018): ``omega -= lambda_k * sign(g)``, elementwise.

    The second reading of the paper's "w A" row (Sec. 4.2: "takes the sign of the update"), as
    opposed to Eq. 3's sign of the stored intermediates. It is an optimizer, so it composes with
    every estimator, BP and FA alike. ``sign(0) = 0``: a parameter with no gradient stays put.
    """

    def __init__(self, lr=1e-3, schedule=None):
        self.schedule = schedule or constant(lr)
        self.k = 0

    def step(self, params: dict, grads: dict) -> None:
        lr = self.schedule(self.k)
        for key, g in grads.items():
            # np.sign dispatches to CuPy for device arrays (__array_ufunc__)
            params[key] -= (lr * np.sign(g)).astype(params[key].dtype, copy=False)
        self.k += 1


class Adam(_State):
    """Adam (Kingma & Ba, 2015) with bias correction."""

    _arrays = ("m", "v")

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps: float = 1e-8, schedule=None):
        self.schedule = schedule or constant(lr)
        self.b1, self.b2 = (float(b) for b in betas)
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.eps = _v.positive_float(eps, "eps")
        self.k = 0
        self.m, self.v = {}, {}

    def step(self, params: dict, grads: dict) -> None:
        lr = self.schedule(self.k)
        self.k += 1
        c1, c2 = 1 - self.b1 ** self.k, 1 - self.b2 ** self.k
        for key, g in grads.items():
            m = self.m.get(key, 0) * self.b1 + (1 - self.b1) * g
            v = self.v.get(key, 0) * self.b2 + (1 - self.b2) * g * g
            self.m[key], self.v[key] = m, v
            update = lr * (m / c1) / ((v / c2) ** 0.5 + self.eps)
            params[key] -= update.astype(params[key].dtype, copy=False)


class Projection:
    """``Pi_Omega`` of Eq. 4: keep every sigma in [sigma_min, sigma_max] and, optionally, every
    weight and bias in [-weight_bound, weight_bound]. Omega is then a box: closed, convex and, with
    a weight bound, compact (Assumption 1).
    """

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 10.0, weight_bound=None):
        self.sigma_min = _v.positive_float(sigma_min, "sigma_min")
        self.sigma_max = _v.positive_float(sigma_max, "sigma_max")
        if self.sigma_min > self.sigma_max:
            raise ValueError(f"sigma_min ({sigma_min}) must be <= sigma_max ({sigma_max})")
        self.weight_bound = None if weight_bound is None else _v.positive_float(weight_bound, "weight_bound")

    def __call__(self, params: dict, xp) -> None:
        for key, p in params.items():
            if key.endswith(".sigma"):
                xp.clip(p, self.sigma_min, self.sigma_max, out=p)
            elif self.weight_bound is not None:
                xp.clip(p, -self.weight_bound, self.weight_bound, out=p)


OPTIMIZERS = ("sgd", "momentum", "adam", "signsgd")


def make_optimizer(name, lr, schedule="constant", momentum=0.9, decay_steps=1000.0):
    """An optimizer from its name: ``"sgd"``, ``"momentum"`` (SGD, momentum 0.9), ``"adam"`` or
    ``"signsgd"`` (:class:`SignSGD`: the step is ``lr * sign(g)``).

    ``schedule`` is ``"constant"`` or ``"robbins-monro"`` (:func:`robbins_monro`).
    """
    if not isinstance(name, str):
        if hasattr(name, "step"):
            return name
        raise TypeError(f"optimizer must be one of {OPTIMIZERS} or an object with .step(), got {name!r}")
    _v.choice(name, "optimizer", OPTIMIZERS)
    if isinstance(lr, (int, float)) and not math.isfinite(lr):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    _v.choice(schedule, "schedule", ("constant", "robbins-monro"))
    momentum = _v.positive_float(momentum, "momentum", allow_zero=True)  # checked whatever the optimizer
    if momentum >= 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    sched = constant(lr) if schedule == "constant" else robbins_monro(lr, decay_steps)
    if name == "adam":
        return Adam(schedule=sched)
    if name == "signsgd":
        return SignSGD(schedule=sched)
    return SGD(momentum=momentum if name == "momentum" else 0.0, schedule=sched)


def trial_step(opt, project, params: dict, grads: dict, xp):
    """One step of Eq. 4, ``Pi_Omega(omega - lambda g)``, computed into fresh arrays.

    Returns ``(new_params, new_opt)``; ``params`` and ``opt`` are left untouched, so an interrupt
    or error anywhere in here changes nothing. The caller commits both at once (a few attribute
    assignments, see ``minilr.train``) or drops them.
    """
    new = {k: p.copy() for k, p in params.items()}
    trial = opt.clone() if hasattr(opt, "clone") else _copy.deepcopy(opt)
    trial.step(new, grads)
    project(new, xp)
    return new, trial


def commit(opt, trial) -> None:
    """Make ``opt`` the optimizer ``trial`` of :func:`trial_step` (same state)."""
    if hasattr(opt, "set_state") and hasattr(trial, "state"):
        opt.set_state(trial.state())
    else:
        opt.__dict__.update(trial.__dict__)
