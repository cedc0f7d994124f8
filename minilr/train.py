"""The two entry points people call: :func:`estimate_gradient` and :func:`train`."""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import checkpoint as _ckpt
from . import io as _io
from . import memory as _memory
from . import validation as _v
from .backend import child, get_backend, seed_sequence
from .estimators import ESTIMATORS, Plan, Settings, estimate
from .losses import per_sample
from .models import Sequential, _forward, on_backend
from .optim import Projection, commit, make_optimizer, trial_step
from .parallel import mpi as _mpi

__all__ = ["estimate_gradient", "train", "History", "TrainingDiverged", "DIVERGENCE_FACTOR"]


#: A step whose noiseless batch loss exceeds this many times the run's starting loss diverged.
DIVERGENCE_FACTOR = 1e3


class TrainingDiverged(FloatingPointError):
    """The loss or the parameters became NaN/inf, or the loss grew more than
    :data:`DIVERGENCE_FACTOR` times its starting value; the model keeps its last good parameters.

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
    model.check()  # arrays set by hand: shapes, kinds, sigma > 0 in the dtype, no Linear twice
    for k, p in model.parameters().items():
        if not bool(np.all(np.isfinite(p))):
            raise ValueError(f"model parameter {k!r} contains NaN or inf")
    for prefix, layer, name in model.noise_sites():
        s = getattr(layer, name + "sigma")
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError(f"sigma of layer {prefix[:-1]} must be > 0 and finite, got min {np.min(s)}")


def _check_common(model, estimator, copies, loss, seed, chunk, antithetic, es_layers, backend,
                  baseline=True, comm=None, surrogate=None):
    """Every shared argument checked once: (Settings, Backend)."""
    _check_model(model)
    _mpi.check_comm(comm)
    settings = Settings(estimator, copies, loss, baseline, antithetic, chunk, es_layers, surrogate)
    _v.seed_arg(seed)
    return settings, get_backend(backend)


# -- estimate_gradient ----------------------------------------------------------------------------
def estimate_gradient(model, x, y, estimator="lr", copies=100, seed=0, loss="cross_entropy",
                      baseline=True, antithetic=False, chunk=None, es_layers=None, backend="numpy", comm=None):
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
    es_layers : int, optional
        For the hybrids: how many leading noise sites (layers) use ES. The last site always uses
        LR, so at most the number of sites minus one (a ValueError otherwise); None: the paper's
        two, or all but the last where the model has fewer.
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
    y = _v.targets(y, "y", s.loss, x.shape[0], _out_width(model, x), _out_positions(model, x), model.dtype)
    _v.fits_dtype(x, "x", model.dtype)
    _check_memory(model, x, s)
    # overflow is reported below as one FloatingPointError, not as NumPy warnings
    with on_backend(model, bk), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        grads, _ = _estimate(model, bk.asarray(x, model.dtype), _device_targets(y, s.loss, model, bk),
                             s, seed_sequence(seed), bk, comm)
        grads = {k: bk.to_numpy(g) for k, g in grads.items()}
    _check_finite_gradient(grads, model)
    return grads


def _check_finite_gradient(grads, model):
    """Never hand back NaN/inf silently from finite inputs: say where the numbers overflowed."""
    bad = [k for k, g in grads.items() if not np.all(np.isfinite(g))]
    if bad:
        raise FloatingPointError(
            f"the gradient estimate of {bad[0]!r} is not finite: the losses or the activations overflow "
            f"{model.dtype.name} for these inputs and parameters. Scale the inputs down, use smaller "
            f"weights or sigma, or a float64 model")


def _estimate(model, x, y, s, ss, bk, comm):
    """One estimate in this process, or over the ranks of ``comm``."""
    if comm is None:
        return estimate(model, x, y, s, ss, bk)
    from .parallel import distributed  # noqa: PLC0415

    return distributed.estimate(model, x, y, s, ss, bk, comm=comm)


def _out_width(model, x):
    """The model's output width for inputs like ``x`` (checked by ``model.check_input``)."""
    return model.output_shape(x.shape[1:])[-1]


def _out_positions(model, x):
    """Output axes before the classes (graph nodes: ``(n_nodes,)``); ``()`` for most models."""
    return tuple(model.output_shape(x.shape[1:])[:-1])


def _device_targets(y, loss, model, bk):
    return bk.asarray(y, model.dtype) if loss == "mse" else bk.asarray(y)


# -- train ----------------------------------------------------------------------------------------
def _check_data(data, name, model, loss):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        what = f"a {type(data).__name__} of length {len(data)}" if isinstance(data, (tuple, list)) else type(data).__name__
        raise TypeError(f"{name} must be a tuple (x, y), got {what}")
    x = model.check_input(data[0], f"{name}[0] (x)")
    y = _v.targets(data[1], f"{name}[1] (y)", loss, x.shape[0], _out_width(model, x),
                   _out_positions(model, x), model.dtype)
    _v.fits_dtype(x, f"{name}[0] (x)", model.dtype)
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
          baseline=True, antithetic=False, chunk=None, es_layers=None, schedule="constant",
          momentum=0.9, sigma_bounds=(1e-3, 10.0), weight_bound=None, callback=None,
          checkpoint=None, resume=False, checkpoint_every=None, comm=None, *, surrogate=None) -> History:
    """Train ``model`` in place without backpropagation; return its :class:`History`.

    Each step estimates the gradient on a mini-batch with ``estimator`` (see
    :func:`estimate_gradient` for ``copies``, ``baseline``, ``antithetic``, ``chunk``,
    ``es_layers``), then applies ``optimizer`` ("sgd", "momentum", "adam" or an object with
    ``.step(params, grads)``) and the projection of Eq. 4 (``sigma_bounds``, ``weight_bound``).
    ``schedule="robbins-monro"`` decays the step size as Assumption 3 asks.
    ``callback(epoch, history)``, if given, runs after every epoch. ``progress=True`` draws a
    progress bar where stderr is a terminal (or in a notebook) and otherwise prints one plain line
    per epoch to stderr (logs get no bar frames); ``False`` prints nothing.
    ``comm`` (an mpi4py communicator) shares each step's copies over its ranks: the same result as
    one process for the same seed; every rank runs the callback, only rank 0 shows progress.
    ``surrogate`` (``estimator="bp"`` only) trains spiking layers (``Step``, ``LIF``) with the
    surrogate-gradient baseline: see :func:`minilr.reference.gradient`.

    Checkpoints (:mod:`minilr.checkpoint`): with ``checkpoint=path`` the run is saved atomically
    after every epoch, every ``checkpoint_every`` steps if given, and when interrupted (Ctrl-C);
    ``resume=True`` continues from ``path`` if it exists (else starts afresh) to exactly the
    parameters of the uninterrupted run, bit for bit; ``epochs`` counts from the start of the run,
    so ``epochs=1`` then ``epochs=2, resume=True`` equals ``epochs=2``.

    Every step is all-or-nothing: the update and the projection of Eq. 4 are computed into new
    arrays, checked, and swapped in at once (Ctrl-C is held back for the swap), so an interrupt
    leaves the model at the old or the new step, never in between.

    Divergence stops training with :class:`TrainingDiverged`, whatever the optimizer or
    estimator ("bp" too): a loss, gradient or parameter that becomes NaN/inf; a noiseless batch
    loss after a step that is NaN/inf or more than :data:`DIVERGENCE_FACTOR` (1000) times the
    run's starting loss; or a non-finite loss at the end of an epoch. The starting loss is, on the
    run's first batch before its first step, the larger of the model's noiseless loss and the loss
    of an all-zero output (log C for C classes), so that a model that starts near a loss of 0 is
    not stopped by a small rise; it is kept in the checkpoint. No step of a converging run
    multiplies the loss by 1000, while too large a step does at once (Adam at lr=1e6 took digits
    from 2.3 to 1e16). The model then holds the last parameters checked good: those before the failing
    step (or, for an epoch-end failure, from the start of that epoch).
    """
    cfg, bk = _check_common(model, estimator, copies, loss, seed, chunk, antithetic, es_layers, backend,
                          baseline, comm, surrogate)
    loss = cfg.loss
    estimator, copies, chunk, es_layers = cfg.estimator, cfg.copies, cfg.chunk, cfg.es_layers
    baseline, antithetic = cfg.baseline, cfg.antithetic
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
    checkpoint, resume, checkpoint_every = _check_checkpoint_args(checkpoint, resume, checkpoint_every)
    if checkpoint is not None:  # a model that cannot be saved is named now, not after an epoch
        _io.check_saveable(model)
    _check_memory(model, x[:batch_size], cfg)
    project = Projection(sigma_bounds[0], sigma_bounds[1], weight_bound)
    n = len(x)
    steps_per_epoch = math.ceil(n / batch_size)
    decay_steps = max(1.0, epochs * steps_per_epoch / 10)
    opt = make_optimizer(optimizer, lr, schedule=schedule, momentum=momentum, decay_steps=decay_steps)
    if checkpoint is not None and not (hasattr(opt, "state") and hasattr(opt, "set_state")):
        raise TypeError(f"checkpoint needs an optimizer with state() and set_state() (as minilr's have); "
                        f"{type(opt).__name__} has not")
    ss = seed_sequence(seed)
    history = History(estimator=estimator, copies=copies)
    settings = {
        "estimator": estimator, "copies": copies, "batch_size": batch_size, "lr": lr,
        "optimizer": optimizer if isinstance(optimizer, str) else type(optimizer).__name__,
        "schedule": schedule, "momentum": float(momentum), "loss": _ckpt.loss_name(loss),
        "decay_steps": decay_steps if schedule == "robbins-monro" else None,
        "baseline": bool(baseline), "antithetic": bool(antithetic), "chunk": chunk, "es_layers": es_layers,
        "surrogate": None if cfg.surrogate is None else repr(cfg.surrogate),
        "sigma_bounds": [float(b) for b in sigma_bounds], "weight_bound": weight_bound,
        "seed": seed if seed is None or isinstance(seed, int) else "SeedSequence",
        "data": _ckpt.data_fingerprint(x, y), "val_data": None if val_data is None else _ckpt.data_fingerprint(xv, yv),
    }
    # Where the run is: epoch, steps done in it, steps done in all, loss summed in it, its seconds.
    # start_loss: what divergence is measured against (None till the first step).
    run = dict(epoch=0, batch=0, step=0, loss_sum=0.0, seconds=0.0, start_loss=None)
    if resume and os.path.exists(checkpoint):
        where, ss = _ckpt.restore(checkpoint, model, opt, history, settings)
        run.update({k: where.get(k, run[k]) for k in run})  # start_loss: None in older checkpoints
        model.check()

    def save_checkpoint():
        if _mpi.is_root(comm):  # every rank holds the same run: one writes it
            _ckpt.write(checkpoint, model, opt, history, dict(run), settings, ss)

    from tqdm.auto import tqdm

    show = bool(progress) and _mpi.is_root(comm)
    use_bar = show and _bar_fits()
    bar = tqdm(total=epochs * steps_per_epoch, initial=min(epochs * steps_per_epoch,
               run["epoch"] * steps_per_epoch + run["batch"]), disable=not use_bar, unit="step",
               desc=f"{estimator} K={copies}", dynamic_ncols=True)
    try:
        # Overflow on the way to a NaN loss is reported below as TrainingDiverged, not as a stream
        # of RuntimeWarnings (or, under warnings-as-errors, a RuntimeWarning).
        with on_backend(model, bk), bar, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if bk.name != "numpy":  # a restored optimizer state lives on the device too
                opt.set_state({k: ({kk: bk.asarray(a) for kk, a in v.items()} if isinstance(v, dict) else v)
                               for k, v in opt.state().items()})
            for epoch in range(run["epoch"], epochs):
                order = np.random.default_rng(child(ss, 0, epoch)).permutation(n)
                epoch_start = model.parameters()  # arrays are swapped, never changed: a snapshot
                t0 = time.perf_counter() - run["seconds"]
                for b in range(run["batch"], steps_per_epoch):
                    idx = order[b * batch_size:(b + 1) * batch_size]
                    xb = bk.asarray(x[idx], model.dtype)
                    yb = _device_targets(y[idx], loss, model, bk)
                    step = run["step"]
                    if run["start_loss"] is None:
                        run["start_loss"] = _start_loss(model, xb, yb, loss, bk)
                    grads, mean_loss = _estimate(model, xb, yb, cfg, child(ss, 1, step), bk, comm)
                    if not math.isfinite(mean_loss) or not all(bool(bk.xp.isfinite(g).all()) for g in grads.values()):
                        raise TrainingDiverged(
                            f"the training loss became {mean_loss} (or its gradient non-finite) at epoch "
                            f"{epoch + 1}, step {step + 1}; training stopped and the model keeps the "
                            f"parameters from before this step. Try a smaller lr (got {lr}) or sigma.", history)
                    old, old_opt = model.parameters(), opt.clone() if hasattr(opt, "clone") else None
                    new, trial = trial_step(opt, project, old, grads, bk.xp)
                    if not all(bool(bk.xp.isfinite(p).all()) for p in new.values()):
                        raise TrainingDiverged(
                            f"the parameters became NaN/inf at epoch {epoch + 1}, step {step + 1}; training "
                            f"stopped and the last good parameters were restored. Try a smaller lr (got {lr}).",
                            history)
                    with _ckpt.deferred_interrupt():  # the step, all or nothing
                        model.set_parameters(new)
                        commit(opt, trial)
                        run = dict(run, batch=b + 1, step=step + 1, loss_sum=run["loss_sum"] + mean_loss * len(idx),
                                   seconds=time.perf_counter() - t0)
                    check = _batch_loss(model, xb, yb, loss, bk)
                    limit = DIVERGENCE_FACTOR * run["start_loss"]
                    if not math.isfinite(check) or check > limit:
                        with _ckpt.deferred_interrupt():
                            model.set_parameters(old)
                            if old_opt is not None:
                                commit(opt, old_opt)
                        why = (f"(the parameters overflow {model.dtype.name})" if not math.isfinite(check) else
                               f"(more than {DIVERGENCE_FACTOR:g} times the run's starting loss "
                               f"{run['start_loss']:.4g})")
                        raise TrainingDiverged(
                            f"after step {step + 1} (epoch {epoch + 1}) the noiseless loss of the batch became "
                            f"{check:.4g} {why}; training stopped and the parameters from before this step "
                            f"were restored. Try a smaller lr (got {lr}).", history)
                    bar.update(1)
                    if checkpoint_every and run["step"] % checkpoint_every == 0 and b + 1 < steps_per_epoch:
                        save_checkpoint()
                train_eval = _evaluate(model, x, y, loss, bk)
                val_eval = _evaluate(model, xv, yv, loss, bk) if val_data is not None else None
                if not math.isfinite(train_eval[0]) or (val_eval is not None and not math.isfinite(val_eval[0])):
                    with _ckpt.deferred_interrupt():
                        model.set_parameters(epoch_start)
                    raise TrainingDiverged(
                        f"at the end of epoch {epoch + 1} the noiseless loss is not finite (train "
                        f"{train_eval[0]}, validation {val_eval[0] if val_eval else None}); training stopped "
                        f"and the parameters from the start of the epoch were restored. Try a smaller lr "
                        f"(got {lr}).", history)
                with _ckpt.deferred_interrupt():  # the epoch's record, all or nothing
                    history.seconds.append(time.perf_counter() - t0)
                    history.train_loss.append(run["loss_sum"] / n)
                    history.train_accuracy.append(train_eval[1])
                    if val_eval is not None:
                        history.val_loss.append(val_eval[0])
                        history.val_accuracy.append(val_eval[1])
                    run = dict(epoch=epoch + 1, batch=0, step=run["step"], loss_sum=0.0, seconds=0.0,
                               start_loss=run["start_loss"])
                postfix = {"loss": f"{history.train_loss[-1]:.4f}"}
                if val_eval is not None:
                    postfix["val_acc"] = f"{val_eval[1]:.3f}"
                if use_bar:
                    bar.set_postfix(postfix)
                elif show:  # a log, not a terminal: one plain line per epoch instead of a bar
                    print(f"{estimator} K={copies} epoch {epoch + 1}/{epochs}: "
                          + "  ".join(f"{k} {v}" for k, v in postfix.items())
                          + f"  ({history.seconds[-1]:.1f} s)", file=sys.stderr, flush=True)
                if checkpoint is not None:
                    save_checkpoint()
                if callback is not None:
                    callback(epoch, history)
    except KeyboardInterrupt:
        # the model and ``run`` describe a finished step (the swap is atomic): save that point
        if checkpoint is not None:
            save_checkpoint()
        raise
    return history


def _bar_fits():
    """Whether progress is a bar (the convention of command-line tools): stderr is a terminal, or
    this runs in a notebook (tqdm's widget). Elsewhere (a log, a pipe, CI) a bar would fill the
    file with carriage-return frames, so :func:`train` prints one line per epoch instead."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # a replaced or closed stream
        pass
    from tqdm import autonotebook, std  # noqa: PLC0415

    return autonotebook.tqdm is not std.tqdm


def _start_loss(model, xb, yb, loss, bk):
    """What divergence is measured against: on a batch, the larger of the noiseless loss and the
    loss of an all-zero output (what predicting nothing costs: log C for C classes, half the mean
    squared target for mse)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = _forward(model, xb, bk.xp, bk)
        zero = float(per_sample(loss, bk.xp.zeros_like(out), yb, bk.xp).mean())
        return max(float(per_sample(loss, out, yb, bk.xp).mean()), zero)


def _batch_loss(model, xb, yb, loss, bk):
    """The noiseless mean loss of a batch on the backend (NaN/inf if the parameters overflow)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = _forward(model, xb, bk.xp, bk)
        return float(per_sample(loss, out, yb, bk.xp).mean())


def _check_checkpoint_args(checkpoint, resume, checkpoint_every):
    if checkpoint is not None:
        try:
            checkpoint = os.fspath(checkpoint)
        except TypeError:
            raise TypeError(f"checkpoint must be a file path or None, got {checkpoint!r}") from None
        folder = os.path.dirname(os.path.abspath(checkpoint))
        if not os.path.isdir(folder):
            raise ValueError(f"checkpoint {checkpoint!r}: the folder {folder!r} does not exist")
    if not isinstance(resume, (bool, np.bool_)):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=<path> (the file to resume from)")
    if checkpoint_every is not None:
        checkpoint_every = _v.positive_int(checkpoint_every, "checkpoint_every")
        if checkpoint is None:
            raise ValueError("checkpoint_every needs checkpoint=<path> (where to write)")
    return checkpoint, bool(resume), checkpoint_every


def _check_memory(model, x, s):
    """Refuse copies whose records would not fit in memory (:mod:`minilr.memory`), before any work."""
    if s.estimator == "bp":  # no copies
        return
    plan = Plan.make(model, x, s, seed_sequence(0), ESTIMATORS[s.estimator])
    _memory.check_copies(plan, x.shape[0], s.copies, s.chunk)
