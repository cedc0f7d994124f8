"""The paper's Table 1 in miniature: BP, FA, ES, LR, Hybrid without and with the sign approximation,
on MNIST-1D (generated offline), a small CNN and a small ResNet-5, several seeds, side by side with
the paper's numbers (ResNet-9 on CIFAR-100).

    PYTHONPATH=. python benchmarks/table1.py --quick        # a few minutes: 1 seed, short runs
    PYTHONPATH=. python benchmarks/table1.py                # the full table (see --help, README)
    PYTHONPATH=. python benchmarks/table1.py --extras-only  # LR MLP, digits-as-images CNN, timing

Rows of the table (as in the paper):

* **BP**: the exact gradient (``minilr.reference``, hand-written backprop); **w A**: the sign of
  that update, as the paper's "w A" row does for BP, HSIC and FA.
* **FA**: feedback alignment (Lillicrap et al., 2016; ``minilr.reference.feedback_alignment``):
  backprop with fixed random matrices instead of the weights' transposes on the way back.
* **ES / LR / Hybrid** and their sign variants **AES / ALR / A-Hybrid** (``minilr.train``).
  Hybrid: ES on the first ``--es-layers`` noise sites, LR on the rest.

"Equal copies": every estimator gets ``--copies``. "Equal memory": each sign variant gets the most
copies whose measured peak memory for one gradient estimate (tracemalloc, all copies in one chunk)
stays within that of its float counterpart at ``--copies``. Accuracies are on the 1,000 test
samples after the last epoch (no selection on the test set); mean ± standard deviation over seeds.

Seeds run in parallel processes (``--jobs``), each on one BLAS / noise thread.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

PAPER = {  # the paper's Table 1: ResNet-9 on CIFAR-100, accuracy %
    "w/o A": {"BP": 65.2, "HSIC": 35.7, "FA": 25.1, "ES": 27.3, "LR": 38.5, "Hybrid": 42.6},
    "w A": {"BP": 62.7, "HSIC": 34.9, "FA": 23.8, "ES": 34.1, "LR": 59.2, "Hybrid": 64.9},
}
COLUMNS = ("BP", "FA", "ES", "LR", "Hybrid")
ESTIMATOR = {("ES", False): "es", ("ES", True): "aes", ("LR", False): "lr", ("LR", True): "alr",
             ("Hybrid", False): "hybrid", ("Hybrid", True): "a-hybrid"}


def build(name, seed, sigma):
    import minilr

    if name == "cnn":
        return minilr.cnn((1, 40), width=25, sigma=sigma, seed=seed)
    if name == "resnet5":
        return minilr.resnet5((1, 40), width=16, sigma=sigma, seed=seed)
    if name == "mlp":
        return minilr.MLP([40, 100, 100, 10], sigma=sigma, seed=seed)
    if name == "digits-cnn":
        return minilr.Sequential([minilr.Conv2d(1, 16, 3, padding=1), "relu", minilr.MaxPool2d(2),
                                  minilr.Conv2d(16, 16, 3, padding=1), "relu", minilr.MaxPool2d(2),
                                  minilr.Flatten(), minilr.Linear(64, 10)], sigma=sigma, seed=seed)
    raise ValueError(name)


def data(name):
    import minilr

    if name.startswith("digits"):
        return minilr.datasets.load("digits", images=True)
    (x, y), (xt, yt) = minilr.datasets.load("mnist1d")
    if name == "mlp":
        return (x, y), (xt, yt)
    return (x[:, None], y), (xt[:, None], yt)


class SignOf:
    """An optimizer fed ``sign(g)`` instead of ``g`` (the paper's "w A" for BP and FA)."""

    def __init__(self, inner):
        self.inner = inner

    def step(self, params, grads):
        self.inner.step(params, {k: np.sign(g) for k, g in grads.items()})


def run(job):
    """One training run; returns the job with its test accuracy and seconds."""
    import minilr
    from minilr import reference
    from minilr.optim import make_optimizer

    model = build(job["model"], job["seed"], job["sigma"])
    (x, y), (xt, yt) = data(job["model"])
    t0 = time.perf_counter()
    method, approx = job["method"], job["approx"]
    if method in ("BP", "FA"):
        opt = make_optimizer("adam", job["lr"])
        opt = SignOf(opt) if approx else opt
        fb = reference.feedback_matrices(model, seed=10_000 + job["seed"]) if method == "FA" else None
        rng = np.random.default_rng(job["seed"])
        params = model.parameters()
        for epoch in range(job["epochs"]):
            order = rng.permutation(len(x))
            for s in range(0, len(x), job["batch"]):
                idx = order[s:s + job["batch"]]
                if fb is None:
                    g = reference.gradient(model, x[idx], y[idx])
                else:
                    g = reference.feedback_alignment(model, x[idx], y[idx], fb)
                opt.step(params, {k: v.astype(model.dtype) for k, v in g.items()})
    else:
        minilr.train(model, (x, y), estimator=ESTIMATOR[method, approx], copies=job["copies"],
                     epochs=job["epochs"], batch_size=job["batch"], lr=job["lr"], seed=job["seed"],
                     es_layers=job["es_layers"], progress=False)
    job = dict(job)
    job["seconds"] = time.perf_counter() - t0
    job["acc"] = float((model.predict(xt) == yt).mean())
    return job


def peak_bytes(model_name, estimator, copies, batch, es_layers):
    """Peak traced memory of one gradient estimate with all copies in one chunk."""
    import minilr

    model = build(model_name, 0, 0.1)
    (x, y), _ = data(model_name)
    minilr.estimate_gradient(model, x[:batch], y[:batch], estimator=estimator, copies=8, es_layers=es_layers)
    tracemalloc.start()
    minilr.estimate_gradient(model, x[:batch], y[:batch], estimator=estimator, copies=copies,
                             es_layers=es_layers)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def copies_at_equal_memory(model_name, estimator, budget, batch, es_layers, start):
    """The most copies (a multiple of 8) whose peak stays within ``budget`` bytes."""
    def fits(k):
        return peak_bytes(model_name, estimator, k, batch, es_layers) <= budget

    if not fits(start):
        k = start // 8 * 8
        while k > 8 and not fits(k):
            k -= 8
        return max(k, 8)
    lo = start
    while fits(lo * 2) and lo < 64 * start:
        lo *= 2
    hi = lo * 2
    while hi - lo > 8:
        mid = (lo + hi) // 16 * 8
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def fmt(accs):
    if not accs:
        return "—"
    a = 100 * np.asarray(accs)
    return f"{a.mean():.1f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.1f}"


def table(results, model, budget):
    """The Markdown table for one model and one budget ("copies" or "memory")."""
    lines = [f"| {model}, equal {budget} | " + " | ".join(COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for approx, row in ((False, "w/o A"), (True, "w A")):
        cells = []
        for col in COLUMNS:
            rs = [r for r in results if r["model"] == model and r["method"] == col and r["approx"] == approx
                  and r["budget"] in (budget, "both")]
            cell = fmt([r["acc"] for r in rs])
            if rs and col not in ("BP", "FA") and approx:
                cell += f" (K={rs[0]['copies']})"
            cells.append(cell)
        lines.append(f"| minilr {row} | " + " | ".join(cells) + " |")
    for row in ("w/o A", "w A"):
        lines.append(f"| paper {row} (ResNet-9, CIFAR-100) | "
                     + " | ".join(f"{PAPER[row][c]:.1f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, CNN only")
    p.add_argument("--models", default="cnn,resnet5")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--resnet-epochs", type=int, default=None, help="epochs for resnet5 (default: --epochs)")
    p.add_argument("--copies", type=int, default=20)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam step for the estimators")
    p.add_argument("--bp-lr", type=float, default=1e-2, help="Adam step for BP and FA")
    p.add_argument("--es-layers", type=int, default=1)
    p.add_argument("--no-memory", action="store_true", help="skip the equal-memory runs")
    p.add_argument("--memory-models", default="cnn", help="models that get equal-memory runs")
    p.add_argument("--memory-cap", type=float, default=4.0,
                   help="run equal-memory sign variants at most this many times --copies (for time; "
                        "the copies that fit are printed either way); 0: no cap")
    p.add_argument("--extras", action="store_true", help="also the LR MLP and the digits CNN")
    p.add_argument("--extras-only", action="store_true")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--md", default=None, help="write the tables as Markdown here")
    p.add_argument("--from-json", default=None, help="print the tables of a saved --out file (no runs)")
    a = p.parse_args(argv)
    saved = None
    if a.from_json:  # the saved run's settings, then only print
        with open(a.from_json) as f:
            saved = json.load(f)
        for k, v in saved["args"].items():
            if k not in ("from_json", "md", "out"):
                setattr(a, k, v)
        a.quick = False
    if a.quick:
        a.seeds, a.epochs, a.models, a.memory_cap = 1, 2, "cnn", 2.0
    os.environ["MINILR_NOISE_THREADS"] = "1"  # one thread per process: the seeds run side by side
    os.environ["OPENBLAS_NUM_THREADS"] = "1"

    base = dict(sigma=a.sigma, batch=a.batch, es_layers=a.es_layers)
    jobs = []
    models = [] if a.extras_only else [m for m in a.models.split(",") if m]
    budgets = {}
    for model in models:
        epochs = a.resnet_epochs if (model == "resnet5" and a.resnet_epochs) else a.epochs
        for seed in range(a.seeds):
            for col in COLUMNS:
                for approx in (False, True):
                    lr = a.bp_lr if col in ("BP", "FA") else a.lr
                    budget = "both" if (col in ("BP", "FA") or not approx) else "copies"
                    jobs.append(dict(base, model=model, method=col, approx=approx, seed=seed, lr=lr,
                                     epochs=epochs, copies=a.copies, budget=budget))
        if not a.no_memory and model in a.memory_models.split(",") and saved is None:
            for col in ("ES", "LR", "Hybrid"):
                est_f, est_a = ESTIMATOR[col, False], ESTIMATOR[col, True]
                budget = peak_bytes(model, est_f, a.copies, a.batch, a.es_layers)
                fit = copies_at_equal_memory(model, est_a, budget, a.batch, a.es_layers, a.copies)
                k = fit if not a.memory_cap else min(fit, int(a.memory_cap * a.copies) // 8 * 8)
                budgets[(model, col)] = (budget, fit, k)
                print(f"{model} {col}: {est_f} K={a.copies} peaks at {budget / 2**20:.1f} MiB; "
                      f"{est_a} fits K={fit} in it; run at K={k}", flush=True)
                for seed in range(a.seeds):
                    jobs.append(dict(base, model=model, method=col, approx=True, seed=seed, lr=a.lr,
                                     epochs=epochs, copies=k, budget="memory"))
    if a.extras or a.extras_only:
        for seed in range(a.seeds):
            jobs.append(dict(base, model="mlp", method="LR", approx=False, seed=seed, lr=a.lr,
                             epochs=a.epochs, copies=a.copies, budget="extra"))
            jobs.append(dict(base, model="digits-cnn", method="LR", approx=False, seed=seed, lr=a.lr,
                             epochs=a.epochs, copies=a.copies, budget="extra", batch=50))
    t0 = time.perf_counter()
    results = []
    if saved is not None:
        results, wall = saved["results"], saved["wall_s"]
        budgets = {tuple(k.split("/")): v for k, v in saved["budgets"].items()}
        jobs = []
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        for r in pool.map(run, jobs):
            results.append(r)
            print(f"  {r['model']:10s} {r['method']:6s} {'A' if r['approx'] else '-'} K={r['copies']:<4d} "
                  f"seed {r['seed']}: {100 * r['acc']:.1f} % in {r['seconds']:.0f} s", flush=True)
    if not a.from_json:
        wall = time.perf_counter() - t0
    report = []

    def out(line=""):
        print(line)
        report.append(line)

    out()
    out(f"MNIST-1D, 4,000 train / 1,000 test; batch {a.batch}, sigma {a.sigma}, Adam (estimators "
          f"lr {a.lr}, BP/FA lr {a.bp_lr}), {a.seeds} seed(s), {a.epochs} epochs"
          + (f" ({a.resnet_epochs} for resnet5)" if a.resnet_epochs else "")
          + f", hybrid ES layers {a.es_layers}; test accuracy %, mean ± sd over seeds")
    for model in models:
        out()
        out(table(results, model, "copies"))
        if not a.no_memory and model in a.memory_models.split(","):
            b = {c: budgets[(model, c)] for c in ("ES", "LR", "Hybrid")}
            out()
            out(table(results, model, "memory"))
            out("(peak of one estimate at K=%d: %s; sign variants fit K = %s, run at K = %s)" % (
                a.copies, ", ".join(f"{c} {v[0] / 2**20:.1f} MiB" for c, v in b.items()),
                "/".join(str(v[1]) for v in b.values()), "/".join(str(v[2]) for v in b.values())))
    extras = [r for r in results if r["budget"] == "extra"]
    if extras:
        out()
        for m in ("mlp", "digits-cnn"):
            rs = [r for r in extras if r["model"] == m]
            out(f"LR {m}: {fmt([r['acc'] for r in rs])} % (K={a.copies}, {a.epochs} epochs, "
                f"{np.mean([r['seconds'] for r in rs]):.0f} s per run)")
    secs = {}
    for r in results:
        secs.setdefault((r["model"], r["method"], r["approx"], r["copies"]), []).append(r["seconds"])
    out()
    out("seconds per run (wall, in parallel processes): " + "; ".join(
        f"{m} {c}{' A' if ap else ''} K={k}: {np.mean(v):.0f}" for (m, c, ap, k), v in sorted(secs.items())))
    out(f"\nwall time {wall / 60:.1f} min with {a.jobs} processes")
    if a.md:
        with open(a.md, "w") as f:
            f.write("# Table 1 in miniature (benchmarks/table1.py)\n\n```\n" + " ".join(["python"] + sys.argv)
                    + "\n```\n\n" + "\n".join(report) + "\n")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(args=vars(a), results=results, wall_s=wall,
                           budgets={f"{m}/{c}": v for (m, c), v in budgets.items()}), f, indent=1)


if __name__ == "__main__":
    main()
