r"""
10. Recurrent, graph and spiking networks
=========================================

Tutorials 2-5 perturbed the output of every ``Linear`` layer. The networks people use are built
from the same brick: an affine map applied at many *positions*. A recurrent layer applies its
gate map at every time step, a graph layer its projection at every node, a spiking layer its
input current at every tick of the clock. Each of those maps is a noise site, and the LR
gradient of a site whose weights are shared over positions is one sum over rows *and*
positions (Eq. 1 with the positions as extra rows):

.. math::

   \hat g_W = \frac{1}{n}\sum_{\text{rows } n}\ \sum_{\text{positions } p} L_n\,
   \frac{\varepsilon_p(n)}{\sigma}\, u_p(n)^\top .

No chain rule through time, no backward pass through the graph, no derivative of a spike.
This tutorial trains an LSTM, a graph attention network (GAT) and a layer of leaky
integrate-and-fire (LIF) neurons this way, each against backprop (for spikes, against backprop
with a surrogate gradient, the baseline spiking-network practice uses).
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
# An LSTM on the temporal-order task
# ----------------------------------
#
# ``minilr.datasets.temporal_order`` makes sequences of one-hot symbols, shape (N, T, F): random
# distractors, except two relevant symbols (X or Y) at random times, one in each half. The
# class is the ordered pair (XX, XY, YX, YY): the network must remember the first until it sees
# the second. ``minilr.LSTM(F, H)`` takes (N, T, F) and returns its last hidden state (N, H);
# every step's four gates come from one affine map of ``[x_t, h_{t-1}]``, perturbed with fresh
# noise at every step.
#
# First, how good is one gradient estimate? The hand-written backprop-through-time in
# ``minilr.reference`` is the truth; we measure the cosine between it and LR / ALR estimates as
# the number of copies grows (as tutorial 2 did for an MLP).

# %%
N_SEQ, LENGTH = (600, 12) if QUICK else (3000, 20)
(xs, ys), (xs_test, ys_test) = minilr.datasets.temporal_order(n=N_SEQ, length=LENGTH, seed=0)
print("sequences:", xs.shape, "labels:", np.bincount(ys))
lstm = minilr.Sequential([minilr.LSTM(6, 16), minilr.Linear(16, 4)], sigma=0.1, seed=0)
print(lstm, "parameters:", {k: v.shape for k, v in lstm.parameters().items()})

batch = (xs[:32], ys[:32])
g_true = minilr.reference.gradient(lstm, *batch)
copies = [4, 16, 64] if QUICK else [4, 16, 64, 256]
cosines = {}
for est in ("lr", "alr", "es"):
    cosines[est.upper()] = [[minilr.metrics.cosine_similarity(
        minilr.estimate_gradient(lstm, *batch, estimator=est, copies=K, seed=s), g_true)
        for s in range(3)] for K in copies]
    print(f"{est.upper():4s} cosine to BPTT (mean of 3 seeds):",
          {K: round(float(np.mean(c)), 3) for K, c in zip(copies, cosines[est.upper()])})
fig, ax = plots.new_figure()
for label, c in cosines.items():
    c = np.array(c)
    ax.errorbar(copies, c.mean(1), yerr=c.std(1), marker="o", capsize=3, label=label)
ax.set_xscale("log")
ax.set_xlabel("copies K")
ax.set_ylabel("cosine to the exact gradient (BPTT)")
ax.set_title("one gradient estimate of an LSTM, batch of 32")
ax.legend()
ax.grid(alpha=0.3)
plots.save(fig, FIG / "10_lstm_cosine.png")
fig

# %%
# Now train. Backprop through time ("bp") uses the exact gradient with the same optimizer; LR
# and ALR see only loss values. Quick mode has 480 short sequences, so it takes more epochs at a
# larger step size than full mode to get past chance.

# %%
EPOCHS, K, LR_STEP = (8, 16, 3e-2) if QUICK else (6, 32, 1e-2)
histories = {}
for est in ("bp", "lr", "alr"):
    model = minilr.Sequential([minilr.LSTM(6, 16), minilr.Linear(16, 4)], sigma=0.1, seed=0)
    histories[est.upper() if est != "bp" else "BP (BPTT)"] = minilr.train(
        model, (xs, ys), val_data=(xs_test, ys_test), estimator=est, copies=1 if est == "bp" else K,
        epochs=EPOCHS, batch_size=32, lr=LR_STEP, seed=0, progress=False)
lstm_acc = {label: h.val_accuracy[-1] for label, h in histories.items()}
for label, h in histories.items():
    print(f"LSTM {label:10s} test accuracy after {EPOCHS} epochs: {h.val_accuracy[-1]:.3f} (chance 0.25)")
plots.learning_curves(histories, metrics=("train_loss", "val_accuracy"), path=FIG / "10_lstm_training.png",
                      title=f"LSTM on temporal order (T={LENGTH})")

# %%
# Graph attention on a stochastic block model
# -------------------------------------------
#
# ``minilr.datasets.sbm`` draws a graph whose nodes belong to 4 classes: edges are likelier inside a
# class, and node features are a class mean buried in noise. A node's own features mislabel many
# nodes; its neighbours' features, averaged, rarely do. Node classification on one graph is
# *transductive*: the edge list belongs to the model (``GraphAttention(F, F', edges)``), the whole
# graph is **one sample** of shape (1, n_nodes, F), and the labels are (1, n_nodes) with -1 on
# nodes outside the training (or test) mask; the loss of the sample is the mean over its
# labelled nodes. A GAT layer has two noise sites: the projected features ``z = x W^T + b`` (every
# node a position) and the attention logits ``[s, d] = z A^T``, so the attention vector ``A`` is
# trained too.

# %%
graph = minilr.datasets.sbm(seed=0)
(xg, yg), (xg_test, yg_test) = graph.split()
print(graph)
# What a node's own features give: the nearest class mean of the 80 training nodes, no graph.
Xn, train_mask, test_mask = xg[0], yg[0] >= 0, yg_test[0] >= 0
means = np.stack([Xn[train_mask & (yg[0] == c)].mean(axis=0) for c in range(4)])
nearest = np.argmin(((Xn[:, None, :] - means[None]) ** 2).sum(axis=-1), axis=1)
own = float(np.mean(nearest[test_mask] == yg_test[0][test_mask]))
print(f"own features only (nearest class mean): test accuracy {own:.3f}")
STEPS, KG, LR_STEP = (60, 32, 3e-2) if QUICK else (300, 64, 1e-2)
histories = {}
for est in ("bp", "lr", "es"):
    gat = minilr.Sequential([minilr.GraphAttention(16, 16, graph.edges), minilr.Tanh(),
                             minilr.GraphAttention(16, 4, graph.edges)], sigma=0.1, seed=0)
    histories[est.upper()] = minilr.train(gat, (xg, yg), val_data=(xg_test, yg_test), estimator=est,
                                          copies=1 if est == "bp" else KG, epochs=STEPS, batch_size=1,
                                          lr=LR_STEP, seed=0, progress=False)
gat_acc = {label: h.val_accuracy[-1] for label, h in histories.items()}
for label, h in histories.items():
    print(f"GAT {label:3s} test accuracy after {STEPS} full-graph steps: {h.val_accuracy[-1]:.3f} "
          f"(best {max(h.val_accuracy):.3f}; chance 0.25)")
plots.learning_curves(histories, metrics=("train_loss", "val_accuracy"), path=FIG / "10_gat_training.png",
                      title="2-layer GAT on a stochastic block model (one step per epoch)")

# %%
# With only 80 labelled nodes, backprop fits them quickly and then overfits; the estimators,
# whose gradients are noisy, move slower. Compare each printed accuracy with chance (25 %) and with
# what a node's own features give (the nearest-class-mean line above): only a run above that line
# has used the graph.
#
# Spiking neurons: what backprop cannot train
# -------------------------------------------
#
# A LIF neuron integrates its input current into a leaky potential and fires when the potential
# crosses a threshold, then drops by the threshold. ``minilr.LIF(64, 128, steps=8)`` repeats a
# static input for 8 steps and returns each neuron's firing rate. A spike is a step function of
# the potential, so the reference refuses it, exactly as it refuses ``Step`` (tutorial 5):

# %%
(xd, yd), (xd_test, yd_test) = minilr.datasets.load("digits")
snn = minilr.Sequential([minilr.LIF(64, 128, steps=8), minilr.Linear(128, 10)], sigma=0.3, seed=0)
try:
    minilr.reference.gradient(snn, xd[:8], yd[:8])
except ValueError as err:
    print("reference.gradient raised ValueError:", err)
spikes = minilr.LIF(64, 128, steps=8, output="spikes")
spikes.weight, spikes.bias = snn.layers[0].weight, snn.layers[0].bias
train_of_spikes = spikes.forward(xd[:1].astype(np.float32), np)[0]  # (8 steps, 128 neurons)
print(f"one digit: {int(train_of_spikes.sum())} spikes from {train_of_spikes.shape[1]} neurons in 8 steps")

# %%
# LR puts fresh noise on the input current at every step (every step is a position of the noise
# site) and needs no surrogate gradient. The fair backprop baseline is the *surrogate gradient*:
# backprop through time over the LIF recurrence, forward pass spiking, with the spike's derivative
# replaced by that of a smooth stand-in ``f`` of the potential minus the threshold,
# ``minilr.reference.gradient(snn, x, y, surrogate=Surrogate("straight_through", slope))``, which
# ``minilr.train(..., estimator="bp", surrogate=...)`` trains with
# (``f`` the clipped identity, as in tutorial 5, slope :math:`1/(\sigma\sqrt{2\pi})`, the slope of
# the noise-smoothed spike). The reset, which subtracts the threshold after each spike, is
# differentiated too. Beside it, backprop that trains only the read-out on the initial layer's
# spike rates: all the exact gradient reaches.

# %%
SLOPE = 1 / (0.3 * np.sqrt(2 * np.pi))
surrogate = minilr.reference.Surrogate("straight_through", slope=SLOPE)


EPOCHS, K = (2, 16) if QUICK else (10, 32)
make_snn = lambda: minilr.Sequential([minilr.LIF(64, 128, steps=8), minilr.Linear(128, 10)], sigma=0.3, seed=0)
histories = {}
for label, est in (("LIF, LR", "lr"), ("LIF, ALR", "alr")):
    histories[label] = minilr.train(make_snn(), (xd, yd), val_data=(xd_test, yd_test), estimator=est,
                                    copies=K, epochs=EPOCHS, batch_size=32, lr=1e-2, seed=0, progress=False)
histories["LIF, BP straight-through"] = minilr.train(
    make_snn(), (xd, yd), val_data=(xd_test, yd_test), estimator="bp", surrogate=surrogate, epochs=EPOCHS,
    batch_size=32, lr=1e-2, seed=0, progress=False)
# read-out only: the exact gradient on the spike rates of the same initial LIF layer
lif0 = make_snn()
rates = lambda x: lif0.layers[0].forward(x.astype(np.float32), np)
readout = minilr.Sequential([minilr.Linear(128, 10)], sigma=0.3, seed=0)
readout.layers[0].weight[...], readout.layers[0].bias[...] = lif0.layers[1].weight, lif0.layers[1].bias
histories["LIF, BP read-out only"] = minilr.train(
    readout, (rates(xd), yd), val_data=(rates(xd_test), yd_test), estimator="bp", epochs=EPOCHS,
    batch_size=32, lr=1e-2, seed=0, progress=False)
lif_acc = {label: h.val_accuracy[-1] for label, h in histories.items()}
for label, h in histories.items():
    print(f"{label:24s} test accuracy after {EPOCHS} epochs: {h.val_accuracy[-1]:.3f}")
plots.learning_curves(histories, metrics=("train_loss", "val_accuracy"), path=FIG / "10_lif_training.png",
                      title="LIF spiking network on digits (8 steps): LR/ALR vs surrogate-gradient backprop")

# %%
# A layer of 128 random LIF neurons already gives a good read-out on digits, so the line that
# counts is the read-out-only one: a run above it has trained the spiking layer. The spiking
# network is evaluated without noise: deterministic spikes. The noise is only a
# training device that makes the expected loss smooth; the estimators are unbiased for the
# gradient of that smoothed loss, which tests/test_lif_statistics.py checks against an exact
# quadrature. The surrogate gradient has no variance but is the gradient of no loss: it is the
# exact gradient of a *different* network, one whose neurons emit ``f`` instead of spikes (the
# first exercise checks this). ``python benchmarks/beyond_mlp.py`` runs all three tasks (and a
# GRU on MNIST-1D) with every estimator over three seeds; its table is in
# benchmarks/BEYOND_MLP.md.
#
# What this run shows
# -------------------

# %%
lr_cos = dict(zip(copies, np.mean(cosines["LR"], axis=1)))
plots.verdicts({
    "one LR estimate of the LSTM's gradient gets closer to BPTT as copies grow":
        (lr_cos[copies[-1]] > lr_cos[copies[0]],
         f"cosine {lr_cos[copies[0]]:.3f} at K={copies[0]}, {lr_cos[copies[-1]]:.3f} at K={copies[-1]}"),
    "LR trains the LSTM on temporal order well above chance (over 0.5; chance 0.25)":
        (lstm_acc["LR"] > 0.5, f"LR {lstm_acc['LR']:.3f}, BPTT {lstm_acc['BP (BPTT)']:.3f}"),
    "BP and ES GATs use the graph: above a node's own features":
        (min(gat_acc["BP"], gat_acc["ES"]) > own,
         f"BP {gat_acc['BP']:.3f}, ES {gat_acc['ES']:.3f}, LR {gat_acc['LR']:.3f}, own features {own:.3f}"),
    "surrogate-gradient backprop trains the LIF layer: above read-out-only backprop":
        (lif_acc["LIF, BP straight-through"] > lif_acc["LIF, BP read-out only"],
         f"straight-through {lif_acc['LIF, BP straight-through']:.3f}, read-out only "
         f"{lif_acc['LIF, BP read-out only']:.3f}, LR {lif_acc['LIF, LR']:.3f}"),
})
plots.show_recorded("10_recurrent_graph_spiking")

# %%
# Exercises
# ---------
#
# 1. Write backprop through time for one LIF layer with rate output, with a sigmoid of slope
#    :math:`\beta` in place of the spike *in the forward pass too* (the surrogate network). Check
#    it against central finite differences of that network's loss, and against
#    ``minilr.reference.gradient(snn, x, y, surrogate=Surrogate("sigmoid", beta, forward="smooth"))``.
# 2. Drop the reset's derivative (treat :math:`R_t = V_t - \theta S_t` as if :math:`S_t` were a
#    constant, as many spiking libraries do) and measure how far the gradient moves (cosine).
#
# A checked solution is in ``tutorials/solutions/s10_lif_surrogate.py``.
