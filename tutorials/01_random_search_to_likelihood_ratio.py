r"""
1. From random search to the likelihood ratio
=============================================

Training a network means lowering a loss :math:`\mathcal{L}(\theta)`. Backpropagation gets
:math:`\nabla_\theta \mathcal{L}` from the chain rule, which needs every layer's derivative and a
backward pass that waits for the forward pass to finish. Suppose instead that all we may do is
**run the network forward and read the loss**. How do we still learn?

This tutorial goes from the crudest answer (random search) to the likelihood-ratio (LR) gradient
estimator of the paper (Eq. 1), on the smallest model where everything can be checked exactly:
one linear layer with a squared loss. At the end we train a real network on handwritten digits.

Run it as a script (``python tutorials/01_random_search_to_likelihood_ratio.py``), or download it
as a notebook from the documentation site's gallery. ``MINILR_QUICK=1`` makes it run in seconds with fewer copies and epochs.
Every number quoted below is printed by the code; the figures go to ``tutorials/figures/``.
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
# The problem: one noisy linear layer
# -----------------------------------
#
# A layer computes :math:`v = Wx + b` for an input :math:`x \in \mathbb{R}^d`; with a squared loss
# :math:`\mathcal{L} = \tfrac12 \lVert v - y\rVert^2` averaged over a batch, this is linear regression.
# We draw data from a known linear rule plus a little noise, and start from minilr's random
# initialisation. ``minilr.Sequential([minilr.Linear(d, m)])`` is exactly this layer; ``loss="mse"``
# is :math:`\tfrac12\lVert v-y\rVert^2` per sample.

# %%
d, m, n = 8, 3, 256
rng = np.random.default_rng(0)
x = rng.standard_normal((n, d)).astype(np.float32)
W_star, b_star = rng.standard_normal((m, d)), rng.standard_normal(m)
y = (x @ W_star.T + b_star + 0.1 * rng.standard_normal((n, m))).astype(np.float32)

SIGMA = 0.1
layer = minilr.Sequential([minilr.Linear(d, m)], sigma=SIGMA, seed=0)
print("parameters:", {k: v.shape for k, v in layer.parameters().items()})
print("initial loss:", round(minilr.reference.loss(layer, x, y, loss="mse"), 4))

# %%
# Random search
# -------------
#
# The oldest forward-only method: perturb all parameters :math:`\theta` by :math:`s\,u` with
# :math:`u \sim \mathcal{N}(0, I)`, and keep the move if the loss went down. It needs one forward pass
# per step and no derivative at all. It is also wasteful: every trial that fails is thrown away,
# and a trial that succeeds is used with weight one however much it helped. In :math:`D` dimensions a
# random direction is nearly orthogonal to the gradient, so most of a step is wasted.

# %%
def loss_at(params):
    """Noiseless mean squared loss of the layer with parameters ``params``."""
    W, b = params
    return float(0.5 * np.mean(np.sum((x @ W.T + b - y) ** 2, axis=1)))


STEPS = 300 if QUICK else 2000
s = 0.05
theta = [layer.layers[0].weight.astype(np.float64), layer.layers[0].bias.astype(np.float64)]
rs_rng = np.random.default_rng(1)
best = loss_at(theta)
rs_curve = [best]
for _ in range(STEPS):
    trial = [p + s * rs_rng.standard_normal(p.shape) for p in theta]
    value = loss_at(trial)
    if value < best:
        theta, best = trial, value
    rs_curve.append(best)
print(f"random search: loss {rs_curve[0]:.4f} -> {rs_curve[-1]:.4f} after {STEPS} forward passes")

# %%
# Weigh every trial by its loss: the smoothed loss and its gradient
# -----------------------------------------------------------------
#
# Rather than keep-or-reject, average the perturbations weighted by the loss they produced.
# Why this works: define the **smoothed loss** :math:`F(\mu) = \mathbb{E}_{z \sim \mathcal{N}(\mu, \sigma^2)}[\mathcal{L}(z)] = \int \mathcal{L}(z)\, p_\mu(z)\, dz`. Only the density :math:`p_\mu`
# depends on :math:`\mu`, and :math:`\nabla_\mu p_\mu(z) = p_\mu(z)\,(z-\mu)/\sigma^2`, so
#
# .. math::
#
#    \nabla_\mu F = \mathbb{E}\Big[\mathcal{L}(z)\,\frac{z-\mu}{\sigma^2}\Big]
#                   = \mathbb{E}\Big[\mathcal{L}(\mu+\sigma\varepsilon)\,\frac{\varepsilon}{\sigma}\Big],
#    \qquad \varepsilon\sim\mathcal{N}(0, I).
#
# :math:`\mathcal{L}` is never differentiated: this is the **likelihood ratio** (score function) trick.
# Putting the noise on the parameters gives evolution strategies (tutorial 4). The LR method of
# the paper puts it on the layer's **output** instead, :math:`v = Wx + b + \sigma\varepsilon`: then
# :math:`\mu = Wx + b` and, since :math:`\partial\mu_i/\partial W_{ij} = x_j`,
#
# .. math::
#
#    \frac{\partial\,\mathbb{E}[\mathcal{L}]}{\partial W_{ij}} = \mathbb{E}\Big[\mathcal{L}\, x_j\,
#    \frac{\varepsilon_i}{\sigma}\Big], \qquad
#    \frac{\partial\,\mathbb{E}[\mathcal{L}]}{\partial b_i} = \mathbb{E}\Big[\mathcal{L}\,
#    \frac{\varepsilon_i}{\sigma}\Big] \qquad \text{(paper Eq. 1)}.
#
# The estimator replaces the expectation by an average over :math:`K` noisy **copies** of every sample.
# The noise has only :math:`m` numbers per sample, not :math:`m(d+1)` as the weights do.
#
# The exact answer to check against
# ---------------------------------
#
# For this layer the smoothed loss has a closed form. With :math:`\mu = Wx+b`,
# :math:`\mathbb{E}\,\tfrac12\lVert\mu + \sigma\varepsilon - y\rVert^2 = \tfrac12\lVert\mu - y\rVert^2 + \tfrac12 m\sigma^2`: the noise only adds a constant, so the gradient of the smoothed loss is the
# ordinary gradient, :math:`\nabla_W = \overline{(\mu - y)\,x^\top}` and :math:`\nabla_b = \overline{\mu - y}`
# (bars are batch means). The LR estimate must converge to it, with an error that shrinks like
# :math:`1/\sqrt{K}`.

# %%
W0, b0 = layer.layers[0].weight.astype(np.float64), layer.layers[0].bias.astype(np.float64)
r = x @ W0.T + b0 - y                       # mu - y, one row per sample
g_exact = {"0.weight": r.T @ x / n, "0.bias": r.mean(axis=0)}
g_ref = minilr.reference.gradient(layer, x, y, loss="mse")   # hand-written backprop, for a cross-check
print("closed form vs reference, max abs difference:",
      max(float(np.max(np.abs(g_exact[k] - g_ref[k]))) for k in g_exact))


def rel_error(g):
    num = sum(np.sum((g[k] - g_exact[k]) ** 2) for k in g_exact)
    return float(np.sqrt(num / sum(np.sum(g_exact[k] ** 2) for k in g_exact)))


COPIES = [10, 30, 100, 300, 1000] if QUICK else [10, 30, 100, 300, 1000, 3000, 10000]
SEEDS = range(3 if QUICK else 10)
errors = {"LR, no baseline": [], "LR, leave-one-out baseline": []}
for seed in SEEDS:
    for label, baseline in (("LR, no baseline", False), ("LR, leave-one-out baseline", True)):
        errors[label].append([rel_error(minilr.estimate_gradient(layer, x, y, estimator="lr", loss="mse",
                                                                  copies=K, seed=seed, baseline=baseline))
                              for K in COPIES])
for label, e in errors.items():
    e = np.asarray(e)
    slope = np.polyfit(np.log(COPIES), np.log(e.mean(axis=0)), 1)[0]
    print(f"{label:28s} relative error at K={COPIES[-1]}: {e.mean(axis=0)[-1]:.4f}   "
          f"log-log slope {slope:.2f} (1/sqrt(K) is -0.5)")

# %%
# The printed slopes sit near :math:`-1/2`: the estimate is unbiased and its error falls like
# :math:`1/\sqrt{K}`. The *leave-one-out baseline* subtracts, from each copy's loss, the mean loss of the
# sample's other copies. That baseline does not depend on the copy's own noise and
# :math:`\mathbb{E}[\varepsilon]=0`, so the expectation is unchanged, but the large common part of the
# loss no longer multiplies the noise: the error is far smaller at every :math:`K` (tutorial 2 looks
# closer).

# %%
fig = plots.cosine_vs_copies(COPIES, {k: np.asarray(v) for k, v in errors.items()},
                             ylabel="relative error vs exact gradient", title="LR on one linear layer")
ax = fig.axes[0]
ax.set_yscale("log")
ref = np.asarray(errors["LR, no baseline"]).mean(axis=0)[0] * np.sqrt(COPIES[0] / np.asarray(COPIES, float))
ax.plot(COPIES, ref, "k--", lw=1, label=r"$\propto 1/\sqrt{K}$")
ax.legend(fontsize=8)
plots.save(fig, FIG / "01_lr_error_vs_copies.png")
fig

# %%
# Why a baseline costs nothing: the expected score is zero
# --------------------------------------------------------
#
# The factor that multiplies the loss in Eq. 1, :math:`\varepsilon/\sigma = (z-\mu)/\sigma^2`, is the
# **score** :math:`\nabla_\mu \log p_\mu(z)`. Its expectation is zero for every density, because
# :math:`\mathbb{E}[\nabla_\mu \log p_\mu] = \int \nabla_\mu p_\mu(z)\,dz = \nabla_\mu \int p_\mu(z)\,dz = \nabla_\mu 1 = 0`;
# for the Gaussian it is simply :math:`\mathbb{E}[\varepsilon]=0`. So for any baseline :math:`b` that does not
# depend on the copy's own noise,
#
# .. math::
#
#    \mathbb{E}\Big[(\mathcal{L}-b)\,x_j\frac{\varepsilon_i}{\sigma}\Big]
#    = \mathbb{E}\Big[\mathcal{L}\,x_j\frac{\varepsilon_i}{\sigma}\Big] - b\,x_j\,\mathbb{E}\Big[\frac{\varepsilon_i}{\sigma}\Big]
#    = \mathbb{E}\Big[\mathcal{L}\,x_j\frac{\varepsilon_i}{\sigma}\Big]:
#
# the baseline changes the variance, never the mean. We check both halves numerically, with the
# estimator written out in NumPy for this layer: the sample mean of the score, and the LR estimate
# averaged over many independent repetitions with three baselines: none, an arbitrary constant
# (100), and each sample's noiseless loss (a good guess of :math:`\mathbb{E}[\mathcal{L}]`).

# %%
lemma_rng = np.random.default_rng(2)
scores = lemma_rng.standard_normal(1_000_000) / SIGMA
score_se = scores.std() / np.sqrt(scores.size)
print(f"score eps/sigma over {scores.size} draws: mean {scores.mean():+.5f}, standard error {score_se:.5f}")

REPS, K_LEMMA = (100, 20) if QUICK else (400, 50)
loss0 = 0.5 * np.sum(r ** 2, axis=1)          # each sample's noiseless loss
BASELINES = {"none": 0.0, "constant 100": 100.0, "noiseless loss": loss0[None, :]}
lemma_est = {name: [] for name in BASELINES}
for _ in range(REPS):
    eps = lemma_rng.standard_normal((K_LEMMA, n, m))
    loss = 0.5 * np.sum((r + SIGMA * eps) ** 2, axis=2)            # (copies, samples)
    for name, b in BASELINES.items():
        wts = (loss - b)[..., None] * eps / SIGMA                  # (copies, samples, m)
        lemma_est[name].append(np.concatenate([np.einsum("kni,nj->ij", wts, x).ravel(), wts.sum(axis=(0, 1))])
                         / (K_LEMMA * n))
g_flat = np.concatenate([g_exact["0.weight"].ravel(), g_exact["0.bias"]])
unbiased, spreads = {}, {}
for name, e in lemma_est.items():
    e = np.asarray(e)
    bias = np.linalg.norm(e.mean(axis=0) - g_flat)                  # what averaging REPS estimates leaves
    se = np.sqrt(np.sum(e.var(axis=0, ddof=1)) / REPS)              # what it would leave if unbiased
    spread = np.sqrt(np.mean(np.sum((e - g_flat) ** 2, axis=1))) / np.linalg.norm(g_flat)
    unbiased[name] = bias < 2 * se   # |bias|/se is about 1 for an unbiased estimator (27 numbers)
    spreads[name] = spread
    print(f"baseline {name:15s} error of the mean of {REPS} estimates {bias:.4f} (its standard error {se:.4f});"
          f"  one estimate's relative error {spread:.3f}")

# %%
# Every baseline's averaged estimate lands within its standard error of the exact gradient: all
# three are unbiased. Their spreads differ enormously: the arbitrary constant makes every single
# estimate worse than no baseline, the noiseless loss makes it far better. The leave-one-out
# baseline above uses the other copies' mean loss, which does not depend on the copy's own noise
# either, so the same lemma covers it.

# %%
# Descent with the LR gradient versus random search
# -------------------------------------------------
#
# Now use the estimate in stochastic gradient descent, :math:`\theta \leftarrow \theta - \lambda g`.
# ``minilr.train`` does exactly that (here with the whole data set as one batch, so an "epoch" is
# one step). To compare fairly with random search we count **forward passes of the batch**: one
# LR step with :math:`K` copies costs :math:`K` of them, one random-search trial costs one.

# %%
K_TRAIN = 10
lr_steps = STEPS // K_TRAIN
lr_layer = minilr.Sequential([minilr.Linear(d, m)], sigma=SIGMA, seed=0)
lr_curve = [minilr.reference.loss(lr_layer, x, y, loss="mse")]
minilr.train(lr_layer, (x, y), estimator="lr", loss="mse", copies=K_TRAIN, epochs=lr_steps, batch_size=n,
             optimizer="sgd", lr=0.1, seed=0, progress=False,
             callback=lambda epoch, h: lr_curve.append(minilr.reference.loss(lr_layer, x, y, loss="mse")))
noise_floor = 0.5 * m * 0.1 ** 2 * (n - d - 1) / n   # what the 0.1 label noise leaves behind (about)
print(f"LR-SGD with K={K_TRAIN}: loss {lr_curve[0]:.4f} -> {lr_curve[-1]:.4f} after {lr_steps * K_TRAIN} forward passes")
print(f"random search:    loss {rs_curve[0]:.4f} -> {rs_curve[-1]:.4f} after {STEPS} forward passes")
print(f"(the label noise alone leaves a loss of about {noise_floor:.4f})")

fig, ax = plots.new_figure()
ax.plot(np.arange(len(rs_curve)), rs_curve, label="random search (keep if better)")
ax.plot(np.arange(len(lr_curve)) * K_TRAIN, lr_curve, label=f"SGD with LR gradient, K={K_TRAIN}")
ax.set_yscale("log")
ax.set_xlabel("forward passes of the batch")
ax.set_ylabel("noiseless training loss")
ax.grid(alpha=0.3)
ax.legend()
plots.save(fig, FIG / "01_random_search_vs_lr.png")
fig

# %%
# For the same number of forward passes, LR descends much further: each copy's loss is used to
# weigh its noise, nothing is thrown away, and the noise lives in the :math:`m`-dimensional output
# rather than in all :math:`m(d+1)` parameters.
#
# A real network on handwritten digits
# ------------------------------------
#
# The same estimator trains a multilayer perceptron. Each ``Linear`` layer adds its own noise
# :math:`\sigma\varepsilon` to its output and gets its gradient from the *same* formula, using only the
# final loss, its own input :math:`x` and its own noise :math:`\varepsilon`: no chain rule, so no backward
# pass (tutorial 2 derives why this still works). We train a 64-64-10 MLP on scikit-learn's 8x8
# digits with LR and, for reference, with the exact gradient (``estimator="bp"``, the hand-written
# backward pass in ``minilr.reference``).

# %%
(x_train, y_train), (x_test, y_test) = minilr.datasets.load("digits")
EPOCHS, K_DIGITS = (3, 30) if QUICK else (20, 100)
histories = {}
for est in ("lr", "bp"):
    model = minilr.MLP([64, 64, 10], activation="relu", sigma=0.1, seed=0)
    histories[est.upper() if est == "bp" else f"LR, K={K_DIGITS}"] = minilr.train(
        model, (x_train, y_train), val_data=(x_test, y_test), estimator=est, copies=K_DIGITS,
        epochs=EPOCHS, batch_size=50, optimizer="adam", lr=1e-2, seed=0, progress=False)
for label, h in histories.items():
    print(f"{label:10s} test accuracy after {EPOCHS} epochs: {h.val_accuracy[-1]:.3f}   "
          f"({sum(h.seconds):.1f} s of training)")
plots.learning_curves(histories, metrics=("train_loss", "val_accuracy"),
                      path=FIG / "01_digits_learning_curves.png", title="MLP 64-64-10 on digits")

# %%
# LR gets to a useful accuracy with no derivative of anything, at the cost of :math:`K` forward passes
# per step: the printed times show the price. The rest of the tutorials make LR cheaper and
# better: baselines and learned noise (2), keeping only signs (3, the paper's ALR), noise on
# weights and hybrids (4), networks that backprop cannot train (5), and convergence (6, 7).

# %%
# What this run shows
# -------------------

# %%
slopes = {label: np.polyfit(np.log(COPIES), np.log(np.asarray(e).mean(axis=0)), 1)[0] for label, e in errors.items()}
err_none, err_loo = (np.asarray(errors[k]).mean(axis=0) for k in ("LR, no baseline", "LR, leave-one-out baseline"))
plots.verdicts({
    "LR's error falls like 1/sqrt(K), and the leave-one-out baseline lowers it at every K": (
        all(abs(sl + 0.5) < 0.1 for sl in slopes.values()) and bool(np.all(err_loo < err_none)),
        ", ".join(f"{k}: slope {v:.2f}" for k, v in slopes.items())
        + f"; K={COPIES[-1]}: {err_loo[-1]:.4f} vs {err_none[-1]:.4f}"),
    "the expected score is zero, so a baseline that ignores the copy's noise leaves LR unbiased": (
        abs(scores.mean()) < 4 * score_se and all(unbiased.values()),
        f"mean score {scores.mean():+.5f} +- {score_se:.5f}; averaged estimate within 2 standard errors "
        f"for baselines {[k for k, v in unbiased.items() if v]}"),
    "a baseline changes only the spread: the noiseless loss shrinks it, an arbitrary constant grows it": (
        spreads["noiseless loss"] < spreads["none"] < spreads["constant 100"],
        ", ".join(f"{k}: {v:.3f}" for k, v in spreads.items())),
    "at equal forward passes LR-SGD ends lower than random search": (
        lr_curve[-1] < rs_curve[-1], f"{lr_curve[-1]:.4f} vs {rs_curve[-1]:.4f} after {STEPS} passes"),
})
plots.show_recorded("01_random_search_to_likelihood_ratio")

# %%
# Exercises
# ---------
#
# 1. **The score of a Gaussian.** Derive :math:`\partial_\mu \log p` and :math:`\partial_\sigma \log p` for
#    :math:`z \sim \mathcal{N}(\mu, \sigma^2)` (the second gives the :math:`(\varepsilon^2-1)/\sigma` of
#    tutorial 2). Check them against central differences of :math:`\log p`, check by sampling that
#    both have mean zero, and check the LR identity :math:`\mathbb{E}[f(z)\,s(z)] = \partial\,\mathbb{E}[f(z)]`
#    for :math:`f(z) = z^2`, whose smoothed value :math:`\mu^2+\sigma^2` you can differentiate by hand.
# 2. **The antithetic estimator.** Write LR for this layer with mirrored pairs
#    :math:`+\varepsilon, -\varepsilon`: each pair contributes :math:`(\mathcal{L}^+-\mathcal{L}^-)\,\varepsilon/(2\sigma)`.
#    Show that for the squared loss :math:`(\mathcal{L}^+-\mathcal{L}^-)/(2\sigma) = (\mu-y)\cdot\varepsilon`
#    exactly, so the estimate does not depend on :math:`\sigma` at all, and check that it is unbiased.
#
# A checked solution is in ``tutorials/solutions/s01_score_and_antithetic.py``.
