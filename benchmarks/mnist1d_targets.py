"""Issue 8's accuracy targets, one named run each (the settings quoted in benchmarks/TABLE1.md).

    PYTHONPATH=. python benchmarks/mnist1d_targets.py --run lr-cnn --seeds 0,1
    PYTHONPATH=. python benchmarks/mnist1d_targets.py --run all --seeds 0

Runs (Adam, sigma 0.1, test accuracy after the last epoch, wall and CPU seconds):

* ``lr-cnn``: ``minilr.cnn()`` on MNIST-1D by LR, 200 copies, batch 100, 50 epochs, lr 3e-3
* ``alr-cnn``: the same by ALR
* ``bp-cnn``: the same CNN by the exact gradient, batch 100, 20 epochs, lr 1e-2
* ``lr-mlp``: MLP 40-100-100-10 by LR, 100 copies, batch 100, 40 epochs, lr 3e-3
* ``lr-digits-cnn``: a 2-D CNN on the 8x8 digits by LR, 200 antithetic copies, batch 20, 60 epochs,
  lr 1e-2 decayed as lr / (1 + step / 1000) (``schedule="robbins-monro"``)
* ``lr-cnn-10``: ``minilr.cnn()`` by LR, 20 copies, batch 100, 10 epochs (how long 10 epochs take)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

RUNS = {
    "lr-cnn": dict(model="cnn", estimator="lr", copies=200, batch=100, epochs=50, lr=3e-3),
    "alr-cnn": dict(model="cnn", estimator="alr", copies=200, batch=100, epochs=50, lr=3e-3),
    "bp-cnn": dict(model="cnn", estimator="bp", copies=1, batch=100, epochs=20, lr=1e-2),
    "lr-mlp": dict(model="mlp", estimator="lr", copies=100, batch=100, epochs=40, lr=3e-3),
    "lr-digits-cnn": dict(model="digits-cnn", estimator="lr", copies=200, batch=20, epochs=60, lr=1e-2,
                          antithetic=True, schedule="robbins-monro"),
    "lr-cnn-10": dict(model="cnn", estimator="lr", copies=20, batch=100, epochs=10, lr=3e-3),
}


def main(argv=None):
    import minilr
    from table1 import build, data

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="all", help=",".join(RUNS) + " or all")
    p.add_argument("--seeds", default="0")
    a = p.parse_args(argv)
    names = list(RUNS) if a.run == "all" else a.run.split(",")
    for name in names:
        cfg = RUNS[name]
        for seed in (int(s) for s in a.seeds.split(",")):
            model = build(cfg["model"], seed, 0.1)
            (x, y), (xt, yt) = data(cfg["model"])
            t0, c0 = time.perf_counter(), time.process_time()
            h = minilr.train(model, (x, y), (xt, yt), estimator=cfg["estimator"], copies=cfg["copies"],
                             epochs=cfg["epochs"], batch_size=cfg["batch"], lr=cfg["lr"], seed=seed,
                             antithetic=cfg.get("antithetic", False),
                             schedule=cfg.get("schedule", "constant"), progress=False)
            print(f"{name} seed {seed}: test accuracy {100 * h.val_accuracy[-1]:.1f} % "
                  f"(best epoch {100 * max(h.val_accuracy):.1f} %), {time.perf_counter() - t0:.0f} s wall, "
                  f"{time.process_time() - c0:.0f} s CPU; {cfg}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
