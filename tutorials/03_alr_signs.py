r"""
3. ALR: keep only the signs
===========================

LR's weight gradient for layer :math:`l` is an average of :math:`\mathcal{L}_n Z_n` with
:math:`Z_{n,ij} = x_j(n)\,\varepsilon_i(n)/\sigma_i` (Eq. 2). To form it, every copy's layer input :math:`x`
and noise :math:`\varepsilon` must be kept from the forward pass until the loss is known: :math:`K` copies
times every activation, in 32-bit floats. That memory is what limits :math:`K`, and :math:`K` is what limits
LR's accuracy (tutorial 2). The paper's **approximated LR** (ALR, Eq. 3) keeps only signs:

.. math::

   \tilde g = \frac1b\sum_n \mathcal{L}_n\,\big(\operatorname{sign}(Z^\theta_n),\; Z^\sigma_n\big),
   \qquad \operatorname{sign}(Z^\theta_{n,ij}) = \operatorname{sign}(x_j(n))\operatorname{sign}(\varepsilon_i(n)),

and leaves the :math:`\sigma`-gradient :math:`Z^\sigma = (\varepsilon^2-1)/\sigma` exact. This tutorial asks
why that still descends (Eq. 5), what it loses, and what it saves.
"""

# %%
import os
from pathlib import Path

import numpy as np

import minilr
from minilr import plots

QUICK = os.environ.get("MINILR_QUICK", "0") not in ("", "0")
FIG = plots.figures_dir(Path(__file__).parent if "__file__" in globals() else ".")
print("quick mode" if QUICK else "full mode", "- figures go to", FIG)

# %%
# What ALR estimates (Eq. 5), to first order in :math:`\sigma`
# ------------------------------------------------------------
#
# ALR is an unbiased estimator of *something*: of :math:`\mathcal{J}` in Eq. 5, whose weight
# coordinates are :math:`\partial_\omega\,\mathbb{E}[\mathcal{L}/|Z|]` rather than
# :math:`\partial_\omega\,\mathbb{E}[\mathcal{L}]`. The convergence theorem (Thm. 2) is about
# following :math:`\mathcal{J}`. To see what :math:`\mathcal{J}` looks like, expand the loss for small noise.
# Let :math:`\delta_i(n) = \partial\mathcal{L}_n/\partial v_i` be what backprop would deliver to neuron
# :math:`i`. With the baseline removing the noise-free part,
# :math:`\mathcal{L}_n - b \approx \sum_k \sigma_k\,\delta_k(n)\,\varepsilon_k(n)`, and since
# :math:`\mathbb{E}[\varepsilon_k\operatorname{sign}\varepsilon_i] = \mathbb{1}[k=i]\,\mathbb{E}|\varepsilon| = \mathbb{1}[k=i]\sqrt{2/\pi}`:
#
# .. math::
#
#    \mathbb{E}\big[(\mathcal{L}_n-b)\,\varepsilon_i/\sigma_i\big] \approx \delta_i(n)
#    \quad\text{(LR)},\qquad
#    \mathbb{E}\big[(\mathcal{L}_n-b)\operatorname{sign}\varepsilon_i\big] \approx
#    \sqrt{2/\pi}\,\sigma_i\,\delta_i(n)\quad\text{(ALR)}.
#
# So the **expected ALR update** is
# :math:`\sqrt{2/\pi}\,\sigma_i\cdot\overline{\delta_i(n)\operatorname{sign}(x_j(n))}` where backprop has
# :math:`\overline{\delta_i(n)\,x_j(n)}`. Two things change:
#
# -  each neuron's row is scaled by the positive number :math:`\sqrt{2/\pi}\,\sigma_i`, which moves no
#    update uphill (and Adam undoes the scale anyway);
# -  the input :math:`x_j` is replaced by its sign. After a ReLU, :math:`\operatorname{sign}(x_j) = \mathbb{1}[x_j>0]`: the update keeps *which* inputs were active and forgets *how much*.
#
# The bias has input :math:`1`, so its ALR gradient is exact up to the positive scale. For the weights
# the surrogate direction is not the gradient, but wherever the inputs are positive (ReLU outputs,
# pixels in :math:`[0,1]`) the two agree in the sign of every term of the batch sum, so they are
# positively correlated: a **descent direction**, and the surrogate stops moving exactly where the
# :math:`\delta`'s vanish.
#
# Let us check this on a digits MLP. We build the predicted surrogate from per-sample backprop
# deltas (the bias gradient of a one-sample batch is :math:`\delta(n)`) and compare ALR against both it
# and the true gradient.

# %%
(x_train, y_train), (x_test, y_test) = minilr.datasets.load("digits")
xb, yb = x_train[:50], y_train[:50]
model = minilr.MLP([64, 64, 10], activation="relu", sigma=0.1, seed=0)
g_true = minilr.reference.gradient(model, xb, yb)

# noiseless inputs of every Linear layer, and per-sample deltas from the reference
inputs, h = {}, xb.astype(np.float64)
for i, layer in enumerate(model.layers):
    if isinstance(layer, minilr.Linear):
        inputs[i] = h
        h = h @ layer.weight.T.astype(np.float64) + layer.bias
    else:
        h = layer.forward(h, np)
deltas = {i: np.stack([minilr.reference.gradient(model, xb[n:n + 1], yb[n:n + 1])[f"{i}.bias"]
                       for n in range(len(xb))]) for i in inputs}
c = np.sqrt(2 / np.pi)
surrogate = {}
for i, x_in in inputs.items():
    sigma = model.layers[i].sigma
    surrogate[f"{i}.weight"] = c * sigma[:, None] * deltas[i].T @ np.sign(x_in) / len(xb)
    surrogate[f"{i}.bias"] = c * sigma * deltas[i].mean(axis=0)
print("check: mean of the per-sample deltas x inputs equals the batch gradient:",
      np.allclose(deltas[0].T @ inputs[0] / len(xb), g_true["0.weight"]))
print("cosine(surrogate J, true gradient):", round(minilr.metrics.cosine_similarity(surrogate, g_true), 3))
print("per layer:", {k: round(v, 3) for k, v in minilr.metrics.cosine_similarity(surrogate, g_true, per_layer=True).items()})
print("inner product <J, grad> > 0 (a descent direction):",
      sum(float(np.sum(surrogate[k] * g_true[k])) for k in g_true) > 0)

# %%
# Now the estimates. As :math:`K` grows, LR's cosine to the true gradient climbs towards one; ALR's
# climbs towards the cosine between :math:`\mathcal{J}` and the gradient printed above, while its cosine
# to :math:`\mathcal{J}` itself keeps climbing: ALR is a low-variance estimate of a slightly different,
# still downhill, direction.

# %%
COPIES = [10, 100, 1000] if QUICK else [10, 30, 100, 300, 1000, 3000, 10000]
SEEDS = range(2 if QUICK else 5)
curves = {"LR vs true gradient": [], "ALR vs true gradient": [], "ALR vs surrogate J (Eq. 5)": []}
for s in SEEDS:
    rows = {k: [] for k in curves}
    for K in COPIES:
        g_lr = minilr.estimate_gradient(model, xb, yb, estimator="lr", copies=K, seed=s)
        g_alr = minilr.estimate_gradient(model, xb, yb, estimator="alr", copies=K, seed=s)
        rows["LR vs true gradient"].append(minilr.metrics.cosine_similarity(g_lr, g_true))
        rows["ALR vs true gradient"].append(minilr.metrics.cosine_similarity(g_alr, g_true))
        rows["ALR vs surrogate J (Eq. 5)"].append(minilr.metrics.cosine_similarity(g_alr, surrogate))
    for k in curves:
        curves[k].append(rows[k])
curves = {k: np.asarray(v) for k, v in curves.items()}
print(" " * 28 + "".join(f"{K:>8d}" for K in COPIES))
for k, v in curves.items():
    print(f"{k:28s}" + "".join(f"{x:8.3f}" for x in v.mean(axis=0)))
fig = plots.cosine_vs_copies(COPIES, curves, ylabel="cosine similarity", title="MLP 64-64-10, batch of 50 digits")
fig.axes[0].axhline(minilr.metrics.cosine_similarity(surrogate, g_true), color="k", ls=":", lw=1,
                    label="cos(J, true gradient)")
fig.axes[0].legend(fontsize=8)
plots.save(fig, FIG / "03_alr_cosine.png")
fig

# %%
# What it saves: bits instead of floats
# -------------------------------------
#
# Between the forward pass and the gradient, LR keeps per row (copy x sample) and per layer the
# input :math:`x` (unless it is the network input, which all copies share) and the noise :math:`\varepsilon`,
# each a 32-bit float. ALR keeps :math:`\operatorname{sign}(\varepsilon)` in **1 bit** (the noise is
# never exactly zero), :math:`\operatorname{sign}(x)` in **1 bit** after a ReLU (zero or positive) and
# in 2 bits for a general sign. (A *learned* :math:`\sigma` also needs :math:`\varepsilon^2 - 1`; regenerating
# :math:`\varepsilon` from its seed avoids storing it.) Below, the count for this MLP and for a wider one,
# at :math:`K` copies of a batch of 50, checked by really packing the arrays.

# %%
try:  # minilr.signbits packs along the rows, 8 rows per byte; np.packbits does the same here
    from minilr import signbits
except ImportError:
    signbits = None


def pack(a, kind):
    """Pack the rows of 2-D ``a``: kind "pm1" keeps sign(a) as +-1, "01" keeps a > 0."""
    if signbits is not None and hasattr(signbits, "pack"):
        return signbits.pack(np.ascontiguousarray(a, dtype=np.float32), kind)
    bits = ~np.signbit(a) if kind == "pm1" else a > 0
    return np.packbits(bits, axis=0, bitorder="little")


print("packing with", "minilr.signbits" if signbits is not None and hasattr(signbits, "pack") else "np.packbits")


def memory(sizes, K, B=50, seed=0):
    """Bytes LR and ALR keep for one gradient of an MLP of ``sizes`` (fixed sigma), per layer."""
    net = minilr.MLP(sizes, activation="relu", sigma=0.1, seed=seed)
    rng = np.random.default_rng(seed)
    h = rng.uniform(0, 1, (B, sizes[0])).astype(np.float32)  # the network input: shared by all copies
    out = []
    for j, i in enumerate(net.linear_indices):
        layer = net.layers[i]
        eps = rng.standard_normal((K, B, layer.out_features)).astype(np.float32)
        lr_bytes = eps.nbytes + h.nbytes   # h is (B, d) for the shared input, else (K, B, d)
        alr_bytes = pack(eps.reshape(K * B, -1), "pm1").nbytes
        alr_bytes += (pack(h.reshape(-1, h.shape[-1]), "01").nbytes if j > 0 else h.nbytes)
        out.append((f"layer {i}", lr_bytes, alr_bytes))
        v = h @ layer.weight.T + layer.bias + layer.sigma.astype(np.float32) * eps
        h = np.maximum(v, 0) if j < len(net.linear_indices) - 1 else v
    return out


K_MEM = 100 if QUICK else 1000
tables = {"64-64-10": memory([64, 64, 10], K_MEM), "784-256-256-10": memory([784, 256, 256, 10], K_MEM)}
for name, rows in tables.items():
    lr_total, alr_total = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"MLP {name}, K={K_MEM}: LR keeps {lr_total / 2**20:.2f} MiB, ALR {alr_total / 2**20:.3f} MiB "
          f"-> {lr_total / alr_total:.1f}x less")
    for label, a, b in rows:
        print(f"   {label}: LR {a / 2**20:8.3f} MiB   ALR {b / 2**20:8.3f} MiB")

fig, axes = plots.new_figure(ncols=2)
for ax, (name, rows) in zip(axes, tables.items()):
    pos = np.arange(len(rows))
    ax.bar(pos - 0.2, [r[1] / 2**20 for r in rows], 0.4, label="LR (float32)")
    ax.bar(pos + 0.2, [r[2] / 2**20 for r in rows], 0.4, label="ALR (packed signs)")
    ax.set_xticks(pos, [r[0] for r in rows])
    ax.set_ylabel("MiB kept for one gradient")
    ax.set_title(f"MLP {name}, K={K_MEM}, batch 50")
    ax.legend(fontsize=8)
plots.save(fig, FIG / "03_alr_memory.png")
fig

# %%
# The first layer's input is shared by all copies and is kept once, as floats, by both; every
# other stored number shrinks from 32 bits to 1, so the ratio approaches 32 as the network grows
# deeper and wider. (The paper stores signs as INT8 and reports 4x; bit packing gives the rest.)
#
# A picture of the packed bits
# ----------------------------
#
# The noise signs of one layer, for the first rows (copy x sample) and a few neurons: each row of
# 8 bits along the row axis becomes one byte. The unpacked bits are exactly the signs, which is
# all ALR's weight gradient needs.

# %%
eps = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
packed = pack(eps, "pm1")
bits = np.unpackbits(packed, axis=0, bitorder="little")[:64]
print("float32 noise:", eps.shape, eps.nbytes, "bytes;  packed:", packed.shape, packed.dtype, packed.nbytes, "bytes")
print("unpacked bits reproduce the signs:", np.array_equal(bits.astype(np.int8) * 2 - 1, np.sign(eps).astype(np.int8)))
fig, axes = plots.new_figure(ncols=3, width=3.4, height=4.2)
axes[0].imshow(eps, cmap="RdBu_r", vmin=-2.5, vmax=2.5, aspect="auto")
axes[0].set_title(r"noise $\varepsilon$ (float32)")
axes[1].imshow(np.sign(eps), cmap="RdBu_r", vmin=-1.5, vmax=1.5, aspect="auto")
axes[1].set_title(r"sign($\varepsilon$): 1 bit each")
im = axes[2].imshow(packed, cmap="viridis", aspect="auto")
axes[2].set_title("packed: 8 rows per byte")
for ax in axes:
    ax.set_xlabel("neuron i")
axes[0].set_ylabel("row n (copy x sample)")
axes[2].set_ylabel("byte row")
fig.colorbar(im, ax=axes[2], label="byte value")
plots.save(fig, FIG / "03_packed_bits.png")
fig

# %%
# Training: same copies, or same memory
# -------------------------------------
#
# Finally, train the digits MLP three ways with Adam: LR and ALR with the same :math:`K`, and ALR with
# several times more copies, which fits in the memory LR needs for :math:`K` (the printed ratio above
# says how many times over).

# %%
EPOCHS, K = (2, 20) if QUICK else (20, 100)
K_MORE = 4 * K
histories = {}
for est, k in (("lr", K), ("alr", K), ("alr", K_MORE)):
    net = minilr.MLP([64, 64, 10], activation="relu", sigma=0.1, seed=0)
    histories[f"{est.upper()}, K={k}"] = minilr.train(net, (x_train, y_train), val_data=(x_test, y_test),
                                                     estimator=est, copies=k, epochs=EPOCHS, batch_size=50,
                                                     optimizer="adam", lr=1e-2, seed=0, progress=False)
for label, h in histories.items():
    print(f"{label:12s} test accuracy after {EPOCHS} epochs: {h.val_accuracy[-1]:.3f}  "
          f"(best {max(h.val_accuracy):.3f}; {sum(h.seconds):.1f} s)")
final = {label: h.val_accuracy[-1] for label, h in histories.items()}
same_k, more_k = final[f"ALR, K={K}"] - final[f"LR, K={K}"], final[f"ALR, K={K_MORE}"] - final[f"ALR, K={K}"]
print(f"ALR minus LR at K={K}: {same_k:+.3f};  ALR with K={K_MORE} minus ALR with K={K}: {more_k:+.3f}")
plots.learning_curves(histories, metrics=("train_loss", "val_accuracy"), path=FIG / "03_alr_training.png",
                      title="LR vs ALR on digits")

# %%
# The two printed differences answer the two questions. ALR with the same copies follows a
# direction that is less aligned with the gradient; the first difference is what that costs (or
# not) on digits. The second is what extra copies buy ALR: on a problem this small the estimate at
# :math:`K` copies may already be good enough that more copies change little, while on the paper's
# CIFAR networks, where :math:`K` is memory-bound, the extra copies are the point. Note that ALR does
# not descend the training loss exactly (it follows :math:`\mathcal{J}`); the curves show how close
# that comes here.
