"""Copies across MPI ranks, bytes per step, and the pipelined step, side by side in one run.

1. Step time and gradient equality for 1, 2 and 4 ranks at K = 1,000 and 10,000 copies (each rank
   one thread: MINILR_NOISE_THREADS=1, BLAS on one thread), copies per second and the scaling
   efficiency against one rank. Equality: max |g_R - g_1| / max |g_1| over the parameter arrays.
   Copies run in chunks of 2,000 (each chunk shared out over the ranks), so memory stays flat.
2. Bytes one rank sends per step, LR vs ES, for a small and a 16x larger model (2 ranks).
3. In one process (all threads): the plain chunked step vs the pipelined step (forward of bucket
   i + 1 overlapping the gradients of bucket i) vs pipelined + layer-parallel gradients; and the
   Fig. 2 simulator fed with per-layer times measured here.

Run: python benchmarks/distributed.py [--copies 1000,10000] [--ranks 1,2,4] [--steps 3] [--quick]
(about 2-3 minutes on 2 cores; --quick: K = 200, 1,000 and 1 step). Needs pip install -e ".[mpi]".
Every worker is this file run under mpiexec with --worker.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = [64, 256, 256, 10]
BATCH = 50


def problem(sizes=SIZES, batch=BATCH, seed=0):
    import minilr

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    return minilr.MLP(sizes, activation="relu", sigma=0.1, seed=seed), x, y


CHUNK = 2000  # copies per chunk, shared out over the ranks: memory stays flat as K grows


_BACKEND = []  # one backend (and engine, with its scratch memory) per process


def backend():
    from minilr.backend import Backend

    if not _BACKEND:
        _BACKEND.append(Backend("numpy"))
    return _BACKEND[0]


def one_step(model, x, y, estimator, copies, comm, stats=None, seed=1):
    """One gradient estimate through the library's internals (the distributed path when comm)."""
    from minilr.backend import seed_sequence
    from minilr.estimators import Settings
    from minilr.parallel import distributed

    s = Settings(estimator, copies, chunk=CHUNK, es_layers=2)
    return distributed.estimate(model, x, y, s, seed_sequence(seed), backend(), comm=comm, stats=stats)[0]


def worker(args):
    from mpi4py import MPI

    from minilr.parallel import mpi

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    out = {}
    if args.mode == "scale":
        model, x, y = problem()
        for K in args.copies:
            one_step(model, x, y, args.estimator, K, comm)  # warm: JIT, page faults
            times, cpu = [], []
            for _ in range(args.steps):
                comm.Barrier()
                t0, c0 = time.perf_counter(), time.process_time()
                g = one_step(model, x, y, args.estimator, K, comm)
                c1 = time.process_time()
                comm.Barrier()
                times.append(time.perf_counter() - t0)
                cpu.append(c1 - c0)
            out[K] = float(np.median(times))
            # CPU seconds of the busiest rank (its own work, MPI waits excluded where MPI sleeps):
            # what the step would take on an otherwise idle core
            out[f"cpu{K}"] = max(comm.allgather(float(np.median(cpu))))
            if rank == 0:
                np.savez(Path(args.out) / f"g_{K}_{size}.npz", **g)
    else:  # bytes per step, LR vs ES, two model sizes
        for name, sizes in (("small", SIZES), ("16x weights", [64, 1024, 1024, 10])):
            model, x, y = problem(sizes)
            for est in ("lr", "alr", "es", "aes"):
                stats = {}
                one_step(model, x, y, est, args.copies[0], comm, stats)
                n_weights = sum(p.size for p in model.parameters().values())
                out[f"{name}|{est}"] = (mpi.bytes_sent(stats), n_weights)
    if rank == 0:
        (Path(args.out) / f"{args.mode}_{size}.json").write_text(json.dumps(out))


def mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def launch(ranks, mode, copies, steps, estimator, out):
    env = dict(os.environ, MINILR_NOISE_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, __file__, "--worker", "--mode", mode, "--copies",
           ",".join(map(str, copies)), "--steps", str(steps), "--estimator", estimator, "--out", out]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return json.loads((Path(out) / f"{mode}_{ranks}.json").read_text())


def rel_diff(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) / (float(np.abs(b[k]).max()) or 1.0) for k in b.files)


def in_process(K, buckets, rounds):
    """Plain chunked step vs pipelined vs pipelined + layer threads (all cores), and the layers'
    gradients in threads vs one after another, given the losses."""
    from minilr.backend import seed_sequence
    from minilr.estimators import ESTIMATORS, Settings, estimate
    from minilr.estimators import Plan, centred_losses
    from minilr.parallel import overlap

    model, x, y = problem()
    bk = backend()
    rows = []
    for est in ("lr", "alr"):
        chunk = overlap.bucket_size(K, buckets)

        def plain():
            with bk.engine.session():
                return estimate(model, x, y, Settings(est, K, chunk=chunk), seed_sequence(1), bk)

        def piped(threads=1):
            return overlap.pipelined_estimate(model, x, y, Settings(est, K), seed_sequence(1), bk, buckets=buckets,
                                              layer_threads=threads)
        ts = {"plain": [], "pipelined": [], "pipelined + layer threads": []}
        res = {}
        for _ in range(rounds + 1):  # the first round warms up; sides alternate
            for name, fn in (("plain", plain), ("pipelined", piped),
                             ("pipelined + layer threads", lambda: piped(len(SIZES) - 1))):
                t0 = time.perf_counter()
                res[name] = fn()[0]
                ts[name].append(time.perf_counter() - t0)
        equal = all(np.array_equal(res["plain"][k], res[n][k]) for n in res for k in res["plain"])
        med = {n: float(np.median(v[1:])) for n, v in ts.items()}
        # the layers' gradients alone, given the losses: sequential vs one thread per layer
        e = ESTIMATORS[est]
        lin = model.linear_indices
        gt = {1: [], len(lin): []}
        for _ in range(rounds + 1):
            for threads in gt:
                with bk.engine.session():
                    L, sites = bk.engine.forward(Plan.make(model, x, Settings(est, chunk), seed_sequence(1), e), x, y,
                                         range(chunk))
                    Lc = centred_losses(L, False, True, np)
                    t0 = time.perf_counter()
                    overlap.layer_gradients(sites, Lc, threads)
                    gt[threads].append(time.perf_counter() - t0)
                    bk.engine.done(sites)
        gmed = {t: float(np.median(v[1:])) for t, v in gt.items()}
        rows.append((est, med, equal, gmed))
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--mode", default="scale")
    p.add_argument("--copies", default="1000,10000")
    p.add_argument("--ranks", default="1,2,4")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--estimator", default="lr")
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    args.copies = [int(c) for c in args.copies.split(",")]
    if args.worker:
        return worker(args)
    if args.quick:
        args.copies, args.steps = [200, 1000], 1
    ranks = [int(r) for r in args.ranks.split(",")]
    from minilr.parallel import mpi, pipeline

    if not mpi.available() or mpiexec() is None:
        sys.exit("needs mpi4py and mpiexec: pip install -e '.[mpi]'")
    t_start = time.perf_counter()
    print(f"# minilr distributed benchmark\n\nMachine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"MLP {'-'.join(map(str, SIZES))}, B={BATCH}, estimator {args.estimator}, float32.\n")
    with tempfile.TemporaryDirectory() as out:
        times = {r: launch(r, "scale", args.copies, args.steps, args.estimator, out) for r in ranks}
        print("## 1. Copies across ranks (each rank one thread; median of", args.steps, "steps)\n")
        print("| K | ranks | step time | copies/s | speed-up vs 1 rank | efficiency | busiest rank's CPU time | max rel. diff. vs 1 rank |")
        print("|---|---|---|---|---|---|---|---|")
        for K in args.copies:
            g1 = np.load(Path(out) / f"g_{K}_{ranks[0]}.npz")
            for r in ranks:
                t = times[r][str(K)]
                su = times[ranks[0]][str(K)] / t
                d = rel_diff(np.load(Path(out) / f"g_{K}_{r}.npz"), g1)
                cpu = times[r][f"cpu{K}"]
                print(f"| {K} | {r} | {1e3 * t:.1f} ms | {K / t:,.0f} | {su:.2f}x | {100 * su / (r / ranks[0]):.0f} % "
                      f"| {1e3 * cpu:.1f} ms | {d:.1e} |")
        byt = launch(2, "bytes", [1000 if not args.quick else 200], 1, "lr", out)
        K = 1000 if not args.quick else 200
        print(f"\n## 2. Bytes one rank sends per step (2 ranks, K={K}, B={BATCH})\n")
        print("| model | parameters | lr | alr | es | aes |\n|---|---|---|---|---|---|")
        for name in ("small", "16x weights"):
            nw = byt[f"{name}|lr"][1]
            print(f"| {name} | {nw:,} | " + " | ".join(f"{byt[f'{name}|{e}'][0]:,}" for e in ("lr", "alr", "es", "aes")) + " |")
        print("\nLR/ALR: the losses (K x B / ranks floats) + one Allreduce of every parameter's sum; "
              "ES/AES: the losses only (every rank redraws all perturbations from the seed).")
    K, buckets = (1000, 4) if not args.quick else (200, 4)
    print(f"\n## 3. Pipelined step, one process, all threads (K={K}, {buckets} buckets of copies)\n")
    print("| estimator | plain chunked | pipelined | pipelined + layer threads | equal bits | layer grads: sequential / threads |")
    print("|---|---|---|---|---|---|")
    for est, med, equal, gmed in in_process(K, buckets, 3 if not args.quick else 1):
        seq, par = gmed[1], gmed[max(gmed)]
        print(f"| {est} | {1e3 * med['plain']:.1f} ms | {1e3 * med['pipelined']:.1f} ms "
              f"({med['plain'] / med['pipelined']:.2f}x) | {1e3 * med['pipelined + layer threads']:.1f} ms "
              f"({med['plain'] / med['pipelined + layer threads']:.2f}x) | {equal} | "
              f"{1e3 * seq:.1f} / {1e3 * par:.1f} ms ({seq / par:.2f}x) |")
    bp, lr, s = pipeline.paper_setting()
    print(f"\nFig. 2 simulator, paper setting: backprop {s['bp_steps']:.0f} steps, {100 * s['bp_idle']:.1f} % idle; "
          f"LR pipeline {s['lr_steps']:.0f} steps ({s['speedup']:.2f}x), idle {100 * s['lr_idle_of_bp_space']:.0f} % "
          f"of backprop's unit-steps")
    t = pipeline.measure_times(SIZES, copies=K // buckets, batch=BATCH)
    bp, lr, s = pipeline.compare(**t, buckets=buckets)
    print(f"Fig. 2 simulator, per-layer times measured here (bucket of {K // buckets} copies x {BATCH}): backprop "
          f"{1e3 * s['bp_steps']:.1f} ms, {100 * s['bp_idle']:.0f} % idle; LR pipeline {1e3 * s['lr_steps']:.1f} ms "
          f"({s['speedup']:.2f}x), {100 * s['lr_idle']:.0f} % idle")
    print(f"\n({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
