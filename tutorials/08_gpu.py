r"""
8. Same code on a GPU
=====================

The LR family is embarrassingly parallel (paper Sec. 3.3): copies are independent, layers are
independent, and each layer's gradient is one matrix product :math:`(\mathcal{L}\,\varepsilon)^\top x`.
That is what GPUs do best. minilr writes every estimator once, against an array module ``xp``
that is NumPy on the CPU and CuPy on the GPU; ``backend="cupy"`` is the only change a user makes.

This tutorial times the same gradient on both where a GPU is present, and measures how chunks of
copies keep memory flat as the number of copies grows (what lets large :math:`K` fit a GPU). On a
machine without a GPU it says so, runs everything on the CPU, and skips the GPU parts (the script
still exits normally).
"""

# %%
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np

import minilr
from minilr import plots

QUICK = os.environ.get("MINILR_QUICK", "0") not in ("", "0")
FIG = plots.figures_dir(Path(__file__).parent if "__file__" in globals() else ".")
print("quick mode" if QUICK else "full mode", "- figures go to", FIG)

GPU = minilr.cupy_available()
print("CuPy with a usable GPU:", GPU)

# %%
# Asking for the GPU
# ------------------
#
# Every entry point takes ``backend="numpy"`` (the default) or ``backend="cupy"``. Inputs stay NumPy
# arrays; minilr moves them to the device and returns NumPy arrays. Without CuPy or a GPU, asking
# for ``"cupy"`` fails at once, before any work, with a message that names the fix:

# %%
(x_train, y_train), (x_test, y_test) = minilr.datasets.load("digits")
xb, yb = x_train[:50], y_train[:50]
model = minilr.MLP([64, 256, 256, 10], activation="relu", sigma=0.1, seed=0)
if not GPU:
    try:
        minilr.estimate_gradient(model, xb, yb, estimator="lr", copies=10, backend="cupy")
    except Exception as err:  # noqa: BLE001 - we show whatever minilr raises
        print(f"backend='cupy' raised {type(err).__name__}: {err}")

# %%
# Same seed, same numbers, per backend
# ------------------------------------
#
# On one backend a seed fixes every random number, so two runs agree bit for bit. NumPy and CuPy
# draw their noise from different generators, so across backends the *estimates* differ while
# their *statistics* agree: we compare the cosine to the exact gradient instead.

# %%
g_true = minilr.reference.gradient(model, xb, yb)
K_CHECK = 200 if QUICK else 1000
g1 = minilr.estimate_gradient(model, xb, yb, estimator="lr", copies=K_CHECK, seed=7)
g2 = minilr.estimate_gradient(model, xb, yb, estimator="lr", copies=K_CHECK, seed=7)
print("numpy, same seed twice, bit-identical:", all(np.array_equal(g1[k], g2[k]) for k in g1))
cos_cpu = [minilr.metrics.cosine_similarity(minilr.estimate_gradient(model, xb, yb, estimator="lr",
                                                                     copies=K_CHECK, seed=s), g_true)
           for s in range(3)]
print(f"numpy: cosine to the exact gradient at K={K_CHECK}, 3 seeds:", np.round(cos_cpu, 3))
if GPU:
    h1 = minilr.estimate_gradient(model, xb, yb, estimator="lr", copies=K_CHECK, seed=7, backend="cupy")
    h2 = minilr.estimate_gradient(model, xb, yb, estimator="lr", copies=K_CHECK, seed=7, backend="cupy")
    print("cupy, same seed twice, bit-identical:", all(np.array_equal(h1[k], h2[k]) for k in h1))
    cos_gpu = [minilr.metrics.cosine_similarity(minilr.estimate_gradient(model, xb, yb, estimator="lr",
                                                                         copies=K_CHECK, seed=s, backend="cupy"),
                                                g_true) for s in range(3)]
    print(f"cupy:  cosine to the exact gradient at K={K_CHECK}, 3 seeds:", np.round(cos_gpu, 3))
else:
    print("no GPU: the CuPy half of this check is skipped")

# %%
# Time per gradient as copies grow
# --------------------------------
#
# One gradient of a 64-256-256-10 MLP on a batch of 50, for LR and ALR, timed after a warm-up
# call (the first CuPy call compiles kernels), with copies in chunks of at most 1,000 (``chunk=1000``:
# the next section shows what chunks do). Where a GPU is present the
# run prints its measured speed-up over the CPU at the largest :math:`K`; how large it is depends on
# the card and on :math:`K` (small :math:`K` leaves most of a GPU idle).

# %%
COPIES = [10, 100, 300] if QUICK else [10, 100, 1000, 3000, 10000]
backends = ["numpy"] + (["cupy"] if GPU else [])


def seconds(estimator, K, backend, repeats=3):
    minilr.estimate_gradient(model, xb, yb, estimator=estimator, copies=K, seed=0, chunk=1000, backend=backend)
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        minilr.estimate_gradient(model, xb, yb, estimator=estimator, copies=K, seed=r, chunk=1000, backend=backend)
        best = min(best, time.perf_counter() - t0)
    return best


timings = {f"{est.upper()}, {b}": [seconds(est, K, b) for K in COPIES] for b in backends for est in ("lr", "alr")}
print("seconds per gradient (best of 3)")
print(f"{'':14s}" + "".join(f"{K:>10d}" for K in COPIES))
for name, t in timings.items():
    print(f"{name:14s}" + "".join(f"{x:10.4f}" for x in t))
if GPU:
    for est in ("LR", "ALR"):
        print(f"{est}: GPU speed-up at K={COPIES[-1]}: "
              f"{timings[f'{est}, numpy'][-1] / timings[f'{est}, cupy'][-1]:.1f}x")
fig = plots.cosine_vs_copies(COPIES, timings, ylabel="seconds per gradient",
                             title="MLP 64-256-256-10, batch 50" + ("" if GPU else "\n(no GPU here: CPU only)"))
fig.axes[0].set_yscale("log")
plots.save(fig, FIG / "08_time_per_gradient.png")
fig

# %%
# Chunks of copies: memory that does not grow with K
# --------------------------------------------------
#
# A training pass keeps, for every copy, what the estimator needs once the loss is known (LR: each
# layer's input and noise as floats), so one estimate's memory grows linearly with :math:`K`; a GPU
# has far less memory than a host. ``chunk=c`` runs the copies ``c`` at a time and adds the chunks'
# sums. Copy :math:`k`'s noise is a pure function of the seed and :math:`k`, so a first pass collects
# every copy's loss, and each chunk is then run again with the same noise and centred on the mean of
# *all* other copies: the chunked estimate is the unchunked one, summed in another order (float32
# rounding apart). Below, the peak memory of one LR estimate as Python's ``tracemalloc`` measures
# it (NumPy reports its arrays to it), without chunks and with ``chunk=100``:

# %%
CHUNK = 100
K_MEM = [100, 200, 400, 800] if QUICK else [100, 300, 1000, 3000]


def peak_mib(K, chunk):
    """Peak memory (MiB) that tracemalloc sees during one LR estimate."""
    tracemalloc.start()
    minilr.estimate_gradient(model, xb, yb, estimator="lr", copies=K, seed=0, chunk=chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


peaks = {"all copies at once": [peak_mib(K, None) for K in K_MEM],
         f"chunk={CHUNK}": [peak_mib(K, CHUNK) for K in K_MEM]}
print("peak MiB of one LR estimate" + "".join(f"{K:>9d}" for K in K_MEM))
for name, p in peaks.items():
    print(f"{name:27s}" + "".join(f"{v:9.1f}" for v in p))
growth_all = peaks["all copies at once"][-1] / peaks["all copies at once"][0]
growth_chunk = peaks[f"chunk={CHUNK}"][-1] / peaks[f"chunk={CHUNK}"][0]
print(f"from K={K_MEM[0]} to K={K_MEM[-1]} ({K_MEM[-1] // K_MEM[0]}x the copies): peak x{growth_all:.2f} "
      f"without chunks, x{growth_chunk:.2f} with chunk={CHUNK}")
g_all = minilr.estimate_gradient(model, xb, yb, estimator="lr", copies=K_MEM[-1], seed=3)
g_chunk = minilr.estimate_gradient(model, xb, yb, estimator="lr", copies=K_MEM[-1], seed=3, chunk=CHUNK)
chunk_diff = max(float(np.abs(g_all[k] - g_chunk[k]).max() / np.abs(g_all[k]).max()) for k in g_all)
print(f"K={K_MEM[-1]}: chunked vs unchunked gradient, max relative difference {chunk_diff:.1e}")
fig, ax = plots.new_figure()
for name, p in peaks.items():
    ax.plot(K_MEM, p, "o-", label=name)
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("copies K")
ax.set_ylabel("peak memory of one LR estimate (MiB)")
ax.set_title("MLP 64-256-256-10, batch 50 (tracemalloc, CPU)")
ax.legend()
plots.save(fig, FIG / "08_chunk_memory.png")
fig

# %%
# On a GPU the same ``chunk=`` holds device memory flat; ``minilr.train(..., chunk=c)`` takes it too.
#
# Training on the GPU
# -------------------
#
# ``minilr.train(..., backend="cupy")`` keeps the model on the device for the whole run and brings
# it home at the end; the History is the same kind of object.

# %%
if GPU:
    EPOCHS, K = (2, 100) if QUICK else (20, 1000)
    histories = {}
    for b in backends:
        net = minilr.MLP([64, 256, 256, 10], activation="relu", sigma=0.1, seed=0)
        histories[b] = minilr.train(net, (x_train, y_train), val_data=(x_test, y_test), estimator="alr",
                                    copies=K, epochs=EPOCHS, batch_size=50, lr=1e-2, seed=0,
                                    progress=False, backend=b)
        print(f"ALR, K={K}, {b}: test accuracy {histories[b].val_accuracy[-1]:.3f}, "
              f"{sum(histories[b].seconds):.1f} s for {EPOCHS} epochs")
    plots.learning_curves(histories, metrics=("val_accuracy", "seconds"), path=FIG / "08_gpu_training.png",
                          title=f"ALR, K={K}, on CPU and GPU")
else:
    print("no GPU: skipping GPU training. Install CuPy for your CUDA (pip install cupy-cuda12x, or "
          "pip install -e '.[gpu]') on a machine with an NVIDIA GPU and run this tutorial again.")

# %%
# Exercises
# ---------
#
# 1. **Choose the chunk size for a memory budget.** Measure the peak memory of one LR estimate of
#    the MLP above at two chunk sizes, fit ``peak = a + b * chunk``, and pick the largest chunk whose
#    fitted peak fits a budget of 12 MiB. Check with ``tracemalloc`` that an estimate with
#    :math:`K = 400` at that chunk stays within the budget, and that a chunk a quarter larger would
#    not. (Warm the engine up with one small call first: the first call compiles kernels, and the
#    compiler's own allocations would count.)
# 2. Run the timing cell with ``chunk=50``: which costs more time per gradient, and why? (Chunked
#    estimates run every chunk forward twice: once for the losses, once for the sums.)
#
# A checked solution of exercise 1 is in ``tutorials/solutions/s08_chunk_for_budget.py``.
#
# What this run shows
# -------------------

# %%
claims = {
    "numpy: the same seed gives the same bits": (
        all(np.array_equal(g1[k], g2[k]) for k in g1), f"K={K_CHECK}, every parameter compared"),
    f"without chunks the peak memory grows with K (by more than half the {K_MEM[-1] // K_MEM[0]}x in copies)": (
        growth_all > 0.5 * K_MEM[-1] / K_MEM[0], f"peak x{growth_all:.2f}, K {K_MEM[0]} -> {K_MEM[-1]}"),
    f"with chunk={CHUNK} the peak stays flat (within 10 %)": (
        growth_chunk < 1.1, f"peak x{growth_chunk:.2f}, K {K_MEM[0]} -> {K_MEM[-1]}"),
    # float32 sums of K x batch terms taken in another order: relative rounding ~1e-5, not more
    "the chunked gradient is the unchunked one (to 1e-4, float32 rounding)": (
        chunk_diff < 1e-4, f"max relative difference {chunk_diff:.1e} at K={K_MEM[-1]}"),
}
if GPU:
    claims["cupy: the same seed gives the same bits"] = (
        all(np.array_equal(h1[k], h2[k]) for k in h1), f"K={K_CHECK}, every parameter compared")
plots.verdicts(claims)
plots.show_recorded("08_gpu")
