"""ResNet-5: one LR / ALR estimate against PyTorch's forward + backward of the same net on K x B rows.

    python benchmarks/resnet_step.py [--rounds 3] [--shapes 1x40 3x32x32]

Issue 13's targets, measured side by side in one run, one thread each (``MINILR_NOISE_THREADS=1``,
BLAS and PyTorch at one thread), every measurement in a fresh process, sides alternating round by
round: the LR step's time over PyTorch's (PyTorch does all of LR's work and more: LR needs no input
gradients), ALR's time over LR's, and the peak memory (tracemalloc) of one LR and one ALR estimate.
Settings: (1, 40) with K=50, B=50; (3, 32, 32) with K=20, B=10 (the issue's).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SETTINGS = {"1x40": ((1, 40), 50, 50), "3x32x32": ((3, 32, 32), 20, 10)}
ONE_THREAD = {"MINILR_NOISE_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


def _problem(shape, B):
    import numpy as np

    import minilr

    model = minilr.resnet5(input_shape=shape, seed=0)
    rng = np.random.default_rng(0)
    return model, rng.standard_normal((B,) + shape).astype(np.float32), rng.integers(0, 10, B)


def minilr_case(shape, K, B, estimator, reps):
    """Best time of ``reps`` estimates on one held backend, and the peak traced memory of one."""
    import tracemalloc

    import minilr

    model, x, y = _problem(shape, B)
    bk = minilr.Backend("numpy")
    minilr.estimate_gradient(model, x, y, estimator=estimator, copies=K, backend=bk)  # compile, warm
    best = float("inf")
    for r in range(reps):
        t0 = time.perf_counter()
        minilr.estimate_gradient(model, x, y, estimator=estimator, copies=K, seed=r, backend=bk)
        best = min(best, time.perf_counter() - t0)
    bk.engine.release()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    minilr.estimate_gradient(model, x, y, estimator=estimator, copies=K, seed=0)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return {"seconds": best, "peak_bytes": peak}


def torch_case(shape, K, B, reps):
    """Best time of ``reps`` forward + backward passes of the same ResNet-5 on K B rows."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    model, x, y = _problem(shape, B)
    conv = torch.nn.functional.conv1d if len(shape) == 2 else torch.nn.functional.conv2d
    pool = torch.nn.functional.max_pool1d if len(shape) == 2 else torch.nn.functional.max_pool2d
    params = [torch.tensor(p, requires_grad=True) for p in model.parameters().values()]

    def net(h):
        it = iter(params)

        def block(h):
            h = conv(h, next(it), next(it), padding=1)
            return torch.relu(torch.nn.functional.group_norm(h, 1, eps=1e-5))

        h = pool(block(h), 2)
        r = torch.relu(torch.nn.functional.group_norm(conv(h, next(it), next(it), padding=1), 1, eps=1e-5))
        r = torch.nn.functional.group_norm(conv(r, next(it), next(it), padding=1), 1, eps=1e-5)
        h = torch.relu(h + r)
        h = pool(block(h), 2).flatten(2).mean(-1)
        return h @ next(it).T + next(it)

    xs = torch.tensor(np.broadcast_to(x[None], (K,) + x.shape).reshape((K * B,) + shape).copy())
    ys = torch.tensor(np.tile(y, K))
    best = float("inf")
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(xs), ys)
        loss.backward()
        best = min(best, time.perf_counter() - t0)
    return {"seconds": best}


def work(case, args):
    r = subprocess.run([sys.executable, __file__, "--worker", case, json.dumps(args)], capture_output=True,
                       text=True, cwd=ROOT, env=dict(os.environ, **ONE_THREAD))
    if r.returncode:
        raise RuntimeError(f"{case} {args} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--shapes", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--no-torch", action="store_true", help="minilr only")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        case, args = a.worker[0], json.loads(a.worker[1])
        args["shape"] = tuple(args["shape"])
        out = torch_case(**args) if case == "torch" else minilr_case(estimator=case, **args)
        print(json.dumps(out))
        return
    print("| input | K | B | minilr LR ms | PyTorch fwd+bwd ms | LR / PyTorch | ALR ms | ALR / LR time "
          "| LR peak MB | ALR peak MB | LR / ALR memory |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in a.shapes:
        shape, K, B = SETTINGS[name]
        args = dict(shape=shape, K=K, B=B, reps=a.reps)
        res = {"lr": [], "alr": [], "torch": []}
        for _ in range(a.rounds):
            for case in res:
                if case == "torch" and a.no_torch:
                    continue
                res[case].append(work(case, args))
        t = {c: sorted(r["seconds"] for r in v)[len(v) // 2] if v else float("nan") for c, v in res.items()}
        mem = {c: res[c][0]["peak_bytes"] for c in ("lr", "alr")}
        print(f"| {shape} | {K} | {B} | {1e3 * t['lr']:.1f} | {1e3 * t['torch']:.1f} | {t['lr'] / t['torch']:.2f} "
              f"| {1e3 * t['alr']:.1f} | {t['alr'] / t['lr']:.2f} | {mem['lr'] / 2**20:.1f} | {mem['alr'] / 2**20:.1f} "
              f"| {mem['lr'] / mem['alr']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
