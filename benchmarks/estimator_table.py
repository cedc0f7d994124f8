"""The numbers behind the estimator reference page (docs/estimators.rst): for each estimator, the
cosine to the exact gradient at equal copies and at equal measured memory, and its bytes per copy.

    PYTHONPATH=. python benchmarks/estimator_table.py            # about a minute on one core

Setting: Table 1's net (``minilr.cnn((1, 40), width=25)``, sigma 0.1, ``es_layers=1`` for the
hybrids) after 3 epochs of exact-gradient training on MNIST-1D (the independent re-run of issue 16
measured its cosines there), one training batch of 100. Cosines: overall and per layer, mean and
standard deviation over ``--seeds`` noise seeds. Equal memory: the copies of each sign variant whose
measured peak (tracemalloc, a + b K fitted at two copy counts: ``table1_fair.memory_fit``) equals the
float variant's at ``--copies``; bytes per copy is that fit's slope b. Writes
``benchmarks/estimator_table.json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import minilr  # noqa: E402
import table1_fair  # noqa: E402
from minilr import metrics, reference  # noqa: E402

ORDER = ("es", "aes", "lr", "alr", "hybrid", "a-hybrid")


def trained_net(a):
    """Table 1's net after ``--bp-epochs`` of exact-gradient training (Adam, lr 1e-2)."""
    train, _, _ = table1_fair.get_data(a["n"], a["val_fraction"], a["model"])
    model = table1_fair.build(a, {"base": "lr", "optimizer": "adam"}, 0)
    minilr.train(model, train, estimator="bp", epochs=a["bp_epochs"], batch_size=a["batch"], lr=1e-2,
                 optimizer="adam", seed=0, progress=False)
    return model, train


def cosines(model, x, y, estimator, copies, seeds, es_layers):
    g_true = reference.gradient(model, x, y)
    overall, layers = [], {}
    for s in range(seeds):
        g = minilr.estimate_gradient(model, x, y, estimator=estimator, copies=copies, seed=1000 + s,
                                     es_layers=es_layers if "hybrid" in estimator else None)
        overall.append(metrics.cosine_similarity(g, g_true))
        for layer, c in metrics.cosine_similarity(g, g_true, per_layer=True).items():
            layers.setdefault(str(layer), []).append(c)
    return dict(copies=copies, mean=float(np.mean(overall)), sd=float(np.std(overall, ddof=1)),
                per_layer={k: float(np.mean(v)) for k, v in layers.items()})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=20)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--bp-epochs", type=int, default=3)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "estimator_table.json"))
    ns = p.parse_args(argv)
    # Table 1's settings (its defaults): the same net, batch and memory fit
    a = table1_fair.parse(["--copies", str(ns.copies), "--runs-log", ""])
    a.update(bp_epochs=ns.bp_epochs)
    memory = table1_fair.memory_fit(a, *a["fit_copies"])
    model, train = trained_net(a)
    x, y = train[0][:a["batch"]], train[1][:a["batch"]]
    rows = {}
    for e in ORDER:
        at_copies = cosines(model, x, y, e, ns.copies, ns.seeds, a["es_layers"])
        row = dict(estimator=e, equal_copies=at_copies)
        if e in memory:
            m = memory[e]
            row["equal_memory"] = cosines(model, x, y, e, m["copies"], ns.seeds, a["es_layers"])
            row["bytes_per_copy"] = m["sign_fit"][1]
        else:  # a float variant: its own budget, and its bytes per copy from the same fit
            row["equal_memory"] = at_copies
            row["bytes_per_copy"] = memory[table1_fair.SIGN_OF[e]]["float_fit"][1]
        rows[e] = row
        print(f"{e:9s} K={ns.copies}: cosine {at_copies['mean']:.3f} ± {at_copies['sd']:.3f}; equal memory "
              f"K={row['equal_memory']['copies']}: {row['equal_memory']['mean']:.3f}; "
              f"{row.get('bytes_per_copy', float('nan')) / 1024:.1f} KiB per copy", flush=True)
    result = dict(settings={k: a[k] for k in ("model", "width", "sigma", "batch", "es_layers", "n")}
                  | dict(copies=ns.copies, seeds=ns.seeds, bp_epochs=ns.bp_epochs), rows=rows)
    with open(ns.out, "w") as f:
        json.dump(result, f, indent=1)
    print("\n| estimator | cosine, K = %d | cosine, equal memory (K) | KiB per copy |" % ns.copies)
    print("|---|---|---|---|")
    for e, r in rows.items():
        print(f"| {e} | {r['equal_copies']['mean']:.2f} ± {r['equal_copies']['sd']:.2f} | "
              f"{r['equal_memory']['mean']:.2f} ({r['equal_memory']['copies']}) | "
              f"{r.get('bytes_per_copy', float('nan')) / 1024:.1f} |")
    return result


if __name__ == "__main__":
    main()
