"""The paper's Fig. 3 setting on CIFAR-10: ResNet-5, batch 50, 200 copies, Adam lr 1e-3, a 7:2:1
train/validation/test split of the 60,000 images, every estimator. Meant for a GPU.

    python benchmarks/cifar_fig3.py --root ~/data/cifar10 --backend cupy --epochs 20
    python benchmarks/cifar_fig3.py --smoke        # CI: a tiny written CIFAR folder, 1 step each

``--root`` holds the CIFAR-10 batches (``cifar-10-batches-bin/`` or ``cifar-10-batches-py/``, or
the batches themselves; minilr downloads nothing). Before training, the runtime per epoch of each
estimator is measured (a few steps, timed after one warm-up step) and printed **first**; then each
estimator trains ``--epochs`` epochs, printing its validation accuracy per epoch and its test
accuracy after the last epoch. ``--out`` writes everything as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ESTIMATORS = ("bp", "lr", "alr", "es", "aes", "hybrid", "a-hybrid")


def write_tiny_cifar(folder, n=8, seed=0):
    """A CIFAR-10 binary folder with ``n`` random images per batch (for the smoke run)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, (n, 1)).astype(np.uint8)
        pixels = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        with open(os.path.join(folder, name + ".bin"), "wb") as f:
            f.write(np.concatenate([labels, pixels], axis=1).tobytes())
    return folder


def split_721(root, seed):
    """All 60,000 images (train and test batches) shuffled and cut 7:2:1, as the paper does."""
    import minilr

    (x, y), (xt, yt) = minilr.datasets.load("cifar10", root=root, images=True)
    x, y = np.concatenate([x, xt]), np.concatenate([y, yt])
    order = np.random.default_rng(seed).permutation(len(y))
    a, b = int(0.7 * len(y)), int(0.9 * len(y))
    return [(x[order[s]], y[order[s]]) for s in (slice(0, a), slice(a, b), slice(b, None))]


def time_steps(make_model, estimator, data, a, steps):
    """Seconds per training step (after one warm-up step: JIT compiles, CUDA kernels load)."""
    import minilr

    x, y = data
    model = make_model()
    n = a.batch * (steps + 1)
    kw = dict(estimator=estimator, copies=a.copies, batch_size=a.batch, lr=a.lr, backend=a.backend,
              progress=False, chunk=a.chunk)
    minilr.train(model, (x[:a.batch], y[:a.batch]), epochs=1, **kw)
    t0 = time.perf_counter()
    minilr.train(model, (x[a.batch:n], y[a.batch:n]), epochs=1, **kw)
    return (time.perf_counter() - t0) / max(1, min(steps, (len(x) - a.batch) // a.batch))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="folder with the CIFAR-10 batches")
    p.add_argument("--smoke", action="store_true", help="a tiny written CIFAR folder, 1 step per estimator")
    p.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    p.add_argument("--estimators", default=",".join(ESTIMATORS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--copies", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=16, help="ResNet-5 channels (minilr.resnet5 width)")
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--chunk", type=int, default=None, help="copies per chunk (memory)")
    p.add_argument("--timing-steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    import minilr

    tmp = None
    if a.smoke:
        a.batch, a.copies, a.width, a.epochs, a.timing_steps = 4, 4, 4, 1, 1
        if a.root is None:
            tmp = tempfile.TemporaryDirectory()
            a.root = write_tiny_cifar(os.path.join(tmp.name, "cifar-10-batches-bin"))
    estimators = [e for e in a.estimators.split(",") if e]
    for e in estimators:
        if e not in ESTIMATORS:
            p.error(f"unknown estimator {e!r}; choose from {', '.join(ESTIMATORS)}")
    train, val, test = split_721(a.root, a.seed)
    if a.smoke:  # one step: the training set is one batch
        train = (train[0][:a.batch], train[1][:a.batch])

    def make_model():
        return minilr.resnet5((3, 32, 32), width=a.width, sigma=a.sigma, seed=a.seed)

    steps_per_epoch = -(-len(train[1]) // a.batch)
    print(f"ResNet-5 (width {a.width}) on CIFAR-10 {a.root}: {len(train[1])}/{len(val[1])}/{len(test[1])} "
          f"train/val/test, batch {a.batch}, K={a.copies}, Adam lr {a.lr}, backend {a.backend}", flush=True)
    timing = {}
    for e in estimators:
        sec = time_steps(make_model, e, train if not a.smoke else (val[0], val[1]), a, a.timing_steps)
        timing[e] = sec * steps_per_epoch
        print(f"runtime per epoch  {e:9s} {timing[e]:10.1f} s  ({sec * 1e3:.0f} ms/step x {steps_per_epoch} steps)",
              flush=True)
    results = {}
    for e in estimators:
        model = make_model()
        t0 = time.perf_counter()
        h = minilr.train(model, train, val_data=val, estimator=e, copies=a.copies, epochs=a.epochs,
                         batch_size=a.batch, lr=a.lr, backend=a.backend, seed=a.seed, progress=False,
                         chunk=a.chunk)
        test_acc = float((model.predict(test[0], backend=a.backend) == test[1]).mean())
        results[e] = dict(val_accuracy=h.val_accuracy, epoch_seconds=h.seconds, test_accuracy=test_acc,
                          wall_s=time.perf_counter() - t0)
        print(f"{e:9s} val " + " ".join(f"{v:.3f}" for v in h.val_accuracy)
              + f"  test {test_acc:.3f}  ({results[e]['wall_s']:.1f} s)", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(args=vars(a), runtime_per_epoch_s=timing, results=results), f, indent=1)
    if tmp is not None:
        tmp.cleanup()
    return results


if __name__ == "__main__":
    main()
