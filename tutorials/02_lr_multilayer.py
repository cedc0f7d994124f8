r"""
2. LR for a multilayer network
==============================

Tutorial 1 derived the likelihood-ratio (LR) gradient for one noisy layer. Here we put noise in
**every** layer of a multilayer perceptron and ask four questions:

1. Why may each layer use the same one-layer formula, with no chain rule?
2. How close is the estimate to the exact gradient as the number of copies :math:`K` grows
   (the paper's Fig. 1, at small scale)?
3. What do baselines and antithetic noise buy?
4. How large should the noise :math:`\sigma` be, and can the network learn it (Eq. 1, second line)?
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
# Noise at every layer, one formula per layer
# -------------------------------------------
#
# Layer :math:`l` computes :math:`v^{(l)} = \theta^{(l)} x^{(l-1)} + \sigma^{(l)}\varepsilon^{(l)}` and
# :math:`x^{(l)} = \varphi(v^{(l)})` (paper Sec. 2). Fix layer :math:`l` and condition on everything before
# it: then :math:`x^{(l-1)}` is given, and :math:`v^{(l)}` is Gaussian with mean :math:`\theta^{(l)}x^{(l-1)}` and
# covariance :math:`\mathrm{diag}(\sigma^{(l)})^2`. Everything after layer :math:`l`, the later layers and their
# noise, only turns :math:`v^{(l)}` into a loss: a black box we never differentiate. The one-layer
# argument of tutorial 1 applies unchanged, to every layer at once:
#
# .. math::
#
#    \frac{\partial\,\mathbb{E}[\mathcal{L}_n]}{\partial\theta^{(l)}_{ij}}
#      = \mathbb{E}\Big[\mathcal{L}_n\,x^{(l-1)}_j(n)\,\frac{\varepsilon^{(l)}_i(n)}{\sigma^{(l)}_i}\Big]
#      \qquad\text{(Eq. 1)}.
#
# Layer :math:`l`'s gradient needs the loss, its own input and its own noise, nothing from the layers
# above it. That is the **layer-level parallelism** of the paper (Sec. 3.3): all layers can
# compute their gradients at the same time, as soon as the loss is known. The :math:`K` copies of a
# sample are independent too (**data-level parallelism**).
#
# What "exact gradient" means: LR is unbiased for the gradient of the *smoothed* loss
# :math:`\mathbb{E}_\varepsilon[\mathcal{L}]`. We compare with the noiseless backprop gradient from
# ``minilr.reference.gradient``, which is close to it when :math:`\sigma` is small.

# %%
(x_train, y_train), (x_test, y_test) = minilr.datasets.load("digits")
xb, yb = x_train[:50], y_train[:50]
model = minilr.MLP([64, 64, 32, 10], activation="relu", sigma=0.1, seed=0)
g_true = minilr.reference.gradient(model, xb, yb)
g = minilr.estimate_gradient(model, xb, yb, estimator="lr", copies=100, seed=0)
print("keys:", sorted(g))
print("same shapes as the parameters:", all(g[k].shape == p.shape for k, p in model.parameters().items()))
print("cosine to the exact gradient with K=100:", round(minilr.metrics.cosine_similarity(g, g_true), 3))

# %%
# Cosine similarity as the copies grow (paper Fig. 1, small)
# ----------------------------------------------------------
#
# The estimate averages :math:`K` independent copies, so its variance falls like :math:`1/K` and its cosine
# with the exact gradient climbs towards one. We repeat every measurement with several seeds and
# draw their range as a band. Three variants:
#
# -  **no baseline**: the plain estimator :math:`\mathcal{L}_n\,x_j\,\varepsilon_i/\sigma_i`;
# -  **leave-one-out baseline** (minilr's default): subtract from copy :math:`k`'s loss the mean loss of
#    the same sample's *other* copies. That mean does not depend on copy :math:`k`'s noise and
#    :math:`\mathbb{E}[\varepsilon]=0`, so the expectation is unchanged. The loss is a large number that
#    barely changes between copies; after subtraction only the part caused by the noise is left to
#    multiply the noise;
# -  **antithetic noise**: copies come in mirrored pairs :math:`+\varepsilon, -\varepsilon`. For a pair,
#    :math:`(\mathcal{L}^+ - \mathcal{L}^-)\,\varepsilon/2` cancels the constant and all even-order terms of
#    the loss, but a pair carries one independent noise draw, not two.

# %%
COPIES = [10, 100, 1000] if QUICK else [10, 30, 100, 300, 1000, 3000]
SEEDS = range(2 if QUICK else 5)
VARIANTS = {"no baseline": dict(baseline=False), "leave-one-out baseline": dict(baseline=True),
            "baseline + antithetic": dict(baseline=True, antithetic=True)}
cos = {v: np.zeros((len(SEEDS), len(COPIES))) for v in VARIANTS}
per_layer = {}
for s in SEEDS:
    for j, K in enumerate(COPIES):
        for v, kw in VARIANTS.items():
            est = minilr.estimate_gradient(model, xb, yb, estimator="lr", copies=K, seed=s, **kw)
            cos[v][s, j] = minilr.metrics.cosine_similarity(est, g_true)
            if v == "leave-one-out baseline":
                for layer, c in minilr.metrics.cosine_similarity(est, g_true, per_layer=True).items():
                    per_layer.setdefault(f"layer {layer}", np.zeros((len(SEEDS), len(COPIES))))[s, j] = c
print("mean cosine to the exact gradient (rows: variant, columns: copies)")
print(" " * 24 + "".join(f"{K:>8d}" for K in COPIES))
for v, c in cos.items():
    print(f"{v:24s}" + "".join(f"{x:8.3f}" for x in c.mean(axis=0)))
k1000 = COPIES.index(1000)
HEADLINE = cos["leave-one-out baseline"][:, k1000].mean()
print(f"headline: LR with the default baseline reaches cosine {HEADLINE:.3f} at K=1000")
anti_better = cos["baseline + antithetic"][:, k1000].mean() > HEADLINE
print("per-layer cosine at K=1000 (baseline):",
      {k: round(float(v[:, k1000].mean()), 3) for k, v in per_layer.items()})
print("at K=1000, adding antithetic pairs to the baseline", "helps" if anti_better else "does not help",
      "on this network")

fig, axes = plots.new_figure(ncols=2)
plots.cosine_vs_copies(COPIES, cos, ax=axes[0], title="whole network")
plots.cosine_vs_copies(COPIES, per_layer, ax=axes[1], title="per layer (baseline)")
plots.save(fig, FIG / "02_cosine_vs_copies.png")
fig

# %%
# Read the printed table with the figure. Without a baseline the estimate is nearly useless at
# every :math:`K` shown: the raw loss multiplies the noise and the signal drowns. The baseline is what
# makes LR practical. Whether antithetic pairs add anything depends on how much curvature the
# loss has at the scale of :math:`\sigma`; with a good baseline, a mirrored pair costs two forward
# passes for one independent draw, and the printed line says which effect won here.
#
# In the per-layer panel (and the printed per-layer cosines) the layer nearest the loss is
# usually estimated best. The first layer has the most weights
# (64 inputs times 64 neurons), and its gradient, like every layer's, is inferred from one scalar
# loss per copy: more parameters per noise dimension means more variance per parameter.
#
# How large should :math:`\sigma` be?
# -----------------------------------
#
# Two forces pull against each other. The smoothed loss :math:`\mathbb{E}[\mathcal{L}]` drifts away
# from the noiseless loss as :math:`\sigma` grows, so its gradient does too. As :math:`\sigma` shrinks,
# the factor :math:`1/\sigma` in Eq. 1 blows up the variance, *unless* a baseline removes the part of
# the loss that does not depend on the noise: with a baseline, :math:`\mathcal{L}-b \approx \sigma\,\nabla_v\mathcal{L}\cdot\varepsilon`, and the :math:`\sigma` cancels.

# %%
SIGMAS = [0.01, 0.03, 0.1, 0.3, 1.0]
K_SIGMA = 100 if QUICK else 300
by_sigma = {"no baseline": np.zeros((len(SEEDS), len(SIGMAS))), "leave-one-out baseline": np.zeros((len(SEEDS), len(SIGMAS)))}
for j, sigma in enumerate(SIGMAS):
    m_sigma = minilr.MLP([64, 64, 32, 10], activation="relu", sigma=sigma, seed=0)   # same weights, other sigma
    for s in SEEDS:
        for v, baseline in (("no baseline", False), ("leave-one-out baseline", True)):
            est = minilr.estimate_gradient(m_sigma, xb, yb, estimator="lr", copies=K_SIGMA, seed=s, baseline=baseline)
            by_sigma[v][s, j] = minilr.metrics.cosine_similarity(est, g_true)
for v, c in by_sigma.items():
    print(f"{v:24s} cosine at K={K_SIGMA} for sigma {SIGMAS}:", np.round(c.mean(axis=0), 3))
fig = plots.cosine_vs_copies(SIGMAS, by_sigma, title=f"LR, K={K_SIGMA}: effect of the noise scale")
fig.axes[0].set_xlabel(r"noise scale $\sigma$ (every layer)")
plots.save(fig, FIG / "02_cosine_vs_sigma.png")
fig

# %%
# Learning :math:`\sigma`
# -----------------------
#
# :math:`\sigma` is a parameter of the sampling density too, so the same trick gives its gradient. For
# one neuron, :math:`\log p(v) = -\log\sigma - (v-\mu)^2/(2\sigma^2) + \text{const}`, whose derivative in
# :math:`\sigma` is :math:`-1/\sigma + (v-\mu)^2/\sigma^3 = (\varepsilon^2 - 1)/\sigma`. Hence
#
# .. math::
#
#    \frac{\partial\,\mathbb{E}[\mathcal{L}_n]}{\partial\sigma^{(l)}_i}
#      = \mathbb{E}\Big[\mathcal{L}_n\,\frac{\varepsilon^{(l)}_i(n)^2 - 1}{\sigma^{(l)}_i}\Big]
#      \qquad\text{(Eq. 1, second line)}.
#
# With ``learn_sigma=True`` every layer's :math:`\sigma` (one per neuron) joins the parameters as
# ``"<i>.sigma"`` and is trained with the weights; the projection of Eq. 4 keeps it inside
# ``sigma_bounds`` (tutorial 7). The gradient lowers :math:`\sigma` wherever noise raises the expected
# loss: the network learns how much exploration it can afford, layer by layer.

# %%
EPOCHS, K_TRAIN = (2, 20) if QUICK else (20, 100)
runs, sigma_trace = {}, {}
for learn in (False, True):
    net = minilr.MLP([64, 64, 32, 10], activation="relu", sigma=0.1, seed=0, learn_sigma=learn)
    label = "learned sigma" if learn else "fixed sigma = 0.1"
    trace = [[float(net.layers[i].sigma.mean()) for i in net.linear_indices]]
    runs[label] = minilr.train(net, (x_train, y_train), val_data=(x_test, y_test), estimator="lr",
                               copies=K_TRAIN, epochs=EPOCHS, batch_size=50, lr=1e-2, seed=0, progress=False,
                               callback=lambda e, h, net=net, trace=trace: trace.append(
                                   [float(net.layers[i].sigma.mean()) for i in net.linear_indices]))
    sigma_trace[label] = np.asarray(trace)
print("parameter keys with learn_sigma=True:", sorted(net.parameters()))
for label, h in runs.items():
    print(f"{label:18s} test accuracy after {EPOCHS} epochs: {h.val_accuracy[-1]:.3f}")
print("mean sigma per layer, start -> end of training:",
      [f"{a:.3f} -> {b:.3f}" for a, b in zip(sigma_trace["learned sigma"][0], sigma_trace["learned sigma"][-1])])

fig, axes = plots.new_figure(ncols=2)
for j, i in enumerate(net.linear_indices):
    axes[0].plot(np.arange(EPOCHS + 1), sigma_trace["learned sigma"][:, j], marker="o", ms=3, label=f"layer {i}")
axes[0].set_xlabel("epoch")
axes[0].set_ylabel(r"mean $\sigma$ of the layer")
axes[0].set_title(r"learned $\sigma$ (start 0.1)")
axes[0].legend(fontsize=8)
axes[0].grid(alpha=0.3)
for label, h in runs.items():
    axes[1].plot(np.arange(1, EPOCHS + 1), h.val_accuracy, marker="o", ms=3, label=label)
axes[1].set_xlabel("epoch")
axes[1].set_ylabel("test accuracy")
axes[1].legend(fontsize=8)
axes[1].grid(alpha=0.3)
plots.save(fig, FIG / "02_learned_sigma.png")
fig

# %%
# The printed trace shows where each layer's :math:`\sigma` went. Whether the learned noise helps
# accuracy on a problem this small is secondary (compare the printed accuracies); what matters is
# that :math:`\sigma` is trained by the same forward-only estimator as the weights, with the exact
# :math:`(\varepsilon^2-1)/\sigma` score, which ALR (next tutorial) keeps unchanged.
