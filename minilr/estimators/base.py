"""What every estimator shares: the settings of one estimate, Eq. 2's centred losses, and THE
estimate loop, the one path every model, engine, process count and schedule takes.

A training forward pass runs ``copies`` noisy copies of every sample. Row ``n`` of the paper's sums
is a pair (copy ``k``, sample ``b``); losses are laid out ``(K, B)``. Every noise site of the model
(a ``Linear`` layer, a convolution, a recurrent layer's gates...) is perturbed in one of two ways,
its *mode*:

* ``"lr"``: noise on the map's output, ``v = U W^T + b + sigma * eps`` (LR, Eq. 1; ALR, Eq. 3);
* ``"es"``: noise on its weights, ``v = U (W + sigma E_k)^T + (b + sigma e_k)`` with one ``E_k`` per
  copy shared by the batch (ES, AES).

The backend's *engine* (:mod:`minilr.engines`: blocks, kernels, threads) runs the forward pass and
returns the loss of every row and one *record* per site; the record turns the centred losses into
the site's sums (the equations of :mod:`.lr` and :mod:`.es`): no graph, no chain rule, so sites
are independent.

:func:`estimate` is the loop: a plan, the baseline pass over chunks, the chunk loop, the sums.
Two hooks change where and when its parts run, never what they compute:

* a :class:`Share` says which copies of a chunk this process runs, gathers the losses and adds
  the partial sums (one process by default; MPI ranks: :mod:`minilr.parallel.distributed`);
* a :class:`Schedule` says when a chunk's gradients run (at once by default; overlapped with the
  next chunk's forward pass: :mod:`minilr.parallel.overlap`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import noise as _noise
from .. import validation as _v
from ..backend import child
from ..layers import NoiselessContext, run_layers


@dataclass(frozen=True)
class Settings:
    """What one gradient estimate is asked to do, checked once (see :func:`minilr.estimate_gradient`).

    ``chunk`` None means all copies at once; ``loss`` is a name or a checked callable;
    ``es_layers`` None means the paper's two leading sites for the hybrids (at most all but the last).
    ``surrogate`` (``"bp"`` only): see :func:`minilr.reference.gradient`.
    """

    estimator: str = "lr"
    copies: int = 100
    loss: object = "cross_entropy"
    baseline: bool = True
    antithetic: bool = False
    chunk: int | None = None
    es_layers: int | None = None
    surrogate: object = None

    def __post_init__(self):
        from . import NAMES  # noqa: PLC0415 (the registry imports this module)

        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen: normalise once)
        _v.choice(self.estimator, "estimator", NAMES)
        put("copies", _v.positive_int(self.copies, "copies"))
        put("loss", _v.loss_arg(self.loss))
        if self.estimator == "bp" and callable(self.loss):
            raise ValueError("estimator='bp' needs a named loss ('cross_entropy' or 'mse'): the exact "
                             "reference cannot differentiate a custom loss function")
        if self.surrogate is not None:  # the surrogate-gradient baseline: backprop only
            from ..reference import Surrogate  # noqa: PLC0415

            if self.estimator != "bp":
                raise ValueError(f"surrogate= is for estimator='bp' (the surrogate-gradient baseline), "
                                 f"not {self.estimator!r}: the estimators never differentiate a spike")
            if not isinstance(self.surrogate, Surrogate):
                put("surrogate", Surrogate(self.surrogate))
        if self.chunk is not None:
            put("chunk", _v.positive_int(self.chunk, "chunk"))
        for name in ("antithetic", "baseline"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
            put(name, bool(getattr(self, name)))
        if self.antithetic and (self.copies % 2 or (self.chunk is not None and self.chunk % 2)):
            raise ValueError(f"antithetic noise pairs copies, so copies (got {self.copies}) and chunk "
                             f"(got {self.chunk}) must be even")
        if self.es_layers is not None:
            put("es_layers", _v.positive_int(self.es_layers, "es_layers", minimum=0))


def noise_keys(ss, n_sites):
    """One :class:`~minilr.noise.NoiseKey` per noise site, from child streams of ``ss``."""
    return [_noise.key_from_seed(child(ss, j)) for j in range(n_sites)]


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


class _Trace(NoiselessContext):
    """The context of a noiseless pass on one sample that notes the sizes of every affine call."""

    def __init__(self, xp):
        super().__init__(xp)
        self.sites, self.widest = {}, 1

    def affine(self, layer, U, name="", act=None):
        W = getattr(layer, name + "weight")
        m = W.shape[0]
        P = 1 if U.ndim == 2 else U.shape[1]
        d = U.shape[-1]
        if d * m != W.size or U.ndim not in (2, 3):
            raise ValueError(f"affine: U must have shape (rows, [positions,] {W.size // m}) for {layer!r}, "
                             f"got (rows, {', '.join(map(str, U.shape[1:]))})")
        if self.sites:  # before the first site the input is the batch, shared by all copies
            self.widest = max(self.widest, P * d)
        self.widest = max(self.widest, P * m)
        self.sites.setdefault((id(layer), name), []).append((P, d, m))
        return super().affine(layer, U, name, act)


@dataclass
class Plan:
    """The fixed parts of one estimate: the model and settings, its noise sites in order
    (``(key prefix, layer, name)``), each site's mode and noise key, whether records keep only
    signs, and sizes for block plans and memory checks: ``calls[j]`` is site ``j``'s calls as
    ``(positions, d, m)`` for one sample, ``widest`` the most floats one sample's arrays take in a
    copy."""

    model: object
    settings: Settings
    entries: list
    modes: list
    keys: list
    approx: bool
    calls: list
    widest: int

    @classmethod
    def make(cls, model, x, s: Settings, ss, est):
        """The plan for ``model`` on the batch ``x``; checks the estimator against the model."""
        entries = model.noise_sites()
        n = len(entries)
        if s.es_layers is not None and est.uses_es_layers and s.es_layers > n - 1:
            raise ValueError(f"es_layers={s.es_layers}: this model has {n} noise site(s) and the last "
                             f"always uses LR, so es_layers must be at most {n - 1}")
        trace = _Trace(_xp_of(x))
        run_layers(model.layers, x[:1], trace)
        calls = [trace.sites.get((id(layer), name), []) for _, layer, name in entries]
        return cls(model, s, entries, est.modes(n, s.es_layers), noise_keys(ss, n), est.approx, calls,
                   trace.widest)

    def floats_per_copy(self, B):
        """Floats one copy of a batch of ``B`` holds at once in a block: its widest array, or an ES
        site's weight noise."""
        es = [m * (d + 1) for mode, c in zip(self.modes, self.calls) if mode == "es" for _, d, m in c[:1]]
        return max([B * self.widest] + es)


def _xp_of(a):
    return np if isinstance(a, np.ndarray) else __import__("cupy")


class Noisy:
    """An estimator that perturbs every noise site: :meth:`modes` says how (``"lr"`` or ``"es"``),
    ``approx`` whether records keep only signs (ALR, AES, A-Hybrid)."""

    name, approx, uses_es_layers = "", False, False

    def __init__(self, approx: bool = False):
        self.approx = approx

    def modes(self, n_sites: int, es_layers) -> list:
        raise NotImplementedError


class Share:
    """The copy hook of :func:`estimate`: this process runs every copy (one process).

    :mod:`minilr.parallel.distributed` overrides it for MPI: each rank a range of every chunk,
    the losses gathered, the partial sums reduced."""

    def span(self, copies, antithetic):
        """The copies ``[a, b)`` of a chunk of ``copies`` that this process runs."""
        return 0, copies

    def gather(self, L, copies):
        """Every copy's losses (copies, B) from this process's ``L``."""
        return L

    def total(self, totals):
        """Every copy's loss sums (B,) from this process's."""
        return totals

    def gradient(self, site, Lc, a, b):
        """``(sums, partial)``: the site's sums from this process's records; ``partial`` when other
        processes hold sums to add (:meth:`reduce`)."""
        return site.gradient(Lc[a:b]), False

    def reduce(self, sums, keys):
        """``sums`` with the entries ``keys`` added over the processes."""
        return sums


class Schedule:
    """The time hook of :func:`estimate`: a chunk's gradients run at once, sites in order.

    :mod:`minilr.parallel.overlap` overrides it to run them beside the next chunk's forward pass."""

    def map(self, fn, sites):
        """``fn(site)`` for every site, in order, one at a time as they are consumed (each site's
        sums are added before the next is formed: one site's sums alive, not all); a schedule may
        run the sites side by side instead."""
        return (fn(site) for site in sites)

    def submit(self, gradients, done):
        """Run ``gradients()``, then ``done()`` (the chunk's records are dead)."""
        gradients()
        done()

    def drain(self):
        """Wait for everything submitted."""


def estimate(model, x, y, settings: Settings, ss, bk, *, share=None, schedule=None):
    """One noisy estimate on device arrays ``x``, ``y``: (grads by key on the device, mean loss).

    ``settings`` (a checked :class:`Settings`) says what; ``bk``'s engine runs the passes; ``ss``
    seeds every site's noise (child stream ``j`` for site ``j``). Copies run ``chunk`` at a time
    (all at once when None); the noise of copy ``k`` depends only on ``ss``, the site and ``k``,
    so chunks, blocks, processes and threads change no noise value.

    The baseline survives chunking: with more than one chunk, a first pass runs every chunk forward
    and keeps only each sample's loss summed over all copies (B numbers); the second pass runs each
    chunk again (the same noise, drawn again from its counters, so the same losses) and centres
    each copy on the mean of *all other* copies: the baseline of an unchunked estimate,
    independent of the copy's own noise, hence unbiased. Nothing but the running sums outlives a
    chunk: peak memory depends on ``chunk``, not ``copies``.
    """
    from . import ESTIMATORS  # noqa: PLC0415 (the registry imports this module)

    s = settings
    share, schedule = share or Share(), schedule or Schedule()
    engine, xp = bk.engine, bk.xp
    plan = Plan.make(model, x, s, ss, ESTIMATORS[s.estimator])
    B = x.shape[0]
    chunk = s.copies if s.chunk is None else min(s.chunk, s.copies)
    chunks = [(c0, min(chunk, s.copies - c0)) for c0 in range(0, s.copies, chunk)]
    params = model.parameters()
    # The accumulators exist from the start, so every chunk, the first included, runs with the
    # same arrays alive: peak memory is that of one chunk plus these, whatever the copies.
    sums = {key: xp.zeros_like(p) for key, p in params.items()}
    partial, seen = set(), {"loss": 0.0, "rows": 0}

    def gradients(sites, L, Lc, a, b):
        parts = schedule.map(lambda site: share.gradient(site, Lc, a, b), sites)
        parts = iter(parts)
        for prefix, _, name in plan.entries:
            part, shared = next(parts)
            for pname, g in part.items():
                sums[prefix + name + pname] += g  # in place: no second model-sized array per chunk
                if shared:
                    partial.add(prefix + name + pname)
            del part, g  # dead before the next site's sums are formed (ALR's peak memory)
        seen["loss"] += float(L.sum())
        seen["rows"] += L.size

    with engine.session():
        totals = None
        if s.baseline and len(chunks) > 1:  # pass 1: every copy's loss, for every chunk's baseline
            totals = xp.zeros(B, dtype=np.float64)
            for c0, n in chunks:
                a, b = share.span(n, s.antithetic)
                if b > a:
                    L, sites = engine.forward(plan, x, y, range(c0 + a, c0 + b))
                    totals += L.sum(axis=0, dtype=np.float64)
                    engine.done(sites)
                    del L, sites
            totals = share.total(totals)
        for c0, n in chunks:
            a, b = share.span(n, s.antithetic)
            if b > a:
                L, sites = engine.forward(plan, x, y, range(c0 + a, c0 + b))
            else:  # more processes than copies: nothing to run here, only to receive
                L, sites = xp.empty((0, B), dtype=model.dtype), engine.make_sites(plan, range(c0, c0), B)
            L = share.gather(L, n)
            Lc = centred_losses(L, s.antithetic, s.baseline, xp, totals, s.copies)
            schedule.submit(lambda sites=sites, L=L, Lc=Lc, a=a, b=b: gradients(sites, L, Lc, a, b),
                            lambda sites=sites: engine.done(sites))
            del L, Lc, sites  # the records die with the chunk (a schedule holds them till done)
        schedule.drain()
    sums = share.reduce(sums, sorted(partial))
    return {key: sums[key] / seen["rows"] for key in params}, seen["loss"] / seen["rows"]
