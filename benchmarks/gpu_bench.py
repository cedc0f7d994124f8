"""GPU benchmark: minilr's CUDA engine (LR, ALR fp32 / fp16-split, ES, A-Hybrid, through
``minilr.estimate_gradient`` on a held ``Backend("cupy")``) against the same LR step written in
PyTorch-CUDA, side by side on one GPU, and the digits training job on CuPy vs NumPy.

    PYTHONPATH=. python benchmarks/gpu_bench.py [--quick] [--out benchmarks/RESULTS_GPU.md] [--rows FILE]

MLP 784-256-256-10, batch 50, one gradient estimate per step; K = 200, 2,000, 10,000 and 100,000
(chunks of 10,000 copies, both sides). Each figure is the median of 10 steps after 2 warm-up steps
(3 steps when one takes over half a second), timed with CUDA events on the stream. Peak GPU memory
is measured on one more step: CuPy through an allocator hook on its memory pool (the pool's bytes
in use, at each allocation), PyTorch by ``torch.cuda.max_memory_allocated``. PyTorch is imported
here only, never by the library. Beside the MLP: a ResNet-5 step (``minilr.resnet5``, input
(1, 40), B = 50) through ``minilr.estimate_gradient(..., backend="cupy")``, as a user calls it.

Every figure is written as soon as it is measured: one line per case appended to the ``--rows``
file (tab-separated, flushed), and the ``--out`` table rewritten after each K (marked partial
until the end), so a run cut short by a timeout keeps what it measured. Without a GPU it says so
and exits with status 2.
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIZES = [784, 256, 256, 10]
B = 50
CHUNK_BIG = 10_000
KS = [200, 2000, 10_000, 100_000]
QUICK_KS = [200, 2000]
RESNET_KS = [200, 2000]  # ResNet-5 steps (more work per copy than the MLP)
QUICK_RESNET_KS = [200]
RESNET_INPUT = (1, 40)


def _need_gpu():
    try:
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # ImportError, or no driver
        print(f"gpu_bench: no GPU here (CuPy: {type(exc).__name__}: {exc}); nothing to measure.")
        sys.exit(2)
    if n < 1:
        print("gpu_bench: CuPy sees no CUDA device; nothing to measure.")
        sys.exit(2)
    return cupy


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], B)


class _Peak:
    """Peak bytes in use in CuPy's default pool: sampled at every allocation (the only moments it
    can rise)."""

    def __init__(self, cupy):
        self.cupy, self.pool, self.peak = cupy, cupy.get_default_memory_pool(), 0

    def malloc(self, n):
        p = self.pool.malloc(n)
        self.peak = max(self.peak, self.pool.used_bytes())
        return p

    def measure(self, f):
        cp = self.cupy
        f()  # warm
        cp.cuda.Device().synchronize()
        base = self.pool.used_bytes()
        self.peak = base
        cp.cuda.set_allocator(self.malloc)
        try:
            f()
            cp.cuda.Device().synchronize()
        finally:
            cp.cuda.set_allocator(self.pool.malloc)
        return self.peak - base


def _event_median(cupy, f, reps=10, warm=2):
    for _ in range(warm):
        f()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    ts = []
    while len(ts) < reps:
        start.record()
        f()
        end.record()
        end.synchronize()
        ts.append(cupy.cuda.get_elapsed_time(start, end))
        if ts[0] > 500:  # a slow case: 3 steps are enough (and keep the check under 5 minutes)
            reps = min(reps, 3)
    return statistics.median(ts)


def minilr_case(cupy, est, K, precision="fp32"):
    """(ms, peak MB, launches per estimate) of ``minilr.estimate_gradient(..., backend=bk)`` on a held
    ``minilr.Backend("cupy")``: the CUDA engine's sites, ALR's product in ``precision``."""
    import minilr
    from minilr.engines.cuda import CUDAEngine

    model = minilr.MLP(SIZES, seed=0)
    x, y = _data()
    bk = minilr.Backend("cupy")
    bk.engine = CUDAEngine(cupy, precision=precision)
    chunk = CHUNK_BIG if K > CHUNK_BIG else None
    seeds = itertools.count()

    def step():
        minilr.estimate_gradient(model, x, y, estimator=est, copies=K, seed=next(seeds), chunk=chunk, backend=bk)

    ms = _event_median(cupy, step)
    mb = _Peak(cupy).measure(step) / 2**20
    return ms, mb, bk.engine.launches


def library_case(cupy, est, K):
    """``minilr.estimate_gradient(backend="cupy")`` as a user calls it (ms), or the error it raises."""
    import minilr

    model = minilr.MLP(SIZES, seed=0)
    x, y = _data()
    seeds = itertools.count()
    try:
        return _event_median(cupy, lambda: minilr.estimate_gradient(
            model, x, y, estimator=est, copies=K, seed=next(seeds), backend="cupy"), reps=5, warm=1)
    except Exception as exc:  # reported in the table, not raised
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"


def resnet_case(cupy, est, K, backend="cupy"):
    """``minilr.estimate_gradient(minilr.resnet5(...), ..., backend=backend)`` (ms, median of 3 after
    a warm-up), or the error it raises, as a string."""
    import minilr

    model = minilr.resnet5(RESNET_INPUT, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B,) + RESNET_INPUT).astype(np.float32)
    y = rng.integers(0, 10, B)
    seeds = itertools.count()
    try:
        return _event_median(cupy, lambda: minilr.estimate_gradient(
            model, x, y, estimator=est, copies=K, seed=next(seeds), backend=backend), reps=3, warm=1)
    except Exception as exc:  # reported in the table, not raised
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"


class Rows:
    """The measurements as they come: one tab-separated line per case (what, K, value), appended,
    flushed and synced at once, so a timeout loses nothing already measured."""

    def __init__(self, path):
        self.path = path
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        self.fh = open(path, "a")
        if new:
            self.write("case", "K", "value")

    def write(self, what, K, value):
        v = value if isinstance(value, str) else "\t".join(_fmt(x) if isinstance(x, float) else str(x)
                                                            for x in (value if isinstance(value, tuple) else (value,)))
        self.fh.write(f"{what}\t{K}\t{v}\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self):
        self.fh.close()


def torch_case(K):
    """(ms, peak MB) of the LR step of benchmarks/worker.py (Eq. 1-2, leave-one-out baseline) in
    PyTorch-CUDA, in chunks of CHUNK_BIG copies beyond that; or a string saying why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    import minilr

    dev = "cuda"
    model = minilr.MLP(SIZES, seed=0)
    Ws = [torch.tensor(model.layers[i].weight, device=dev) for i in model.linear_indices]
    bs = [torch.tensor(model.layers[i].bias, device=dev) for i in model.linear_indices]
    ss = [torch.tensor(model.layers[i].sigma, device=dev) for i in model.linear_indices]
    xn, yn = _data()
    x, y = torch.tensor(xn, device=dev), torch.tensor(yn, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    chunk = min(K, CHUNK_BIG)

    def part(Kc):
        h, rec = x, []
        for j, (W, b, s) in enumerate(zip(Ws, bs, ss)):
            eps = torch.randn((Kc, B, W.shape[0]), generator=gen, device=dev)
            v = h @ W.T + b + s * eps
            rec.append((h, eps))
            h = torch.relu(v) if j < len(Ws) - 1 else v
        L = torch.logsumexp(h, -1) - h.gather(-1, y.expand(Kc, B)[..., None])[..., 0]
        Lc = L - (L.sum(0, keepdim=True) - L) / (Kc - 1)
        out = []
        for (hin, eps), s in zip(rec, ss):
            w = Lc[..., None] * eps
            gW = (w.sum(0).T @ hin) if hin.dim() == 2 else \
                w.reshape(-1, w.shape[-1]).T @ hin.reshape(-1, hin.shape[-1])
            out.append((gW / s[:, None], w.sum((0, 1)) / s))
        return out

    def step():
        with torch.inference_mode():
            total = None
            for _ in range(0, K, chunk):
                g = part(chunk)
                total = g if total is None else [(a + c, b_ + d) for (a, b_), (c, d) in zip(total, g)]
            return total

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    ts = []
    reps = 10
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        step()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e))
        if len(ts) == 1 and ts[0] > 500:
            reps = 3
        if len(ts) >= reps:
            break
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    return statistics.median(ts), mb


def digits_job(backend, epochs=5):
    """Wall time of ``python -m minilr train --data digits --estimator alr --copies 100``."""
    cmd = [sys.executable, "-m", "minilr", "train", "--data", "digits", "--estimator", "alr",
           "--copies", "100", "--epochs", str(epochs), "--no-progress", "--backend", backend]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t0
    if r.returncode:
        tail = (r.stderr or r.stdout).strip().splitlines()
        return f"failed: {tail[-1][:100] if tail else r.returncode}"
    return dt


def _fmt(v, unit=""):
    if isinstance(v, str):
        return v
    return f"{v:,.2f}{unit}" if v < 100 else f"{v:,.0f}{unit}"


def _table(head, cases, rows, resnet, digits, done):
    """The markdown results from what was measured so far."""
    lines = ["# GPU results", "", head, ""]
    if not done:
        lines += ["**Partial: the run has not finished (or was cut short); the rows below are those "
                  "measured.**", ""]
    lines += ["`PYTHONPATH=. python benchmarks/gpu_bench.py` (via `bash benchmarks/gpu_check.sh`). MLP "
              "784-256-256-10, B=50, one gradient estimate; median of 10 steps (3 where a step takes "
              "over 0.5 s), CUDA-event timed; K = 100,000 in chunks of 10,000 on both sides. Memory: "
              "peak GPU bytes allocated during one step beyond what was allocated before it. "
              "Launches: kernels + cuBLAS calls + reductions of the CUDA engine's sites in one estimate, "
              "counted by its launcher (the loss runs beside them as CuPy code).",
              "", "| K | " + " | ".join(f"{c[0]} ms" for c in cases) + " | PyTorch LR ms | LR / PyTorch | "
              "ALR / LR (fp32, fp16) |", "|---" * (len(cases) + 4) + "|"]
    for K, res in rows:
        ms = [res[c[0]][0] if isinstance(res[c[0]], tuple) else res[c[0]] for c in cases]
        t = res["torch"][0] if isinstance(res["torch"], tuple) else res["torch"]
        ratio = lambda a, b: f"{a / b:.2f}x" if not isinstance(a, str) and not isinstance(b, str) else "-"  # noqa: E731
        lines.append(f"| {K:,} | " + " | ".join(_fmt(v) for v in ms) + f" | {_fmt(t)} | {ratio(ms[0], t)} | "
                     f"{ratio(ms[1], ms[0])}, {ratio(ms[2], ms[0])} |")
    lines += ["", "| K | " + " | ".join(f"{c[0]} MB" for c in cases) + " | PyTorch MB | LR / ALR memory |",
              "|---" * (len(cases) + 3) + "|"]
    for K, res in rows:
        mb = [res[c[0]][1] if isinstance(res[c[0]], tuple) else "-" for c in cases]
        t = res["torch"][1] if isinstance(res["torch"], tuple) else "-"
        r = f"{mb[0] / mb[1]:.1f}x" if not isinstance(mb[0], str) and not isinstance(mb[1], str) and mb[1] else "-"
        lines.append(f"| {K:,} | " + " | ".join(_fmt(v) for v in mb) + f" | {_fmt(t)} | {r} |")
    lines += ["", "| K | " + " | ".join(f"{c[0]}" for c in cases) + " |", "|---" * (len(cases) + 1) + "|"]
    for K, res in rows:
        lines.append(f"| {K:,} launches | " + " | ".join(
            str(res[c[0]][2]) if isinstance(res[c[0]], tuple) else "-" for c in cases) + " |")
    lib = [(K, res["lib_lr"]) for K, res in rows if res["lib_lr"] != "-"]
    if lib:
        lines += ["", "`minilr.estimate_gradient(..., backend=\"cupy\")` (the library entry point, LR): "
                  + ", ".join(f"K={K:,}: {_fmt(v, ' ms') if not isinstance(v, str) else v}" for K, v in lib)]
    if resnet:
        lines += ["", f"ResNet-5 (`minilr.resnet5({RESNET_INPUT})`, B={B}) through `minilr.estimate_gradient(..., "
                  "backend=\"cupy\")`, ms per estimate (median of 3):", "",
                  "| K | estimator | ms |", "|---|---|---|"]
        lines += [f"| {K:,} | {est} | {_fmt(v)} |" for (K, est), v in resnet.items()]
    if digits:
        n, c = digits.get("numpy", "-"), digits.get("cupy", "-")
        rel = f" ({c / n:.2f}x)" if not isinstance(n, str) and not isinstance(c, str) else ""
        lines += ["", "Digits job (`python -m minilr train --data digits --estimator alr --copies 100 "
                  "--epochs 5`), wall time: "
                  f"NumPy {_fmt(n, ' s')}, CuPy {_fmt(c, ' s')}{rel}"]
    return "\n".join(lines) + "\n"


def _write(path, text):
    """Replace ``path`` by ``text`` at once (a reader never sees half a table)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="K = 200 and 2,000 only (ResNet-5: 200), no digits job")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "RESULTS_GPU.md"))
    ap.add_argument("--rows", default=None, help="file the rows are appended to as measured "
                    "(default: --out with .rows.tsv for .md)")
    args = ap.parse_args(argv)
    cupy = _need_gpu()
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    mem_gb = props["totalGlobalMem"] / 2**30
    try:
        import torch
        tv = torch.__version__
    except ImportError:
        tv = "not installed"
    head = (f"GPU: **{name}** ({mem_gb:.0f} GiB), CuPy {cupy.__version__}, NumPy {np.__version__}, "
            f"PyTorch {tv}, Python {platform.python_version()}")
    print(head, flush=True)
    out_rows = Rows(args.rows or os.path.splitext(args.out)[0] + ".rows.tsv")
    out_rows.write("# " + head + (" (quick)" if args.quick else ""), "-", "-")
    Ks = QUICK_KS if args.quick else KS
    cases = [("LR", "lr", "fp32"), ("ALR fp32", "alr", "fp32"), ("ALR fp16-split", "alr", "fp16"),
             ("ES", "es", "fp32"), ("A-Hybrid", "a-hybrid", "fp32")]
    rows, resnet, digits = [], {}, {}

    def save(done=False):
        _write(args.out, _table(head, cases, rows, resnet, digits, done))

    for K in Ks:
        res = {}
        for label, est, prec in cases:
            try:
                res[label] = minilr_case(cupy, est, K, prec)
            except Exception as exc:
                res[label] = f"{type(exc).__name__}: {str(exc)[:60]}"
            print(f"K={K:>7,} {label:<15} {res[label]}", flush=True)
            out_rows.write(f"MLP {label} (ms, MB, launches)", K, res[label])
            cupy.get_default_memory_pool().free_all_blocks()
        res["torch"] = torch_case(K)
        print(f"K={K:>7,} PyTorch-CUDA LR {res['torch']}", flush=True)
        out_rows.write("PyTorch-CUDA LR (ms, MB)", K, res["torch"])
        res["lib_lr"] = library_case(cupy, "lr", K) if K <= 2000 else "-"
        if res["lib_lr"] != "-":
            out_rows.write("estimate_gradient MLP lr (ms)", K, res["lib_lr"])
        rows.append((K, res))
        save()
        try:
            import torch
            torch.cuda.empty_cache()
        except ImportError:
            pass
    for K in QUICK_RESNET_KS if args.quick else RESNET_KS:
        for est in ("lr", "alr"):
            resnet[K, est] = resnet_case(cupy, est, K)
            print(f"K={K:>7,} ResNet-5 {est:<5} {resnet[K, est]}", flush=True)
            out_rows.write(f"estimate_gradient ResNet-5 {est} (ms)", K, resnet[K, est])
            cupy.get_default_memory_pool().free_all_blocks()
        save()
    if not args.quick:
        for b in ("numpy", "cupy"):
            digits[b] = digits_job(b)
            out_rows.write(f"digits job {b} (s)", 5, digits[b])
            save()
    out_rows.close()
    text = _table(head, cases, rows, resnet, digits, True)
    _write(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
