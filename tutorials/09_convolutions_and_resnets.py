r"""
9. Convolutions and residual networks without backprop
======================================================

So far every noise site was a ``Linear`` layer: :math:`v = xW^\top + b + \sigma\varepsilon`. The paper
trains ResNets. This tutorial shows that nothing new is needed: **a convolution is one linear
map applied at many positions**, so it is one noise site whose noise has one more index (the
position), and its LR gradient is still one matrix product.

We will

1. unfold a convolution into a matrix product (*im2col*) and see where the noise goes;
2. check that LR, ALR, ES and AES on a convolution estimate what the theory says they do;
3. see why batch norm would break the estimators, and what minilr uses instead;
4. measure, per layer, how good each estimate of a small CNN's gradient is;
5. train that CNN and a ResNet-5 on MNIST-1D (generated offline) with BP, LR and ALR;
6. measure what ALR's sign records save in memory, and read Table 1's equal-memory comparison.
"""

# %%
import os
import time
import tracemalloc
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import minilr
from minilr import plots, reference
from minilr.conv import im2col

QUICK = os.environ.get("MINILR_QUICK", "0") not in ("", "0")
FIG = plots.figures_dir(Path(__file__).parent if "__file__" in globals() else ".")
print("quick mode" if QUICK else "full mode", "- figures go to", FIG)

# %%
# 1. A convolution is an affine map at every position
# ---------------------------------------------------
#
# A 1-D convolution with :math:`C_{in}` input channels, kernel :math:`k` and :math:`m = C_{out}` output channels
# computes, at output position :math:`p`, :math:`v_{p} = W\,U_p + b` where :math:`U_p` is the patch of :math:`C_{in}\times k`
# input numbers under the kernel and :math:`W` is the weight reshaped to :math:`m \times (C_{in}k)`. Stacking the
# patches as rows ("im2col") turns the whole layer into one matrix product
# :math:`V = U W^\top + b` with :math:`U` of shape (samples, positions :math:`P`, :math:`d = C_{in}k`).
#
# During training the layer is a **noise site**: :math:`v_{p,i} = W_i U_p + b_i + \sigma_i\varepsilon_{p,i}`,
# fresh noise per position and channel, one :math:`\sigma_i` per output channel. The LR estimate (Eq. 1)
# is the Linear one summed over positions, since the loss :math:`\mathcal{L}_n` of copy :math:`n` is shared by all
# its positions:
#
# .. math::
#
#    g_W = \frac{1}{N}\sum_n \sum_p \mathcal{L}_n \frac{\varepsilon_{n,p}}{\sigma} U_{n,p}^\top
#          = \frac1N\,(\mathcal{L}\odot\varepsilon/\sigma)^\top U \quad\text{(one product over rows × positions)}.
#
# In minilr every parameterised layer writes its noisy computation as calls of one primitive,
# ``ctx.affine(layer, U)`` (``minilr/engines/reference.py``), the same for an MLP's ``Linear`` and a
# ResNet's convolutions; ``Conv1d.train_forward`` is three lines.
# First check the unfolding against a plain loop:

# %%
rng = np.random.default_rng(0)
conv = minilr.Conv1d(2, 3, kernel_size=3, stride=2, padding=1)
minilr.Sequential([conv], seed=0, input_shape=(2, 9))  # draws the weights
x = rng.standard_normal((4, 2, 9)).astype(np.float32)

U, (P,) = im2col(x, conv.kernel_size, conv.stride, conv.padding)
print("x", x.shape, "-> U", U.shape, f"({P} positions, d = 2 x 3 = {U.shape[2]})")

xpad = np.pad(x, ((0, 0), (0, 0), (1, 1)))
loop = np.zeros((4, 3, P), np.float32)
for p in range(P):
    patch = xpad[:, :, 2 * p:2 * p + 3]  # stride 2, kernel 3
    loop[:, :, p] = np.einsum("nck,ock->no", patch, conv.weight) + conv.bias
im2col_ok = bool(np.allclose(conv.forward(x, np), loop, atol=1e-5))
print("conv by im2col = conv by loop:", im2col_ok)

# %%
# 2. What the estimators estimate on a convolution
# ------------------------------------------------
#
# Take one ``Conv1d`` with the squared loss :math:`\mathcal{L} = \tfrac12\sum_{i,p}(v_{p,i}-y_{p,i})^2`.
# The noise enters additively and independently of :math:`W`, so the smoothed loss is the noiseless one
# plus a constant: **LR and ES must be unbiased for the exact gradient** (which
# ``minilr.reference`` computes by a hand-written backward pass, col2im included). ALR instead
# estimates :math:`\sqrt{2/\pi}\,\sigma_i\sum_p u_{p,i}\operatorname{sign}(U_p)` (Eq. 3 summed over positions;
# :math:`u` the residual) and AES :math:`\sqrt{2/\pi}\,\sigma_i` times the exact gradient
# (tests/test_conv.py derives both and tests them with a z-test).
#
# Averaging :math:`R` independent estimates, the distance to the target should shrink like :math:`1/\sqrt R`:

# %%
model = minilr.Sequential([minilr.Conv1d(2, 3, 3, stride=2, padding=1), minilr.Flatten()],
                          sigma=0.3, seed=1, dtype=np.float64, input_shape=(2, 9))
y = rng.standard_normal((4, 3 * 5))
layer = model.layers[0]
Uc, _ = layer.unfold(x.astype(np.float64), np)
u = (model.forward(x) - y).reshape(4, 3, 5)
exact = reference.gradient(model, x, y, loss="mse")["0.weight"].reshape(3, -1)
s = layer.sigma[:, None]
targets = {"lr": exact, "es": exact,
           "alr": np.sqrt(2 / np.pi) * s * np.einsum("bip,bpd->id", u, np.sign(Uc)) / 4,
           "aes": np.sqrt(2 / np.pi) * s * exact}
R = 200 if QUICK else 2000
checkpoints = np.unique(np.logspace(1, np.log10(R), 8).astype(int))
fig, ax = plt.subplots(figsize=(6, 4))
final_err = {}
for est, target in targets.items():
    draws = np.stack([minilr.estimate_gradient(model, x, y, estimator=est, copies=8, seed=r,
                                               loss="mse")["0.weight"].reshape(3, -1) for r in range(R)])
    running = np.cumsum(draws, axis=0) / np.arange(1, R + 1)[:, None, None]
    err = [np.linalg.norm(running[c - 1] - target) / np.linalg.norm(target) for c in checkpoints]
    ax.loglog(checkpoints, err, "o-", label=est.upper())
    final_err[est] = (err[0], err[-1])
    print(f"{est}: relative error of the mean of {checkpoints[0]} estimates {err[0]:.3f}, of {R}: {err[-1]:.3f}")
ax.loglog(checkpoints, 2 / np.sqrt(checkpoints), "k--", label=r"$\propto 1/\sqrt{R}$")
ax.set_xlabel("independent estimates averaged, R")
ax.set_ylabel("relative error to its target")
ax.set_title("Conv1d: each estimator converges to its target")
ax.legend()
fig.tight_layout()
fig.savefig(FIG / "09_conv_estimators_unbiased.png", dpi=100)

# %%
# 3. Why not batch norm?
# ----------------------
#
# A training pass runs :math:`K` noisy **copies** of every sample as rows of one big batch. Batch norm
# normalises each channel by the mean and variance over all rows, so the output of copy :math:`k`
# would depend on the noise of every other copy. Then (i) the copies' losses are no longer
# independent given the sample, so the leave-one-out baseline is no longer independent of copy
# :math:`k`'s noise, and (ii) copy :math:`k`'s loss depends on :math:`\varepsilon` of other copies, which the LR score
# :math:`\varepsilon_k/\sigma` does not account for. A per-sample normalisation sees one row only.
# minilr's ``GroupNorm`` (no learned parameters; ``groups=1`` is layer norm) keeps copies independent.
# A direct check: change one copy's noise and see which other rows move.

# %%
rows = rng.standard_normal((6, 4, 5))  # 6 rows (copies), 4 channels, 5 positions


def batch_norm(h):
    mu, var = h.mean(axis=(0, 2), keepdims=True), h.var(axis=(0, 2), keepdims=True)
    return (h - mu) / np.sqrt(var + 1e-5)


gn = minilr.GroupNorm(1)
bumped = rows.copy()
bumped[0] += 0.5 * rng.standard_normal((4, 5))  # copy 0 draws other noise
moved_by = {}
for name, f in (("batch norm", batch_norm), ("GroupNorm", lambda h: gn.forward(h, np))):
    moved = np.abs(f(bumped) - f(rows)).reshape(6, -1).max(axis=1)
    moved_by[name] = float(moved[1:].max())
    print(f"{name:10s}: rows 1-5 moved by up to {moved[1:].max():.2e} when only row 0's noise changed")

# %%
# 4. Per layer: how good is each estimate?
# -----------------------------------------
#
# MNIST-1D (Greydanus, 2020) is a 40-point 1-D cousin of MNIST designed so that model choice
# matters: its paper reports ~68 % for an MLP and ~94 % for a CNN, with backprop.
# ``minilr.datasets.load("mnist1d")`` generates it offline with the published recipe (4,000 / 1,000
# samples). Conv nets take ``x[:, None, :]``, shape (N, 1, 40).
#
# ``minilr.cnn()`` is three stride-2 convolutions and a linear read-out; ``minilr.resnet5()`` has two
# convolutions in a residual block, GroupNorm after each convolution and a global mean before the
# read-out. Every parameter key names its place: ``<i>.body.<j>.weight`` is layer ``j`` inside the
# residual block that sits at position ``i`` of the ``Sequential`` (the run prints the keys and reads
# one of them below).

# %%
(x_train, y_train), (x_test, y_test) = minilr.datasets.load("mnist1d")
x_train, x_test = x_train[:, None, :], x_test[:, None, :]
print("train", x_train.shape, "test", x_test.shape)
print(minilr.resnet5())
keys = list(minilr.resnet5().parameters())
print(keys[:6], "...")
body_key = next(k for k in keys if ".body." in k)
i, _, j = body_key.split(".")[:3]
print(f"{body_key!r}: layer {j} of the residual block at position {i} of the Sequential")

# %%
# How good is each estimate of the CNN's gradient? Per layer, the cosine to the exact gradient on
# one batch of 50, at 100 copies (tutorial 2 did this for an MLP).
#
# **Which layers get ES in the hybrid.** Hybrid puts ES on the first ``es_layers`` noise sites and LR
# on the rest. The paper (and tutorial 4) give ES the first two layers; here it gets the first one
# only (``es_layers=1``), as in the Table 1 harness, ``benchmarks/table1_fair.py``, whose
# ``--es-layers`` is 1 for this ``cnn()``: this page and Table 1 then compare the same Hybrid. With
# four weight layers, two ES layers would hand half of the net to ES; with one, the hybrid changes
# only the first convolution, the layer with the fewest weights (ES perturbs every weight of its
# layers; LR perturbs every output at every position). The bars show what that costs at these copies.

# %%
cnn = minilr.cnn(sigma=0.1, seed=0)
ES_LAYERS = 1
xb, yb = x_train[:50], y_train[:50]
g_true = reference.gradient(cnn, xb, yb)
weights = [k for k in g_true if k.endswith("weight")]
sites = cnn.noise_sites()
for n_site, (prefix, layer, _) in enumerate(sites):
    print(f"{prefix}weight: {g_true[prefix + 'weight'].size:5d} weights, "
          f"{'ES' if n_site < ES_LAYERS else 'LR'} in the hybrid")
seeds = 2 if QUICK else 5
ESTS = ("lr", "alr", "es", "hybrid")
cosines = {}
for est in ESTS:
    cos = np.zeros(len(weights))
    for s in range(seeds):
        g = minilr.estimate_gradient(cnn, xb, yb, estimator=est, copies=100, seed=s, es_layers=ES_LAYERS)
        cos += [minilr.metrics.cosine_similarity({k: g[k]}, {k: g_true[k]}) for k in weights]
    cosines[est] = cos / seeds
    print(f"{est.upper():7s} cosine per layer:", np.round(cosines[est], 3))
fig, ax = plt.subplots(figsize=(7, 4))
for j_est, est in enumerate(ESTS):
    ax.bar(np.arange(len(weights)) + 0.2 * j_est - 0.3, cosines[est], width=0.2, label=est.upper())
ax.set_xticks(range(len(weights)), weights)
ax.set_ylabel("cosine to the exact gradient")
ax.set_title(f"Small CNN, 100 copies, batch 50 (hybrid: ES on the first {ES_LAYERS} layer)")
ax.legend()
fig.tight_layout()
fig.savefig(FIG / "09_cosine_per_layer.png", dpi=100)
print(f"LR: conv layers' cosines {np.round(cosines['lr'][:-1], 3)}, read-out's {cosines['lr'][-1]:.3f}")
print(f"ALR's cosine is below LR's on {int((cosines['alr'] < cosines['lr']).sum())} of {len(weights)} layers; "
      f"on the ES layer ({weights[0]}) the hybrid measures {cosines['hybrid'][0]:.3f} against LR's "
      f"{cosines['lr'][0]:.3f}")

# %%
# The convolutions have many positions, hence many noise values that all feed the same loss; the
# read-out has one position. The run above compares their cosines.
#
# 5. Training on MNIST-1D
# -----------------------
#
# BP uses the exact gradient (the reference). LR and ALR use 20 copies per sample, with Adam at
# step size 1e-2 for all three: the best of 3e-3, 1e-2 and 3e-2 for LR in a 2-epoch trial
# (``benchmarks/table1_fair.py`` tunes every method's step size on a validation split). Quick mode
# runs a few epochs on all 4,000 training samples, enough to leave chance (10 %) behind; run the
# script without ``MINILR_QUICK`` for the full curves, and see Table 1 below for several seeds.

# %%
epochs = 2 if QUICK else 20
runs = {}
for name, est in (("BP", "bp"), ("LR", "lr"), ("ALR", "alr")):
    net = minilr.cnn(sigma=0.1, seed=0)
    t0 = time.process_time()
    h = minilr.train(net, (x_train, y_train), val_data=(x_test, y_test), estimator=est, copies=20, epochs=epochs,
                     batch_size=100, lr=1e-2, progress=False, seed=0)
    runs[f"CNN {name}"] = h
    print(f"CNN {name}: test accuracy {h.val_accuracy[-1]:.3f} after {epochs} epochs "
          f"({time.process_time() - t0:.0f} CPU s)")
net = minilr.resnet5(sigma=0.1, seed=0)
res_epochs = 2 if QUICK else 10
h = minilr.train(net, (x_train, y_train), val_data=(x_test, y_test), estimator="lr", copies=20,
                 epochs=res_epochs, batch_size=100, lr=1e-2, progress=False, seed=0)
runs["ResNet-5 LR"] = h
print(f"ResNet-5 LR: test accuracy {h.val_accuracy[-1]:.3f} after {res_epochs} epochs")
# chance is 10 %; an accuracy measured on n test samples has standard error sqrt(p (1 - p) / n)
chance = 0.1
above_chance = chance + 5 * np.sqrt(chance * (1 - chance) / len(y_test))
print(f"chance + 5 standard errors on {len(y_test)} test samples: {above_chance:.3f}")
acc = {name: h.val_accuracy[-1] for name, h in runs.items()}
print(f"at equal copies (20) after {epochs} epochs, ALR's test accuracy is "
      f"{'below' if acc['CNN ALR'] < acc['CNN LR'] else 'not below'} LR's "
      f"({acc['CNN ALR']:.3f} vs {acc['CNN LR']:.3f})")

fig, ax = plt.subplots(figsize=(6, 4))
for name, h in runs.items():
    ax.plot(np.arange(1, len(h.val_accuracy) + 1), h.val_accuracy, "o-", label=name)
ax.axhline(chance, color="grey", lw=0.8, ls=":", label="chance")
ax.set_xlabel("epoch")
ax.set_ylabel("test accuracy")
ax.set_title("MNIST-1D" + (" (quick mode: a few epochs)" if QUICK else ""))
ax.legend()
fig.tight_layout()
fig.savefig(FIG / "09_mnist1d_training.png", dpi=100)

# %%
# 6. What ALR saves on a CNN
# --------------------------
#
# This engine's LR keeps, per site, the unfolded input :math:`U` and the noise :math:`\varepsilon` as
# floats until the loss is known. (The noise is a pure function of the seed and the copy, so an LR
# could redraw it instead of keeping it; that would shrink LR's record to :math:`U`, and the ratio
# below would shrink with it. The ratio printed is the one this engine measures.) ALR keeps signs
# in 1 bit (:math:`\operatorname{sign}\varepsilon`, and a ReLU output's sign) or 2 bits, and runs the
# forward pass over small blocks of copies (``minilr.engines.cpu.BLOCK_FLOATS_APPROX`` floats), so
# its floats live for one block. Below, the peak memory of one estimate (all copies in one chunk) as
# ``tracemalloc`` measures it, and the memory per extra copy from a straight-line fit:

# %%
copies_grid = [20, 80, 160] if QUICK else [20, 40, 80, 160, 320]
peaks = {"lr": [], "alr": []}
for est in peaks:
    minilr.estimate_gradient(cnn, xb, yb, estimator=est, copies=2)  # compile first: not measured
    for K in copies_grid:
        tracemalloc.start()
        minilr.estimate_gradient(cnn, xb, yb, estimator=est, copies=K)
        peaks[est].append(tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
per_copy = {est: np.polyfit(copies_grid, p, 1)[0] for est, p in peaks.items()}
mem_ratio = per_copy["lr"] / per_copy["alr"]
fig, ax = plt.subplots(figsize=(6, 4))
for est, p in peaks.items():
    ax.plot(copies_grid, p, "o-", label=f"{est.upper()}: {1024 * per_copy[est]:.0f} KiB per copy")
ax.set_xlabel("copies K (one chunk)")
ax.set_ylabel("peak memory of one estimate (MiB)")
ax.set_title(f"Small CNN, batch 50: LR/ALR per copy = {mem_ratio:.1f}x (measured)")
ax.legend()
fig.tight_layout()
fig.savefig(FIG / "09_memory.png", dpi=100)
print("peak MiB, LR:", np.round(peaks["lr"], 1), " ALR:", np.round(peaks["alr"], 1))
print(f"measured per extra copy: LR {1024 * per_copy['lr']:.0f} KiB, ALR {1024 * per_copy['alr']:.0f} KiB, "
      f"ratio {mem_ratio:.1f}x; whole peak at K={copies_grid[-1]}: {peaks['lr'][-1] / peaks['alr'][-1]:.1f}x")

# %%
# At equal memory ALR can therefore run many more copies than LR: roughly the per-copy ratio times
# as many, where the fixed parts of the peaks are small. Whether that buys accuracy is what Table 1
# measures.
#
# Table 1 (equal memory on a CNN)
# -------------------------------
#
# ``benchmarks/table1_fair.py`` trains this ``cnn()`` on MNIST-1D with every estimator, step sizes
# tuned on a validation split, several seeds, at equal copies and at equal measured memory (each
# sign variant at the copies whose measured peak equals its float variant's). Where its results
# (``benchmarks/table1_fair.json``) exist, the cell prints LR, ALR, Hybrid and A-Hybrid from both
# tables: test accuracy, mean ± 95 % interval half-width over seeds.

# %%
ROOT = (Path(__file__).parent if "__file__" in globals() else Path(".")).resolve().parent
TABLE1 = ROOT / "benchmarks" / "table1_fair.json"
table1 = None
if TABLE1.is_file():
    import json

    table1 = json.loads(TABLE1.read_text())["table"]
    for budget in ("copies", "memory"):
        print("equal copies:" if budget == "copies" else "equal measured memory:")
        rows = {r["method"]: r for r in table1.get(budget, [])}
        for method in ("LR", "ALR", "Hybrid", "A-Hybrid"):
            if method in rows:
                r = rows[method]
                print(f"  {method:9s} K={r['copies']:<5d} test accuracy {100 * r['mean']:.1f} "
                      f"± {100 * r['half']:.1f} %")
else:
    print("Table 1 not recorded yet")


# %%
# What the rows say, in ``benchmarks/TABLE1.md``'s words: at equal copies each sign variant trails
# its float version, since ALR estimates Eq. 5's surrogate: on the trained net at 20 copies its cosine
# is a third of LR's (0.16 against 0.48, TABLE1.md's diagnostics). At equal *measured* memory ALR runs 28 times the copies and is ahead of LR, the
# one gain whose intervals do not overlap at three seeds. This is the paper's "signs help"
# reproduced in direction, on this CNN, under the Eq. 3 reading. Tutorial 3 gives the rule that
# predicts when it happens.
# %%
# Exercises
# ---------
#
# 1. **Write the im2col unfold by hand.** With explicit loops over samples, positions, channels and
#    kernel offsets, build :math:`U` (samples, positions, :math:`C_{in}k`) for a padded, strided 1-D
#    input, and check it against ``minilr.conv.im2col``. Then use it to write the LR gradient of a
#    ``Conv1d`` with squared loss, :math:`\frac1N(\mathcal{L}\odot\varepsilon/\sigma)^\top U` summed over
#    positions, with noise you draw yourself, and test it against the exact gradient
#    (``minilr.reference.gradient``): the noise is additive, so LR is unbiased for it.
# 2. Rerun the memory cell with ``estimator="es"``. What does ES keep per copy, and how does its
#    memory per copy compare with LR's and ALR's on this net?
#
# A checked solution of exercise 1 is in ``tutorials/solutions/s09_im2col_by_hand.py``.
#
# What this run shows
# -------------------

# %%
plots.verdicts({
    # averaging 20x more estimates should cut the error ~4.5x (1/sqrt(R)); we ask for 2x at least
    f"on a convolution, LR and ES approach the exact gradient, ALR and AES their targets, as {checkpoints[0]} -> {R} "
    "estimates are averaged (error at least halved)": (
        all(e1 < e0 / 2 for e0, e1 in final_err.values()),
        ", ".join(f"{e.upper()} {e0:.2f} -> {e1:.3f}" for e, (e0, e1) in final_err.items())),
    "batch norm couples the copies, GroupNorm does not": (
        moved_by["batch norm"] > 1e-3 and moved_by["GroupNorm"] == 0.0,
        f"other rows moved {moved_by['batch norm']:.1e} vs {moved_by['GroupNorm']:.1e}"),
    "the CNN (LR, ALR) and ResNet-5 (LR) learn: test accuracy above chance + 5 s.e.": (
        min(acc["CNN LR"], acc["CNN ALR"], acc["ResNet-5 LR"]) > above_chance,
        f"LR {acc['CNN LR']:.3f}, ALR {acc['CNN ALR']:.3f}, ResNet-5 {acc['ResNet-5 LR']:.3f} > {above_chance:.3f}"),
    "ALR's measured memory per copy is below LR's by more than 4x": (
        mem_ratio > 4, f"{mem_ratio:.1f}x"),
})
plots.show_recorded("09_convolutions_and_resnets")
