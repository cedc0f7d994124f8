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
per_layer, sq_err = {}, {}
for s in SEEDS:
    for j, K in enumerate(COPIES):
        for v, kw in VARIANTS.items():
            est = minilr.estimate_gradient(model, xb, yb, estimator="lr", copies=K, seed=s, **kw)
            cos[v][s, j] = minilr.metrics.cosine_similarity(est, g_true)
            if v == "leave-one-out baseline":
                for layer, c in minilr.metrics.cosine_similarity(est, g_true, per_layer=True).items():
                    per_layer.setdefault(f"layer {layer}", np.zeros((len(SEEDS), len(COPIES))))[s, j] = c
                if K == 1000:   # squared error per layer, for the variance model below
                    for i in model.linear_indices:
                        sq_err.setdefault(i, []).append(sum(float(np.sum((est[f"{i}.{p}"] - g_true[f"{i}.{p}"]) ** 2))
                                                            for p in ("weight", "bias")))
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
# Why are the layers estimated so differently?
# --------------------------------------------
#
# The per-layer cosines differ a lot, and not by fan-in: layers 0 and 2 both take 64 inputs. What
# sets a layer's cosine is its error against its gradient. To first order in :math:`\sigma`, after the
# baseline the copy's loss is :math:`\mathcal{L}_n - b \approx \sigma \sum_{l'} \delta^{(l')}_n\cdot\varepsilon^{(l')}_n`,
# where :math:`\delta^{(l')}_n = \partial\mathcal{L}_n/\partial v^{(l')}` and the sum runs over the noise of
# **all** layers. Layer :math:`l`'s term :math:`(\mathcal{L}_n-b)\,x_j\varepsilon_i/\sigma` then has variance about
# :math:`S_n x_j^2` with :math:`S_n = \sum_{l'}\lVert\delta^{(l')}_n\rVert^2` (the loss's total variance over
# :math:`\sigma^2`, the same for every layer). Summed over the layer's entries and averaged over
# :math:`N` samples and :math:`K` copies,
#
# .. math::
#
#    \mathbb{E}\,\lVert \hat g^{(l)} - g^{(l)}\rVert^2 \approx \frac{m_l}{N^2 K}\sum_n S_n\,\lVert \tilde x^{(l-1)}_n\rVert^2,
#    \qquad \cos \approx \Big(1 + \frac{\mathbb{E}\lVert \hat g^{(l)} - g^{(l)}\rVert^2}{\lVert g^{(l)}\rVert^2}\Big)^{-1/2},
#
# with :math:`m_l` the number of noise dimensions of the layer's **output** and :math:`\tilde x = (x, 1)` its
# input. Every copy's loss carries the noise of all layers; a layer with more outputs, or larger
# inputs, collects more of it, while its signal is only its own gradient norm. We compute each
# factor from the exact per-sample gradients (the bias gradient of sample :math:`n` is :math:`\delta_n`)
# and compare the predicted error with the one measured above at :math:`K=1000`.

# %%
N = len(xb)
S = np.zeros(N)
for n in range(N):   # per-sample gradients: the bias gradient of sample n's loss is delta_n
    g_n = minilr.reference.gradient(model, xb[n:n + 1], yb[n:n + 1])
    S[n] = sum(float(np.sum(g_n[f"{i}.bias"].astype(np.float64) ** 2)) for i in model.linear_indices)
h, inputs = xb.astype(np.float64), {}
for i, layer in enumerate(model.layers):   # the noiseless input of every Linear layer
    if i in model.linear_indices:
        inputs[i] = h
    h = layer.forward(h, np)
var_model = {}
print(f"{'layer':>6s}{'fan-in':>8s}{'m_l':>6s}{'mean |x~|^2':>13s}{'|g|^2':>9s}{'predicted err':>15s}"
      f"{'measured err':>14s}{'predicted cos':>15s}{'measured cos':>14s}")
for i in model.linear_indices:
    m_l, fan_in = model.layers[i].weight.shape
    x2 = np.sum(inputs[i] ** 2, axis=1) + 1.0
    g2 = sum(float(np.sum(g_true[f"{i}.{p}"].astype(np.float64) ** 2)) for p in ("weight", "bias"))
    pred = m_l * float(np.sum(S * x2)) / (N ** 2 * 1000)
    var_model[i] = dict(fan_in=fan_in, pred=pred, meas=float(np.mean(sq_err[i])), cos_pred=(1 + pred / g2) ** -0.5,
                        cos_meas=float(per_layer[f"layer {i}"][:, k1000].mean()))
    print(f"{i:6d}{fan_in:8d}{m_l:6d}{x2.mean():13.2f}{g2:9.4f}{pred:15.5f}{var_model[i]['meas']:14.5f}"
          f"{var_model[i]['cos_pred']:15.3f}{var_model[i]['cos_meas']:14.3f}")

# %%
# Read the table row by row. Layers 0 and 2 have the same fan-in and gradients of similar size;
# layer 0 has twice the output noise dimensions and much larger inputs (pixels against hidden
# activations), so its predicted error is several times layer 2's, and so is its measured error.
# The read-out layer has the fewest outputs and the smallest inputs and is estimated best. The
# model is first order: it leaves out the curvature of the loss at the scale of :math:`\sigma` and
# the gap between the smoothed and the noiseless gradient, so it predicts a smaller error than is
# measured (compare the columns); it gets the order of the layers and the size of the gaps right.
# It also explains why convolutional layers are noisy under LR (tutorial 9): their output, with
# channels times positions numbers per sample, has many noise dimensions.
#
# How large should :math:`\sigma` be?
# -----------------------------------
#
# Two forces pull against each other. The smoothed loss :math:`\mathbb{E}[\mathcal{L}]` drifts away
# from the noiseless loss as :math:`\sigma` grows, so its gradient does too. As :math:`\sigma` shrinks,
# the factor :math:`1/\sigma` in Eq. 1 blows up the variance, *unless* a baseline removes the part of
# the loss that does not depend on the noise: with a baseline, :math:`\mathcal{L}-b \approx \sigma\,\nabla_v\mathcal{L}\cdot\varepsilon`, and the :math:`\sigma` cancels.
# A third force appears at the bottom of the range: the network computes in float32, about seven
# significant digits, and a loss change of :math:`\sigma\,\nabla_v\mathcal{L}\cdot\varepsilon` must survive the
# rounding of a loss of order one. We sweep :math:`\sigma` over six decades.

# %%
SIGMAS = [1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.03, 0.1, 0.3, 1.0]
K_SIGMA = 100 if QUICK else 300
by_sigma = {"no baseline": np.zeros((len(SEEDS), len(SIGMAS))), "leave-one-out baseline": np.zeros((len(SEEDS), len(SIGMAS)))}
for j, sigma in enumerate(SIGMAS):
    m_sigma = minilr.MLP([64, 64, 32, 10], activation="relu", sigma=sigma, seed=0)   # same weights, other sigma
    for s in SEEDS:
        for v, baseline in (("no baseline", False), ("leave-one-out baseline", True)):
            est = minilr.estimate_gradient(m_sigma, xb, yb, estimator="lr", copies=K_SIGMA, seed=s, baseline=baseline)
            by_sigma[v][s, j] = minilr.metrics.cosine_similarity(est, g_true)
print(f"mean cosine at K={K_SIGMA}; sigma: " + "".join(f"{sg:>8.0e}" for sg in SIGMAS))
for v, c in by_sigma.items():
    print(f"{v:24s}" + " " * 7 + "".join(f"{x:8.3f}" for x in c.mean(axis=0)))
loo = dict(zip(SIGMAS, by_sigma["leave-one-out baseline"].mean(axis=0)))
raw = dict(zip(SIGMAS, by_sigma["no baseline"].mean(axis=0)))
PLATEAU = [1e-5, 1e-4, 1e-3, 0.01]
plateau = [loo[sg] for sg in PLATEAU]
print(f"with the baseline: cosine {min(plateau):.3f}..{max(plateau):.3f} for sigma 1e-5..1e-2, "
      f"{loo[0.1]:.3f} at 0.1, {loo[1.0]:.3f} at 1, {loo[1e-6]:.3f} at 1e-6 (float32 rounding)")
fig = plots.cosine_vs_copies(SIGMAS, by_sigma, title=f"LR, K={K_SIGMA}: effect of the noise scale")
fig.axes[0].set_xlabel(r"noise scale $\sigma$ (every layer)")
plots.save(fig, FIG / "02_cosine_vs_sigma.png")
fig

# %%
# With the baseline, the printed cosine is flat from :math:`10^{-5}` to :math:`10^{-2}`: there the
# :math:`\sigma` cancels, so the variance does not depend on it, and the smoothed gradient is still
# the noiseless one. Above that the smoothed gradient drifts from the noiseless one and the
# loss's second-order terms no longer vanish beside the first-order ones, so the cosine falls. At :math:`10^{-6}` float32 rounding eats the signal. Without a baseline the
# picture is reversed: the whole loss is multiplied by :math:`1/\sigma`, and larger :math:`\sigma` wins
# over the whole range. (Exercise 1 below works out where the best :math:`\sigma` lies without a
# baseline.)
#
# So for estimating *this* gradient, any :math:`\sigma` on the plateau is best and 0.1 already costs
# some cosine. Why do these tutorials still train with :math:`\sigma = 0.1`, minilr's default? Not
# because of this measurement, which only says that smaller is no worse on a smooth network at one
# point. The reasons lie elsewhere: training minimises the smoothed loss, and :math:`\sigma` is the
# scale at which it explores; on networks with non-differentiable parts (step activations,
# tutorial 5) the noise is what makes the loss smooth: a noisy step averages to
# :math:`\Phi(v/\sigma)`, with slope up to :math:`1/(\sigma\sqrt{2\pi})`, and a step's loss change does
# not shrink with :math:`\sigma`, so the :math:`1/\sigma` of Eq. 1 no longer cancels and a small :math:`\sigma`
# costs variance; and one default keeps the tutorials comparable. The
# training cell below adds a run with :math:`\sigma = 0.01`: the printed accuracies show what the
# choice costs on this network.

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
for sigma0, learn in ((0.01, False), (0.1, False), (0.1, True)):
    net = minilr.MLP([64, 64, 32, 10], activation="relu", sigma=sigma0, seed=0, learn_sigma=learn)
    label = "learned sigma" if learn else f"fixed sigma = {sigma0}"
    trace = [[float(net.layers[i].sigma.mean()) for i in net.linear_indices]]
    runs[label] = minilr.train(net, (x_train, y_train), val_data=(x_test, y_test), estimator="lr",
                               copies=K_TRAIN, epochs=EPOCHS, batch_size=50, lr=1e-2, seed=0, progress=False,
                               callback=lambda e, h, net=net, trace=trace: trace.append(
                                   [float(net.layers[i].sigma.mean()) for i in net.linear_indices]))
    sigma_trace[label] = np.asarray(trace)
print("parameter keys with learn_sigma=True:", sorted(net.parameters()))
for label, h in runs.items():
    print(f"{label:19s} test accuracy after {EPOCHS} epochs: {h.val_accuracy[-1]:.3f}")
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

# %%
# What this run shows
# -------------------

# %%
order_pred = sorted(var_model, key=lambda i: var_model[i]["cos_pred"])
order_meas = sorted(var_model, key=lambda i: var_model[i]["cos_meas"])
same_fan_in = [i for i in var_model if var_model[i]["fan_in"] == var_model[model.linear_indices[0]]["fan_in"]]
plots.verdicts({
    "the leave-one-out baseline beats no baseline at every K": (
        bool(np.all(cos["leave-one-out baseline"].mean(axis=0) > cos["no baseline"].mean(axis=0))),
        f"K={COPIES[-1]}: {cos['leave-one-out baseline'][:, -1].mean():.3f} vs {cos['no baseline'][:, -1].mean():.3f}"),
    "fan-in does not explain the per-layer cosines, the variance model orders them as measured": (
        len(same_fan_in) >= 2 and np.ptp([var_model[i]["cos_meas"] for i in same_fan_in]) > 0.1
        and order_pred == order_meas,
        f"fan-in {var_model[same_fan_in[0]]['fan_in']}: layers {same_fan_in} measure "
        f"{[round(var_model[i]['cos_meas'], 3) for i in same_fan_in]}; predicted "
        f"{[round(var_model[i]['cos_pred'], 3) for i in model.linear_indices]}, measured "
        f"{[round(var_model[i]['cos_meas'], 3) for i in model.linear_indices]}"),
    "with a baseline the cosine is flat for sigma 1e-5..1e-2, lower at 0.1 and 1, and float32 breaks it at 1e-6": (
        np.ptp(plateau) < 0.03 and loo[1.0] < loo[0.1] < min(plateau) and loo[1e-6] < min(plateau) - 0.05,
        f"{min(plateau):.3f}..{max(plateau):.3f}; 0.1: {loo[0.1]:.3f}; 1: {loo[1.0]:.3f}; 1e-6: {loo[1e-6]:.3f}"),
    "without a baseline, larger sigma is better": (
        raw[1.0] > raw[0.1] > raw[0.01], f"sigma 0.01: {raw[0.01]:.3f}, 0.1: {raw[0.1]:.3f}, 1: {raw[1.0]:.3f}"),
})
plots.show_recorded("02_lr_multilayer")

# %%
# Exercises
# ---------
#
# 1. **The best** :math:`\sigma` **at fixed copies.** Take :math:`f(z) = e^z` at :math:`\mu = 0`, whose
#    derivative is 1, and the LR estimate :math:`\hat g = \frac1K\sum_k f(\mu+\sigma\varepsilon_k)\,\varepsilon_k/\sigma`.
#    Measure its mean squared error against 1 by simulation for :math:`K = 100` over a grid of
#    :math:`\sigma`, and find the :math:`\sigma` that minimises it. Then do the same with the leave-one-out
#    baseline. Why is there a best :math:`\sigma` in the first case and not (in exact arithmetic) in
#    the second? (Hint: write the error as bias squared plus variance over :math:`K`; for
#    :math:`e^z` both have closed forms, :math:`\mathbb{E}[e^{\sigma\varepsilon}\varepsilon] = \sigma e^{\sigma^2/2}`
#    and :math:`\mathbb{E}[e^{2\sigma\varepsilon}\varepsilon^2] = (1+4\sigma^2)e^{2\sigma^2}`.)
# 2. Compute the variance model's predicted cosine for this network at :math:`K = 100` and compare it
#    with the per-layer cosines the sweep measured there.
#
# A checked solution of exercise 1 is in ``tutorials/solutions/s02_best_sigma.py``.
