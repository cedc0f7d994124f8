r"""
11. Two levels of parallelism, and the pipeline of Fig. 2
=========================================================

Backprop is a chain: layer :math:`l`'s gradient waits for layer :math:`l+1`'s. The LR estimator has no
chain. Paper Sec. 3.3 names the two kinds of independence this leaves:

-  **data level**: the :math:`K` noisy copies of a sample are independent, so they can run on
   different processes or machines (here: MPI ranks);
-  **layer level**: given the losses, layer :math:`l`'s gradient :math:`\frac{1}{n}\sum_n L_n\, x^{(l-1)}(n)\, \varepsilon^{(l)}(n)^\top / \sigma` needs only its own input and noise (Eq. 1-2), so all layers'
   gradients can be formed at once.

Sec. 3.4 turns the second into a pipeline (Fig. 2). This tutorial runs all three, checks that
each gives the same numbers as the plain computation, and times what each buys on this machine.
"""

# %%
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

import minilr
from minilr import plots
from minilr.backend import Backend, seed_sequence
from minilr.estimators import ESTIMATORS, Plan, Settings, centred_losses, estimate
from minilr.parallel import mpi, overlap, pipeline

QUICK = os.environ.get("MINILR_QUICK", "0") not in ("", "0")
HERE = Path(__file__).parent if "__file__" in globals() else Path(".")
FIG = plots.figures_dir(HERE)
print("quick mode" if QUICK else "full mode", "- figures go to", FIG)

# %%
# Data level: copies across MPI ranks
# -----------------------------------
#
# Copy :math:`k`'s noise is a pure function of the seed, the layer and :math:`k` (counter-based noise), so
# rank :math:`r` can draw exactly the copies it owns: a contiguous range, whole antithetic pairs kept
# together. Copies need not divide evenly:

# %%
for size in (2, 3, 4):
    print(f"10 copies on {size} ranks:", mpi.copy_ranges(10, size), "  antithetic pairs:", mpi.copy_ranges(10, size, pair=2))

# %%
# A step then needs two exchanges: the losses of all copies (every rank centres them exactly as
# one process would: the leave-one-out baseline spans all copies), and ONE ``Allreduce`` of one flat
# buffer that adds every layer's partial sums. For ES the second is not needed at all: every rank
# regenerates all the perturbations :math:`E_k` from the seed and forms :math:`\sum_k L_k E_k` itself
# (Salimans et al., 2017), so ES sends only losses, however many weights the model has.
#
# Below, a small script runs under ``mpiexec -n 2`` and compares the two-rank gradient with the
# one-process gradient of the same seed, for every estimator. (Where MPI is not installed,
# ``pip install -e ".[mpi]"``, this part is skipped.)

# %%
SCRIPT = textwrap.dedent("""
    import numpy as np
    from mpi4py import MPI
    import minilr
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 64)).astype(np.float32); y = rng.integers(0, 10, 20)
    model = minilr.MLP([64, 64, 10], sigma=0.1, seed=0)
    for est in ["lr", "alr", "es", "aes", "hybrid", "a-hybrid"]:
        g_one = minilr.estimate_gradient(model, x, y, estimator=est, copies=301, seed=3)
        g_all = minilr.estimate_gradient(model, x, y, estimator=est, copies=301, seed=3, comm=comm)
        d = max(np.abs(g_all[k] - g_one[k]).max() / np.abs(g_one[k]).max() for k in g_one)
        if comm.rank == 0:
            print(f"  {est:9s} 2 ranks vs 1 process, 301 copies: max relative difference {d:.1e}")
""")
mpiexec = str(Path(sys.executable).parent / "mpiexec")
mpiexec = mpiexec if Path(mpiexec).exists() else shutil.which("mpiexec")
if mpi.available() and mpiexec:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "two_ranks.py").write_text(SCRIPT)
        env = dict(os.environ, MINILR_NOISE_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.resolve().parent), os.environ.get("PYTHONPATH")])))
        out = subprocess.run([mpiexec, "-n", "2", sys.executable, str(Path(tmp) / "two_ranks.py")],
                             env=env, capture_output=True, text=True, timeout=120)
        print(out.stdout or out.stderr[-2000:])
    mpi_diffs = [float(v) for v in re.findall(r"max relative difference (\S+)", out.stdout)]
else:
    mpi_diffs = None
    print("mpi4py/mpiexec not installed: the two-rank run is skipped")

(x_train, y_train), _ = minilr.datasets.load("digits")
xb, yb = x_train[:50].astype(np.float32), y_train[:50]
for sizes in ([64, 256, 256, 10], [64, 1024, 1024, 10]):
    m = minilr.MLP(sizes, sigma=0.1, seed=0)
    n_w = sum(p.size for p in m.parameters().values())
    K, B, R = 1000, 50, 2
    lr_bytes = 4 * (K * B // R + n_w)
    es_bytes = 4 * (K * B // R)
    print(f"MLP {sizes}: {n_w:,} parameters; bytes one of 2 ranks sends per step at K={K}: "
          f"LR {lr_bytes:,}, ES {es_bytes:,}")

# %%
# Layer level: every layer's gradient at once
# -------------------------------------------
#
# Given the centred losses, the layers' gradients are independent: below, the same records turn
# into gradients one layer after another, then one thread per layer (NumPy's BLAS and minilr's
# Numba kernels release the GIL). The numbers are the same bits either way.

# %%
model = minilr.MLP([64, 256, 256, 10], activation="relu", sigma=0.1, seed=0)
bk = Backend("numpy")  # its engine (fused kernels, threads, scratch memory) serves every call below
K = 200 if QUICK else 1000
lin = model.linear_indices
ROUNDS = 2 if QUICK else 5


def layer_grad_time(est, threads):
    e = ESTIMATORS[est]
    best, grads = float("inf"), None
    for _ in range(ROUNDS):
        with bk.engine.session():  # the engine's forward pass records; the estimator's sums consume
            L, sites = bk.engine.forward(Plan.make(model, xb, Settings(est, K), seed_sequence(1), e), xb, yb,
                                         range(K))
            Lc = centred_losses(L, False, True, np)
            t0 = time.perf_counter()
            grads = overlap.layer_gradients(sites, Lc, threads)
            best = min(best, time.perf_counter() - t0)
            bk.engine.done(sites)
    return best, grads


# Timings on a shared machine vary from run to run; we call a speed-up a gain only above this.
CLEAR_GAIN = 1.2
layer_same, layer_speedup = {}, {}
for est in ("lr", "alr"):
    (t1, g1), (t3, g3) = layer_grad_time(est, 1), layer_grad_time(est, len(lin))
    layer_same[est] = all(np.array_equal(a[k], b[k]) for a, b in zip(g1, g3) for k in a)
    layer_speedup[est] = t1 / t3
    print(f"{est}: layers' gradients, one after another {1e3 * t1:.1f} ms, one thread per layer "
          f"{1e3 * t3:.1f} ms: {t1 / t3:.2f}x, "
          + (f"a gain (above {CLEAR_GAIN}x)" if t1 / t3 > CLEAR_GAIN else f"no clear gain (not above {CLEAR_GAIN}x)")
          + f"; same bits: {layer_same[est]}")

# %%
# The bits never change; the time may. What one thread per layer can win is the cores that the
# block-parallel kernels leave idle *inside* each layer's gradient: little where they already keep
# every core busy (large layers, few cores), more where a layer is too small to fill the cores, or
# on a GPU (one stream per layer), and nothing where other programs already hold the cores. So the
# ratio depends on the machine and on its load at that moment: on a shared 2-core machine two runs
# of this cell measured 0.95x and 2.55x (issue 17). The lines above count a speed-up as a gain only
# above 1.2x and print the measured ratio either way; run the cell twice to see how much it moves.
#
# The pipeline of Fig. 2
# ----------------------
#
# Split the batch into buckets. A *unit* holds one layer (and one more holds the loss); a unit
# runs one task per time step. Backprop must finish the loss, then its own backward pass, then
# go down the layers one by one. LR starts every layer's gradient as soon as the bucket's loss is
# known, so the forward passes of later buckets on the later units overlap the gradients of
# earlier buckets on the leading, free units. With four layers, three buckets and every task one
# time step (the update closing the step included), the simulator reproduces the paper's numbers:

# %%
bp, lr, s = pipeline.paper_setting()
print(f"backprop: {s['bp_steps']:.0f} time steps, {bp.idle:.0f} of {bp.units * bp.makespan:.0f} unit-steps idle "
      f"= {100 * s['bp_idle']:.1f} %")
print(f"LR pipeline: {s['lr_steps']:.0f} time steps ({s['speedup']:.1f}x faster), {lr.idle:.0f} unit-steps idle "
      f"= {100 * s['lr_idle_of_bp_space']:.0f} % of backprop's {bp.units * bp.makespan:.0f} "
      f"({100 * s['lr_idle']:.0f} % of its own {lr.units * lr.makespan:.0f})")


def titles(bp, lr, fmt):
    """Panel titles: each schedule's length, the speed-up, and how much of its own unit-time idles."""
    return [f"backprop: one step takes {fmt(bp.makespan)}; its units idle {100 * bp.idle_fraction():.0f} % of it",
            f"LR pipeline: one step takes {fmt(lr.makespan)} "
            f"(speed-up over backprop {bp.makespan / lr.makespan:.2f}x); "
            f"its units idle {100 * lr.idle_fraction():.0f} % of it"]


pipeline.draw([bp, lr], FIG / "11_fig2_pipeline.png", titles=titles(bp, lr, lambda v: f"{v:.0f} time steps"))

# %%
# ``11_fig2_pipeline.png`` is the picture: colours are buckets, hatched boxes gradients, grey the
# update. Now the same simulator with the times measured on this machine for one bucket of
# 64-256-256-10 (forward GEMM plus noise, loss, LR gradient :math:`(L\varepsilon/\sigma)^\top x`,
# backprop's two products per layer):

# %%
t = pipeline.measure_times((64, 256, 256, 10), copies=K // 4, batch=50, repeats=3)
bpm, lrm, sm = pipeline.compare(**t, buckets=3)
print(f"measured bucket times: backprop {1e3 * sm['bp_steps']:.2f} ms per step, LR pipeline "
      f"{1e3 * sm['lr_steps']:.2f} ms (speed-up {sm['speedup']:.2f}x); units idle {100 * sm['bp_idle']:.0f} % "
      f"of backprop's unit-time and {100 * sm['lr_idle']:.0f} % of the pipeline's")
pipeline.draw([bpm, lrm], FIG / "11_pipeline_measured.png", unit_time=False,
              titles=titles(bpm, lrm, lambda v: f"{1e3 * v:.2f} ms"))

# %%
# A real pipelined step
# ---------------------
#
# ``overlap.pipelined_estimate`` splits the copies into buckets: while a worker thread forms the
# gradients of bucket :math:`i`, the main thread runs the forward pass of bucket :math:`i+1`. The gradients
# are added in bucket order, so the result is bit for bit the plain step over the same buckets
# (each bucket with its own leave-one-out baseline, as any chunk of copies has).

# %%
BUCKETS = 4
step_times, piped_same = {}, {}
for est in ("lr", "alr"):
    chunk = overlap.bucket_size(K, BUCKETS)

    def plain():
        with bk.engine.session():
            return estimate(model, xb, yb, Settings(est, K, chunk=chunk), seed_sequence(2), bk)[0]

    def piped():
        return overlap.pipelined_estimate(model, xb, yb, Settings(est, K), seed_sequence(2), bk, buckets=BUCKETS)[0]
    ts = {"plain": [], "pipelined": []}
    for _ in range(ROUNDS + 1):
        for name, fn in (("plain", plain), ("pipelined", piped)):
            t0 = time.perf_counter()
            g = fn()
            ts[name].append(time.perf_counter() - t0)
    piped_same[est] = all(np.array_equal(plain()[k], piped()[k]) for k in g)
    a, b = step_times[est.upper()] = [1e3 * float(np.median(ts[n][1:])) for n in ("plain", "pipelined")]
    print(f"{est}: plain {a:.1f} ms, pipelined {b:.1f} ms: {a / b:.2f}x, "
          + (f"a gain (above {CLEAR_GAIN}x)" if a / b > CLEAR_GAIN else f"no clear gain (not above {CLEAR_GAIN}x)")
          + f"; same bits: {piped_same[est]}")

fig, ax = plots.new_figure()
names = list(step_times)
ax.bar(np.arange(len(names)) - 0.2, [step_times[n][0] for n in names], 0.4, label="plain (buckets one by one)")
ax.bar(np.arange(len(names)) + 0.2, [step_times[n][1] for n in names], 0.4, label="pipelined (threads)")
ax.set_xticks(range(len(names)), names)
ax.set_ylabel("ms per step")
ax.set_title(f"64-256-256-10, batch 50, K={K} in {BUCKETS} buckets, {os.cpu_count()} CPUs")
ax.legend(fontsize=8)
plots.save(fig, FIG / "11_step_times.png")

# %%
# The paper measured 2.04x for ALR-P over LR on a GPU, where the pipeline fills units that would
# otherwise idle. On a CPU whose kernels already use every core, overlapping can only fill the gaps
# between them, so whether it wins depends on the cores and on what else runs: the lines above say
# whether this run measured a gain above 1.2x. ``benchmarks/distributed.py`` measures all of this
# side by side, with 1, 2 and 4 MPI ranks at K = 1,000 and 10,000 copies.
#
# **Run it on many machines.** With MPI installed on every machine and the same checkout on each,
# ``mpiexec -f hosts -n 8 python -m minilr train --data digits --estimator alr --copies 8000 --distributed`` runs 8 ranks (the README shows the hostfile). Same seed, same result as one
# process.

# %%
# Exercises
# ---------
#
# **Split a batch's copies across two workers.** Write the LR estimate (Eq. 1, leave-one-out
# baseline) of a small ReLU MLP with squared loss by hand, each copy's noise drawn from a
# generator seeded by ``(seed, copy)``. Give worker 0 copies ``[0, K/2)`` and worker 1 the rest:
# each runs its copies forward and returns their losses; after exchanging the losses (the
# baseline spans all copies), each forms its partial sums; add them. Show that the sum equals the
# one-process estimate over all copies (float64 rounding apart), and that on a single linear
# layer, where the smoothed loss has the exact gradient, the estimate is unbiased.
#
# A checked solution is in ``tutorials/solutions/s11_split_copies.py``.
#
# What this run shows
# -------------------

# %%
claims = {
    "one thread per layer gives the same bits as one layer after another (LR, ALR)": (
        all(layer_same.values()), ", ".join(f"{e.upper()} {v:.2f}x" for e, v in layer_speedup.items())),
    "the pipelined step gives the same bits as the plain step over the same buckets (LR, ALR)": (
        all(piped_same.values()), ", ".join(f"{n} {a / b:.2f}x" for n, (a, b) in step_times.items())),
    "the unit-time simulator reproduces Fig. 2 (backprop 15 steps, LR pipeline 10)": (
        round(s["bp_steps"]) == 15 and round(s["lr_steps"]) == 10,
        f"{s['bp_steps']:.0f} and {s['lr_steps']:.0f} steps, {s['speedup']:.1f}x"),
}
if mpi_diffs:
    # float32 partial sums added in another order: relative rounding ~1e-6, far below 1e-5
    claims["2 MPI ranks give the one-process gradient (to 1e-5) for every estimator"] = (
        len(mpi_diffs) == 6 and max(mpi_diffs) < 1e-5, f"max relative difference {max(mpi_diffs):.1e}")
plots.verdicts(claims)
plots.show_recorded("11_parallelism_and_pipeline")
