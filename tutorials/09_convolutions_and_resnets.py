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
4. train a small CNN and a ResNet-5 on MNIST-1D (generated offline) with BP, LR and ALR.
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
print("conv by im2col = conv by loop:", np.allclose(conv.forward(x, np), loop, atol=1e-5))

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
for est, target in targets.items():
    draws = np.stack([minilr.estimate_gradient(model, x, y, estimator=est, copies=8, seed=r,
                                               loss="mse")["0.weight"].reshape(3, -1) for r in range(R)])
    running = np.cumsum(draws, axis=0) / np.arange(1, R + 1)[:, None, None]
    err = [np.linalg.norm(running[c - 1] - target) / np.linalg.norm(target) for c in checkpoints]
    ax.loglog(checkpoints, err, "o-", label=est.upper())
    print(f"{est}: relative error of the mean of {R} estimates: {err[-1]:.3f}")
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
for name, f in (("batch norm", batch_norm), ("GroupNorm", lambda h: gn.forward(h, np))):
    moved = np.abs(f(bumped) - f(rows)).reshape(6, -1).max(axis=1)
    print(f"{name:10s}: rows 1-5 moved by up to {moved[1:].max():.2e} when only row 0's noise changed")

# %%
# 4. Training on MNIST-1D
# -----------------------
#
# MNIST-1D (Greydanus, 2020) is a 40-point 1-D cousin of MNIST designed so that model choice
# matters: an MLP reaches ~68 % with backprop, a CNN ~94 %. ``minilr.datasets.load("mnist1d")``
# generates it offline with the published recipe (4,000 / 1,000 samples). Conv nets take
# ``x[:, None, :]``, shape (N, 1, 40).
#
# ``minilr.cnn()`` is three stride-2 convolutions and a linear read-out; ``minilr.resnet5()`` has two
# convolutions in a residual block, GroupNorm after each convolution and a global mean before the
# read-out. Every parameter key names its place: ``"2.body.0.weight"`` is the first convolution of the
# residual block at position 2.

# %%
(x_train, y_train), (x_test, y_test) = minilr.datasets.load("mnist1d")
x_train, x_test = x_train[:, None, :], x_test[:, None, :]
if QUICK:
    x_train, y_train, x_test, y_test = x_train[:1000], y_train[:1000], x_test[:500], y_test[:500]
print("train", x_train.shape, "test", x_test.shape)
print(minilr.resnet5())
print(list(minilr.resnet5().parameters())[:6], "...")

# %%
# How good is each estimate of the CNN's gradient? Per layer, the cosine to the exact gradient on
# one batch (tutorial 2 did this for an MLP). Convolutions have many positions, hence many noise
# dimensions that all feed the same loss: their estimates are noisier than the read-out's.

# %%
cnn = minilr.cnn(sigma=0.1, seed=0)
xb, yb = x_train[:50], y_train[:50]
g_true = reference.gradient(cnn, xb, yb)
weights = [k for k in g_true if k.endswith("weight")]
seeds = 2 if QUICK else 5
fig, ax = plt.subplots(figsize=(7, 4))
for j, est in enumerate(("lr", "alr", "es", "hybrid")):
    cos = np.zeros(len(weights))
    for s in range(seeds):
        g = minilr.estimate_gradient(cnn, xb, yb, estimator=est, copies=100, seed=s, es_layers=1)
        cos += [minilr.metrics.cosine_similarity({k: g[k]}, {k: g_true[k]}) for k in weights]
    ax.bar(np.arange(len(weights)) + 0.2 * j - 0.3, cos / seeds, width=0.2, label=est.upper())
ax.set_xticks(range(len(weights)), weights)
ax.set_ylabel("cosine to the exact gradient")
ax.set_title("Small CNN, 100 copies, batch 50 (hybrid: ES on the first conv)")
ax.legend()
fig.tight_layout()
fig.savefig(FIG / "09_cosine_per_layer.png", dpi=100)

# %%
# Now train. BP uses the exact gradient (the reference). LR and ALR use 20 copies per sample. In
# quick mode everything is cut to a few epochs on a quarter of the data; run the script without
# ``MINILR_QUICK`` for the full curves, and ``benchmarks/table1.py`` for the paper's Table 1 in
# miniature with all estimators, feedback alignment, several seeds and the ResNet.

# %%
epochs = 2 if QUICK else 20
runs = {}
for name, kw in (("BP", dict(estimator="bp", lr=1e-2)), ("LR", dict(estimator="lr", lr=3e-3)),
                 ("ALR", dict(estimator="alr", lr=3e-3))):
    net = minilr.cnn(sigma=0.1, seed=0)
    t0 = time.perf_counter()
    h = minilr.train(net, (x_train, y_train), val_data=(x_test, y_test), copies=20, epochs=epochs,
                     batch_size=100, progress=False, seed=0, **kw)
    runs[name] = h
    print(f"CNN {name}: test accuracy {h.val_accuracy[-1]:.3f} after {epochs} epochs "
          f"({time.perf_counter() - t0:.0f} s)")
net = minilr.resnet5(sigma=0.1, seed=0)
h = minilr.train(net, (x_train, y_train), val_data=(x_test, y_test), estimator="lr", copies=20,
                 epochs=max(1, epochs // 2), batch_size=100, lr=3e-3, progress=False, seed=0)
runs["ResNet-5 LR"] = h
print(f"ResNet-5 LR: test accuracy {h.val_accuracy[-1]:.3f}")

fig, ax = plt.subplots(figsize=(6, 4))
for name, h in runs.items():
    ax.plot(np.arange(1, len(h.val_accuracy) + 1), h.val_accuracy, "o-", label=name)
ax.set_xlabel("epoch")
ax.set_ylabel("test accuracy")
ax.set_title("MNIST-1D" + (" (quick mode: a quarter of the data)" if QUICK else ""))
ax.legend()
fig.tight_layout()
fig.savefig(FIG / "09_mnist1d_training.png", dpi=100)

# %%
# 5. What ALR saves on a CNN
# --------------------------
#
# LR keeps, per site, the unfolded input :math:`U` and the noise :math:`\varepsilon` as floats until the loss is
# known; ALR keeps their signs in 1 bit (:math:`\operatorname{sign}\varepsilon`, and a ReLU output's sign)
# or 2 bits. With sign records the engine runs the forward pass over small blocks of copies
# (``minilr.engines.cpu.BLOCK_FLOATS_APPROX`` floats), so its floats live for one block: the peak is one
# block's floats plus all the bits, against all copies' floats for LR (all copies in one chunk):

# %%
copies_grid = [20, 80, 160] if QUICK else [20, 40, 80, 160, 320]
peaks = {"lr": [], "alr": []}
for est in peaks:
    for K in copies_grid:
        tracemalloc.start()
        minilr.estimate_gradient(cnn, xb, yb, estimator=est, copies=K)
        peaks[est].append(tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
fig, ax = plt.subplots(figsize=(6, 4))
for est, p in peaks.items():
    ax.plot(copies_grid, p, "o-", label=est.upper())
ax.set_xlabel("copies K (one chunk)")
ax.set_ylabel("peak memory of one estimate (MiB)")
ax.set_title("Small CNN, batch 50")
ax.legend()
fig.tight_layout()
fig.savefig(FIG / "09_memory.png", dpi=100)
print("peak MiB, LR:", np.round(peaks["lr"], 1), " ALR:", np.round(peaks["alr"], 1))

# %%
# What to take away
# -----------------
#
# -  A convolution is one noise site: noise per output position and channel, one :math:`\sigma` per
#    channel, and its LR gradient is a single product of the unfolded input with :math:`\mathcal{L}\odot\varepsilon`.
# -  Every estimator keeps its expectation on a convolution (checked above and, with a stated
#    false-failure probability, in ``tests/test_conv.py``), as long as nothing mixes the copies:
#    hence per-sample normalisation instead of batch norm.
# -  Many positions mean many noise dimensions feeding one loss: the convolutions' estimates are
#    much noisier than the read-out's, which is what makes LR on CNNs slow to train and what the
#    paper's hybrids and sign approximation try to buy back. ``benchmarks/table1.py`` measures how far.
