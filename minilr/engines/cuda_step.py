"""One gradient estimate as a short list of launches: the step logic of the CUDA engine.

The same estimators as ``minilr/estimators`` (LR and ALR, ES and AES, the hybrids: the modes of
each ``Linear`` layer come from there), run for a GPU: few, large launches of the kernels of
:mod:`minilr.engines.cuda_kernels`, all through one :class:`~minilr.engines.cuda_kernels.Launcher`.
On CuPy arrays that launches CUDA kernels and cuBLAS; on NumPy arrays the kernels' twins run
instead, which is how the CPU tests check the numbers against the reference estimators and count
the launches of a step.

Per chunk of copies (``copies`` in one block whenever the budget allows):

* forward, per ``Linear`` layer and block: one cuBLAS product (the first layer's ``x W^T`` once
  per chunk, shared by all copies) and one fused kernel: noise drawn at its counters, bias,
  ``sigma * eps``, the activation, and for ALR the packed signs of ``eps`` and of the next layer's
  input. ES: the weight noise (one kernel), its product with the input (one batched GEMM), and a
  fused combine with the activation;
* the loss per row (one kernel), the centred losses of Eq. 2 (one reduction and one kernel);
* gradients, per layer: one elementwise pass and one cuBLAS GEMM (plus a reduction for the bias
  where the product does not give it). ALR unpacks its bits into ``L s`` and ``[t | 1]`` and takes
  ``G`` and the bias sum from one product, in fp32 or, with ``precision="fp16"``, in fp16 on the
  tensor cores with ``L`` split into two fp16 parts (see ``UNPACK_PAIR``). ES regenerates its
  noise from the counters inside the reduction kernel instead of keeping ``K m (d + 1)`` numbers;
* a learned sigma: one more kernel per layer (LR reads its kept ``eps``; ALR and ES draw their
  noise again) and a reduction.

What runs here (:func:`supported`): float32 stacks of ``Linear`` layers and the activations of
:data:`~.cuda_kernels.ACTS`, named or custom losses; the engine runs anything else on its sites.

Blocks: exact LR keeps ``eps`` and ``x`` of every copy anyway (one block). ALR keeps bits, so its
floats in flight are bounded by ``approx_budget`` bytes; ES's weight noise by ``es_budget``. A
budget that holds all copies gives one block, hence a number of launches that does not depend on
the copies.
"""
from __future__ import annotations

import numpy as np

from . import cuda_kernels as ck

__all__ = ["estimate", "chunk_sums", "supported", "APPROX_BUDGET", "ES_BUDGET"]

APPROX_BUDGET = 40 << 20  # bytes of floats in flight for sign-only (ALR) records: with the bits,
# ~106 MB at K = 10,000 on 784-256-256-10, B = 50, against ~2.0 GB kept by LR (issue 7: >= 16x)
ES_BUDGET = 1 << 30  # bytes of ES weight noise (and products) in flight
_PAR_THREADS = 1 << 18  # reductions split their loop into parts until about this many threads
_F32 = np.float32


def _round8(n):
    return max(8, n // 8 * 8)


class _Site:
    """What one ``Linear`` layer keeps between its forward pass and its gradient."""

    def __init__(self, j, idx, layer, mode, approx, key, first, xp):
        self.j, self.idx, self.mode, self.approx, self.key, self.first = j, idx, mode, approx, key, first
        self.W = xp.asarray(layer.weight)
        self.b = xp.asarray(layer.bias)
        self.sigma = xp.asarray(layer.sigma)
        self.m, self.d = self.W.shape
        self.x_code = 1  # packed input code (ALR): "01" (1) or "sign" (2)
        self.linked = False  # input bits written by the previous layer's fused pass
        self.x_all = None  # exact LR (not first): the input of every row, written by the layer before


def _act_code(layer):
    name = getattr(layer, "name", None)
    return ck.ACTS.get(name) if name is not None else None


def _plan(model, B, K, sites, budget_approx, budget_es):
    """Copies per block: all when every record keeps floats anyway (exact LR); else bounded by the
    budget of the floats in flight. A multiple of 8 (whole bytes of packed rows, whole antithetic
    pairs) unless it is all the copies."""
    acts = B * sum(s.m for s in sites) * 4
    es = [s for s in sites if s.mode == "es"]
    if es:
        per = acts + max(s.m * (s.d + 1) * 4 + B * s.m * 4 for s in es)
        kb = budget_es // per
    elif any(s.approx for s in sites):
        kb = budget_approx // acts
    else:
        return K
    kb = _round8(kb)
    return K if kb >= K else kb


def chunk_sums(model, x, y, modes, approx, keys, loss, antithetic, baseline, k0, K, lnch,
               scale=1.0, precision="fp32", approx_budget=APPROX_BUDGET, es_budget=ES_BUDGET):
    """Copies ``k0 .. k0 + K - 1`` of the batch: ``(sums, L)``, the gradient sums of Eq. 1-3 (ES)
    by parameter key times ``scale``, and the losses (K, B). ``x``, ``y``, the model's arrays: on
    ``lnch.xp``. Every device operation goes through ``lnch`` (and is counted there)."""
    from ..layers import Activation, Linear  # noqa: PLC0415

    xp = lnch.xp
    if np.dtype(model.dtype) != np.float32:
        raise NotImplementedError("the fused CUDA step runs float32 models")
    B = x.shape[0]
    layers = model.layers
    lin = [i for i, l in enumerate(layers) if isinstance(l, Linear)]
    sites = []
    for j, i in enumerate(lin):
        s = _Site(j, i, layers[i], modes[j], approx, keys[j], j == 0, xp)
        s.k0 = k0  # the chunk's first copy: noise counters are absolute
        s.learn_sigma = bool(layers[i].learn_sigma)
        prev = layers[i - 1] if i > 0 else None
        s.x_code = 1 if isinstance(prev, Activation) and prev.nonneg else 2
        sites.append(s)
    # fused activation after each Linear; the next Linear's input is that output (linkable)
    for j, s in enumerate(sites):
        i = s.idx
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        code = _act_code(nxt) if isinstance(nxt, Activation) else None
        s.act = 0 if code is None else code
        s.fused_act = code is not None
        after = i + 2 if s.fused_act else i + 1
        s.next = sites[j + 1] if j + 1 < len(sites) and lin[j + 1] == after else None
    rows_all = K * B
    nbytes = -(-rows_all // 8)
    for s in sites:
        if s.mode == "lr" and s.approx:
            s.sbits = xp.empty((nbytes, s.m), np.uint8)
            if not s.first:
                s.tbits = xp.empty((2 if s.x_code == 2 else 1, nbytes, s.d), np.uint8)
        elif s.mode == "lr":
            s.eps = xp.empty((rows_all, s.m), _F32)
            if not s.first:
                s.x_all = xp.empty((rows_all, s.d), _F32)
    for s in sites:  # an ALR layer fed directly by an ALR layer: that layer's pass packs its bits
        n = s.next
        if s.mode == "lr" and s.approx and s.fused_act and n is not None and n.mode == "lr" and n.approx:
            n.linked = True
            s.hcode = n.x_code
        else:
            s.hcode = 0
    kb = _plan(model, B, K, sites, approx_budget, es_budget)
    L = xp.empty((K, B), _F32)
    shared = {"x": x}  # and per site: the first layer's x W^T (and sign(x) for ALR), once per chunk

    for c0 in range(0, K, kb):
        c1 = min(K, c0 + kb)
        nb, rows = c1 - c0, (c1 - c0) * B
        h = x
        n = 0
        j = 0
        fed = None  # the site whose record the last Linear wrote its output into
        while n < len(layers):
            layer = layers[n]
            if not isinstance(layer, Linear):  # an activation no Linear fused
                lnch._tick(f"act:{layer.name}")
                h = layer.forward(h, xp)
                n += 1
                continue
            s = sites[j]
            if s.x_all is not None and fed is not s:  # an unfused activation came between
                lnch._tick("copy")
                s.x_all[c0 * B:c1 * B] = h.reshape(rows, s.d)
            # where this layer's output block goes: straight into the next exact LR record
            out, fed = None, None
            if s.next is not None and s.next.x_all is not None:
                out, fed = s.next.x_all[c0 * B:c1 * B], s.next
            if out is None:
                out = xp.empty((rows, s.m), _F32)
            if s.mode == "lr":
                _lr_forward(s, h, out, c0, nb, B, K, kb, lnch, shared, antithetic)
            else:
                _es_forward(s, h, out, c0, nb, B, lnch, shared, antithetic)
            h = out
            n += 2 if s.fused_act else 1
            j += 1
        C = h.shape[-1]
        Lb = L[c0:c1].reshape(-1)
        if loss == "cross_entropy":
            lnch.kernel(ck.CE_LOSS, rows, h, y, Lb, rows, B, C)
        elif loss == "mse":
            lnch.kernel(ck.MSE_LOSS, rows, h, y, Lb, rows, B, C)
        else:
            from ..losses import per_sample  # noqa: PLC0415

            lnch._tick("loss:custom")
            L[c0:c1] = per_sample(loss, h.reshape(nb, B, C), y, xp)

    # Eq. 2: centred losses (leave-one-out baseline), times `scale`
    group = 2 if antithetic else 1
    use_base = bool(baseline) and K - group >= 1
    S = lnch.reduce("sum", xp.sum, L, axis=0) if use_base else L[0]
    Lc = xp.empty_like(L)
    lnch.kernel(ck.CENTRE, K * B, L, S, Lc, K, B, int(antithetic), int(use_base), scale)
    Lk = None
    if any(s.mode == "es" for s in sites):  # the perturbation is shared by the batch: sum_b
        Lk = lnch.reduce("sum", xp.sum, Lc, axis=1)
    amax = None
    if precision == "fp16" and any(s.mode == "lr" and s.approx and not s.first for s in sites):
        amax = lnch.reduce("max", xp.max, lnch.reduce("abs", xp.abs, Lc)).reshape(1)
    sums = {}
    for s in sites:
        if s.learn_sigma:  # first: exact LR turns its kept eps into L eps / sigma below
            sums[f"{s.idx}.sigma"] = _sigma_gradient(s, Lc, Lk, K, B, lnch, antithetic)
        if s.mode == "es":
            gW, gb = _es_gradient(s, Lk, K, lnch, antithetic)
        elif s.approx:
            gW, gb = _alr_gradient(s, Lc, K, B, lnch, shared, precision, amax, approx_budget)
        else:
            gW, gb = _lr_gradient(s, Lc, K, B, lnch, shared)
        sums[f"{s.idx}.weight"], sums[f"{s.idx}.bias"] = gW, gb
    return sums, L


def _lr_forward(s, h, out, c0, nb, B, K, kb, lnch, shared, anti):
    """One LR/ALR layer over copies ``c0 .. c0 + nb - 1``: a product and one fused kernel."""
    xp = lnch.xp
    rows = nb * B
    k0 = s.k0 + c0
    if s.first:  # x W^T once per chunk, shared by every copy (broadcast inside the kernel)
        if s.j not in shared:
            shared[s.j] = lnch.matmul(h, s.W.T)
            if s.approx:
                shared[(s.j, "sign")] = lnch.reduce("sign", xp.sign, h)
        pre, pre_shared = shared[s.j], 1
    else:
        pre, pre_shared = lnch.matmul(h, s.W.T, out=out), 0
        if s.approx and not s.linked:
            lnch.kernel(ck.PACK, -(-rows // 8) * s.d, h, s.tbits, s.x_code, rows, s.d, c0 * B // 8,
                        s.tbits.shape[1])
    if s.approx:
        nxt = s.next
        hbits = nxt.tbits if s.hcode else s.sbits
        lnch.kernel(ck.ALR_FORWARD, -(-rows // 8) * s.m, pre, pre_shared, s.b, s.sigma, out, s.sbits,
                    hbits, s.hcode, s.key.k1, s.key.gamma, k0, B, s.m, rows, int(anti), s.act,
                    c0 * B // 8, s.sbits.shape[0])
    else:
        lnch.kernel(ck.LR_FORWARD, rows * s.m, pre, pre_shared, s.b, s.sigma, s.eps[c0 * B:c0 * B + rows],
                    out, s.key.k1, s.key.gamma, k0, B, s.m, rows, int(anti), s.act)


def _es_forward(s, h, out, c0, nb, B, lnch, shared, anti):
    """One ES layer over copies ``c0 .. c0 + nb - 1``: noise, products, one fused combine."""
    xp = lnch.xp
    m, d = s.m, s.d
    E = xp.empty((nb, m, d), _F32)
    e = xp.empty((nb, m), _F32)
    lnch.kernel(ck.ES_NOISE, nb * m * (d + 1), E, e, s.key.k1, s.key.gamma, s.k0 + c0, nb, m, d, int(anti))
    if s.first:
        if s.j not in shared:
            shared[s.j] = lnch.matmul(h, s.W.T)
        pre = shared[s.j]
        pert = lnch.matmul(h, E.reshape(nb * m, d).T)  # (B, nb * m): one GEMM for all copies
        lnch.kernel(ck.ES_COMBINE, nb * B * m, pre, 1, pert, m, nb * m, e, s.b, s.sigma, out, nb, B, m, s.act)
    else:
        pre = lnch.matmul(h, s.W.T, out=out)
        pert = lnch.matmul(h.reshape(nb, B, d), E.transpose(0, 2, 1))  # batched: (nb, B, m)
        lnch.kernel(ck.ES_COMBINE, nb * B * m, pre, 0, pert, B * m, m, e, s.b, s.sigma, out, nb, B, m, s.act)


def _parts(K, width):
    """Parts of the copy loop of a reduction kernel: enough threads to fill the GPU."""
    parts = max(1, min(K, -(-_PAR_THREADS // max(1, width))))
    per = -(-K // parts)
    return -(-K // per), per


def _lr_gradient(s, Lc, K, B, lnch, shared):
    """Eq. 1: ``sum_n L_n x_j eps_i / sigma_i`` and ``sum_n L_n eps_i / sigma_i``."""
    xp = lnch.xp
    m = s.m
    if s.first:  # A[b] = sum_k L eps / sigma (parts, then one reduction); then A^T x
        parts, per = _parts(K, B * m)
        P = xp.empty((parts, B, m), _F32)
        lnch.kernel(ck.SUM_COPIES, parts * B * m, s.eps, Lc, s.sigma, P, K, B, m, per)
        A = lnch.reduce("sum", xp.sum, P, axis=0) if parts > 1 else P[0]
        x = shared["x"]
        return lnch.matmul(A.T, x), lnch.reduce("sum", xp.sum, A, axis=0)
    rows = K * B
    lnch.kernel(ck.LR_SCALE, rows * m, s.eps, Lc, s.sigma, rows, m)  # eps -> L eps / sigma
    # the bias sum as a product with ones (cuBLAS reads the rows coalesced; a column reduction
    # over (rows, m) would read them strided)
    if "ones" not in shared or shared["ones"].shape[0] != rows:
        lnch._tick("ones")
        shared["ones"] = xp.ones(rows, _F32)
    return lnch.matmul(s.eps.T, s.x_all), lnch.matmul(shared["ones"], s.eps)


def _alr_gradient(s, Lc, K, B, lnch, shared, precision, amax, budget):
    """Eq. 3: ``sum_n L_n sign(x_j) sign(eps_i)`` and ``sum_n L_n sign(eps_i)`` from the bits."""
    xp = lnch.xp
    m, d = s.m, s.d
    if s.first:
        parts, per = _parts(K, B * m)
        P = xp.empty((parts, B, m), _F32)
        lnch.kernel(ck.SIGN_SUM_COPIES, parts * B * m, s.sbits, Lc, P, K, B, m, per)
        A = lnch.reduce("sum", xp.sum, P, axis=0) if parts > 1 else P[0]
        return lnch.matmul(A.T, shared[(s.j, "sign")]), lnch.reduce("sum", xp.sum, A, axis=0)
    rows = K * B
    dw = -(-(d + 1) // 8) * 8  # [t | 1 | 0 ...]: the bias sum from the same product; aligned rows
    half = precision == "fp16"
    per_row = (2 * (2 * m + dw)) if half else 4 * (m + dw)
    rb = min(rows, _round8(budget // per_row)) if rows > 8 else rows
    Lf = Lc.reshape(-1)
    G = None
    # the two unpacked blocks, made once and reused (the last block uses their first rows): what
    # ALR holds beyond its bits
    dt = np.float16 if half else _F32
    S_all = xp.empty((rb, 2 * m if half else m), dt)
    T_all = xp.empty((rb, dw), dt)
    for r0 in range(0, rows, rb):
        n = min(rb, rows - r0)
        Sb, Tb = S_all[:n], T_all[:n]
        lnch.kernel(ck.UNPACK_PAIR, n * (m + dw), s.sbits, Lf, s.tbits, s.x_code, Sb, Tb, int(half),
                    amax if half else Lf, r0, n, m, d, dw, s.tbits.shape[1])
        part = lnch.gemm_t_f16(Sb, Tb) if half else lnch.matmul(Sb.T, Tb)
        if G is None:
            G = part
        else:
            lnch._tick("add")
            G += part
    if half:
        gW, gb = xp.empty((m, d), _F32), xp.empty(m, _F32)
        lnch.kernel(ck.SPLIT_FINISH, m * (d + 1), G, gW, gb, amax, m, d, dw)
        return gW, gb
    return G[:, :d], G[:, d]


def _sigma_gradient(s, Lc, Lk, K, B, lnch, anti):
    """The sigma score (exact in every estimator): LR reads its kept eps, ALR and ES draw their
    noise again from the counters; parts of rows (copies) in one kernel, then one reduction."""
    xp = lnch.xp
    m = s.m
    if s.mode == "es":
        parts, per = _parts(K, m)
        P = xp.empty((parts, m), _F32)
        lnch.kernel(ck.ES_SIGMA, parts * m, Lk, s.sigma, P, s.key.k1, s.key.gamma, s.k0, K, m, s.d,
                    int(anti), per)
    else:
        rows = K * B
        parts, per = _parts(rows, m)
        P = xp.empty((parts, m), _F32)
        eps = Lc.reshape(-1) if s.approx else s.eps  # ALR: a placeholder, the kernel draws eps again
        lnch.kernel(ck.SIGMA_SUMS, parts * m, eps, Lc.reshape(-1), s.sigma, P, rows, m, per, int(s.approx),
                    s.key.k1, s.key.gamma, s.k0, B, int(anti))
    return lnch.reduce("sum", xp.sum, P, axis=0) if parts > 1 else P[0]


def _es_gradient(s, Lk, K, lnch, anti):
    """ES: ``sum_k Lk E_k / sigma``; AES: ``sum_k Lk sign(E_k)``: the noise drawn again in-kernel."""
    xp = lnch.xp
    m, d = s.m, s.d
    width = m * (d + 1)
    parts, per = _parts(K, width)
    P = xp.empty((parts, m, d + 1), _F32)
    divide = int(not s.approx and parts == 1)
    lnch.kernel(ck.ES_GRAD, parts * width, Lk, s.sigma, P, s.key.k1, s.key.gamma, s.k0, K, m, d,
                int(anti), int(s.approx), per, divide)
    g = P[0]
    if parts > 1:
        g = lnch.reduce("sum", xp.sum, P, axis=0)
        if not s.approx:
            g = lnch.reduce("divide", xp.divide, g, s.sigma[:, None])
    return g[:, :d], g[:, d]


def estimate(model, x, y, estimator="lr", copies=100, seed=0, loss="cross_entropy", baseline=True,
             antithetic=False, chunk=None, es_layers=2, xp=np, lnch=None, precision="fp32",
             approx_budget=APPROX_BUDGET, es_budget=ES_BUDGET):
    """One gradient estimate, as ``minilr.estimate_gradient`` computes it, on ``xp`` (NumPy runs the
    twins): ``(grads by key, mean noisy loss, launcher)``.

    With ``chunk`` below ``copies`` and a baseline, each chunk here centres on its own copies,
    unlike ``estimate_gradient`` (whose baseline spans every chunk): :class:`CUDAEngine` sends such
    estimates to the sites instead."""
    from ..backend import seed_sequence  # noqa: PLC0415
    from ..estimators import ESTIMATORS  # noqa: PLC0415
    from ..estimators.base import noise_keys  # noqa: PLC0415

    lnch = ck.Launcher(xp) if lnch is None else lnch
    est = ESTIMATORS[estimator]
    lin = model.linear_indices
    modes = est.modes(len(lin), es_layers)
    keys = noise_keys(seed_sequence(seed), len(lin))
    chunk = copies if chunk is None else min(chunk, copies)
    x = xp.ascontiguousarray(xp.asarray(x, dtype=_F32))
    if loss == "cross_entropy":  # the kernels' types; a custom loss gets y as given
        y = xp.asarray(y, dtype=np.int64)
    elif loss == "mse":
        y = xp.ascontiguousarray(xp.asarray(y, dtype=_F32))
    B = x.shape[0]
    rows = copies * B
    one = chunk == copies
    grads, loss_sum = None, 0.0
    for start in range(0, copies, chunk):
        k = min(chunk, copies - start)
        sums, L = chunk_sums(model, x, y, modes, est.approx, keys, loss, antithetic,
                             baseline, start, k, lnch, scale=1.0 / rows if one else 1.0,
                             precision=precision, approx_budget=approx_budget, es_budget=es_budget)
        if grads is None:
            grads = {key: xp.array(v) if not one else v for key, v in sums.items()}
        else:
            for key, v in sums.items():
                lnch._tick("add")
                grads[key] += v
        loss_sum += float(lnch.reduce("sum", xp.sum, L))  # the mean loss reported (one sync)
    if not one:
        for key in grads:
            lnch._tick("divide")
            grads[key] /= rows
    return grads, loss_sum / rows, lnch


def supported(model, loss=None) -> str | None:
    """None when :func:`estimate` runs ``model`` (float32 stacks of Linear layers and the
    activations of :data:`~.cuda_kernels.ACTS`); else why not (the engine then runs the sites)."""
    from ..layers import Activation, Linear  # noqa: PLC0415

    if np.dtype(model.dtype) != np.float32:
        return "the fused CUDA step runs float32 models"
    for layer in model.layers:
        if isinstance(layer, Linear):
            continue
        if not isinstance(layer, Activation) or layer.name not in ck.ACTS:
            return f"layer {type(layer).__name__} is not on the fused CUDA path"
    return None
