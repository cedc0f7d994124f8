"""minilr benchmarks: one command, ratios measured side by side, a markdown table with the machine.

    python benchmarks/run.py [--rounds 3] [--out benchmarks/RESULTS.md] [--gpu]

Every measurement runs in its own fresh process (benchmarks/worker.py), and the two sides of a
ratio alternate round by round (A B A B ...): thread pools (OpenBLAS, OpenMP, PyTorch's) keep
spinning after a call and slow whatever runs next in the same process. Each figure is the
median over rounds of per-process medians.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIZES = [784, 256, 256, 10]


def work(task, env=None, **args):
    r = subprocess.run([sys.executable, os.path.join(HERE, "worker.py"), task, json.dumps(args)],
                       capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, **(env or {})))
    if r.returncode:
        raise RuntimeError(f"{task} {args} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def alternate(rounds, sides):
    """``sides``: {name: (task, kwargs)}; returns {name: [results per round]}, run A B A B ..."""
    out = {k: [] for k in sides}
    for _ in range(rounds):
        for name, (task, kw) in sides.items():
            out[name].append(work(task, **kw))
    return out


def lr_flops(K, B, sizes=SIZES):
    """GEMM flops of one LR step: forward + weight gradient per layer (the first layer's input is
    shared by the copies, so its GEMMs have B rows, not K*B)."""
    f = 0
    for l, (d, m) in enumerate(zip(sizes[:-1], sizes[1:])):
        rows = B if l == 0 else K * B
        f += 2 * (2 * rows * d * m)
    return f


def machine():
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(l.split(":", 1)[1].strip() for l in fh if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import numpy as np

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        blas = "?"
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"{cpu}; {os.cpu_count()} logical CPUs; Python {platform.python_version()}; NumPy "
            f"{np.__version__} ({blas}); load average at start {load[0]:.2f}")


def cpu_benchmarks(R):
    """Sections 1-5 on the CPU; returns (table rows, profile)."""
    rows = []
    # 1. LR step vs the same algorithm in PyTorch CPU; BP reference for scale
    step = alternate(R, {"minilr": ("minilr_step", dict(est="lr", K=200, B=50)),
                         "torch": ("torch_step", dict(K=200, B=50)),
                         "bp": ("bp_step", dict(B=50))})
    t_lr = median([r["seconds"] for r in step["minilr"]])
    t_bp = median([r["seconds"] for r in step["bp"]])
    if "skipped" in step["torch"][0]:
        print(step["torch"][0]["skipped"])
        rows.append(("LR step / PyTorch same algorithm (784-256-256-10, B=50, K=200)",
                     f"minilr {1e3 * t_lr:.1f} ms; PyTorch skipped ({step['torch'][0]['skipped']})", "<= 0.5x", "-"))
    else:
        t_pt = median([r["seconds"] for r in step["torch"]])
        rows.append(("LR step / PyTorch same algorithm (784-256-256-10, B=50, K=200)",
                     f"{t_lr / t_pt:.2f}x ({1e3 * t_lr:.1f} ms vs {1e3 * t_pt:.1f} ms, torch "
                     f"{step['torch'][0]['torch']}, {step['torch'][0]['threads']} threads)",
                     "<= 0.5x", "yes" if t_lr <= 0.5 * t_pt else "no"))
    rows.append(("BP reference step (exact gradient, B=50), for scale",
                 f"{1e3 * t_bp:.2f} ms; LR step = {t_lr / t_bp:.0f}x BP", "-", "-"))
    print(rows[-2], rows[-1], sep="\n", flush=True)

    # 2. ALR vs LR step time
    st = alternate(R, {"alr": ("minilr_step", dict(est="alr", K=200, B=50)),
                       "lr": ("minilr_step", dict(est="lr", K=200, B=50))})
    t_alr, t_lr2 = (median([r["seconds"] for r in st[k]]) for k in ("alr", "lr"))
    rows.append(("ALR step / LR step (B=50, K=200)", f"{t_alr / t_lr2:.2f}x ({1e3 * t_alr:.1f} vs {1e3 * t_lr2:.1f} ms)",
                 "<= 1.0x (paper: 1/1.22)", "yes" if t_alr <= t_lr2 else "no"))
    st = alternate(R, {"alr": ("minilr_step", dict(est="alr", K=2000, B=10, reps=5)),
                       "lr": ("minilr_step", dict(est="lr", K=2000, B=10, reps=5))})
    t_alr, t_lr3 = (median([r["seconds"] for r in st[k]]) for k in ("alr", "lr"))
    rows.append(("ALR step / LR step (B=10, K=2000, all copies at once)",
                 f"{t_alr / t_lr3:.2f}x ({1e3 * t_alr:.1f} vs {1e3 * t_lr3:.1f} ms)", "<= 1.0x",
                 "yes" if t_alr <= t_lr3 else "no"))
    st = alternate(R, {"held": ("minilr_step", dict(est="lr", K=200, B=50)),
                       "fresh": ("minilr_step", dict(est="lr", K=200, B=50, held=False))})
    t_held, t_fresh = (median([r["seconds"] for r in st[k]]) for k in ("held", "fresh"))
    rows.append(("LR step, a fresh Backend per call (backend=\"numpy\") / one held Backend (B=50, K=200)",
                 f"{t_fresh / t_held:.2f}x ({1e3 * t_fresh:.1f} vs {1e3 * t_held:.1f} ms)", "-", "-"))
    print(*rows[-3:], sep="\n", flush=True)

    # 3. peak memory: ALR vs LR at K=2000, B=10; chunked K=20000 vs K=2000 (deterministic: 1 round)
    mem = {name: work("peak_memory", est=e, K=K, B=10, chunk=c)["bytes"] for name, e, K, c in [
        ("lr", "lr", 2000, None), ("alr", "alr", 2000, None),
        ("lr2k", "lr", 2000, 2000), ("lr20k", "lr", 20000, 2000),
        ("alr2k", "alr", 2000, 2000), ("alr20k", "alr", 20000, 2000)]}
    mb = lambda b: f"{b / 2**20:.1f} MB"
    ratio = mem["lr"] / mem["alr"]
    rows.append(("Peak memory LR / ALR (K=2000, B=10, all copies at once)",
                 f"{ratio:.1f}x ({mb(mem['lr'])} vs {mb(mem['alr'])})", ">= 16x (at least 8x)",
                 "yes" if ratio >= 16 else ("8x only" if ratio >= 8 else "no")))
    for e in ("lr", "alr"):
        r = mem[f"{e}20k"] / mem[f"{e}2k"]
        rows.append((f"Peak memory {e.upper()} K=20000 / K=2000, chunk=2000 (B=10)",
                     f"{r:.2f}x ({mb(mem[e + '20k'])} vs {mb(mem[e + '2k'])})", "<= 1.2x", "yes" if r <= 1.2 else "no"))
    print(*rows[-3:], sep="\n", flush=True)

    # 4. achieved GFLOP/s vs sgemm peak; noise rate vs NumPy's generator
    peak = median([work("sgemm")["gflops"] for _ in range(R)])
    fl = lr_flops(200, 50)
    rows.append(("LR step GEMM throughput / measured sgemm peak",
                 f"{fl / t_lr / 1e9:.0f} / {peak:.0f} GFLOP/s ({fl / t_lr / 1e9 / peak:.0%})", "-", "-"))
    nz = [work("noise_rate") for _ in range(R)]
    ours, sfc = median([r["minilr"] for r in nz]), median([r["sfc64"] for r in nz])
    vals = 200 * 50 * sum(SIZES[1:])
    rows.append(("Noise: minilr counter-based / NumPy Generator(SFC64) (float32 normals)",
                 f"{ours / 1e6:.0f} / {sfc / 1e6:.0f} M values/s ({ours / sfc:.1f}x, {nz[0]['threads']} threads)", "-", "-"))
    rows.append(("Noise drawn per LR step / step time",
                 f"{vals / t_lr / 1e6:.0f} M values/s (generator alone: {ours / 1e6:.0f} M/s; "
                 f"{vals / ours / t_lr:.0%} of the step)", "-", "-"))
    print(*rows[-3:], sep="\n", flush=True)

    # 5. threads: noise threads next to OpenBLAS's
    th = alternate(R, {"1": ("minilr_step", dict(env={"MINILR_NOISE_THREADS": "1"}, est="lr")),
                       "2": ("minilr_step", dict(env={"MINILR_NOISE_THREADS": "2"}, est="lr")),
                       "ob1": ("minilr_step", dict(env={"OPENBLAS_NUM_THREADS": "1"}, est="lr"))})
    t1, t2, ob1 = (median([r["seconds"] for r in th[k]]) for k in ("1", "2", "ob1"))
    rows.append(("LR step: minilr threads (MINILR_NOISE_THREADS: noise, fused blocks) 1 / 2 "
                 "(OpenBLAS threads as run; the fused path holds BLAS at 1 inside a step)",
                 f"{t1 / t2:.2f}x ({1e3 * t1:.1f} vs {1e3 * t2:.1f} ms); with OPENBLAS_NUM_THREADS=1: {1e3 * ob1:.1f} ms", "-", "-"))
    prof = {e: work("profile", est=e)["top"] for e in ("lr", "alr")}
    print(rows[-1], flush=True)

    return rows, prof


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--gpu", action="store_true", help="also CuPy vs NumPy and PyTorch-CUDA")
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU comparisons (implies --gpu)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for every side (OpenBLAS, OpenMP, minilr noise, torch); default: "
                         "each library's own choice. On a machine shared with other work, 1 keeps "
                         "a preempted thread from stalling its partners")
    a = ap.parse_args(argv)
    R = a.rounds
    if a.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MINILR_NOISE_THREADS"):
            os.environ[var] = str(a.threads)
    t_start = time.time()
    desc = machine()
    if a.threads:
        desc += f"; every side limited to {a.threads} thread(s)"
    print(desc, flush=True)
    rows = []  # (what, measured, target, met)
    prof = {}
    if a.gpu_only:
        a.gpu = True
    else:
        rows, prof = cpu_benchmarks(R)
    gpu_rows = []

    if a.gpu:
        g = alternate(R, {"cupy": ("cupy_step", dict(est="lr")), "cupy_alr": ("cupy_step", dict(est="alr")),
                          "numpy": ("minilr_step", dict(est="lr")),
                          "torch_cuda": ("torch_step", dict(device="cuda"))})
        def med(k):
            return None if "skipped" in g[k][0] else median([r["seconds"] for r in g[k]])
        tc, tca, tn, tt = med("cupy"), med("cupy_alr"), med("numpy"), med("torch_cuda")
        if tc is None:
            gpu_rows.append(("GPU", g["cupy"][0]["skipped"], "-", "-"))
        else:
            gpu_rows.append(("LR step CuPy / NumPy (B=50, K=200)", f"{tc / tn:.3f}x ({1e3 * tc:.2f} vs {1e3 * tn:.1f} ms)", "-", "-"))
            gpu_rows.append(("ALR step / LR step on CuPy", f"{tca / tc:.2f}x ({1e3 * tca:.2f} ms)", "-", "-"))
            gpu_rows.append(("LR step CuPy / PyTorch-CUDA same algorithm",
                             f"{tc / tt:.2f}x ({1e3 * tt:.2f} ms)" if tt else g["torch_cuda"][0]["skipped"], "-", "-"))
        print(*gpu_rows, sep="\n", flush=True)

    lines = ["# minilr benchmarks", "",
             f"Machine: {desc}.", "",
             f"Command: `python benchmarks/run.py --rounds {R}{' --gpu' if a.gpu else ''}"
             f"{f' --threads {a.threads}' if a.threads else ''}` "
             f"({time.time() - t_start:.0f} s). Each figure: median over {R} rounds of fresh "
             "processes, the two sides of a ratio alternating. MLP 784-256-256-10, ReLU, float32.", "",
             "| measurement | result | target | met |", "|---|---|---|---|"]
    lines += [f"| {w} | {m} | {t} | {ok} |" for w, m, t, ok in rows + gpu_rows]
    for e, top in prof.items():
        lines += ["", f"Where an {e.upper()} step's time goes (cProfile own time per step, B=50, K=200; "
                  "the calling thread's share only: the other thread runs the other blocks alike):", ""]
        lines += [f"* {ms} ms — `{name}`" for ms, name in top]
    lines += ["", "Packed-gradient algorithms: `python benchmarks/packed_gradient.py` (see "
              "`minilr/signbits.py` for the figures that chose unpack-then-BLAS).", ""]
    with open(a.out, "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
