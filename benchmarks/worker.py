"""One measurement in a fresh process; prints one JSON line. Called by run.py, alternating sides,
so no thread pool left spinning by one side slows the other.

    python benchmarks/worker.py TASK '{"json": "args"}'
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

SIZES = [784, 256, 256, 10]


def _median_time(f, reps, warm=2):
    for _ in range(warm):
        f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _data(B, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], B)


def minilr_step(est="lr", K=200, B=50, chunk=None, reps=10, backend="numpy", held=True):
    """One estimate's median time. ``held``: one Backend object for every step, as ``train`` does
    (its engine keeps the blocks of one step for the next); else a fresh one per call."""
    import minilr

    model = minilr.MLP(SIZES, seed=0)
    x, y = _data(B)
    seeds = iter(range(10**6))
    if held:
        backend = minilr.Backend(backend)
    f = lambda: minilr.estimate_gradient(model, x, y, estimator=est, copies=K, seed=next(seeds),
                                         chunk=chunk, backend=backend)
    return {"seconds": _median_time(f, reps)}


def bp_step(B=50, reps=20):
    import minilr

    model = minilr.MLP(SIZES, seed=0)
    x, y = _data(B)
    return {"seconds": _median_time(lambda: minilr.reference.gradient(model, x, y, loss="cross_entropy"), reps)}


def torch_step(K=200, B=50, reps=10, device="cpu"):
    """The LR step of minilr (Eq. 1-2, leave-one-out baseline), written plainly in PyTorch."""
    try:
        import torch
    except ImportError:
        return {"skipped": "torch is not installed (pip install torch): PyTorch comparison skipped"}
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": "torch sees no CUDA device"}
    import minilr

    model = minilr.MLP(SIZES, seed=0)
    Ws = [torch.tensor(model.layers[i].weight, device=device) for i in model.linear_indices]
    bs = [torch.tensor(model.layers[i].bias, device=device) for i in model.linear_indices]
    ss = [torch.tensor(model.layers[i].sigma, device=device) for i in model.linear_indices]
    xn, yn = _data(B)
    x, y = torch.tensor(xn, device=device), torch.tensor(yn, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        with torch.inference_mode():
            h, rec = x, []
            for l, (W, b, s) in enumerate(zip(Ws, bs, ss)):
                eps = torch.randn((K, B, W.shape[0]), generator=gen, device=device)
                v = h @ W.T + b + s * eps
                rec.append((h, eps))
                h = torch.relu(v) if l < len(Ws) - 1 else v
            L = torch.logsumexp(h, -1) - h.gather(-1, y.expand(K, B)[..., None])[..., 0]  # (K, B)
            Lc = L - (L.sum(0, keepdim=True) - L) / (K - 1)
            grads = []
            for (hin, eps), s in zip(rec, ss):
                w = Lc[..., None] * eps
                gW = (w.sum(0).T @ hin) if hin.dim() == 2 else w.reshape(-1, w.shape[-1]).T @ hin.reshape(-1, hin.shape[-1])
                grads.append((gW / s[:, None], w.sum((0, 1)) / s))
            if device == "cuda":
                torch.cuda.synchronize()
            return grads

    return {"seconds": _median_time(step, reps), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def peak_memory(est="lr", K=2000, B=10, chunk=None):
    """Peak traced bytes of one estimate (NumPy reports its buffers to tracemalloc)."""
    import tracemalloc

    import minilr

    model = minilr.MLP(SIZES, seed=0)
    x, y = _data(B)
    minilr.estimate_gradient(model, x, y, estimator=est, copies=16, seed=0)  # compile first
    tracemalloc.start()
    minilr.estimate_gradient(model, x, y, estimator=est, copies=K, seed=0, chunk=chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"bytes": peak}


def sgemm(n=2048, reps=5):
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    t = _median_time(lambda: a @ a, reps)
    return {"gflops": 2 * n**3 / t / 1e9}


def _threads():
    try:
        from minilr.engines.cpu.threads import threads
    except ImportError:  # minilr before the engines
        from minilr.noise import threads
    return threads()


def noise_rate(n=5_220_000, reps=5):
    from minilr import noise

    key = noise.key_from_seed(np.random.SeedSequence(0))
    out = np.empty(n, np.float32)
    ours = n / _median_time(lambda: noise.fill_normal(out, key), reps)
    g = np.random.Generator(np.random.SFC64(0))
    sfc = n / _median_time(lambda: g.standard_normal(n, dtype=np.float32, out=out), reps)
    return {"minilr": ours, "sfc64": sfc, "threads": _threads()}


def profile(est="lr", K=200, B=50):
    """Where a step's time goes (LR or ALR): cProfile's own-time table, top entries."""
    import cProfile
    import pstats

    import minilr

    model = minilr.MLP(SIZES, seed=0)
    x, y = _data(B)
    for s in range(3):
        minilr.estimate_gradient(model, x, y, estimator=est, copies=K, seed=s)
    pr = cProfile.Profile()
    pr.enable()
    for s in range(10):
        minilr.estimate_gradient(model, x, y, estimator=est, copies=K, seed=s)
    pr.disable()
    st = pstats.Stats(pr)
    rows = []
    for (fn, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
        rows.append((tt / 10, f"{os.path.basename(fn)}:{line}({name})"))
    rows.sort(reverse=True)
    return {"top": [(round(1e3 * t, 2), n) for t, n in rows[:8]]}


def cupy_step(est="lr", K=200, B=50, reps=10):
    import minilr

    if not minilr.cupy_available():
        return {"skipped": "CuPy with a GPU is not available"}
    import cupy

    out = minilr_step(est, K, B, None, reps, "cupy")
    cupy.cuda.Device().synchronize()
    return out


TASKS = {f.__name__: f for f in (minilr_step, bp_step, torch_step, peak_memory, sgemm, noise_rate,
                                 profile, cupy_step)}

if __name__ == "__main__":
    task, args = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    print(json.dumps(TASKS[task](**args)))
