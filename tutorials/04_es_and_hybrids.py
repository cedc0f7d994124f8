"""
4. ES, AES, Hybrid and A-Hybrid side by side
============================================

LR puts the noise on each neuron's output. **Evolution strategies** (ES) put it on the weights.
The paper's LR family has six members (Sec. 4.1): LR, ES and their **Hybrid** (ES on the first
layers, LR on the rest), each with or without the sign approximation (ALR, AES, A-Hybrid). Here
we derive ES, then measure all six on one small network: per-layer cosine similarity to the
exact gradient as copies grow (the paper's Fig. 5) and the accuracy/stability summary of Eq. 7-8
(its Table 4).
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
# ES is LR on the weights
# -----------------------
#
# Perturb a layer's weights, :math:`\theta + \sigma E` with :math:`E_{ij}\sim\mathcal{N}(0,1)`. The perturbed
# weights have a Gaussian density with mean :math:`\theta`, so the score-function argument of tutorial 1
# gives
#
# .. math:: \nabla_\theta\,\mathbb{E}[\mathcal{L}(\theta+\sigma E)] = \mathbb{E}\Big[\mathcal{L}\,\frac{E}{\sigma}\Big].
#
# One :math:`E_k` per copy is shared by the whole batch, and the copy's loss is the batch's loss. Since
# :math:`(\theta + \sigma E)x = \theta x + \sigma E x`, ES is LR with output noise :math:`\sigma E x`, which is
# correlated across neurons and samples. The price is dimension: ES's noise has as many numbers
# as the layer has weights, :math:`m(d+1)`, all credited from one loss per copy, while LR's has :math:`m` per
# sample and credits each sample separately. ES's advantage is memory: it stores one :math:`E_k` per
# copy, not :math:`x` and :math:`\varepsilon` for every sample of every copy. **AES** keeps :math:`\operatorname{sign}(E)`.
# **A-Hybrid** applies signs to both parts of the **Hybrid**.
#
# How many layers get ES in the Hybrid is a choice. Here it is **two**: ``es_layers=2``, ES on the
# first two Linear layers and LR on the third, the read-out (the last layer always gets LR). That
# is the paper's choice (Sec. 4.1: "ES is used for the first two layers"). On the CNN of tutorial 9
# and of Table 1 (``benchmarks/TABLE1.md``), ``es_layers=1``: ES on the first convolution only, a
# layer of few weights, where ES's error (which grows with the number of weights) is smallest. Fewer ES layers means more of the network pays LR's per-sample
# memory; more ES layers means more weights estimated by ES, whose error grows with the number of
# weights (measured below).

# %%
(x_train, y_train), _ = minilr.datasets.load("digits")
xb, yb = x_train[:50], y_train[:50]
model = minilr.MLP([64, 32, 32, 10], activation="relu", sigma=0.1, seed=0)
g_true = minilr.reference.gradient(model, xb, yb)
ESTIMATORS = ["lr", "alr", "es", "aes", "hybrid", "a-hybrid"]
layers = model.linear_indices
ES_LAYERS = 2   # the paper's Hybrid; passed explicitly below
print("Linear layers at positions", layers, f"- Hybrid (es_layers={ES_LAYERS}) uses ES on", layers[:ES_LAYERS],
      "and LR on", layers[ES_LAYERS:])
print("weights per layer (ES's noise per copy):", [model.layers[i].weight.size + model.layers[i].bias.size for i in layers],
      "  outputs per layer (LR's noise per sample):", [model.layers[i].weight.shape[0] for i in layers])

# %%
# Per-layer cosine similarity as copies grow (Fig. 5)
# ---------------------------------------------------
#
# For every estimator, every number of copies :math:`K` on an even grid :math:`[n_1, n_2]` and several seeds,
# we estimate the gradient of one batch and compare it with the exact one, layer by layer
# (``minilr.metrics.cosine_similarity(g, g_true, per_layer=True)``).

# %%
COPIES = [50, 100, 200, 300, 400] if QUICK else list(range(100, 2001, 100))
SEEDS = range(2 if QUICK else 5)
overall = {e: np.zeros((len(SEEDS), len(COPIES))) for e in ESTIMATORS}
by_layer = {e: {i: np.zeros((len(SEEDS), len(COPIES))) for i in layers} for e in ESTIMATORS}
for e in ESTIMATORS:
    for s in SEEDS:
        for j, K in enumerate(COPIES):
            g = minilr.estimate_gradient(model, xb, yb, estimator=e, copies=K, seed=s,
                                         es_layers=ES_LAYERS if "hybrid" in e else None)
            overall[e][s, j] = minilr.metrics.cosine_similarity(g, g_true)
            for i, c in minilr.metrics.cosine_similarity(g, g_true, per_layer=True).items():
                by_layer[e][i][s, j] = c
print(f"per-layer cosine at K={COPIES[-1]} (mean over {len(SEEDS)} seeds)")
print(f"{'':10s}" + "".join(f"{'layer ' + str(i):>10s}" for i in layers) + f"{'overall':>10s}")
for e in ESTIMATORS:
    print(f"{e:10s}" + "".join(f"{by_layer[e][i][:, -1].mean():10.3f}" for i in layers)
          + f"{overall[e][:, -1].mean():10.3f}")

fig, axes = plots.new_figure(ncols=2, sharey=True)
for ax, e in zip(axes, ("hybrid", "a-hybrid")):
    plots.cosine_vs_copies(COPIES, {f"layer {i} ({'ES' if i in layers[:ES_LAYERS] else 'LR'})": by_layer[e][i]
                                    for i in layers}, ax=ax, logx=False,
                           title=f"{'Hybrid' if e == 'hybrid' else 'A-Hybrid'} vs exact gradient")
for e in ("hybrid", "a-hybrid"):
    print(f"{e:9s} spread over seeds (sd, mean over K) per layer:",
          {i: round(float(by_layer[e][i].std(axis=0).mean()), 4) for i in layers})
plots.save(fig, FIG / "04_hybrid_per_layer.png")
fig

# %%
# In the printed table, compare the layer that Hybrid leaves to LR (the last one) with the two it
# estimates by ES at the same :math:`K`, and the same layer under A-Hybrid: the sign approximation lowers
# the cosine of the LR part (tutorial 3 explained why: ALR targets a slightly different
# direction). The paper also finds A-Hybrid's bands (spread over seeds) thinner than Hybrid's;
# the two "spread over seeds" lines printed above say whether that holds on this network. A
# spread of cosines shares the caveat on Sta. below: a band around a lower cosine tends to be
# thinner anyway.
#
# Accuracy and stability (Eq. 7-8, Table 4)
# -----------------------------------------
#
# Over the range of copies :math:`[n_1, n_2]`, the paper summarises each estimator by
#
# .. math::
#
#    \text{Acc.} = \frac{1}{n_2-n_1}\sum_{n=n_1}^{n_2}\cos(g_n, g),\qquad
#    \text{Sta.} = \sqrt{\frac{1}{n_2-n_1}\sum_{n=n_1}^{n_2}\big(\cos(g_n, g)-\hat y_n\big)^2},
#
# where :math:`\hat y_n` is a straight line fitted to the cosines against :math:`n`. Acc. is the mean cosine
# (higher is better); Sta. is how far single estimates scatter around the trend (lower is better,
# but see the caveat after the table). ``minilr.metrics.acc_sta(copies, cosines)`` computes both for
# one run over our grid; we report the mean and spread over seeds.

# %%
table = {e: np.array([minilr.metrics.acc_sta(COPIES, overall[e][s]) for s in SEEDS]) for e in ESTIMATORS}
print(f"Acc./Sta. over copies {COPIES[0]}..{COPIES[-1]}, MLP 64-32-32-10, {len(SEEDS)} seeds (mean +- sd)")
print(f"{'':8s}" + "".join(f"{e:>16s}" for e in ESTIMATORS))
for row, name in ((0, "Acc."), (1, "Sta.")):
    print(f"{name:8s}" + "".join(f"{table[e][:, row].mean():9.3f} +-{table[e][:, row].std():5.3f}" for e in ESTIMATORS))
best_acc = max(ESTIMATORS, key=lambda e: table[e][:, 0].mean())
print("highest Acc.:", best_acc, "   lowest Sta.:", min(ESTIMATORS, key=lambda e: table[e][:, 1].mean()))
for plain, approx in (("lr", "alr"), ("es", "aes"), ("hybrid", "a-hybrid")):
    print(f"sign approximation {plain} -> {approx}: Acc. {table[approx][:, 0].mean() - table[plain][:, 0].mean():+.3f}, "
          f"Sta. {table[approx][:, 1].mean() - table[plain][:, 1].mean():+.3f}")

fig, axes = plots.new_figure(ncols=3, width=4.2)
plots.cosine_vs_copies(COPIES, overall, ax=axes[0], logx=False, title="whole network")
pos = np.arange(len(ESTIMATORS))
for ax, row, name in ((axes[1], 0, "Acc. (higher is better)"), (axes[2], 1, "Sta. (lower is better)")):
    ax.bar(pos, [table[e][:, row].mean() for e in ESTIMATORS], yerr=[table[e][:, row].std() for e in ESTIMATORS],
           color=[f"C{k}" for k in range(len(ESTIMATORS))], capsize=3)
    ax.set_xticks(pos, ESTIMATORS, rotation=30)
    ax.set_title(name)
    ax.grid(alpha=0.3, axis="y")
plots.save(fig, FIG / "04_acc_sta.png")
fig

# %%
# **Sta. is not scale-free.** It is measured in units of cosine, and a cosine scatters little when
# it is pinned near 0 (an estimate that is mostly noise) as well as near 1. An estimator can
# therefore earn a "good" Sta. by being poor. The run shows it:

# %%
acc = {e: table[e][:, 0].mean() for e in ESTIMATORS}
sta = {e: table[e][:, 1].mean() for e in ESTIMATORS}
worst = min(ESTIMATORS, key=acc.get)
print(f"lowest Acc.: {worst} (Acc. {acc[worst]:.3f}, Sta. {sta[worst]:.3f});  "
      f"highest Acc.: {best_acc} (Acc. {acc[best_acc]:.3f}, Sta. {sta[best_acc]:.3f})")
print("estimators by Sta. (lowest first):", sorted(ESTIMATORS, key=sta.get))

# %%
# Read Sta. only between estimators of similar Acc. The sign approximation lowers Acc. as well
# (the "sign approximation" lines above), so part of any drop in Sta. it shows is this scale
# effect, not extra reliability.
#
# Variance against dimension
# --------------------------
#
# Why is ES so much noisier than LR at equal copies? ES's noise has one number per **weight**,
# :math:`D = m(d+1)` for a layer, all credited from one loss per copy. On the simplest loss, a quadratic
# :math:`\tfrac12\lVert\theta-\theta^*\rVert^2` with gradient :math:`g`, antithetic ES gets from each copy exactly
# :math:`(g\cdot E)\,E`, whose mean is :math:`g` and whose squared error is
# :math:`\mathbb{E}\lVert (g\cdot E)E - g\rVert^2 = (D+1)\lVert g\rVert^2` (a Gaussian fourth moment). Over :math:`K` copies the
# relative error is :math:`\sqrt{(D+1)/K}`: doubling the weights costs what halving the copies costs.
# LR's noise has :math:`m` numbers per **sample**, and each of the :math:`N` samples draws its own, so its
# error grows with the layer's outputs and shrinks with the batch. (Tutorial 2 derived LR's
# per-layer error; convolutional layers, with channels times positions outputs per sample, are
# where LR's noise dimension is large.) We measure both on one linear layer with squared loss,
# 8 inputs, a batch of 64, fixed :math:`K`, and an output that widens.

# %%
D_IN, N_DIM, K_DIM = 8, 64, 200
WIDTHS = [2, 8, 32, 128]
dim_rng = np.random.default_rng(0)
dim_err = {e: np.zeros((len(SEEDS), len(WIDTHS))) for e in ("lr", "es")}
for j, width in enumerate(WIDTHS):
    xd = dim_rng.standard_normal((N_DIM, D_IN)).astype(np.float32)
    yd = (xd @ dim_rng.standard_normal((width, D_IN)).T / np.sqrt(D_IN)).astype(np.float32)
    lin = minilr.Sequential([minilr.Linear(D_IN, width)], sigma=0.1, seed=0)
    gd = minilr.reference.gradient(lin, xd, yd, loss="mse")
    gd_norm = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in gd.values()))
    for e in dim_err:
        for s in SEEDS:
            est = minilr.estimate_gradient(lin, xd, yd, estimator=e, copies=K_DIM, seed=s, loss="mse")
            dim_err[e][s, j] = np.sqrt(sum(np.sum((est[k] - gd[k]) ** 2) for k in gd)) / gd_norm
DIMS = np.array([w * (D_IN + 1) for w in WIDTHS])
es_law = np.sqrt((DIMS + 1) / K_DIM)
slope = {e: np.polyfit(np.log(DIMS), np.log(v.mean(axis=0)), 1)[0] for e, v in dim_err.items()}
print(f"relative error vs exact gradient, one Linear({D_IN}, m) layer, batch {N_DIM}, K={K_DIM}")
print(f"{'m':>5s}{'weights D':>11s}{'ES':>9s}{'sqrt((D+1)/K)':>15s}{'LR':>9s}")
for j, width in enumerate(WIDTHS):
    print(f"{width:5d}{DIMS[j]:11d}{dim_err['es'][:, j].mean():9.3f}{es_law[j]:15.3f}{dim_err['lr'][:, j].mean():9.3f}")
print(f"log-log slope against D: ES {slope['es']:.2f}, LR {slope['lr']:.2f} (sqrt(D) is 0.5)")

fig, ax = plots.new_figure()
for e, v in dim_err.items():
    ax.errorbar(DIMS, v.mean(axis=0), yerr=v.std(axis=0), marker="o", ms=4, capsize=3, label=e.upper())
ax.plot(DIMS, es_law, "k--", lw=1, label=r"$\sqrt{(D+1)/K}$")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("perturbed weights D = m(d+1) of the layer")
ax.set_ylabel("relative error vs exact gradient")
ax.set_title(f"Linear({D_IN}, m), batch {N_DIM}, K={K_DIM}")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plots.save(fig, FIG / "04_variance_vs_dimension.png")
fig

# %%
# ES's error follows :math:`\sqrt{(D+1)/K}` closely: with standard-normal inputs this batch loss is
# nearly the unit quadratic of the derivation in the weights (its Hessian is about the identity).
# On other losses the constant changes; the growth with :math:`D` is the point. LR's error is far
# smaller at every width, since its noise is
# spread over :math:`m` outputs per sample and averaged over the batch. This is why the ES layers
# of the MLP above, with the printed thousands of weights each, get low cosines at a few hundred
# copies, and why the Hybrid's one LR layer is its best-estimated one.
#
# Read the Acc./Sta. table against the paper's Table 4 with this in mind. On this small MLP the
# ordering of the estimators need not match a ResNet-5 on CIFAR-10: with only three layers, the
# Hybrid leaves a single layer to LR. The three printed "sign approximation" lines show what the
# signs cost in Acc. and the change in Sta., which the caveat above tells you how to read.
#
# What this run shows
# -------------------

# %%
plots.verdicts({
    "LR has the highest Acc. of the six at equal copies": (
        best_acc == "lr", ", ".join(f"{e} {acc[e]:.3f}" for e in ESTIMATORS)),
    "Sta. is not scale-free: the lowest-Acc. estimator has a lower Sta. than the highest-Acc. one": (
        sta[worst] < sta[best_acc],
        "; ".join(f"{e}: Acc. {acc[e]:.3f}, Sta. {sta[e]:.3f}" for e in dict.fromkeys([worst, "es", best_acc]))),
    "ES's error grows like the square root of the number of perturbed weights": (
        abs(slope["es"] - 0.5) < 0.1 and bool(np.all(np.abs(dim_err["es"].mean(axis=0) / es_law - 1) < 0.3)),
        f"slope {slope['es']:.2f}; measured / sqrt((D+1)/K): "
        f"{np.round(dim_err['es'].mean(axis=0) / es_law, 2).tolist()}"),
    "at every width LR's error is below ES's, and the Hybrid's LR layer is its best-estimated one": (
        bool(np.all(dim_err["lr"].mean(axis=0) < dim_err["es"].mean(axis=0)))
        and all(by_layer["hybrid"][layers[-1]][:, -1].mean() > by_layer["hybrid"][i][:, -1].mean()
                for i in layers[:ES_LAYERS]),
        f"LR {np.round(dim_err['lr'].mean(axis=0), 3).tolist()} vs ES {np.round(dim_err['es'].mean(axis=0), 3).tolist()}; "
        f"Hybrid at K={COPIES[-1]}: " + ", ".join(f"layer {i} {by_layer['hybrid'][i][:, -1].mean():.3f}" for i in layers)),
})
plots.show_recorded("04_es_and_hybrids")

# %%
# Exercises
# ---------
#
# 1. **ES and its dimension law.** Write antithetic ES for a function of a vector,
#    :math:`\hat g = \frac1K\sum_k \frac{f(\theta+\sigma E_k) - f(\theta-\sigma E_k)}{2\sigma}E_k`. On
#    :math:`f(\theta) = \tfrac12\lVert\theta-\theta^*\rVert^2` check that it is unbiased and that its mean squared
#    relative error is :math:`(D+1)/K` for several :math:`D`. Then derive :math:`(D+1)` yourself from
#    :math:`\mathbb{E}[E_iE_jE_kE_l]`.
# 2. Run the Acc./Sta. cell with a scale-free alternative, e.g. the scatter of the cosines divided
#    by their mean, and see whether it still ranks the poorest estimator as the most stable.
#
# A checked solution of exercise 1 is in ``tutorials/solutions/s04_es_dimension.py``.
#
# Next
# ----
#
# The :doc:`estimator reference <../estimators>` puts every estimator of tutorials 1-4 side by side:
# what it is unbiased for, its memory per copy, how its error scales, its measured cosine at equal
# copies and at equal memory, and when to use which.
