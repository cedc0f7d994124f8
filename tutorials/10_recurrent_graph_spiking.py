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
integrate-and-fire (LIF) neurons this way, each against backprop (or, for spikes, against the
best network backprop *can* train).
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
# and ALR see only loss values.

# %%
EPOCHS, K = (2, 16) if QUICK else (6, 32)
histories = {}
for est in ("bp", "lr", "alr"):
    model = minilr.Sequential([minilr.LSTM(6, 16), minilr.Linear(16, 4)], sigma=0.1, seed=0)
    histories[est.upper() if est != "bp" else "BP (BPTT)"] = minilr.train(
        model, (xs, ys), val_data=(xs_test, ys_test), estimator=est, copies=1 if est == "bp" else K,
        epochs=EPOCHS, batch_size=32, lr=1e-2, seed=0, progress=False)
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
STEPS, KG = (40, 32) if QUICK else (300, 64)
histories = {}
for est in ("bp", "lr", "es"):
    gat = minilr.Sequential([minilr.GraphAttention(16, 16, graph.edges), minilr.Tanh(),
                             minilr.GraphAttention(16, 4, graph.edges)], sigma=0.1, seed=0)
    histories[est.upper()] = minilr.train(gat, (xg, yg), val_data=(xg_test, yg_test), estimator=est,
                                          copies=1 if est == "bp" else KG, epochs=STEPS, batch_size=1,
                                          lr=1e-2, seed=0, progress=False)
for label, h in histories.items():
    print(f"GAT {label:3s} test accuracy after {STEPS} full-graph steps: {h.val_accuracy[-1]:.3f} "
          f"(best {max(h.val_accuracy):.3f}; chance 0.25)")
plots.learning_curves(histories, metrics=("train_loss", "val_accuracy"), path=FIG / "10_gat_training.png",
                      title="2-layer GAT on a stochastic block model (one step per epoch)")

# %%
# With only 80 labelled nodes, backprop fits them quickly and then overfits; the estimators,
# whose gradients are noisy, move slower. Both are far above the 25 % of chance, and above what a
# node's own features give (about 65 % by nearest class mean, see tests/test_datasets_graph_sequence.py).
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
# site) and needs no surrogate gradient. We compare with the best non-spiking network of the same
# sizes that backprop can train: the same 64-128-10 net with ReLU.

# %%
EPOCHS, K = (2, 16) if QUICK else (10, 32)
histories = {}
for label, est, make in (
        ("LIF, LR", "lr", lambda: minilr.Sequential([minilr.LIF(64, 128, steps=8), minilr.Linear(128, 10)], sigma=0.3, seed=0)),
        ("LIF, ALR", "alr", lambda: minilr.Sequential([minilr.LIF(64, 128, steps=8), minilr.Linear(128, 10)], sigma=0.3, seed=0)),
        ("ReLU MLP, BP", "bp", lambda: minilr.MLP([64, 128, 10], sigma=0.1, seed=0))):
    histories[label] = minilr.train(make(), (xd, yd), val_data=(xd_test, yd_test), estimator=est,
                                    copies=1 if est == "bp" else K, epochs=EPOCHS, batch_size=32,
                                    lr=1e-2, seed=0, progress=False)
    print(f"{label:13s} test accuracy after {EPOCHS} epochs: {histories[label].val_accuracy[-1]:.3f}")
plots.learning_curves(histories, metrics=("train_loss", "val_accuracy"), path=FIG / "10_lif_training.png",
                      title="LIF spiking network on digits (8 steps) vs a ReLU MLP by backprop")

# %%
# The spiking network is evaluated without noise: deterministic spikes. The noise is only a
# training device that makes the expected loss smooth; the estimators are unbiased for the
# gradient of that smoothed loss, which tests/test_lif_statistics.py checks against an exact
# quadrature. ``python benchmarks/beyond_mlp.py`` runs all three tasks (and a GRU on MNIST-1D)
# with every estimator over three seeds; its table is in benchmarks/BEYOND_MLP.md.
