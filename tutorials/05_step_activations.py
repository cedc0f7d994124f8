r"""
5. Training what backprop cannot: step activations
==================================================

A spiking neuron fires or it does not: :math:`\varphi(v) = \mathbb{1}[v > 0]`, the Heaviside step.
Its derivative is zero everywhere except at :math:`0`, where it does not exist. Backprop multiplies by
:math:`\varphi'` on the way down, so every layer below a step receives a zero gradient. The LR family
never differentiates :math:`\varphi`: it only evaluates the network. This tutorial shows both facts
and trains a step network on digits.
"""

# %%
import os
from math import erf
from pathlib import Path

import numpy as np

import minilr
from minilr import plots

QUICK = os.environ.get("MINILR_QUICK", "0") not in ("", "0")
FIG = plots.figures_dir(Path(__file__).parent if "__file__" in globals() else ".")
print("quick mode" if QUICK else "full mode", "- figures go to", FIG)

# %%
# Backprop has nothing to say
# ---------------------------
#
# ``minilr.MLP(..., activation="step")`` builds the network; the exact reference, a hand-written
# backward pass, refuses it rather than return a gradient that is zero almost everywhere:

# %%
(x_train, y_train), (x_test, y_test) = minilr.datasets.load("digits")
HIDDEN, SIGMA = 32, 0.3
net = minilr.MLP([64, HIDDEN, 10], activation="step", sigma=SIGMA, seed=0)
print(net)
try:
    minilr.reference.gradient(net, x_train[:50], y_train[:50])
except ValueError as err:
    print("reference.gradient raised ValueError:", err)

# %%
# Noise makes the step smooth
# ---------------------------
#
# With noise on the pre-activation, the *expected* output of a step neuron is a smooth function:
#
# .. math::
#
#    \mathbb{E}_\varepsilon\big[\mathbb{1}[v + \sigma\varepsilon > 0]\big] = P(\varepsilon > -v/\sigma)
#    = \Phi(v/\sigma),
#
# the Gaussian distribution function, whose slope at :math:`0` is :math:`1/(\sigma\sqrt{2\pi})`. The
# expected loss of the whole noisy network is therefore differentiable in the weights, even though
# each sampled network is piecewise constant, and LR estimates exactly that derivative from loss
# values alone (tutorial 2's argument never used :math:`\varphi'`). We check the formula by averaging
# noisy copies of a step neuron.

# %%
v = np.linspace(-1.5, 1.5, 301)
Phi = np.vectorize(lambda z: 0.5 * (1 + erf(z / np.sqrt(2))))
K_MC = 2000 if QUICK else 20000
step = minilr.Step()
fig, ax = plots.new_figure()
ax.plot(v, step.forward(v, np), "k", lw=2, label="step $\\mathbb{1}[v>0]$")
for seed, s in enumerate((0.1, 0.3, 1.0)):
    eps = np.random.default_rng(seed).standard_normal((K_MC, 1))
    mc = step.forward(v[None, :] + s * eps, np).mean(axis=0)
    print(f"sigma={s}: max |Monte Carlo mean of {K_MC} noisy steps - Phi(v/sigma)| = "
          f"{np.abs(mc - Phi(v / s)).max():.4f} over {v.size} points (one standard error is at most {0.5 / np.sqrt(K_MC):.4f})")
    (line,) = ax.plot(v, Phi(v / s), label=f"$\\Phi(v/\\sigma)$, $\\sigma$={s}")
    ax.plot(v[::15], mc[::15], "o", ms=3, color=line.get_color())
ax.set_xlabel("pre-activation v")
ax.set_ylabel("expected output")
ax.set_title("noisy step neuron on average (dots: Monte Carlo)")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
plots.save(fig, FIG / "05_smoothed_step.png")
fig

# %%
# Training a step network on digits
# ---------------------------------
#
# We train the 64-32-10 step network with LR and ALR. What could backprop do here? Only the last
# layer has a non-zero gradient, so at best it fits a linear read-out on top of the *random* step
# features of the initial first layer. We run exactly that (the first layer frozen at its
# initialisation, the read-out trained with the exact gradient) as the comparison: anything above
# it is learning that reached the first layer through the steps.

# %%
EPOCHS, K = (3, 20) if QUICK else (30, 100)
histories = {}
for est in ("lr", "alr"):
    model = minilr.MLP([64, HIDDEN, 10], activation="step", sigma=SIGMA, seed=0)
    histories[f"{est.upper()}, K={K}"] = minilr.train(
        model, (x_train, y_train), val_data=(x_test, y_test), estimator=est, copies=K, epochs=EPOCHS,
        batch_size=50, optimizer="adam", lr=1e-2, seed=0, progress=False)

# backprop's best: random step features from the same initial first layer, read-out trained exactly
first = net.layers[0]
features = lambda x: step.forward(x @ first.weight.T + first.bias, np).astype(np.float32)
readout = minilr.MLP([HIDDEN, 10], sigma=SIGMA, seed=0)
histories["BP, read-out only"] = minilr.train(readout, (features(x_train), y_train),
                                              val_data=(features(x_test), y_test), estimator="bp",
                                              epochs=EPOCHS, batch_size=50, optimizer="adam", lr=1e-2,
                                              seed=0, progress=False)
for label, h in histories.items():
    print(f"{label:18s} test accuracy after {EPOCHS} epochs: {h.val_accuracy[-1]:.3f} (best {max(h.val_accuracy):.3f})")
plots.learning_curves(histories, metrics=("train_loss", "val_accuracy"), path=FIG / "05_step_training.png",
                      title=f"MLP 64-{HIDDEN}-10 with step activations on digits")

# %%
# The printed accuracies compare LR and ALR, which train both layers through the steps, with the
# read-out that is all backprop can train. The network is evaluated without noise, as a true
# step network: the noise is only a training device that turns a piecewise-constant loss into a
# smooth expected one. This is why the paper can train spiking networks (its Table 3) with the
# same estimators as everything else.
