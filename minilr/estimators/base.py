"""What every estimator shares: the noisy forward pass that *records*, and the loss baseline.

A training forward pass runs ``copies`` noisy copies of every sample. Row ``n`` of the paper's sums
is a pair (copy ``k``, sample ``b``); arrays are laid out ``(K, B, width)``. Each ``Linear`` layer is
a *site* perturbed in one of two ways:

* ``"lr"``: noise on the layer's output, ``v = x W^T + b + sigma * eps`` (LR, Eq. 1);
* ``"es"``: noise on the layer's weights, ``v = x (W + sigma E_k)^T + (b + sigma e_k)`` with one
  ``E_k`` per copy shared by the batch (ES).

The forward pass returns the loss of every row and one *site record* per ``Linear`` layer; the
record keeps exactly what that layer's gradient needs and computes the gradient from the centred
losses alone: no graph, no chain rule, so layers are independent.

**Streaming.** Rows are independent in the forward pass, so it runs over blocks of whole copies:
floats (activations, noise) live for one block; what a record keeps is written into its slice of
the block. With the sign approximation a record keeps only packed bits
(:mod:`minilr.signbits`), so the floats held at once do not grow with the number of copies.

**Noise.** ``eps`` comes from :mod:`minilr.noise`: the value for (layer, copy ``k``, sample ``b``,
neuron ``i``) is a pure function of the seed and that index, so it does not depend on the block or
chunk it is drawn in, and can be drawn again instead of stored. Antithetic noise pairs adjacent
copies: copy ``2p + 1`` gets ``-eps`` of copy ``2p``, so any even chunk holds whole pairs.
"""
from __future__ import annotations

import math

import numpy as np

from .. import kernels
from .. import noise as _noise
from ..backend import child
from ..layers import Activation, Linear
from ..losses import per_sample

# Floats per array in one streamed block. Sign-only records keep bits, so the transient block
# dominates their memory and is kept small (~0.5 MB per array); float records keep everything
# anyway, so larger blocks only save Python overhead.
BLOCK_FLOATS_APPROX = 1 << 17
BLOCK_FLOATS_EXACT = 1 << 21
# Blocks of a block-parallel forward pass at least (when copies allow): enough for two or four
# threads to share evenly.
MIN_BLOCKS = 4


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


def centred_losses(L, antithetic: bool, baseline: bool, xp):
    """``L - baseline`` with a leave-one-out baseline that keeps every estimator unbiased.

    The baseline of copy ``k`` of sample ``b`` is the mean loss of the *other* copies of ``b``
    that are independent of copy ``k``'s noise: all other copies, or, with antithetic noise, all
    copies outside ``k``'s mirrored pair (``2p, 2p + 1``). Since it does not depend on ``k``'s noise
    and the score (``eps / sigma`` and friends) has mean zero, subtracting it changes no
    expectation, only the variance. With too few copies to leave any out, no baseline is used.
    """
    K = L.shape[0]
    group = 2 if antithetic else 1
    if not baseline or K - group < 1:
        return L
    own = L
    if antithetic:
        pair = L[0::2] + L[1::2]
        own = xp.repeat(pair, 2, axis=0)
    return L - (L.sum(axis=0, keepdims=True) - own) / (K - group)


def block_copies(model, B, copies, modes, approx, balanced=False):
    """Copies per streamed block: a multiple of 8 (whole bytes of packed rows), at least 8.

    ``balanced`` (blocks run side by side, :func:`minilr.kernels.run_blocks`): float records get
    at least :data:`MIN_BLOCKS` blocks of near-equal size, an even number of copies each (whole
    antithetic pairs), so the threads get equal shares; the blocks depend on the sizes only, never
    on the thread count, so neither do the gradient's sums (one per block). Sign records keep the
    same bits whatever the blocks, so their budget is shared by the threads instead: the floats
    in flight stay within it.
    """
    budget = BLOCK_FLOATS_APPROX if approx else BLOCK_FLOATS_EXACT
    per_copy = 1
    j = 0
    for layer in model.layers:
        if isinstance(layer, Linear):
            m, d = layer.out_features, layer.in_features
            # an LR site's first input is the shared batch: only its output grows with copies
            per_copy = max(per_copy, B * max(m, d if j else 0), m * (d + 1) if modes[j] == "es" else 0)
            j += 1
    if balanced and approx:
        # The bits do not depend on the blocks: the blocks in flight at once share the budget.
        budget //= _noise.threads()
    kb = max(8, (budget // per_copy) // 8 * 8)
    if balanced and not approx:
        n = max(MIN_BLOCKS, -(-copies // kb))
        return max(2, -(-copies // (2 * n)) * 2)
    return min(kb, -(-copies // 8) * 8)


def balanced_starts(copies, kb, B, threads):
    """First copies of blocks of at most ``kb`` copies (more only where ``kb`` is below one unit)
    whose count is a multiple of ``threads``, sizes spread evenly: each thread's contiguous group
    gets the same copies give or take one unit. A unit is the fewest copies that fill whole bytes
    of packed rows and whole antithetic pairs.

    For sign records only: their bits do not depend on the blocks (one more or less block of 8
    copies out of 25 on one of two threads cost ~4% of the pass)."""
    unit = 8 // math.gcd(B, 8)
    unit *= 2 // math.gcd(unit, 2)
    units = -(-copies // unit)
    per = max(1, kb // unit)
    n = -(-units // per)
    n = min(units, -(-n // threads) * threads)
    bounds = [units * i // n * unit for i in range(n)]
    return [c for c in bounds if c < copies]


def noisy_forward(model, x, y, k0, copies, modes, approx, keys, loss, antithetic, bk, site_classes):
    """Run copies ``k0 .. k0 + copies - 1`` of the batch ``x``; return losses (K, B) and site records.

    ``modes[j]`` says how the ``j``-th Linear layer is perturbed (``"lr"`` or ``"es"``),
    ``approx`` whether its record keeps only signs, ``keys[j]`` its noise stream. The first layer's
    input is the same for all copies, so it is kept once, shape (B, d), and never repeated K times.
    """
    xp = bk.xp
    B = x.shape[0]
    lin = [(i, l) for i, l in enumerate(model.layers) if isinstance(l, Linear)]
    sites = []
    nonneg = False  # is the input of the next Linear layer never negative?
    for j, (i, layer) in enumerate(lin):
        prev = model.layers[i - 1] if i > 0 else None
        nonneg = isinstance(prev, Activation) and prev.nonneg
        W, b, sigma = bk.asarray(layer.weight), bk.asarray(layer.bias), bk.asarray(layer.sigma)
        sites.append(site_classes[modes[j]](W, b, sigma, layer.learn_sigma, copies, B, k0, keys[j],
                                            antithetic, approx, nonneg, j == 0, xp))
    arena = kernels.Arena()  # per-thread block arrays for this pass (sites that take one)
    for j, site in enumerate(sites):
        if hasattr(site, "arena"):
            site.arena, site.tag = arena, j % 2
    # a site whose fused ReLU feeds the next site directly may pack that site's input signs
    for j in range(len(lin) - 1):
        i, link = lin[j][0], getattr(sites[j], "link_next", None)
        if link is not None and lin[j + 1][0] == i + 2:
            link(model.layers[i + 1], sites[j + 1])
    L = xp.empty((copies, B), dtype=model.dtype)
    parallel = all(site.parallel for site in sites)
    kb = block_copies(model, B, copies, modes, approx, balanced=parallel)

    starts = list(range(0, copies, kb))
    if parallel and approx:
        starts = balanced_starts(copies, kb, B, _noise.threads())
    ends = dict(zip(starts, starts[1:] + [copies]))

    def block(c0):  # copies c0 .. c1 - 1 through every layer: rows are independent
        c1 = ends[c0]
        h = x  # (B, d): shared by all copies until the first noise site
        j = 0
        fused = False  # did the last site apply this activation already?
        for n, layer in enumerate(model.layers):
            if fused:
                fused = False
            elif isinstance(layer, Linear):
                act = model.layers[n + 1] if n + 1 < len(model.layers) else None
                fused = sites[j].fuses(act)
                h = sites[j].forward_block(h, c0, c1, act if fused else None)
                j += 1
            else:
                h = layer.forward(h, xp)
        L[c0:c1] = per_sample(loss, h, y, xp)

    if parallel:  # every site is thread-safe per block: blocks of copies run side by side
        kernels.run_blocks(block, starts)
    else:
        for c0 in starts:
            block(c0)
    for site in sites:  # the block arrays are dead: free them before the gradient
        if hasattr(site, "arena"):
            site.arena = None
    return L, sites
