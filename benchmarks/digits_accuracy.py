"""Digits test accuracy and training time for every estimator (issue 2's table).

    python benchmarks/digits_accuracy.py            # MLP 64-64-10, 100 copies, 20 epochs, Adam
    python benchmarks/digits_accuracy.py --epochs 2 # quick look

Prints a markdown table and writes it to benchmarks/results/digits_accuracy.md.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np

import minilr


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--copies", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seeds", type=int, default=1, help="repeat with seeds 0..n-1 and report mean/min")
    p.add_argument("--estimators", default="lr,alr,es,aes,hybrid,a-hybrid,bp")
    args = p.parse_args()
    (x, y), (xt, yt) = minilr.datasets.load("digits")
    rows = []
    for est in args.estimators.split(","):
        accs, secs = [], []
        for seed in range(args.seeds):
            model = minilr.MLP([64, 64, 10], sigma=0.1, seed=seed)
            h = minilr.train(model, (x, y), val_data=(xt, yt), estimator=est, copies=args.copies,
                             epochs=args.epochs, batch_size=50, optimizer="adam", lr=args.lr,
                             seed=seed, progress=False)
            accs.append(h.val_accuracy[-1])
            secs.append(sum(h.seconds))
        rows.append((est, np.mean(accs), np.min(accs), np.mean(secs)))
        print(f"{est:9s} test acc {np.mean(accs):.4f} (min {np.min(accs):.4f})  {np.mean(secs):6.1f} s", flush=True)
    table = [f"Digits (1438 train / 359 test), MLP 64-64-10 ReLU, sigma 0.1, {args.copies} copies, "
             f"{args.epochs} epochs, batch 50, Adam lr {args.lr}, seeds 0..{args.seeds - 1}; "
             f"{platform.processor() or platform.machine()}, numpy {np.__version__}.", "",
             "| estimator | test accuracy (mean) | min over seeds | seconds (training) |",
             "| --- | --- | --- | --- |"]
    table += [f"| {e} | {a:.3f} | {m:.3f} | {s:.1f} |" for e, a, m, s in rows]
    out = Path(__file__).parent / "results" / "digits_accuracy.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
