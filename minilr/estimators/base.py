"""What every estimator shares: the settings of one estimate, the noise, Eq. 2's centred losses,
and the loop over copy chunks.

A training forward pass runs ``copies`` noisy copies of every sample. Row ``n`` of the paper's sums
is a pair (copy ``k``, sample ``b``); arrays are laid out ``(K, B, width)``. Each ``Linear`` layer is
a *site* perturbed in one of two ways:

* ``"lr"``: noise on the layer's output, ``v = x W^T + b + sigma * eps`` (LR, Eq. 1);
* ``"es"``: noise on the layer's weights, ``v = x (W + sigma E_k)^T + (b + sigma e_k)`` with one
  ``E_k`` per copy shared by the batch (ES).

The forward pass (run by the backend's *engine*, :mod:`minilr.engines`: blocks, kernels, threads)
returns the loss of every row and one *site record* per ``Linear`` layer; the record keeps what
that layer's gradient needs and turns the centred losses into the layer's sums (the equations of
:mod:`.lr` and :mod:`.es`): no graph, no chain rule, so layers are independent.

**Noise.** ``eps`` comes from :mod:`minilr.noise`: the value for (layer, copy ``k``, sample ``b``,
neuron ``i``) is a pure function of the seed and that index, so it does not depend on the block or
chunk it is drawn in, and can be drawn again instead of stored. Antithetic noise pairs adjacent
copies: copy ``2p + 1`` gets ``-eps`` of copy ``2p``, so any even chunk holds whole pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import noise as _noise
from .. import validation as _v
from ..backend import child


@dataclass(frozen=True)
class Settings:
    """What one gradient estimate is asked to do, checked once (see :func:`minilr.estimate_gradient`).

    ``chunk`` None means all copies at once; ``loss`` is a name or a checked callable.
    """

    estimator: str = "lr"
    copies: int = 100
    loss: object = "cross_entropy"
    baseline: bool = True
    antithetic: bool = False
    chunk: int | None = None
    es_layers: int = 2

    def __post_init__(self):
        from . import NAMES  # noqa: PLC0415 (the registry imports this module)

        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen: normalise once)
        _v.choice(self.estimator, "estimator", NAMES)
        put("copies", _v.positive_int(self.copies, "copies"))
        put("loss", _v.loss_arg(self.loss))
        if self.estimator == "bp" and callable(self.loss):
            raise ValueError("estimator='bp' needs a named loss ('cross_entropy' or 'mse'): the exact "
                             "reference cannot differentiate a custom loss function")
        if self.chunk is not None:
            put("chunk", _v.positive_int(self.chunk, "chunk"))
        for name in ("antithetic", "baseline"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
            put(name, bool(getattr(self, name)))
        if self.antithetic and (self.copies % 2 or (self.chunk is not None and self.chunk % 2)):
            raise ValueError(f"antithetic noise pairs copies, so copies (got {self.copies}) and chunk "
                             f"(got {self.chunk}) must be even")
        put("es_layers", _v.positive_int(self.es_layers, "es_layers", minimum=0))


def noise_keys(ss, n_sites):
    """One :class:`~minilr.noise.NoiseKey` per noise site, from child streams of ``ss``."""
    return [_noise.key_from_seed(child(ss, j)) for j in range(n_sites)]


def draw_noise(key, k0, k1, per_copy, antithetic, xp):
    """Noise for copies ``k0 .. k1 - 1``, shape ``(k1 - k0, per_copy)``, float32.

    Copy ``k`` holds counters ``k * per_copy ...``. With ``antithetic`` the odd copy ``2p + 1`` is
    the negative of copy ``2p`` (``k0`` is even then).
    """
    if not antithetic:
        return _noise.normal(key, (k1 - k0, per_copy), start=k0 * per_copy, xp=xp)
    half = _noise.normal(key, ((k1 - k0 + 1) // 2, per_copy), start=(k0 // 2) * per_copy, xp=xp)
    out = xp.empty((k1 - k0, per_copy), dtype=np.float32)
    out[0::2] = half
    xp.negative(half[: (k1 - k0) // 2], out=out[1::2])
    return out


def centred_losses(L, antithetic: bool, baseline: bool, xp, totals=None, copies=None):
    """Eq. 2's ``L_n - baseline``, with a leave-one-out baseline that keeps every estimator unbiased.

    The baseline of copy ``k`` of sample ``b`` is the mean loss of the *other* copies of ``b``
    that are independent of copy ``k``'s noise: all other copies, or, with antithetic noise, all
    copies outside ``k``'s mirrored pair (``2p, 2p + 1``). Since it does not depend on ``k``'s noise
    and the score (``eps / sigma`` and friends) has mean zero, subtracting it changes no
    expectation, only the variance. With too few copies to leave any out, no baseline is used.
    ``L``: (K, B), one loss per copy and sample; the mean over rows is taken by the caller.

    ``L`` may be one chunk of ``copies`` copies: ``totals`` (B,) is then the loss summed over all
    of them (every chunk, this one included), so each copy's baseline still holds every other
    copy, as without chunking.
    """
    K = L.shape[0] if copies is None else copies
    group = 2 if antithetic else 1
    if not baseline or K - group < 1:
        return L
    own = L
    if antithetic:
        pair = L[0::2] + L[1::2]
        own = xp.repeat(pair, 2, axis=0)
    total = L.sum(axis=0, keepdims=True) if totals is None else totals[None, :]
    return (L - (total - own) / (K - group)).astype(L.dtype, copy=False)


def loss_totals(engine, model, x, y, s, chunk, modes, approx, keys, xp):
    """Pass 1 of a chunked estimate with a baseline: each sample's loss summed over all copies
    (float64, shape (B,)), for :func:`centred_losses`; None when one chunk holds every copy or
    there is no baseline (the chunk's own sum is then the total)."""
    if not s.baseline or chunk >= s.copies:
        return None
    totals = xp.zeros(x.shape[0], dtype=np.float64)
    for start in range(0, s.copies, chunk):
        k = min(chunk, s.copies - start)
        L, sites = engine.forward(model, x, y, start, k, modes, approx, keys, s.loss, s.antithetic)
        totals += L.sum(axis=0, dtype=np.float64)
        engine.done(sites)
        del L, sites
    return totals


class Noisy:
    """An estimator that perturbs every ``Linear`` layer: :meth:`modes` says how (``"lr"`` or
    ``"es"``), ``approx`` whether only signs are kept (ALR, AES, A-Hybrid)."""

    name, approx = "", False

    def modes(self, n_linear: int, es_layers: int) -> list:
        raise NotImplementedError

    def estimate(self, model, x, y, s: Settings, ss, bk):
        """Sum the gradient over copy chunks; return (grads by key, mean noisy loss) on the device.

        ``x``, ``y`` are already on the backend ``bk``, whose engine runs the forward pass. Copies
        are processed ``s.chunk`` at a time (all at once when None). The noise of copy ``k``
        depends only on ``ss``, the layer and ``k``, so chunking changes no noise value.

        The baseline survives chunking: with more than one chunk, a first pass runs every chunk
        forward and keeps only each sample's loss summed over all copies (B numbers); the second
        pass runs each chunk again (the same noise, regenerated from its counters, so the same
        losses) and centres each copy on the mean of *all other* copies, exactly the baseline of
        an unchunked estimate, independent of the copy's own noise, hence unbiased. The price is
        one more forward pass per chunked estimate. Nothing but the running sums outlives a chunk:
        peak memory depends on ``chunk``, not ``copies``.
        """
        engine, xp = bk.engine, bk.xp
        fused = getattr(engine, "estimate", None)  # an engine may run the whole estimate fused
        chunked = s.chunk is not None and s.chunk < s.copies
        if fused is not None and not (chunked and s.baseline):  # (its chunks: one baseline each)
            out = fused(self, model, x, y, s, ss)
            if out is not None:
                return out
        lin = model.linear_indices
        modes = self.modes(len(lin), s.es_layers)
        keys = noise_keys(ss, len(lin))
        chunk = s.copies if s.chunk is None else min(s.chunk, s.copies)
        # The accumulators exist from the start, so every chunk, the first included, runs with the
        # same arrays alive: peak memory is that of one chunk plus these, whatever the copies.
        params = model.parameters()
        sums = {key: xp.zeros_like(p) for key, p in params.items()}
        loss_sum, rows = 0.0, 0
        with engine.session():
            totals = loss_totals(engine, model, x, y, s, chunk, modes, self.approx, keys, xp)
            for start in range(0, s.copies, chunk):
                k = min(chunk, s.copies - start)
                L, sites = engine.forward(model, x, y, start, k, modes, self.approx, keys, s.loss,
                                          s.antithetic)
                Lc = centred_losses(L, s.antithetic, s.baseline, xp, totals, s.copies)
                for i, site in zip(lin, sites):
                    for name, g in site.gradient(Lc).items():
                        sums[f"{i}.{name}"] += g  # in place: no second model-sized array per chunk
                loss_sum += float(L.sum())
                rows += L.size
                engine.done(sites)  # the records are dead: an engine may reuse their blocks
                del L, Lc, sites, site, g  # the loop variables too: the last site holds its bits
        return {key: sums[key] / rows for key in params}, loss_sum / rows
