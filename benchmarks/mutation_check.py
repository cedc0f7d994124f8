"""Mutation check: can the statistical tests see a 5 % bias? (issue 10, item 11)

Runs ``tests/test_statistics.py`` once unmodified and once per injected bug, each in a fresh
process, and prints how many tests fail. The bugs, injected by monkeypatching:

* ``scale:<estimator>``: that estimator's gradient multiplied by 0.95 (every key, every call);
* ``baseline-own``: the leave-one-out baseline replaced by the mean over *all* copies of a sample,
  the copy's own loss included (biased: every estimate shrinks by 1 - 1/K).

The suite passes when every mutation makes at least one test fail and the unmodified run passes.

    PYTHONPATH=. python benchmarks/mutation_check.py            # all mutations (~2 min on 2 cores)
    PYTHONPATH=. python benchmarks/mutation_check.py scale:lr   # some of them
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

ESTIMATORS = ("lr", "alr", "es", "aes", "hybrid", "a-hybrid")
MUTATIONS = ("none",) + tuple(f"scale:{e}" for e in ESTIMATORS) + ("baseline-own",)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE = 0.95


def apply(mutation: str) -> None:
    """Monkeypatch the running minilr with ``mutation``."""
    import minilr

    if mutation == "none":
        return
    if mutation.startswith("scale:"):
        target = mutation.split(":", 1)[1]
        original = minilr.estimate_gradient

        def scaled(model, x, y, estimator="lr", *args, **kwargs):
            g = original(model, x, y, estimator, *args, **kwargs)
            return {k: v * SCALE for k, v in g.items()} if estimator == target else g

        minilr.estimate_gradient = scaled
        sys.modules["minilr.train"].estimate_gradient = scaled
        return
    if mutation == "baseline-own":
        patched = 0
        for name, mod in list(sys.modules.items()):
            fn = getattr(mod, "centred_losses", None) if name.startswith("minilr") else None
            if fn is None:
                continue

            def own_included(L, antithetic, baseline, xp, *args, **kwargs):
                # the classic mistake: the copy's own loss is part of its baseline
                return L - L.mean(axis=0, keepdims=True) if baseline and L.shape[0] > 1 else L

            setattr(mod, "centred_losses", own_included)
            patched += 1
        if not patched:
            raise SystemExit("baseline-own: no minilr module defines centred_losses")
        return
    raise SystemExit(f"unknown mutation {mutation!r}; expected one of {MUTATIONS}")


def run_one(mutation: str):
    """(passed, failed, seconds) of the statistical tests under ``mutation``, in a fresh process."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, __file__, "--apply", mutation], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": ROOT})
    out = r.stdout + r.stderr
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", out)) else 0
    failed = int(m.group(1)) if (m := re.search(r"(\d+) failed", out)) else 0
    if r.returncode not in (0, 1):
        raise SystemExit(f"{mutation}: pytest did not run (exit {r.returncode}):\n{out[-2000:]}")
    return passed, failed, time.perf_counter() - t0, re.findall(r"FAILED (\S+)", out)


def main(argv):
    if argv[:1] == ["--apply"]:
        apply(argv[1])
        import pytest

        return pytest.main(["-q", "-p", "no:cacheprovider", "-rf", "--tb=no",
                            os.path.join(ROOT, "tests", "test_statistics.py")])
    chosen = argv or list(MUTATIONS)
    ok = True
    print(f"{'mutation':<16} {'passed':>6} {'failed':>6} {'seconds':>8}  verdict")
    for mutation in chosen:
        passed, failed, secs, names = run_one(mutation)
        good = failed == 0 if mutation == "none" else failed > 0
        ok &= good
        verdict = ("suite passes" if failed == 0 else "suite FAILS") + ("" if good else "  <-- WRONG")
        print(f"{mutation:<16} {passed:>6} {failed:>6} {secs:>8.1f}  {verdict}", flush=True)
        for n in names:
            print(f"{'':<18}{n.split('::')[-1]}")
    print("mutation check:", "OK (every mutation caught, the unmodified code passes)" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
