"""Run tutorials in full mode and record what they print: runtime, verdicts, figures.

    python benchmarks/tutorials_full.py                 # every tutorial (long: see each record's seconds)
    python benchmarks/tutorials_full.py 03 09           # some of them, by number

For each tutorial ``tutorials/NN_name.py`` it writes ``benchmarks/tutorials_full/NN_name.json``
(``seconds`` wall and ``cpu_seconds``, ``verdicts``: every ``verdict:`` line the run printed, ``figures``, the output's
tail) and copies its figures there as small PNGs. Tutorials read the record with
:func:`minilr.plots.recorded` to show full-mode numbers that quick mode cannot. A verdict that does
not hold in full mode is reported and makes the exit status 1.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from minilr import plots  # noqa: E402
OUT = ROOT / "benchmarks" / "tutorials_full"


def shrink(src, dst, width=900):
    """Copy a PNG, downscaled to ``width`` pixels if wider (matplotlib only, no new dependency)."""
    import matplotlib.image as mpimg
    from matplotlib.figure import Figure

    img = mpimg.imread(src)
    h, w = img.shape[:2]
    if w <= width:
        shutil.copyfile(src, dst)
        return
    fig = Figure(figsize=(width / 100, h * width / w / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img, interpolation="antialiased")
    ax.axis("off")
    fig.savefig(dst, dpi=100)


def _children_cpu():
    """CPU seconds (user + system) of the finished child processes: unlike wall time, not inflated
    by other work on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(path, timeout):
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MINILR_QUICK="0", MPLBACKEND="Agg", MINILR_FIGURES=str(Path(tmp) / "figures"),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        t0, c0 = time.perf_counter(), _children_cpu()
        proc = subprocess.run([sys.executable, str(path)], cwd=tmp, env=env, capture_output=True, text=True,
                              timeout=timeout)
        seconds, cpu = time.perf_counter() - t0, _children_cpu() - c0
        figures = []
        if proc.returncode == 0 and (Path(tmp) / "figures").is_dir():
            for fig in sorted((Path(tmp) / "figures").glob("*.png")):
                shrink(fig, OUT / fig.name)
                figures.append(fig.name)
    return dict(tutorial=path.stem, seconds=round(seconds, 1), cpu_seconds=round(cpu, 1), returncode=proc.returncode,
                verdicts=plots.parse_verdicts(proc.stdout), figures=figures, output_tail=proc.stdout[-4000:],
                stderr_tail=proc.stderr[-2000:] if proc.returncode else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("numbers", nargs="*", help="tutorial numbers (default: all)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per tutorial")
    a = p.parse_args(argv)
    paths = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
    if a.numbers:
        want = {f"{int(n):02d}" for n in a.numbers}
        paths = [q for q in paths if q.name[:2] in want]
        if len(paths) != len(want):
            p.error(f"no tutorial numbered {sorted(want - {q.name[:2] for q in paths})}")
    OUT.mkdir(parents=True, exist_ok=True)
    failed = []
    for path in paths:
        print(f"{path.name} (full mode) ...", flush=True)
        rec = run(path, a.timeout)
        with open(OUT / f"{path.stem}.json", "w") as f:
            json.dump(rec, f, indent=1)
        bad = [c for c, v in rec["verdicts"].items() if not v["holds"]]
        print(f"  {rec['seconds']:.0f} s wall, {rec['cpu_seconds']:.0f} s CPU, exit {rec['returncode']}, {len(rec['verdicts'])} verdicts"
              + (f", NOT holding: {bad}" if bad else ""), flush=True)
        if rec["returncode"] or bad:
            failed.append(path.name)
    if failed:
        print("not as claimed in full mode:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
