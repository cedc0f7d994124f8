"""Recurrent, graph and spiking networks trained without backprop: test accuracy, 3 seeds.

    python benchmarks/beyond_mlp.py                    # everything below (~25 min on 2 cores)
    python benchmarks/beyond_mlp.py --tasks graph      # one task; --quick for a smoke run
    python benchmarks/beyond_mlp.py --out benchmarks/BEYOND_MLP.md

Tasks (data generated in code, fixed by seed 0; the seeds vary the initial weights, the noise
and the batch order):

* ``graph``: node classification on :func:`minilr.datasets.sbm` (300 nodes, 4 classes, 80 train
  nodes, 220 test nodes), GAT(16->16)-Tanh-GAT(16->4), the whole graph as one sample (full batch:
  one step per epoch).
* ``sequence``: :func:`minilr.datasets.temporal_order` (length 20, 2,400 train / 600 test
  sequences, 4 classes), LSTM(6->16) or GRU(6->16), then Linear(16->4).
* ``spiking``: digits (8x8, 1,438 / 359) through LIF(64->128, 8 steps, rate output) and a
  Linear(128->10) read-out; against the same sizes with ReLU (a non-spiking MLP) trained by BP
  and by LR. BP cannot train the LIF net (the reference refuses it).
* ``mnist1d``: MNIST-1D (4,000 / 1,000) as sequences (N, 40, 1) through GRU(1->32)-Linear(32->10).

"bp" is the exact gradient (minilr.reference) with the same optimizer (Adam) and schedule. Every
run uses one BLAS thread; two runs go side by side (``--jobs``). Seconds are wall time per run.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small products: threads only add overhead
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minilr  # noqa: E402

CHANCE = {"graph": 0.25, "sequence": 0.25, "spiking": 0.10, "mnist1d": 0.10}


def data(task):
    if task == "graph":
        g = minilr.datasets.sbm(seed=0)
        return g.split(), g
    if task == "sequence":
        return minilr.datasets.temporal_order(n=3000, length=20, seed=0), None
    if task == "spiking":
        return minilr.datasets.load("digits"), None
    (x, y), (xt, yt) = minilr.datasets.load("mnist1d")
    return ((x[:, :, None], y), (xt[:, :, None], yt)), None


def model(task, net, seed, graph=None):
    if task == "graph":
        return minilr.Sequential([minilr.GraphAttention(16, 16, graph.edges), minilr.Tanh(),
                                  minilr.GraphAttention(16, 4, graph.edges)], sigma=0.1, seed=seed)
    if task == "sequence":
        cell = minilr.LSTM if net == "lstm" else minilr.GRU
        return minilr.Sequential([cell(6, 16), minilr.Linear(16, 4)], sigma=0.1, seed=seed)
    if task == "spiking":
        if net == "lif":
            return minilr.Sequential([minilr.LIF(64, 128, steps=8), minilr.Linear(128, 10)], sigma=0.3, seed=seed)
        return minilr.MLP([64, 128, 10], activation="relu", sigma=0.1, seed=seed)
    return minilr.Sequential([minilr.GRU(1, 32), minilr.Linear(32, 10)], sigma=0.1, seed=seed)


# (task, net, estimator) -> training settings
SETTINGS = {"graph": dict(copies=64, epochs=300, batch_size=1, lr=0.01),
            "sequence": dict(copies=32, epochs=6, batch_size=32, lr=0.01),
            "spiking": dict(copies=32, epochs=10, batch_size=32, lr=0.01),
            "mnist1d": dict(copies=32, epochs=15, batch_size=32, lr=0.01)}
RUNS = {
    "graph": [("gat", e) for e in ("bp", "lr", "alr", "es", "aes")],
    "sequence": [("lstm", e) for e in ("bp", "lr", "alr", "es", "aes")] + [("gru", e) for e in ("bp", "lr", "alr")],
    "spiking": [("lif", e) for e in ("lr", "alr", "es", "aes")] + [("relu-mlp", "bp"), ("relu-mlp", "lr")],
    "mnist1d": [("gru", e) for e in ("bp", "lr", "alr")],
}


def one(job):
    task, net, estimator, seed, quick = job
    (train, test), graph = data(task)
    m = model(task, net, seed, graph)
    kw = dict(SETTINGS[task])
    if estimator == "bp":
        kw["copies"] = 1
    if quick:
        kw["epochs"] = max(1, kw["epochs"] // 30)
    t0 = time.perf_counter()
    h = minilr.train(m, train, val_data=test, estimator=estimator, seed=seed, progress=False, **kw)
    return job, h.val_accuracy[-1], time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="graph,sequence,spiking,mnist1d")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a few epochs only (a smoke run)")
    ap.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    args = ap.parse_args(argv)
    tasks = args.tasks.split(",")
    jobs = [(t, net, e, s, args.quick) for t in tasks for net, e in RUNS[t] for s in args.seeds]
    results = {}
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for (task, net, est, seed, _), acc, sec in pool.imap_unordered(one, jobs):
            results.setdefault((task, net, est), []).append((seed, acc, sec))
            print(f"{task:9s} {net:9s} {est:4s} seed {seed}: {acc:.3f} ({sec:.0f} s)", flush=True)
    lines = [f"# Beyond the MLP: test accuracy over seeds {args.seeds}", "",
             f"`python benchmarks/beyond_mlp.py --tasks {args.tasks}{' --quick' if args.quick else ''}` "
             f"({time.perf_counter() - t0:.0f} s wall, {args.jobs} runs side by side, one BLAS thread each)", "",
             "| task | net | estimator | copies | epochs | test accuracy (mean +- std) | per seed | chance | s/run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task in tasks:
        for net, est in RUNS[task]:
            r = sorted(results[(task, net, est)])
            accs = np.array([a for _, a, _ in r])
            kw = SETTINGS[task]
            lines.append(f"| {task} | {net} | {est} | {1 if est == 'bp' else kw['copies']} | "
                         f"{max(1, kw['epochs'] // 30) if args.quick else kw['epochs']} | "
                         f"{accs.mean():.3f} +- {accs.std(ddof=1) if len(accs) > 1 else 0:.3f} | "
                         f"{' '.join(f'{a:.3f}' for a in accs)} | {CHANCE[task]:.2f} | "
                         f"{np.mean([s for _, _, s in r]):.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
