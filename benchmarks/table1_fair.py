"""Table 1 done fairly (issue 16): per-method step sizes chosen on validation, runs to a flat
validation curve, several seeds with 95 % t-intervals, and three budgets (equal copies, equal
memory at the *measured* fit, equal wall time), on MNIST-1D (generated offline).

    PYTHONPATH=. python benchmarks/table1_fair.py --plan      # job count and a time projection, no runs
    PYTHONPATH=. python benchmarks/table1_fair.py             # the grid (hours: see --plan)
    PYTHONPATH=. python benchmarks/table1_fair.py --smoke     # the whole pipeline on tiny data (seconds)

What is compared (one row per method):

* **BP** (exact gradient, ``estimator="bp"``), **FA** (feedback alignment,
  ``minilr.reference.feedback_alignment``), **HSIC** (the HSIC bottleneck, :mod:`minilr.hsic`:
  blocks trained locally, the read-out on cross-entropy), **ES / LR / Hybrid** and their Eq. 3 sign
  variants **AES / ALR / A-Hybrid** (reading 1 of "w A": the sign of the stored intermediates);
* every one of them also with ``optimizer="signsgd"`` (reading 2 of "w A", Sec. 4.2: the sign of
  the update); the others use Adam;
* options: ``--learned-sigma`` adds LR/ALR/Hybrid/A-Hybrid with sigma learned (Eq. 1's sigma score);
  ``--hybrid-es-sigma S`` adds Hybrid/A-Hybrid with sigma ``S`` on the ES sites only (the LR sites
  keep ``--sigma``).

How each cell is made:

* **Step size**: for each (method, copies), one run per value of the optimizer's grid (Adam
  ``--grid``, signSGD ``--sign-grid``) on the tuning seed; the value with the best validation
  score (mean of the last 3 epochs' validation accuracy) is chosen. If it sits at the grid's edge,
  the grid is extended by the next value (x or / ``--grid-step``) and the new value run, up to
  ``--max-extend`` times per side; a choice still at the edge is flagged ``edge`` in the tables.
* **Epochs**: until the validation accuracy flattens (its best over the last ``--patience`` epochs
  is no more than ``--min-delta`` above the best before them), at most ``--epochs`` (the cap).
* **Seeds**: ``--seeds`` seeds (the tuning run is seed 0 and counts as one); cells are mean ± the
  95 % t-interval half-width ``t_{0.975, n-1} s / sqrt(n)`` of the test accuracy (1,000 samples,
  after the last epoch, never used for any choice).
* **Equal memory**: each sign variant (AES, ALR, A-Hybrid; with Adam, and with signSGD too under
  ``--memory-signsgd``) gets the copies whose peak memory of one
  gradient estimate (tracemalloc, all copies in one chunk) equals its float variant's at ``--copies``:
  both peaks are measured at two small copy counts and fitted as ``a + b K``; the fit ratio and
  ``minilr.memory.record_bytes``'s per-copy ratio are both reported.
* **Equal wall time**: each estimator gets the copies whose measured step time (fitted ``a + b K``
  from two small copy counts) equals LR's at ``--copies``, so equal epochs take equal time; BP, FA
  and HSIC have no copies and appear with their own times.
* **Diagnostics** (Eq. 7-8): every seed-0 net, after training, gets its estimator's per-layer
  cosine to the exact gradient (``minilr.reference.gradient``) on a fixed training batch at each of
  ``--diag-copies``, and Acc./Sta. (``minilr.metrics.acc_sta``) over them; FA its cosine.

Jobs run in ``--jobs`` processes, one BLAS/noise thread each; wall and CPU time are reported.
Writes ``--out`` (JSON), ``--md`` (Markdown tables) and ``--fig`` (validation curves, PNG).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
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
BASES = ("bp", "fa", "hsic", "es", "aes", "lr", "alr", "hybrid", "a-hybrid")
ESTIMATORS = ("es", "aes", "lr", "alr", "hybrid", "a-hybrid")
SIGN_OF = {"es": "aes", "lr": "alr", "hybrid": "a-hybrid"}  # float variant -> Eq. 3 sign variant


class Flat(Exception):
    """Raised by the epoch callback: the validation curve has flattened."""


# -- small pieces, each testable ------------------------------------------------------------------
def flattened(val, patience, min_delta):
    """Whether the best of the last ``patience`` values is no more than ``min_delta`` above the
    best before them (needs at least ``patience + 1`` values)."""
    if len(val) <= patience:
        return False
    return max(val[-patience:]) <= max(val[:-patience]) + min_delta


def t_interval(values, level=0.95):
    """``(mean, half-width)`` of the two-sided Student-t interval; half-width NaN for one value."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v.mean()) if v.size else float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(half)


def score(val):
    """What chooses a step size: the mean validation accuracy of the last 3 epochs (0 if none)."""
    return float(np.mean(val[-3:])) if len(val) else 0.0


def next_grid_value(grid, scores, step, extended, max_extend):
    """A value to add where the best score sits at an edge of the (sorted) grid, else None.

    ``extended`` counts the extensions done per side ``{"low": n, "high": n}``."""
    best = int(np.argmax(scores))
    if best == 0 and extended["low"] < max_extend:
        extended["low"] += 1
        return grid[0] / step
    if best == len(grid) - 1 and extended["high"] < max_extend:
        extended["high"] += 1
        return grid[-1] * step
    return None


def linear_fit(xs, ys):
    """``(a, b)`` of ``y = a + b x`` through measured points (least squares)."""
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(b)


def label(spec):
    name = {"bp": "BP", "fa": "FA", "hsic": "HSIC", "es": "ES", "aes": "AES", "lr": "LR", "alr": "ALR",
            "hybrid": "Hybrid", "a-hybrid": "A-Hybrid"}[spec["base"]]
    if spec.get("learn_sigma"):
        name += " +learned σ"
    if spec.get("es_sigma") is not None:
        name += f" +ES σ={spec['es_sigma']:g}"
    if spec["optimizer"] == "signsgd":
        name += " +signSGD"
    return name


# -- data and models ------------------------------------------------------------------------------
_DATA = {}


def get_data(n, val_fraction, model_name):
    """MNIST-1D ``n`` samples: 80 % train (its last ``val_fraction`` held out for validation), 20 % test."""
    key = (n, val_fraction, model_name)
    if key not in _DATA:
        import minilr

        (x, y), (xt, yt) = minilr.datasets.mnist1d(n=n)
        if model_name != "mlp":
            x, xt = x[:, None], xt[:, None]
        cut = int(round(len(y) * (1 - val_fraction)))
        _DATA[key] = (x[:cut], y[:cut]), (x[cut:], y[cut:]), (xt, yt)
    return _DATA[key]


def build(a, spec, seed):
    import minilr

    ls = bool(spec.get("learn_sigma"))
    if a["model"] == "cnn":
        model = minilr.cnn((1, 40), width=a["width"], sigma=a["sigma"], seed=seed, learn_sigma=ls)
    elif a["model"] == "resnet5":
        model = minilr.resnet5((1, 40), width=a["width"], sigma=a["sigma"], seed=seed, learn_sigma=ls)
    else:
        model = minilr.MLP([40, a["width"], a["width"], 10], sigma=a["sigma"], seed=seed, learn_sigma=ls)
    if spec.get("es_sigma") is not None:  # the hybrid's ES sites only (the first es_layers sites)
        for prefix, layer, name in model.noise_sites()[:a["es_layers"]]:
            old = getattr(layer, name + "sigma")
            setattr(layer, name + "sigma", np.full_like(old, spec["es_sigma"]))
    return model


def hybrid_layout(a):
    """Which sites the hybrids perturb by ES and with what sigma (for the report)."""
    model = build(a, {"base": "hybrid", "optimizer": "adam"}, 0)
    sites = [(p + n).rstrip(".") for p, _, n in model.noise_sites()]
    return {"es_sites": sites[:a["es_layers"]], "lr_sites": sites[a["es_layers"]:]}


# -- one training run (in a worker process) ---------------------------------------------------------
def _init_worker():
    os.environ["MINILR_NOISE_THREADS"] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def run_job(job):
    """Train one (method, copies, lr, seed); return its curves, test accuracy, times, diagnostics."""
    import minilr
    from minilr import hsic, reference
    from minilr.optim import make_optimizer

    a, spec = job["args"], job["spec"]
    w0, c0 = time.perf_counter(), time.process_time()
    train, val, test = get_data(a["n"], a["val_fraction"], a["model"])
    model = build(a, spec, job["seed"])
    val_acc, diverged = [], False

    def stop(epoch, history):
        val_acc[:] = history.val_accuracy
        if flattened(history.val_accuracy, a["patience"], a["min_delta"]):
            raise Flat

    base, opt_name = spec["base"], spec["optimizer"]
    try:
        if base == "hsic":
            h = hsic.train(model, train, val, epochs=a["epochs"], readout_epochs=a["hsic_readout_epochs"],
                           batch_size=a["batch"], optimizer=opt_name, lr=job["lr"], seed=job["seed"],
                           beta=a["hsic_beta"], width_factor=a["hsic_width"],
                           stop=lambda hist: flattened(hist.val_accuracy, a["patience"], a["min_delta"]))
            val_acc[:] = h.val_accuracy
        elif base == "fa":
            _train_fa(model, train, val, a, job, stop)
        else:
            minilr.train(model, train, val_data=val, estimator=base, copies=max(1, job["copies"]), epochs=a["epochs"],
                         batch_size=a["batch"], optimizer=opt_name, lr=job["lr"], seed=job["seed"],
                         es_layers=a["es_layers"] if "hybrid" in base else None, progress=False, callback=stop)
    except Flat:
        pass
    except (minilr.TrainingDiverged, FloatingPointError):
        diverged = True
    out = dict(job, val_accuracy=list(val_acc), epochs_run=len(val_acc), diverged=diverged,
               score=0.0 if diverged else score(val_acc),
               test_accuracy=float((model.predict(test[0]) == test[1]).mean()))
    out["wall_s"] = time.perf_counter() - w0
    out["cpu_s"] = time.process_time() - c0
    if job.get("diagnose") and not diverged:
        out["diagnostics"] = diagnose(model, train, a, spec)
    del out["args"]
    return out


def _train_fa(model, train, val, a, job, stop):
    """Feedback alignment with the same optimizer, batches and stopping rule as the rest."""
    from minilr import reference
    from minilr.optim import make_optimizer
    from minilr.train import History

    x, y = train
    fb = reference.feedback_matrices(model, seed=10_000 + job["seed"])
    opt = make_optimizer(job["spec"]["optimizer"], job["lr"])
    rng = np.random.default_rng(job["seed"])
    history = History(estimator="fa")
    for epoch in range(a["epochs"]):
        order = rng.permutation(len(x))
        for s in range(0, len(x), a["batch"]):
            idx = order[s:s + a["batch"]]
            g = reference.feedback_alignment(model, x[idx], y[idx], fb)
            params = model.parameters()
            opt.step(params, {k: v.astype(model.dtype) for k, v in g.items()})
            if not all(np.all(np.isfinite(p)) for p in params.values()):
                raise FloatingPointError("fa diverged")
        history.val_accuracy.append(float((model.predict(val[0]) == val[1]).mean()))
        stop(epoch, history)


def diagnose(model, train, a, spec):
    """Per-layer cosines to the exact gradient at each of ``diag_copies``, and Acc./Sta. (Eq. 7-8)."""
    import minilr
    from minilr import metrics, reference

    x, y = train[0][:a["diag_batch"]], train[1][:a["diag_batch"]]
    g_true = reference.gradient(model, x, y)
    base = spec["base"]
    if base == "fa":
        fb = reference.feedback_matrices(model, seed=10_000)
        g = reference.feedback_alignment(model, x, y, fb)
        return {"cosine": metrics.cosine_similarity(g, g_true),
                "per_layer": {str(k): v for k, v in metrics.cosine_similarity(g, g_true, per_layer=True).items()}}
    if base not in ESTIMATORS:
        return None
    ks, overall, layers = a["diag_copies"], [], {}
    for k in ks:
        g = minilr.estimate_gradient(model, x, y, estimator=base, copies=k, seed=123,
                                     es_layers=a["es_layers"] if "hybrid" in base else None)
        overall.append(metrics.cosine_similarity(g, g_true))
        for layer, c in metrics.cosine_similarity(g, g_true, per_layer=True).items():
            layers.setdefault(str(layer), []).append(c)
    acc, sta = metrics.acc_sta(ks, overall) if len(ks) >= 2 else (overall[0], float("nan"))
    return {"copies": list(ks), "cosine": overall, "per_layer": layers, "acc": acc, "sta": sta,
            "per_layer_acc_sta": {l: metrics.acc_sta(ks, c) for l, c in layers.items()} if len(ks) >= 2 else {}}


# -- measurements in the main process: memory and step time vs copies ------------------------------
def peak_bytes(a, estimator, copies):
    """tracemalloc peak of one gradient estimate (all copies in one chunk) on a training batch."""
    import minilr

    train, _, _ = get_data(a["n"], a["val_fraction"], a["model"])
    model = build(a, {"base": estimator, "optimizer": "adam"}, 0)
    x, y = train[0][:a["batch"]], train[1][:a["batch"]]
    kw = dict(estimator=estimator, es_layers=a["es_layers"] if "hybrid" in estimator else None)
    minilr.estimate_gradient(model, x, y, copies=2, **kw)  # compile and warm the engine first
    tracemalloc.start()
    minilr.estimate_gradient(model, x, y, copies=copies, **kw)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def record_ratio(a, estimator):
    """Per-copy bytes of the float variant over the sign variant by ``minilr.memory.record_bytes``."""
    try:
        from minilr import memory
        from minilr.backend import seed_sequence
        from minilr.estimators import ESTIMATORS as EST, Plan, Settings

        train, _, _ = get_data(a["n"], a["val_fraction"], a["model"])
        model = build(a, {"base": estimator, "optimizer": "adam"}, 0)
        x = train[0][:a["batch"]]
        per = []
        for e in (estimator, SIGN_OF[estimator]):
            s = Settings(e, 8, "cross_entropy", True, False, None, a["es_layers"] if "hybrid" in e else None)
            plan = Plan.make(model, x, s, seed_sequence(0), EST[e])
            per.append(memory.record_bytes(plan, len(x), 16) - memory.record_bytes(plan, len(x), 8))
        return per[0] / max(per[1], 1)
    except Exception as exc:  # an internal API: report, never fail the run for it
        return f"unavailable ({type(exc).__name__}: {exc})"


def step_seconds(a, estimator, copies, repeats=5):
    """Seconds of one training step on one thread: the fastest of ``repeats`` after a warm-up step
    (the minimum, as other processes on a shared machine only ever add time)."""
    import minilr

    train, _, _ = get_data(a["n"], a["val_fraction"], a["model"])
    model = build(a, {"base": estimator, "optimizer": "adam"}, 0)
    x, y = train[0][:a["batch"]], train[1][:a["batch"]]
    kw = dict(estimator=estimator, copies=copies, batch_size=a["batch"], epochs=1, progress=False,
              es_layers=a["es_layers"] if "hybrid" in estimator else None)
    minilr.train(model, (x, y), **kw)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        minilr.train(model, (x, y), **kw)
        times.append(time.perf_counter() - t0)
    return float(np.min(times))


def measure(a):
    """Memory fits (sign variants at equal memory) and step-time fits (equal wall time)."""
    from threadpoolctl import threadpool_limits

    k1, k2 = a["fit_copies"]
    out = {"memory": {}, "time": {}}
    saved = os.environ.get("MINILR_NOISE_THREADS")
    os.environ["MINILR_NOISE_THREADS"] = "1"  # as in the workers; put back below (main() may be a test's call)
    try:
        with threadpool_limits(1):
            return _measure(a, k1, k2, out)
    finally:
        if saved is None:
            del os.environ["MINILR_NOISE_THREADS"]
        else:
            os.environ["MINILR_NOISE_THREADS"] = saved


def measure_once(a):
    """:func:`measure`, kept beside the runs log: a resumed grid reuses the measured copies (timings
    vary from run to run, and the copies they give name the cells whose runs are logged)."""
    path = a["runs_log"] + ".measurements.json" if a.get("runs_log") else None
    if path and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved["settings"] == settings_id(a) and saved["fit_copies"] == a["fit_copies"]:
            return saved["measurements"]
    meas = measure(a)
    if path:
        with open(path, "w") as f:
            json.dump({"settings": settings_id(a), "fit_copies": a["fit_copies"], "measurements": meas}, f,
                      default=float)
        with open(path) as f:  # the same types (tuples become lists) as when read back
            meas = json.load(f)["measurements"]
    return meas


def _measure(a, k1, k2, out):
    """The measurements of :func:`measure`, on one thread."""
    out["memory"] = memory_fit(a, k1, k2)
    timed = [e for e in ESTIMATORS if e in a["methods"] or e == "lr"] + ["bp"]
    for e in timed:
        ts = [step_seconds(a, e, k) for k in (k1, k2)]
        out["time"][e] = dict(points=list(zip((k1, k2), ts)), fit=linear_fit((k1, k2), ts))
    target = sum(c * a["copies"] ** i for i, c in enumerate(out["time"]["lr"]["fit"]))
    for e in timed[:-1]:
        ae, be = out["time"][e]["fit"]
        k = (target - ae) / be if be > 0 else a["copies"]
        out["time"][e]["copies"] = int(min(max(2, round(k)), 64 * a["copies"]))
    return out


def memory_fit(a, k1, k2):
    """``{sign variant: fit}`` for each sign variant in ``a["methods"]``: the tracemalloc peaks of
    one estimate at ``k1`` and ``k2`` copies of it and of its float variant, each fitted ``a + b K``,
    and the sign variant's copies within the float variant's peak at ``a["copies"]``."""
    out = {}
    for f, s in SIGN_OF.items():
        if s not in a["methods"]:
            continue
        pf = [peak_bytes(a, f, k) for k in (k1, k2)]
        ps = [peak_bytes(a, s, k) for k in (k1, k2)]
        (af, bf), (as_, bs) = linear_fit((k1, k2), pf), linear_fit((k1, k2), ps)
        budget = af + bf * a["copies"]
        k_mem = int(max(1, (budget - as_) // max(bs, 1.0)))
        out[s] = dict(float_peaks=pf, sign_peaks=ps, float_fit=(af, bf), sign_fit=(as_, bs),
                      budget_bytes=budget, copies=k_mem, copies_ratio=k_mem / a["copies"],
                      per_copy_ratio=bf / max(bs, 1.0), record_bytes_ratio=record_ratio(a, f))
    return out


# -- the grid -------------------------------------------------------------------------------------
def specs(a):
    bases = a["methods"]
    out = [{"base": b, "optimizer": o} for b in bases for o in ("adam", "signsgd")]
    if a["learned_sigma"]:
        out += [{"base": b, "optimizer": "adam", "learn_sigma": True}
                for b in ("lr", "alr", "hybrid", "a-hybrid") if b in bases]
    if a["hybrid_es_sigma"] is not None:
        out += [{"base": b, "optimizer": "adam", "es_sigma": a["hybrid_es_sigma"]}
                for b in ("hybrid", "a-hybrid") if b in bases]
    return out


def cells(a, meas):
    """``{column: [(spec, copies)]}``: what each column of the table runs."""
    cols = {"copies": [(s, a["copies"]) for s in specs(a)], "memory": [], "time": []}
    for s in specs(a):
        plain = not s.get("learn_sigma") and s.get("es_sigma") is None  # the options' rows stay at K
        if s["base"] in meas["memory"] and plain and (s["optimizer"] == "adam" or a["memory_signsgd"]):
            cols["memory"].append((s, meas["memory"][s["base"]]["copies"]))
        else:  # the float variants' budget, and the rows with no copies, as at equal copies
            cols["memory"].append((s, a["copies"]))
        if s["base"] in ESTIMATORS and plain and (s["optimizer"] == "adam" or a["time_signsgd"]):
            cols["time"].append((s, meas["time"][s["base"]]["copies"]))
        else:
            cols["time"].append((s, a["copies"]))
    return cols


def key(spec, copies):
    copies = copies if spec["base"] in ESTIMATORS else 0  # BP, FA, HSIC: no copies
    return json.dumps([spec, copies], sort_keys=True)


def run_grid(a, meas, pool, log):
    """Tune each (method, copies) on seed 0 with bracketing, then run the other seeds.

    Every finished run is appended to ``a["runs_log"]`` (JSON lines); a run already there (same
    settings, method, copies, step size and seed) is read back instead of run again, so an
    interrupted grid resumes where it stopped. Jobs are submitted longest first."""
    done_before = load_runs(a)
    todo = {}
    for col in cells(a, meas).values():
        for spec, copies in col:
            todo.setdefault(key(spec, copies), (spec, copies if spec["base"] in ESTIMATORS else 0))
    tune = {}
    for k, (spec, copies) in todo.items():
        grid = list(a["sign_grid"] if spec["optimizer"] == "signsgd" else a["grid"])
        tune[k] = dict(grid=sorted(grid), runs={}, extended={"low": 0, "high": 0})
    runs = []

    def submit(k, lr, seed, diagnose):
        spec, copies = todo[k]
        found = done_before.get(run_id(k, lr, seed))
        if found is not None:
            return _Done(found)
        job = dict(args=a, spec=spec, copies=copies, lr=lr, seed=seed, key=k, diagnose=diagnose)
        future = pool.submit(run_job, job)
        future.add_done_callback(lambda f: append_run(a, f))
        return future

    def longest_first(k):
        return -job_cost(a, meas, *todo[k])

    pending = {(k, lr): submit(k, lr, 0, True) for k in sorted(tune, key=longest_first) for lr in tune[k]["grid"]}
    while pending:
        done = {kl: f.result() for kl, f in pending.items()}
        pending = {}
        for (k, lr), r in done.items():
            tune[k]["runs"][lr] = r
            runs.append(r)
            log(f"  tune {label(r['spec']):28s} K={r['copies']:<5d} lr {lr:<8.2g} val {r['score']:.3f}"
                f"{' diverged' if r['diverged'] else ''} ({r['epochs_run']} ep, {r['wall_s']:.1f} s)")
        for k, t in tune.items():
            if any(lr not in t["runs"] for lr in t["grid"]):
                continue
            new = next_grid_value(t["grid"], [t["runs"][lr]["score"] for lr in t["grid"]], a["grid_step"],
                                  t["extended"], a["max_extend"])
            if new is not None and not any(kk == k for kk, _ in pending):
                t["grid"] = sorted(t["grid"] + [new])
                pending[(k, new)] = submit(k, new, 0, True)
    for k, t in tune.items():
        scores = [t["runs"][lr]["score"] for lr in t["grid"]]
        best = int(np.argmax(scores))
        t["lr"] = t["grid"][best]
        t["edge"] = best in (0, len(t["grid"]) - 1)
    futures = [(k, submit(k, tune[k]["lr"], seed, False)) for k in sorted(tune, key=longest_first)
               for seed in range(1, a["seeds"])]
    final = {k: [t["runs"][t["lr"]]] for k, t in tune.items()}
    for k, f in futures:
        r = f.result()
        final[k].append(r)
        runs.append(r)
        log(f"  seed {r['seed']} {label(r['spec']):28s} K={r['copies']:<5d} test {r['test_accuracy']:.3f}")
    return tune, final, runs


class _Done:
    """A run read back from the runs log, standing in for a future."""

    def __init__(self, result):
        self._result = result

    def result(self):
        return self._result


def run_id(k, lr, seed):
    return json.dumps([k, float(lr), int(seed)])


def settings_id(a):
    """What must match for a logged run to be reused: every argument that changes a run's result."""
    ignore = {"jobs", "out", "md", "fig", "runs_log", "plan", "report", "smoke", "seeds", "grid", "sign_grid",
              "max_extend", "grid_step", "methods", "learned_sigma", "hybrid_es_sigma", "memory_signsgd",
              "time_signsgd", "fit_copies"}
    return json.dumps({k: v for k, v in a.items() if k not in ignore}, sort_keys=True, default=float)


def load_runs(a):
    """``{run_id: result}`` of the runs logged with the same settings (empty without a log)."""
    path, out = a.get("runs_log"), {}
    if not path or not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if rec.get("settings") == settings_id(a):
                r = rec["result"]
                out[run_id(r["key"], r["lr"], r["seed"])] = r
    return out


def append_run(a, future):
    if a.get("runs_log") and future.exception() is None:
        with open(a["runs_log"], "a") as f:
            f.write(json.dumps({"settings": settings_id(a), "result": future.result()}, default=float) + "\n")


def job_cost(a, meas, spec, copies):
    """Projected seconds of one run at the epoch cap, from the measured step times."""
    steps = math.ceil(get_data(a["n"], a["val_fraction"], a["model"])[0][1].size / a["batch"]) * a["epochs"]
    base = spec["base"] if spec["base"] in meas["time"] else "bp"
    ta, tb = meas["time"][base]["fit"]
    per_step = ta + tb * copies if base in ESTIMATORS else ta + tb * meas["time"]["bp"]["points"][0][0]
    if spec["base"] in ("fa", "hsic"):
        per_step *= 2  # measured as BP's step; FA is one backward pass, HSIC adds its n x n kernels
    return steps * max(per_step, 1e-4)


# -- report ---------------------------------------------------------------------------------------
def summarise(a, meas, tune, final):
    table = {}
    for col, entries in cells(a, meas).items():
        rows = []
        for spec, copies in entries:
            k = key(spec, copies)
            rs = final.get(k)
            if not rs:  # --report on an unfinished grid: a cell with no run yet
                continue
            mean, half = t_interval([r["test_accuracy"] for r in rs])
            rows.append(dict(method=label(spec), spec=spec, copies=todo_copies(spec, copies), lr=tune[k]["lr"],
                             edge=tune[k]["edge"], grid=tune[k]["grid"], mean=mean, half=half, n=len(rs),
                             diverged=sum(r["diverged"] for r in rs),
                             epochs=[r["epochs_run"] for r in rs], seconds=float(np.mean([r["wall_s"] for r in rs])),
                             curves=[r["val_accuracy"] for r in rs], diagnostics=rs[0].get("diagnostics"), key=k))
        table[col] = rows
    return table


def from_log(a, meas):
    """``(tune, final, runs)`` rebuilt from the runs log (``--report``): each cell's step size is the
    best of its logged tuning runs (seed 0), its seeds the logged runs at that step size. An
    unfinished grid gives cells with fewer seeds (the table shows n) or none (left out)."""
    logged = list(load_runs(a).values())
    tune, final = {}, {}
    for col in cells(a, meas).values():
        for spec, copies in col:
            k = key(spec, copies)
            tuned = {r["lr"]: r for r in logged if r["key"] == k and r["seed"] == 0}
            if not tuned or k in tune:
                continue
            grid = sorted(tuned)
            best = grid[int(np.argmax([tuned[lr]["score"] for lr in grid]))]
            tune[k] = dict(grid=grid, runs=tuned, lr=best, edge=best in (grid[0], grid[-1]))
            final[k] = [tuned[best]] + sorted((r for r in logged if r["key"] == k and r["seed"] > 0
                                               and r["lr"] == best), key=lambda r: r["seed"])
    return tune, final, logged


def todo_copies(spec, copies):
    return copies if spec["base"] in ESTIMATORS else 0


def paper_shaped(a, table):
    """Markdown in the shape of the paper's Table 1: a row per method, "w/o A" (Adam), and "w A" in
    both readings (Eq. 3's sign variant at equal copies and at equal measured memory; the sign of
    the update, signSGD), then the paper's own two rows as columns."""
    def find(col, spec):
        for r in table.get(col, []):
            if r["spec"] == spec:
                return r
        return None

    def cell(r):
        if r is None:
            return "—"
        text = f"{100 * r['mean']:.1f} ± {100 * r['half']:.1f}" if r["n"] > 1 else f"{100 * r['mean']:.1f}"
        text += f" (n={r['n']})" if r["n"] < a["seeds"] else ""
        return text + (f" (K={r['copies']})" if r["copies"] not in (0, a["copies"]) else "")

    names = {"bp": "BP", "fa": "FA", "hsic": "HSIC", "es": "ES", "lr": "LR", "hybrid": "Hybrid"}
    L = ["| method | w/o A (Adam) | w A: Eq. 3, equal copies | w A: Eq. 3, equal memory | w A: signSGD | "
         "paper w/o A | paper w A |", "|---|---|---|---|---|---|---|"]
    for base, name in names.items():
        if base not in a["methods"]:
            continue
        sign = SIGN_OF.get(base)
        L.append(" | ".join([
            f"| {name}", cell(find("copies", {"base": base, "optimizer": "adam"})),
            cell(find("copies", {"base": sign, "optimizer": "adam"})) if sign else "—",
            cell(find("memory", {"base": sign, "optimizer": "adam"})) if sign else "—",
            cell(find("copies", {"base": base, "optimizer": "signsgd"})),
            f"{PAPER['w/o A'][name]}", f"{PAPER['w A'][name]} |"]))
    return "\n".join(L)


def markdown(a, meas, table, layout, timing):
    L = []
    L.append(f"MNIST-1D ({a['n']} samples: train / validation / test as 80 % x {1 - a['val_fraction']:g} / "
             f"80 % x {a['val_fraction']:g} / 20 %), model `{a['model']}` width {a['width']}, batch {a['batch']}, "
             f"sigma {a['sigma']}; epochs until flat (patience {a['patience']}, min delta {a['min_delta']}) "
             f"capped at {a['epochs']}; {a['seeds']} seeds; test accuracy %, mean ± 95 % t-interval.")
    L.append("")
    L.append(f"Hybrid: ES on {layout['es_sites']} (sigma {a['sigma']}"
             + (f", or {a['hybrid_es_sigma']} in the '+ES σ' rows" if a["hybrid_es_sigma"] is not None else "")
             + f"), LR on {layout['lr_sites']}.")
    L += ["", "### in the paper's shape (K = " + str(a["copies"]) + " unless stated)", "", paper_shaped(a, table)]
    titles = {"copies": f"equal copies (K = {a['copies']})",
              "memory": "equal memory (sign variants at the copies fitting the float variant's measured peak)",
              "time": "equal wall time (copies with LR's step time at K)"}
    for col, rows in table.items():
        L += ["", f"### {titles[col]}", "",
              "| method | test % | K | lr (grid) | epochs | s/run |", "|---|---|---|---|---|---|"]
        for r in rows:
            cell = f"{100 * r['mean']:.1f} ± {100 * r['half']:.1f}" if r["n"] > 1 else f"{100 * r['mean']:.1f}"
            cell += f" (n={r['n']})" if r["n"] < a["seeds"] else ""
            flags = (" edge" if r["edge"] else "") + (f" ({r['diverged']} diverged)" if r["diverged"] else "")
            L.append(f"| {r['method']} | {cell}{flags} | {r['copies'] or '—'} | {r['lr']:.2g} "
                     f"({', '.join(f'{g:.2g}' for g in r['grid'])}) | {', '.join(map(str, r['epochs']))} | "
                     f"{r['seconds']:.1f} |")
    L += ["", "Equal-memory fit (tracemalloc peak of one estimate, fitted a + b K at K = "
          f"{a['fit_copies'][0]} and {a['fit_copies'][1]}):", ""]
    for s, m in meas["memory"].items():
        L.append(f"* {s}: {m['copies']} copies fit the float variant's {m['budget_bytes'] / 2**20:.2f} MiB at "
                 f"K = {a['copies']} ({m['copies_ratio']:.1f}x); per-copy bytes ratio {m['per_copy_ratio']:.1f}x "
                 f"measured, {m['record_bytes_ratio'] if isinstance(m['record_bytes_ratio'], str) else format(m['record_bytes_ratio'], '.1f') + 'x'} by record_bytes")
    L += ["", "Equal-time copies: " + ", ".join(f"{e} {meas['time'][e]['copies']}" for e in ESTIMATORS
                                                if e in meas["time"]), ""]
    L += ["### gradient diagnostics of the seed-0 nets at equal copies (Eq. 7-8)", "",
          "| method | cosine at K = " + f"{a['diag_copies']}" + " | Acc. | Sta. | per-layer Acc. |", "|---|---|---|---|---|"]
    for r in table["copies"]:
        d = r["diagnostics"]
        if not d:
            continue
        if "acc" in d:
            L.append(f"| {r['method']} | {', '.join(f'{c:.2f}' for c in d['cosine'])} | {d['acc']:.2f} | "
                     f"{d['sta']:.3f} | " + ", ".join(f"{l}: {v[0]:.2f}" for l, v in d["per_layer_acc_sta"].items()) + " |")
        else:
            L.append(f"| {r['method']} | {d['cosine']:.2f} | | | "
                     + ", ".join(f"{l}: {v:.2f}" for l, v in d["per_layer"].items()) + " |")
    wall = "" if math.isnan(timing["wall_s"]) else f"Wall {timing['wall_s'] / 60:.1f} min, "
    L += ["", f"{wall}CPU {timing['cpu_s'] / 60:.1f} min with {a['jobs']} processes ({timing['runs']} training "
          f"runs{'; tables rebuilt from the runs log by --report' if a['report'] else ''})."]
    L += ["", "Paper (ResNet-9, CIFAR-100): " + "; ".join(f"{row}: " + ", ".join(f"{k} {v}" for k, v in d.items())
                                                       for row, d in PAPER.items())]
    return "\n".join(L)


def figure(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(6 * len(table), 4.5), squeeze=False)
    for ax, (col, rows) in zip(axes[0], table.items()):
        for r in rows:
            curves = [c for c in r["curves"] if c]
            if not curves:
                continue
            n = max(map(len, curves))  # seeds stop at different epochs: mean over those still running
            mean = [np.mean([c[i] for c in curves if len(c) > i]) for i in range(n)]
            spec = r["spec"]  # colour: the method; line: the variant
            ls = ("--" if spec["optimizer"] == "signsgd" else ":" if spec.get("learn_sigma")
                  else "-." if spec.get("es_sigma") is not None else "-")
            ax.plot(range(1, n + 1), mean, label=r["method"], lw=1.6 if ls == "-" else 1.1, ls=ls,
                    color=plt.cm.tab10(BASES.index(spec["base"]) % 10))
        ax.set_title(f"equal {col}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (mean over seeds)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plan(a, meas):
    """Job count and a projected CPU time from the measured step times (each run at the epoch cap:
    an upper bound, as runs stop when their validation curve flattens)."""
    todo = {}
    for col in cells(a, meas).values():
        for spec, copies in col:
            todo.setdefault(key(spec, copies), (spec, todo_copies(spec, copies)))
    runs, cpu = 0, 0.0
    for spec, copies in todo.values():
        n = len(a["grid"]) + a["seeds"] - 1 + 1  # the grid, the other seeds, one extension on average
        runs += n
        cpu += n * job_cost(a, meas, spec, copies)
    return dict(cells=len(todo), runs=runs, cpu_hours_cap=cpu / 3600, wall_hours_cap=cpu / 3600 / a["jobs"])


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="the whole pipeline on tiny data (seconds)")
    p.add_argument("--plan", action="store_true", help="measure, print the job count and time projection, stop")
    p.add_argument("--report", action="store_true",
                   help="run nothing: the tables from the runs log (of a finished or unfinished grid)")
    p.add_argument("--model", default="cnn", choices=("cnn", "resnet5", "mlp"))
    p.add_argument("--width", type=int, default=25)
    p.add_argument("--n", type=int, default=5000, help="MNIST-1D samples (80 %% train+validation, 20 %% test)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--copies", type=int, default=20)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--es-layers", type=int, default=1)
    p.add_argument("--epochs", type=int, default=60, help="the cap")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--min-delta", type=float, default=0.005)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--grid", default="1e-3,3e-3,1e-2,3e-2", help="Adam step sizes")
    p.add_argument("--sign-grid", default="1e-4,3e-4,1e-3,3e-3", help="signSGD step sizes")
    p.add_argument("--grid-step", type=float, default=3.0)
    p.add_argument("--max-extend", type=int, default=2)
    p.add_argument("--methods", default=",".join(BASES), help="the rows (each also with signSGD)")
    p.add_argument("--memory-signsgd", action="store_true",
                   help="also run the signSGD rows of the sign variants at equal memory (else they "
                        "appear at K; the equal-memory runs at ~10-30x copies dominate the time)")
    p.add_argument("--time-signsgd", action="store_true",
                   help="also run the signSGD rows at equal wall time (else they appear at K)")
    p.add_argument("--runs-log", default="benchmarks/table1_fair_runs.jsonl",
                   help="every finished run is appended here; a rerun with the same settings reuses them")
    p.add_argument("--learned-sigma", action="store_true")
    p.add_argument("--hybrid-es-sigma", type=float, default=None)
    p.add_argument("--hsic-readout-epochs", type=int, default=5)
    p.add_argument("--hsic-beta", type=float, default=0.01, help="J = HSIC(Z, Y) - beta HSIC(Z, X)")
    p.add_argument("--hsic-width", type=float, default=5.0, help="kernel width = this x sqrt(dimension)")
    p.add_argument("--fit-copies", default="8,64", help="two copy counts for the memory and time fits")
    p.add_argument("--diag-copies", default="10,20,40,80")
    p.add_argument("--diag-batch", type=int, default=100)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="benchmarks/table1_fair.json")
    p.add_argument("--md", default="benchmarks/table1_fair.md")
    p.add_argument("--fig", default="benchmarks/table1_fair.png")
    ns = p.parse_args(argv)
    if ns.smoke:
        ns.n, ns.width, ns.copies, ns.batch, ns.epochs, ns.patience = 200, 3, 4, 40, 2, 1
        ns.seeds, ns.grid, ns.sign_grid, ns.max_extend = 2, "3e-3,1e-2,3e-2", "3e-4,1e-3,3e-3", 1
        ns.fit_copies, ns.diag_copies, ns.diag_batch, ns.hsic_readout_epochs = "2,4", "2,4", 20, 1
        ns.learned_sigma, ns.hybrid_es_sigma = True, 0.03 if ns.hybrid_es_sigma is None else ns.hybrid_es_sigma
    a = vars(ns)
    a["methods"] = [m for m in ns.methods.split(",") if m]
    if not a["methods"] or any(m not in BASES for m in a["methods"]):
        p.error(f"--methods takes a comma list of {', '.join(BASES)}")
    a["grid"] = [float(v) for v in ns.grid.split(",")]
    a["sign_grid"] = [float(v) for v in ns.sign_grid.split(",")]
    a["fit_copies"] = [int(v) for v in ns.fit_copies.split(",")]
    a["diag_copies"] = [int(v) for v in ns.diag_copies.split(",")]
    if len(a["fit_copies"]) != 2 or len(a["grid"]) < 3 or len(a["sign_grid"]) < 3:
        p.error("--fit-copies takes two values; each grid at least three (a bracket)")
    return a


def main(argv=None):
    a = parse(argv)
    w0, c0 = time.perf_counter(), time.process_time()
    log = lambda s: print(s, flush=True)  # noqa: E731
    meas = measure_once(a)
    for s, m in meas["memory"].items():
        log(f"equal memory: {s} fits K={m['copies']} ({m['copies_ratio']:.1f}x K={a['copies']}; per copy "
            f"bytes ratio float/sign {m['per_copy_ratio']:.1f})")
    log("equal time: " + ", ".join(f"{e} K={meas['time'][e]['copies']}" for e in ESTIMATORS if e in meas["time"]))
    p = plan(a, meas)
    log(f"plan: {p['cells']} (method, copies) cells, about {p['runs']} runs; at the epoch cap "
        f"{p['cpu_hours_cap']:.2f} CPU hours = {p['wall_hours_cap']:.2f} h wall on {a['jobs']} processes "
        f"(runs stopping at a flat curve take less)")
    if a["plan"]:
        return dict(plan=p, measurements=meas)
    if a["report"]:
        tune, final, runs = from_log(a, meas)
    else:
        with ProcessPoolExecutor(max_workers=a["jobs"], mp_context=multiprocessing.get_context("fork"),
                                 initializer=_init_worker) as pool:
            tune, final, runs = run_grid(a, meas, pool, log)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    timing = dict(wall_s=time.perf_counter() - w0,
                  cpu_s=time.process_time() - c0 + children.ru_utime + children.ru_stime,
                  cpu_runs_s=float(sum(r["cpu_s"] for r in runs)), runs=len(runs))
    if a["report"]:  # this process ran nothing: only the runs' own CPU time is known
        timing.update(wall_s=float("nan"), cpu_s=timing["cpu_runs_s"])
    table = summarise(a, meas, tune, final)
    layout = hybrid_layout(a)
    md = markdown(a, meas, table, layout, timing)
    log("")
    log(md)
    if a["md"]:
        with open(a["md"], "w") as f:
            f.write("# Table 1, fairly (benchmarks/table1_fair.py)\n\n```\npython benchmarks/table1_fair.py "
                    + " ".join(argv if argv is not None else sys.argv[1:]) + "\n```\n\n" + md + "\n")
    if a["fig"]:
        figure(table, a["fig"])
    result = dict(args=a, measurements=meas, plan=p, hybrid=layout, timing=timing,
                  table={c: [{k: v for k, v in r.items() if k != "spec"} | {"spec": r["spec"]} for r in rows]
                         for c, rows in table.items()},
                  tuning={k: dict(grid=t["grid"], lr=t["lr"], edge=t["edge"],
                                  scores={str(lr): r["score"] for lr, r in t["runs"].items()}) for k, t in tune.items()})
    if a["out"]:
        with open(a["out"], "w") as f:
            json.dump(result, f, indent=1, default=float)
    return result


if __name__ == "__main__":
    main()
