"""minilr.plots: each function returns a Figure, draws what it is given, saves a PNG, never opens
a pyplot window, and rejects malformed input with a message that names it."""
from __future__ import annotations

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import minilr  # noqa: E402
from minilr import plots  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _history(n=4, val=True):
    h = minilr.History(estimator="lr", copies=10)
    h.train_loss = list(np.linspace(2.0, 0.5, n))
    h.train_accuracy = list(np.linspace(0.3, 0.9, n))
    h.seconds = [0.1] * n
    if val:
        h.val_loss = list(np.linspace(2.1, 0.6, n))
        h.val_accuracy = list(np.linspace(0.2, 0.8, n))
    return h


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 2_000


def _no_pyplot_figures():
    import sys

    return "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()


def test_learning_curves_one_panel_per_metric_one_line_per_run(tmp_path):
    runs = {"a": _history(), "b": _history(6)}
    fig = plots.learning_curves(runs, metrics=("train_loss", "val_accuracy", "seconds"), path=tmp_path / "lc.png")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert len(ax.get_lines()) == 2
    x, y = fig.axes[1].get_lines()[1].get_data()
    assert list(x) == [1, 2, 3, 4, 5, 6] and np.allclose(y, runs["b"].val_accuracy)
    assert _is_png(tmp_path / "lc.png")
    assert _no_pyplot_figures()


def test_learning_curves_leaves_out_runs_without_the_metric():
    fig = plots.learning_curves({"val": _history(), "no val": _history(val=False)}, metrics="val_accuracy")
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 1


def test_learning_curves_single_history_and_real_training(tmp_path):
    (x, y), (xt, yt) = minilr.datasets.load("spirals", n=200)
    model = minilr.MLP([2, 8, 2], seed=0)
    h = minilr.train(model, (x, y), val_data=(xt, yt), estimator="bp", epochs=3, progress=False)
    fig = plots.learning_curves(h, path=tmp_path / "one.png")
    assert [len(ax.get_lines()) for ax in fig.axes] == [1, 1]
    assert fig.axes[0].get_legend() is None   # a lone, unlabelled run needs no legend
    assert _is_png(tmp_path / "one.png")


@pytest.mark.parametrize("bad, exc, word", [
    (dict(metrics=("accuracy",)), ValueError, "metric"),
    (dict(histories={}), ValueError, "histories"),
    (dict(histories={"x": object()}), TypeError, "History"),
])
def test_learning_curves_rejects_bad_input(bad, exc, word):
    kwargs = dict(histories={"a": _history()})
    kwargs.update(bad)
    with pytest.raises(exc, match=word):
        plots.learning_curves(**kwargs)


def test_cosine_vs_copies_mean_line_and_band(tmp_path):
    copies = [10, 100, 1000]
    runs = np.array([[0.1, 0.4, 0.8], [0.3, 0.6, 0.9]])
    fig = plots.cosine_vs_copies(copies, {"lr": runs, "alr": runs[0]}, path=tmp_path / "c.png")
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 2
    assert np.allclose(lines[0].get_ydata(), runs.mean(axis=0))
    assert np.allclose(lines[1].get_ydata(), runs[0])
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1, "only the run with several seeds gets a band"
    verts = bands[0].get_paths()[0].vertices
    assert np.isclose(verts[:, 1].min(), 0.1) and np.isclose(verts[:, 1].max(), 0.9)  # min..max band
    assert ax.get_xscale() == "log"
    assert _is_png(tmp_path / "c.png")


def test_cosine_vs_copies_std_band_and_existing_axes():
    fig, axes = plots.new_figure(ncols=2)
    runs = np.array([[0.0, 1.0], [1.0, 3.0]])
    out = plots.cosine_vs_copies([1, 2], {"x": runs}, ax=axes[1], band="std", logx=False)
    assert out is fig and len(axes[0].get_lines()) == 0 and len(axes[1].get_lines()) == 1
    verts = axes[1].collections[0].get_paths()[0].vertices
    assert np.isclose(verts[:, 1].max(), 2.0 + 1.0)   # mean 2 + sd 1 at the second point


@pytest.mark.parametrize("copies, cosines, exc", [
    ([1, 2, 3], {"a": [0.1, 0.2]}, ValueError),
    ([], {"a": []}, ValueError),
    ([1, 2], [0.1, 0.2], TypeError),
    ([1, 2], {"a": [0.1, 0.2]}, None),
])
def test_cosine_vs_copies_checks_shapes(copies, cosines, exc):
    if exc is None:
        assert isinstance(plots.cosine_vs_copies(copies, cosines), Figure)
    else:
        with pytest.raises(exc):
            plots.cosine_vs_copies(copies, cosines)


def test_trajectories_draws_every_path_and_contours(tmp_path):
    t = np.linspace(0, 1, 20)
    paths = {"bp": np.c_[t, t ** 2], "lr": np.c_[t, -t]}
    fig = plots.trajectories(paths, fn=lambda X, Y: X ** 2 + Y ** 2, start=(0, 0), optimum=(1, 1),
                             path=tmp_path / "t.png", title="paths")
    ax = fig.axes[0]
    drawn = [line.get_xydata() for line in ax.get_lines() if len(line.get_xdata()) == 20]
    assert len(drawn) == 2 and np.allclose(drawn[0], paths["bp"]) and np.allclose(drawn[1], paths["lr"])
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    assert x0 < 0 and x1 > 1 and y0 < -1 and y1 > 1, "the default extent must contain every point"
    assert len(ax.collections) > 0, "contours of fn were not drawn"
    assert _is_png(tmp_path / "t.png")
    assert _no_pyplot_figures()


def test_trajectories_rejects_bad_paths():
    with pytest.raises(ValueError, match="shape"):
        plots.trajectories({"a": np.zeros((5, 3))})
    with pytest.raises(TypeError):
        plots.trajectories([np.zeros((5, 2))])


def test_figures_dir_uses_env_and_creates_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILR_FIGURES", str(tmp_path / "a" / "b"))
    d = plots.figures_dir("ignored")
    assert d == tmp_path / "a" / "b" and d.is_dir()
    monkeypatch.delenv("MINILR_FIGURES")
    d = plots.figures_dir(tmp_path / "tut")
    assert d == tmp_path / "tut" / "figures" and d.is_dir()


def test_save_creates_parents(tmp_path):
    fig, ax = plots.new_figure()
    ax.plot([0, 1], [1, 0])
    p = plots.save(fig, tmp_path / "x" / "y" / "f.png")
    assert _is_png(p)


def test_verdicts_print_lines_that_parse_back(capsys):
    out = plots.verdicts({"A beats B": (0.9 > 0.5, "0.9 vs 0.5"), "C beats D": (0.1 > 0.2, "0.1 vs 0.2")})
    assert out == {"A beats B": True, "C beats D": False}
    parsed = plots.parse_verdicts(capsys.readouterr().out)
    assert parsed == {"A beats B": {"holds": True, "evidence": "0.9 vs 0.5"},
                      "C beats D": {"holds": False, "evidence": "0.1 vs 0.2"}}


def test_recorded_full_mode_is_read_back_or_none(tmp_path, capsys):
    (tmp_path / "tutorials").mkdir()
    folder = tmp_path / "benchmarks" / "tutorials_full"
    folder.mkdir(parents=True)
    assert plots.recorded("99_x", here=tmp_path / "tutorials") is None
    assert plots.show_recorded("99_x", here=tmp_path / "tutorials") is None
    assert "not recorded yet" in capsys.readouterr().out
    import json

    (folder / "99_x.json").write_text(json.dumps(
        {"seconds": 3.0, "cpu_seconds": 2.0, "verdicts": {"A beats B": {"holds": True, "evidence": "1 vs 0"}}}))
    rec = plots.show_recorded("99_x", here=tmp_path / "tutorials")
    assert rec["cpu_seconds"] == 2.0
    assert "A beats B: yes (1 vs 0)" in capsys.readouterr().out
