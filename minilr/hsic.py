"""The HSIC bottleneck (Ma, Lewis & Kleijn, AAAI 2020): the paper's Table 1 runner-up category.

Each block of the net (a parameterised layer and the parameter-free layers after it, e.g.
``Conv -> ReLU``) is trained **locally**, with no error signal from the layers above it, to raise

    J_i = HSIC(Z_i, Y) - beta * HSIC(Z_i, X)

where ``Z_i`` is the block's output on a mini-batch, ``X`` the net's input and ``Y`` the one-hot
labels. HSIC is the usual biased estimator ``tr(K H L H) / (n - 1)^2`` with ``H = I - 11^T / n``
and Gaussian kernels ``k(a, b) = exp(-|a - b|^2 / (2 s^2))`` of width ``s = width_factor *
sqrt(d)`` for a d-dimensional variable (the rule of the authors' code, ``width_factor = 5``), and
``beta = 0.01`` (their ``lambda_Y = 100`` in ``HSIC(Z, X) - lambda_Y HSIC(Z, Y)``, divided out). The
last block (the read-out) is trained on cross-entropy with the features below it held fixed, at
every step and then alone for ``readout_epochs`` more epochs with the HSIC blocks frozen (the
paper's "format" / post-training step).

Gradients are written by hand (no autograd): :func:`objective_gradient` gives ``dJ/dZ`` in
closed form, and the block's own layers carry it to their parameters with the hand-written
backward passes of :mod:`minilr.reference`. Nothing crosses a block boundary.
"""
from __future__ import annotations

import math
import time

import numpy as np

from . import reference as _ref
from . import validation as _v
from .backend import get_backend
from .models import Sequential
from .optim import make_optimizer

__all__ = ["gaussian_kernel", "hsic", "objective", "objective_gradient", "blocks", "block_gradients",
           "train"]


def gaussian_kernel(a, width: float) -> np.ndarray:
    """``exp(-|a_i - a_j|^2 / (2 width^2))`` for the rows of ``a`` (flattened per sample)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    sq = np.einsum("ij,ij->i", a, a)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (a @ a.T), 0.0)  # rounding can go below 0
    return np.exp(-d2 / (2.0 * width ** 2))


def _centre(K):
    """``H K H``: rows and columns of ``K`` centred."""
    return K - K.mean(axis=0, keepdims=True) - K.mean(axis=1, keepdims=True) + K.mean()


def hsic(K, L) -> float:
    """The biased HSIC estimate ``tr(K H L H) / (n - 1)^2`` of two kernel matrices."""
    n = K.shape[0]
    return float(np.sum(K * _centre(L)) / (n - 1) ** 2)  # tr(K H L H) = sum(K * (H L H)), H symmetric


def _width(a, width_factor):
    return width_factor * math.sqrt(math.prod(np.shape(a)[1:]))


def _targets_kernel_terms(x, y_onehot, beta, width_factor):
    """``M = H (K_Y - beta K_X) H``: J = sum(K_Z * M) / (n - 1)^2 (fixed for a batch)."""
    Kx = gaussian_kernel(x, _width(x, width_factor))
    Ky = gaussian_kernel(y_onehot, _width(y_onehot, width_factor))
    return _centre(Ky - beta * Kx)


def objective(z, x, y_onehot, *, beta: float = 0.01, width_factor: float = 5.0) -> float:
    """``J = HSIC(Z, Y) - beta * HSIC(Z, X)`` on one batch (all three flattened per sample)."""
    Kz = gaussian_kernel(z, _width(z, width_factor))
    n = Kz.shape[0]
    return float(np.sum(Kz * _targets_kernel_terms(x, y_onehot, beta, width_factor)) / (n - 1) ** 2)


def objective_gradient(z, M, width_factor: float = 5.0):
    """``(J, dJ/dZ)`` for ``J = sum(K_Z * M) / (n - 1)^2`` with ``M`` symmetric.

    With ``s`` the width of ``K_Z``, ``dK_ab/dz_a = -K_ab (z_a - z_b) / s^2``; each ``K_ab``
    appears twice in the sum (``ab`` and ``ba``), so, with ``W = M * K_Z`` (elementwise),
    ``dJ/dz_a = -2 / ((n - 1)^2 s^2) * sum_b W_ab (z_a - z_b)``. Returned in ``z``'s shape.
    """
    shape = np.shape(z)
    z = np.asarray(z, dtype=np.float64).reshape(shape[0], -1)
    n, s = z.shape[0], _width(z, width_factor)
    Kz = gaussian_kernel(z, s)
    W = M * Kz
    J = float(np.sum(W) / (n - 1) ** 2)
    dz = -2.0 / ((n - 1) ** 2 * s ** 2) * (W.sum(axis=1)[:, None] * z - W @ z)
    return J, dz.reshape(shape)


def blocks(model) -> list:
    """``[(start, end), ...]``: ``model.layers[start:end]`` is one block, a parameterised layer and
    the parameter-free layers up to the next one; the last block is the read-out."""
    starts = sorted({int(prefix.split(".")[0]) for prefix, _, _ in model.noise_sites()})
    if len(starts) < 2:
        raise ValueError("hsic needs a model with a parameterised layer before its read-out (one block "
                         f"to train by HSIC), got {len(starts)} parameterised layer(s)")
    starts[0] = 0  # parameter-free layers in front (a Flatten) join the first block
    return list(zip(starts, starts[1:] + [len(model.layers)]))


def _backward_block(model, start, end, inputs, delta):
    """Carry ``delta = d(objective)/d(block output)`` back through ``layers[start:end]`` only."""
    grads = {}
    for i in range(end - 1, start - 1, -1):
        delta, g = _ref.backward(model.layers[i], inputs[i], delta)
        grads.update({f"{i}.{k}": v for k, v in g.items()})
    return grads


def block_gradients(model, x, y, *, beta: float = 0.01, width_factor: float = 5.0, hidden=True):
    """Descent directions for every parameter: ``-dJ_i/dtheta`` for each HSIC block (when
    ``hidden``), the cross-entropy gradient for the read-out. Returns ``(grads, objectives, ce)``:
    float64 arrays keyed as ``model.parameters()``, each block's ``J_i``, the batch's mean loss."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    parts = blocks(model)
    inputs, outputs, h = [], [], x
    for layer in model.layers:
        inputs.append(h)
        h = _ref.forward64(layer, h)
        outputs.append(h)
    classes = h.shape[-1]
    grads, objectives = {}, []
    if hidden:
        M = _targets_kernel_terms(x, np.eye(classes)[y], beta, width_factor)
        for start, end in parts[:-1]:
            J, dz = objective_gradient(outputs[end - 1], M, width_factor)
            objectives.append(J)
            grads.update(_backward_block(model, start, end, inputs, -dz))  # ascent on J
    start, end = parts[-1]
    grads.update(_backward_block(model, start, end, inputs, _ref._output_delta(h, y, "cross_entropy")))
    logp = h - h.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    ce = float(-logp[np.arange(len(y)), y].mean())
    return {k: grads[k] for k in model.parameters() if k in grads}, objectives, ce


def train(model, data, val_data=None, *, epochs: int = 10, readout_epochs: int = 2, batch_size: int = 50,
          beta: float = 0.01, width_factor: float = 5.0, optimizer: str = "adam", lr: float = 1e-2,
          seed: int = 0, callback=None, stop=None):
    """Train ``model`` in place by the HSIC bottleneck; return a :class:`minilr.History`.

    ``epochs`` epochs train every block at once, each on its own ``J_i`` and the read-out on
    cross-entropy; ``readout_epochs`` more train the read-out alone on the frozen features.
    ``optimizer`` is any of :data:`minilr.optim.OPTIMIZERS` (``"signsgd"``: the "w A" reading of
    the sign of the update). The history has one entry per epoch of both phases; ``train_loss``
    is the read-out's mean cross-entropy over the epoch's batches. ``callback(epoch, history)``
    runs after each epoch; ``stop(history)``, if given, after each epoch of the HSIC phase: True
    ends that phase early (e.g. a flat validation curve) and the read-out phase follows.
    """
    from .train import History, _check_data, _evaluate  # noqa: PLC0415 (train imports models, not us)

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a minilr Sequential, got {type(model).__name__}")
    x, y = _check_data(data, "data", model, "cross_entropy")
    if y.ndim != 1:
        raise ValueError("hsic.train takes one class label per sample")
    if val_data is not None:
        xv, yv = _check_data(val_data, "val_data", model, "cross_entropy")
    epochs = _v.positive_int(epochs, "epochs")
    readout_epochs = _v.positive_int(readout_epochs, "readout_epochs", minimum=0)
    batch_size = _v.positive_int(batch_size, "batch_size", minimum=2)
    beta = _v.positive_float(beta, "beta", allow_zero=True)
    width_factor = _v.positive_float(width_factor, "width_factor")
    blocks(model)  # a model with no HSIC block is refused before any work
    opt = make_optimizer(optimizer, _v.positive_float(lr, "lr"))
    rng = np.random.default_rng(_v.seed_arg(seed))
    bk = get_backend("numpy")
    history = History(estimator="hsic", copies=0)
    hsic_epochs, epoch = epochs, 0
    while epoch < hsic_epochs + readout_epochs:
        t0 = time.perf_counter()
        order, total = rng.permutation(len(x)), 0.0
        for s in range(0, len(x), batch_size):
            idx = order[s:s + batch_size]
            if len(idx) < 2:  # HSIC needs two samples to compare
                continue
            g, _, ce = block_gradients(model, x[idx], y[idx], beta=beta, width_factor=width_factor,
                                       hidden=epoch < hsic_epochs)
            params = model.parameters()
            opt.step(params, {k: v.astype(model.dtype) for k, v in g.items()})
            model.set_parameters(params)
            total += ce * len(idx)
            if not math.isfinite(ce):
                from .train import TrainingDiverged  # noqa: PLC0415

                raise TrainingDiverged(f"hsic: the read-out loss became {ce} at epoch {epoch + 1}; try a "
                                       f"smaller lr (got {lr})", history)
        history.seconds.append(time.perf_counter() - t0)
        history.train_loss.append(total / len(x))
        history.train_accuracy.append(_evaluate(model, x, y, "cross_entropy", bk)[1])
        if val_data is not None:
            vl, va = _evaluate(model, xv, yv, "cross_entropy", bk)
            history.val_loss.append(vl)
            history.val_accuracy.append(va)
        if callback is not None:
            callback(epoch, history)
        if epoch < hsic_epochs and stop is not None and stop(history):
            hsic_epochs = epoch + 1
        epoch += 1
    return history
