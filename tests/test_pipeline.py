"""The schedule simulator of Fig. 2 (minilr.parallel.pipeline): the paper's numbers, the rules."""
from __future__ import annotations

import numpy as np
import pytest

from minilr.parallel import pipeline as pl


def test_reproduces_fig2_numbers():
    # Sec. 3.4: 4 layers, 3 buckets, one task per unit per time step.
    bp, lr, s = pl.paper_setting()
    assert (bp.makespan, lr.makespan) == (15, 10)
    assert s["speedup"] == 1.5
    assert bp.idle == 40 and round(100 * s["bp_idle"], 1) == 53.3
    assert lr.idle == 18 and round(100 * s["lr_idle_of_bp_space"], 1) == 24.0
    assert s["lr_idle"] == pytest.approx(0.36)


def _check_valid(sched, method, n_layers, buckets):
    by_name = {(t.kind, t.layer, t.bucket): t for t in sched.tasks}
    # atomic units: no two tasks overlap on one unit
    for u in range(sched.units):
        ts = sorted((t for t in sched.tasks if t.unit == u), key=lambda t: t.start)
        for a, b in zip(ts, ts[1:]):
            assert a.end <= b.start + 1e-12
    for b in range(1, buckets + 1):
        for l in range(2, n_layers + 1):
            assert by_name[("F", l, b)].start >= by_name[("F", l - 1, b)].end
        loss = by_name[("L", 0, b)]
        assert loss.start >= by_name[("F", n_layers, b)].end
        if method == "bp":  # the chain rule: each layer after the one above it
            assert by_name[("L'", 0, b)].start >= loss.end
            assert by_name[("B", n_layers, b)].start >= by_name[("L'", 0, b)].end
            for l in range(1, n_layers):
                assert by_name[("B", l, b)].start >= by_name[("B", l + 1, b)].end
        else:
            for l in range(1, n_layers + 1):
                assert by_name[("G", l, b)].start >= loss.end
    grads = [t for t in sched.tasks if t.kind in "BG"]
    for t in sched.tasks:
        if t.kind == "U":
            assert t.start >= max(g.end for g in grads)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("method", ["bp", "lr"])
def test_random_times_give_valid_schedules(method, seed):
    rng = np.random.default_rng(seed)
    n, buckets = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    f, g = rng.uniform(0.1, 2, n), rng.uniform(0.1, 2, n)
    loss, lb, upd = rng.uniform(0.1, 1, 3)
    s = pl.simulate(method, f, loss=loss, gradient=g, buckets=buckets, loss_backward=lb, update=upd)
    _check_valid(s, method, n, buckets)
    # every task ran once, for its duration
    per_bucket = f.sum() + g.sum() + loss + (lb if method == "bp" else 0)
    assert s.busy == pytest.approx(buckets * per_bucket + (n + 1) * upd)
    assert len(s.tasks) == buckets * (2 * n + 1 + (method == "bp")) + n + 1
    assert 0 <= s.idle_fraction() < 1


@pytest.mark.parametrize("seed", range(5))
def test_lr_never_slower_than_bp_with_equal_times(seed):
    # LR's dependencies are a subset of backprop's (no chain, no loss backward): never later.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 6))
    f = rng.uniform(0.1, 2, n)
    bp, lr, s = pl.compare(f, loss=0.5, buckets=int(rng.integers(1, 5)))
    assert lr.makespan <= bp.makespan + 1e-12


def test_one_bucket_one_layer_by_hand():
    s = pl.simulate("bp", [2.0], loss=1.0, gradient=[3.0], buckets=1, loss_backward=0.5, update=0.0)
    assert s.makespan == 2 + 1 + 0.5 + 3
    s = pl.simulate("lr", [2.0], loss=1.0, gradient=[3.0], buckets=1, update=0.25)
    assert s.makespan == 2 + 1 + 3 + 0.25


def test_grid_matches_tasks():
    bp, lr, _ = pl.paper_setting()
    g = lr.grid()
    assert g[0][:3] == ["F1"] * 3 and g[4][4:7] == ["L"] * 3 and all(row[9] == "U" for row in g)
    assert sum(c == "" for row in g for c in row) == 18


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="sgd", forward=[1]), "method"),
    (dict(method="bp", forward=[]), "forward"),
    (dict(method="bp", forward=[1, -1]), "forward"),
    (dict(method="lr", forward=[1, 1], gradient=[1]), "gradient"),
    (dict(method="lr", forward=[1], buckets=0), "buckets"),
    (dict(method="lr", forward=[1], loss=float("nan")), "loss"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pl.simulate(**kwargs)


def test_measured_times_and_drawing(tmp_path):
    t = pl.measure_times(sizes=(8, 16, 4), copies=4, batch=5, repeats=1)
    assert len(t["forward"]) == len(t["gradient_lr"]) == len(t["gradient_bp"]) == 2
    bp, lr, s = pl.compare(**t)
    assert s["speedup"] > 0
    fig = pl.draw([bp, lr], tmp_path / "m.png", unit_time=False)
    assert (tmp_path / "m.png").stat().st_size > 1000 and fig is not None
    pl.draw(pl.paper_setting()[:2], tmp_path / "fig2.png")
    assert (tmp_path / "fig2.png").read_bytes()[:4] == b"\x89PNG"
