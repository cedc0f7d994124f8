"""The two entry points people call: :func:`estimate_gradient` and :func:`train`."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import validation as _v
from .backend import child, get_backend, seed_sequence
from .estimators import Settings, estimate
from .layers import Linear
from .losses import per_sample
from .models import Sequential, _forward
from .optim import Projection, make_optimizer
from .parallel import mpi as _mpi

__all__ = ["estimate_gradient", "train", "History", "TrainingDiverged"]


class TrainingDiverged(FloatingPointError):
    """The loss or the parameters became NaN/inf; the model keeps its last good parameters.

    ``history`` holds the epochs that finished.
    """

    def __init__(self, message, history):
        super().__init__(message)
        self.history = history


@dataclass
class History:
    """What :func:`train` measured, one entry per epoch.

    ``train_loss`` is the mean loss of the noisy copies seen during the epoch (what the estimator
    optimises); ``train_accuracy``, ``val_loss`` and ``val_accuracy`` are noiseless, measured at
    the end of the epoch; ``seconds`` is the wall time of each epoch's training steps.
    """

    estimator: str = ""
    copies: int = 0
    train_loss: list = field(default_factory=list)
    train_accuracy: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    seconds: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# -- shared checks --------------------------------------------------------------------------------
def _check_model(model):
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a minilr Sequential or MLP, got {type(model).__name__}")
    for k, p in model.parameters().items():
        if not bool(np.all(np.isfinite(p))):
            raise ValueError(f"model parameter {k!r} contains NaN or inf")
    for prefix, layer, name in model.noise_sites():
        s = getattr(layer, name + "sigma")
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError(f"sigma of layer {prefix[:-1]} must be > 0 and finite, got min {np.min(s)}")


def _check_common(model, estimator, copies, loss, seed, chunk, antithetic, es_layers, backend,
                  baseline=True, comm=None):
    """Every shared argument checked once: (Settings, Backend)."""
    _check_model(model)
    _mpi.check_comm(comm)
    settings = Settings(estimator, copies, loss, baseline, antithetic, chunk, es_layers)
    _v.seed_arg(seed)
    return settings, get_backend(backend)


@contextlib.contextmanager
def _on_backend(model, bk):
    """Move the model's arrays to ``bk`` for the block; bring them home afterwards (even on error)."""
    if bk.name == "numpy":
        yield
        return
    if not model.is_mlp:
        _move_sites(model, bk.asarray)
        try:
            yield
        finally:
            _move_sites(model, bk.to_numpy)
        return
    for layer in model.layers:
        if isinstance(layer, Linear):
            layer.weight, layer.bias, layer.sigma = (bk.asarray(a) for a in (layer.weight, layer.bias, layer.sigma))
    try:
        yield
    finally:
        for layer in model.layers:
            if isinstance(layer, Linear):
                layer.weight, layer.bias, layer.sigma = (bk.to_numpy(a) for a in (layer.weight, layer.bias, layer.sigma))


def _move_sites(model, move):
    """Apply ``move`` to every noise site's weight, bias and sigma (general models)."""
    for _, layer, name in model.noise_sites():
        for p in ("weight", "bias", "sigma"):
            a = getattr(layer, name + p, None)
            if a is not None:
                setattr(layer, name + p, move(a))


# -- estimate_gradient ----------------------------------------------------------------------------
def estimate_gradient(model, x, y, estimator="lr", copies=100, seed=0, loss="cross_entropy",
                      baseline=True, antithetic=False, chunk=None, es_layers=2, backend="numpy", comm=None):
    """One gradient estimate of the mean loss on the batch ``(x, y)``.

    Parameters
    ----------
    model : Sequential
    x : array (batch, in_features);  y : class indices (batch,) or targets (batch, out)
    estimator : "lr" | "alr" | "es" | "aes" | "hybrid" | "a-hybrid" | "bp"
        ``"bp"`` is the exact noiseless gradient (sigma entries zero), for comparison.
    copies : int
        Noisy copies K of each sample (ES: weight perturbations shared by the batch).
    seed : int, SeedSequence or None
        The same seed gives the same numbers, bit for bit, on the same backend.
    loss : "cross_entropy" | "mse" | callable
        A callable ``loss(out, y, xp)`` returns one loss per row of ``out`` (shape ``out.shape[:-1]``);
        it is only evaluated, never differentiated, so it may be anything (not with "bp").
    baseline : bool
        Subtract the leave-one-out mean loss of each sample's other copies (unbiased, lower variance).
    antithetic : bool
        Mirror the noise, ``+eps`` and ``-eps`` (copies must be even).
    chunk : int, optional
        Process copies this many at a time; peak memory then depends on ``chunk``, not ``copies``.
    es_layers : int
        For the hybrids: how many leading Linear layers use ES (the last layer always uses LR).
    backend : "numpy" | "cupy" | Backend
        A name makes a fresh backend and engine for this call; a :class:`~minilr.Backend` you hold
        (e.g. ``Backend("numpy", engine="reference")``) is used as it is, its engine's scratch
        memory kept between calls.
    comm : mpi4py communicator, optional
        Share the copies over its ranks (run under ``mpiexec``; every rank calls with the same
        arguments and gets the same gradient: the one-process one, up to the order of float sums).
        See :mod:`minilr.parallel.distributed`.

    Returns
    -------
    dict[str, numpy.ndarray]
        Same keys and shapes as ``model.parameters()``.
    """
    s, bk = _check_common(model, estimator, copies, loss, seed, chunk, antithetic, es_layers, backend,
                          baseline, comm)
    x = model.check_input(x, "x")
    y = _v.targets(y, "y", s.loss, x.shape[0], _out_width(model, x), _out_positions(model, x))
    with _on_backend(model, bk):
        grads, _ = _estimate(model, bk.asarray(x, model.dtype), _device_targets(y, s.loss, model, bk),
                             s, seed_sequence(seed), bk, comm)
        return {k: bk.to_numpy(g) for k, g in grads.items()}


def _estimate(model, x, y, s, ss, bk, comm):
    """One estimate in this process, or over the ranks of ``comm``."""
    if comm is None:
        return estimate(model, x, y, s, ss, bk)
    from .parallel import distributed  # noqa: PLC0415

    return distributed.estimate(model, x, y, s, ss, bk, comm)


def _out_width(model, x):
    """The model's output width for inputs like ``x`` (checked by ``model.check_input``)."""
    return model.out_features if model.is_mlp else model.output_shape(x.shape[1:])[-1]


def _out_positions(model, x):
    """Output axes before the classes (graph nodes: ``(n_nodes,)``); ``()`` for most models."""
    return () if model.is_mlp else tuple(model.output_shape(x.shape[1:])[:-1])


def _device_targets(y, loss, model, bk):
    return bk.asarray(y, model.dtype) if loss == "mse" else bk.asarray(y)


# -- train ----------------------------------------------------------------------------------------
def _check_data(data, name, model, loss):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        what = f"a {type(data).__name__} of length {len(data)}" if isinstance(data, (tuple, list)) else type(data).__name__
        raise TypeError(f"{name} must be a tuple (x, y), got {what}")
    x = model.check_input(data[0], f"{name}[0] (x)")
    y = _v.targets(data[1], f"{name}[1] (y)", loss, x.shape[0], _out_width(model, x),
                   _out_positions(model, x))
    return x, y


def _evaluate(model, x, y, loss, bk):
    """Noiseless (loss, accuracy) on host arrays, computed on the backend in blocks."""
    total, correct, labelled = 0.0, 0, 0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # huge logits: inf loss, said so
        for s in range(0, len(x), 4096):
            out = _forward(model, bk.asarray(x[s:s + 4096], model.dtype), bk.xp, bk)
            yb = _device_targets(y[s:s + 4096], loss, model, bk)
            total += float(per_sample(loss, out, yb, bk.xp).sum())
            if loss == "cross_entropy":  # labels -1 (positions without one) never count
                correct += int((out.argmax(axis=-1) == yb).sum())
                labelled += int((yb >= 0).sum())
    return total / len(x), (correct / max(labelled, 1) if loss == "cross_entropy" else float("nan"))


def train(model, data, val_data=None, estimator="alr", copies=100, epochs=10, batch_size=50,
          optimizer="adam", lr=1e-2, backend="numpy", seed=0, progress=True, loss="cross_entropy",
          baseline=True, antithetic=False, chunk=None, es_layers=2, schedule="constant",
          momentum=0.9, sigma_bounds=(1e-3, 10.0), weight_bound=None, callback=None, comm=None) -> History:
    """Train ``model`` in place without backpropagation; return its :class:`History`.

    Each step estimates the gradient on a mini-batch with ``estimator`` (see
    :func:`estimate_gradient` for ``copies``, ``baseline``, ``antithetic``, ``chunk``,
    ``es_layers``), then applies ``optimizer`` ("sgd", "momentum", "adam" or an object with
    ``.step(params, grads)``) and the projection of Eq. 4 (``sigma_bounds``, ``weight_bound``).
    ``schedule="robbins-monro"`` decays the step size as Assumption 3 asks.
    ``callback(epoch, history)``, if given, runs after every epoch.
    ``comm`` (an mpi4py communicator) shares each step's copies over its ranks: the same result as
    one process for the same seed; every rank runs the callback, only rank 0 shows progress.

    A loss or parameter that becomes NaN/inf stops training with :class:`TrainingDiverged`; the
    model then holds the parameters from before the failing step.
    """
    cfg, bk = _check_common(model, estimator, copies, loss, seed, chunk, antithetic, es_layers, backend,
                          baseline, comm)
    loss = cfg.loss
    x, y = _check_data(data, "data", model, loss)
    if val_data is not None:
        xv, yv = _check_data(val_data, "val_data", model, loss)
    epochs = _v.positive_int(epochs, "epochs")
    batch_size = _v.positive_int(batch_size, "batch_size")
    lr = _v.positive_float(lr, "lr")
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function callback(epoch, history) or None, got {callback!r}")
    if not (isinstance(sigma_bounds, (tuple, list)) and len(sigma_bounds) == 2):
        raise TypeError(f"sigma_bounds must be a pair (sigma_min, sigma_max), got {sigma_bounds!r}")
    project = Projection(sigma_bounds[0], sigma_bounds[1], weight_bound)
    opt = make_optimizer(optimizer, lr, schedule=schedule, momentum=momentum,
                         decay_steps=max(1.0, epochs * math.ceil(len(x) / batch_size) / 10))
    ss = seed_sequence(seed)
    history = History(estimator=cfg.estimator, copies=cfg.copies)
    n = len(x)
    steps_per_epoch = math.ceil(n / batch_size)

    from tqdm.auto import tqdm

    bar = tqdm(total=epochs * steps_per_epoch, disable=not progress or not _mpi.is_root(comm), unit="step",
               desc=f"{estimator} K={copies}", dynamic_ncols=True)
    step = 0
    # Overflow on the way to a NaN loss is reported below as TrainingDiverged, not as a stream of
    # RuntimeWarnings (or, under warnings-as-errors, a RuntimeWarning).
    # one engine for every step: its scratch memory serves the next step, and goes when train returns
    with _on_backend(model, bk), bar, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        params = model.parameters()
        for epoch in range(epochs):
            order = np.random.default_rng(child(ss, 0, epoch)).permutation(n)
            t0, loss_sum = time.perf_counter(), 0.0
            for s in range(0, n, batch_size):
                idx = order[s:s + batch_size]
                xb = bk.asarray(x[idx], model.dtype)
                yb = _device_targets(y[idx], loss, model, bk)
                grads, mean_loss = _estimate(model, xb, yb, cfg, child(ss, 1, step), bk, comm)
                if not math.isfinite(mean_loss) or not all(bool(bk.xp.isfinite(g).all()) for g in grads.values()):
                    raise TrainingDiverged(
                        f"the training loss became {mean_loss} (or its gradient non-finite) at epoch "
                        f"{epoch + 1}, step {step + 1}; training stopped and the model keeps the "
                        f"parameters from before this step. Try a smaller lr (got {lr}) or sigma.", history)
                backup = {k: p.copy() for k, p in params.items()}
                opt.step(params, grads)
                project(params, bk.xp)
                if not all(bool(bk.xp.isfinite(p).all()) for p in params.values()):
                    for k, p in params.items():
                        p[...] = backup[k]
                    raise TrainingDiverged(
                        f"the parameters became NaN/inf at epoch {epoch + 1}, step {step + 1}; training "
                        f"stopped and the last good parameters were restored. Try a smaller lr (got {lr}).",
                        history)
                loss_sum += mean_loss * len(idx)
                step += 1
                bar.update(1)
            history.seconds.append(time.perf_counter() - t0)
            history.train_loss.append(loss_sum / n)
            history.train_accuracy.append(_evaluate(model, x, y, loss, bk)[1])
            postfix = {"loss": f"{history.train_loss[-1]:.4f}"}
            if val_data is not None:
                vl, va = _evaluate(model, xv, yv, loss, bk)
                history.val_loss.append(vl)
                history.val_accuracy.append(va)
                postfix["val_acc"] = f"{va:.3f}"
            bar.set_postfix(postfix)
            if callback is not None:
                callback(epoch, history)
    return history
