"""benchmarks/table1_fair.py: its pieces (bracketing, stopping, intervals) and its smoke run."""
import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def t1():
    spec = importlib.util.spec_from_file_location("table1_fair", os.path.join(ROOT, "benchmarks", "table1_fair.py"))
    mod = importlib.util.module_from_spec(spec)
    # its worker function is sent to the (forked) worker processes by name: register the module
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setitem(sys.modules, "table1_fair", mod)
    spec.loader.exec_module(mod)
    yield mod
    monkeypatch.undo()


def test_t_interval_matches_the_t_table(t1):
    mean, half = t1.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)  # t_{.975, 2} = 4.3027
    mean, half = t1.t_interval([0.5, 0.5, 0.5, 0.5])
    assert (mean, half) == (0.5, 0.0)
    assert math.isnan(t1.t_interval([0.7])[1])


def test_flattened(t1):
    assert not t1.flattened([0.1, 0.2, 0.3], patience=3, min_delta=0.0)  # too short to tell
    assert not t1.flattened([0.1, 0.2, 0.3, 0.4], patience=2, min_delta=0.0)
    assert t1.flattened([0.1, 0.5, 0.49, 0.5], patience=2, min_delta=0.0)
    assert t1.flattened([0.1, 0.5, 0.49, 0.504], patience=2, min_delta=0.005)
    assert not t1.flattened([0.1, 0.5, 0.49, 0.506], patience=2, min_delta=0.005)


def test_grid_is_extended_at_an_edge_up_to_the_limit(t1):
    ext = {"low": 0, "high": 0}
    assert t1.next_grid_value([1e-3, 1e-2, 1e-1], [0.2, 0.5, 0.6], 10, ext, 1) == pytest.approx(1.0)
    assert t1.next_grid_value([1e-3, 1e-2, 1e-1, 1.0], [0.2, 0.5, 0.6, 0.7], 10, ext, 1) is None  # limit
    assert t1.next_grid_value([1e-3, 1e-2, 1e-1], [0.7, 0.5, 0.6], 10, ext, 1) == pytest.approx(1e-4)
    assert t1.next_grid_value([1e-3, 1e-2, 1e-1], [0.2, 0.7, 0.6], 10, {"low": 0, "high": 0}, 1) is None
    assert t1.score([0.1, 0.2, 0.6, 0.7, 0.8]) == pytest.approx(0.7)


def test_linear_fit(t1):
    assert t1.linear_fit([2, 6], [7.0, 19.0]) == pytest.approx((1.0, 3.0))


def _check_result(r, a, tmp_path):
    assert set(r["table"]) == {"copies", "memory", "time"}
    for col, rows in r["table"].items():
        for row in rows:
            assert row["n"] == a["seeds"]
            assert row["lr"] in row["grid"] and len(row["grid"]) >= 3
            assert 0 <= row["mean"] <= 1 and len(row["curves"]) == a["seeds"]
    # signSGD and Adam rows for every method, each with its own grid
    methods = {row["method"] for row in r["table"]["copies"]}
    assert "LR" in methods and "LR +signSGD" in methods and "HSIC" in methods
    # the sign variants at equal memory run at the measured fit
    alr = [row for row in r["table"]["memory"] if row["method"] == "ALR"][0]
    assert alr["copies"] == r["measurements"]["memory"]["alr"]["copies"] >= 1
    assert r["timing"]["wall_s"] > 0 and r["timing"]["cpu_s"] > 0
    lr = [row for row in r["table"]["copies"] if row["method"] == "LR"][0]
    d = lr["diagnostics"]
    assert len(d["cosine"]) == len(a["diag_copies"]) and "acc" in d and d["per_layer"]
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "t.md").read_text()
    assert "equal memory" in md and "equal wall time" in md and "±" in md
    assert "| LR | " in md.split("paper's shape")[1]  # the paper-shaped summary has its rows
    json.loads((tmp_path / "t.json").read_text())


def _argv(tmp_path, *extra):
    return ["--smoke", *extra, "--out", str(tmp_path / "t.json"), "--md", str(tmp_path / "t.md"),
            "--fig", str(tmp_path / "t.png"), "--runs-log", str(tmp_path / "runs.jsonl")]


def test_smoke_pipeline_small(t1, tmp_path):
    """The whole pipeline (measure, tune with bracketing, seeds, diagnostics, report) on three
    methods: about 10 s."""
    before = os.environ.get("MINILR_NOISE_THREADS")
    r = t1.main(_argv(tmp_path, "--methods", "lr,alr,hsic"))
    _check_result(r, r["args"], tmp_path)
    # the one-thread setting of the measurements does not leak into the calling process
    assert os.environ.get("MINILR_NOISE_THREADS") == before
    # every run was logged; a rerun with the same settings reads them back and runs nothing
    logged = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(logged) == r["timing"]["runs"]
    again = t1.main(_argv(tmp_path, "--methods", "lr,alr,hsic"))
    assert json.dumps(again["table"], default=float) == json.dumps(r["table"], default=float)
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == len(logged)
    # --report rebuilds the same tables from the log alone, and an unfinished log gives fewer seeds
    report = t1.main(_argv(tmp_path, "--methods", "lr,alr,hsic", "--report"))
    assert json.dumps(report["table"], default=float) == json.dumps(r["table"], default=float)
    (tmp_path / "runs.jsonl").write_text("\n".join(l for l in logged if '"seed": 1' not in l) + "\n")
    partial = t1.main(_argv(tmp_path, "--methods", "lr,alr,hsic", "--report"))
    assert {row["n"] for col in partial["table"].values() for row in col} == {1}
    assert "(n=1)" in (tmp_path / "t.md").read_text()


@pytest.mark.slow
def test_smoke_pipeline_every_method(t1, tmp_path):
    """`--smoke` as documented: every method (about 25 s on a loaded 2-core machine)."""
    r = t1.main(_argv(tmp_path))
    _check_result(r, r["args"], tmp_path)
    assert len(r["table"]["copies"]) == 24  # 9 methods x 2 optimizers + 4 learned sigma + 2 ES sigma
