r"""
5. Training what backprop cannot: step activations
==================================================

A spiking neuron fires or it does not: :math:`\varphi(v) = \mathbb{1}[v > 0]`, the Heaviside step.
Its derivative is zero everywhere except at :math:`0`, where it does not exist. Backprop multiplies by
:math:`\varphi'` on the way down, so every layer below a step receives a zero gradient. The LR family
never differentiates :math:`\varphi`: it only evaluates the network. This tutorial shows both facts,
builds the baseline practitioners use (a surrogate gradient) and trains a step network on digits
with each.
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
max_err = 0.0
fig, ax = plots.new_figure()
ax.plot(v, step.forward(v, np), "k", lw=2, label="step $\\mathbb{1}[v>0]$")
for seed, s in enumerate((0.1, 0.3, 1.0)):
    eps = np.random.default_rng(seed).standard_normal((K_MC, 1))
    mc = step.forward(v[None, :] + s * eps, np).mean(axis=0)
    max_err = max(max_err, np.abs(mc - Phi(v / s)).max())
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
# What practitioners do instead: a surrogate gradient
# ---------------------------------------------------
#
# Spiking-network practice keeps backprop and *invents* a derivative: the forward pass spikes, but
# the backward pass multiplies by the derivative :math:`f'` of a smooth stand-in :math:`f` for the
# step (the straight-through estimator). ``minilr.reference.gradient(net, x, y,
# surrogate=...)`` is that baseline, written out by hand like the rest of the reference.
# ``Surrogate("straight_through", slope)`` (the string ``"straight_through"`` means slope 5) uses
# the clipped identity :math:`f(v) = \mathrm{clip}(\text{slope}\, v + 1/2, 0, 1)`:
# :math:`f' = \text{slope}` on :math:`|v| < 1/(2\,\text{slope})`, 0 elsewhere. We take the slope
# of the noise-smoothed step at 0, :math:`1/(\sigma\sqrt{2\pi})`, so the invented derivative and
# the one the noise implies agree there. ``minilr.train(..., estimator="bp", surrogate=...)``
# trains with it. Unlike LR's, this is not the gradient of any loss of the network that is
# evaluated: it is a biased heuristic.

# %%
SLOPE = 1 / (SIGMA * np.sqrt(2 * np.pi))
st = minilr.reference.Surrogate("straight_through", slope=SLOPE)
g_st = minilr.reference.gradient(net, x_train[:50], y_train[:50], surrogate=st)
print(f"straight-through slope {SLOPE:.3f}; gradient norms per parameter:",
      {k: round(float(np.linalg.norm(v)), 4) for k, v in g_st.items()})


# %%
# Training a step network on digits
# ----------------------------------
#
# We train the 64-32-10 step network with LR and ALR (noisy copies, loss values only) and with two
# backprop baselines, all with Adam at the same learning rate. The fair one is straight-through
# backprop: it trains both layers. The other trains only the read-out on top of the *random* step
# features of the initial first layer, which is all the exact gradient can reach (it is zero
# below the step): anything above it is learning that reached the first layer.

# %%
EPOCHS, K = (3, 20) if QUICK else (30, 100)
histories = {}
for est in ("lr", "alr"):
    model = minilr.MLP([64, HIDDEN, 10], activation="step", sigma=SIGMA, seed=0)
    histories[f"{est.upper()}, K={K}"] = minilr.train(
        model, (x_train, y_train), val_data=(x_test, y_test), estimator=est, copies=K, epochs=EPOCHS,
        batch_size=50, optimizer="adam", lr=1e-2, seed=0, progress=False)
# straight-through backprop: estimator="bp" with surrogate=, the same optimizer and batches
model = minilr.MLP([64, HIDDEN, 10], activation="step", sigma=SIGMA, seed=0)
histories["BP, straight-through"] = minilr.train(
    model, (x_train, y_train), val_data=(x_test, y_test), estimator="bp", surrogate=st, epochs=EPOCHS,
    batch_size=50, optimizer="adam", lr=1e-2, seed=0, progress=False)
# read-out only: the exact gradient on the random step features of the same initial first layer
first = net.layers[0]
features = lambda x: step.forward(x @ first.weight.T + first.bias, np).astype(np.float32)
readout = minilr.MLP([HIDDEN, 10], sigma=SIGMA, seed=0)
readout.layers[0].weight[...], readout.layers[0].bias[...] = net.layers[2].weight, net.layers[2].bias
histories["BP, read-out only"] = minilr.train(
    readout, (features(x_train), y_train), val_data=(features(x_test), y_test), estimator="bp",
    epochs=EPOCHS, batch_size=50, optimizer="adam", lr=1e-2, seed=0, progress=False)
final = {label: h.val_accuracy[-1] for label, h in histories.items()}
for label, h in histories.items():
    print(f"{label:20s} test accuracy after {EPOCHS} epochs: {h.val_accuracy[-1]:.3f} (best {max(h.val_accuracy):.3f})")
plots.learning_curves(histories, metrics=("train_loss", "val_accuracy"), path=FIG / "05_step_training.png",
                      title=f"MLP 64-{HIDDEN}-10 with step activations on digits")

# %%
# The network is evaluated without noise, as a true step network: the noise is only a training
# device that turns a piecewise-constant loss into a smooth expected one. The printed accuracies
# compare the two ways through the step: LR and ALR estimate the gradient of a loss that exists
# (the smoothed one), with variance; straight-through backprop computes, without variance, a
# made-up direction that no loss of the evaluated network has as its gradient. This is why the paper can train spiking
# networks (its Table 3) with the same estimators as everything else; the surrogate gradient is
# the baseline they must be compared with.
#
# What this run shows
# -------------------

# %%
ro = final["BP, read-out only"]
plots.verdicts({
    "the Monte Carlo mean of noisy steps is Phi(v/sigma) (max error under 5 standard errors)":
        (max_err < 5 * 0.5 / np.sqrt(K_MC), f"max error {max_err:.4f}, standard error <= {0.5 / np.sqrt(K_MC):.4f}"),
    "LR trains through the steps: above read-out-only backprop":
        (final[f"LR, K={K}"] > ro, f"LR {final[f'LR, K={K}']:.3f} vs read-out only {ro:.3f}"),
    "straight-through backprop, the fair baseline, is above read-out-only backprop":
        (final["BP, straight-through"] > ro, f"straight-through {final['BP, straight-through']:.3f} vs {ro:.3f}"),
})
plots.show_recorded("05_step_activations")

# %%
# Exercises
# ---------
#
# 1. Write the straight-through backward pass of the 64-32-10 step network by hand (the read-out's
#    gradient as usual, then :math:`\delta_{\text{hidden}} = (\delta W_2) \odot f'(v)` with the
#    clipped identity's :math:`f'`) and compare it with
#    ``minilr.reference.gradient(net, x, y, surrogate=Surrogate("straight_through", slope))``.
# 2. Replace the clipped identity by a sigmoid of slope :math:`\beta`: with
#    ``Surrogate("sigmoid", beta, forward="smooth")`` the network *is* the sigmoid network, and
#    the surrogate gradient must equal its finite differences. Check it.
#
# A checked solution is in ``tutorials/solutions/s05_straight_through.py``.
