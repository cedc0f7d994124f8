"""Every tutorial runs as a plain script in quick mode, draws the figures it promises, and is in the
format the documentation gallery reads.

Each tutorial is executed in a subprocess (``MINILR_QUICK=1``, ``MPLBACKEND=Agg``) from a temporary
working folder, with ``MINILR_FIGURES`` pointing into it, so nothing is written to the checkout.
The test then checks the exit status, the quick-mode time budget and that every expected figure
is a non-empty, decodable PNG.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import minilr
from minilr import plots

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUICK_BUDGET_S = 60  # the promise: every tutorial under a minute in quick mode on 2 cores

FIGURES = {
    "01_random_search_to_likelihood_ratio.py": ["01_lr_error_vs_copies.png", "01_random_search_vs_lr.png",
                                                "01_digits_learning_curves.png"],
    "02_lr_multilayer.py": ["02_cosine_vs_copies.png", "02_cosine_vs_sigma.png", "02_learned_sigma.png"],
    "03_alr_signs.py": ["03_alr_cosine.png", "03_alr_memory.png", "03_packed_bits.png", "03_alr_training.png"],
    "04_es_and_hybrids.py": ["04_hybrid_per_layer.png", "04_acc_sta.png", "04_variance_vs_dimension.png"],
    "05_step_activations.py": ["05_smoothed_step.png", "05_step_training.png"],
    "06_beale_paths.py": ["06_beale_paths.png"],
    "07_convergence.py": ["07_step_sizes.png", "07_step_size_and_projection.png", "07_alr_vs_lr.png",
                          "07_sigma_bounds.png", "07_adam_vs_sgd.png"],
    "08_gpu.py": ["08_time_per_gradient.png", "08_chunk_memory.png"]
    + (["08_gpu_training.png"] if minilr.cupy_available() else []),
    "09_convolutions_and_resnets.py": ["09_conv_estimators_unbiased.png", "09_cosine_per_layer.png",
                                       "09_mnist1d_training.png", "09_memory.png"],
    "10_recurrent_graph_spiking.py": ["10_lstm_cosine.png", "10_lstm_training.png", "10_gat_training.png",
                                      "10_lif_training.png"],
    "11_parallelism_and_pipeline.py": ["11_fig2_pipeline.png", "11_pipeline_measured.png", "11_step_times.png"],
}


def test_every_tutorial_is_listed_and_numbered_in_order():
    found = sorted(p.name for p in TUTORIALS.glob("[0-9][0-9]_*.py"))
    assert found == sorted(FIGURES), "a tutorial was added or removed: update FIGURES in this test"
    numbers = [int(name[:2]) for name in found]
    # numbers are unique and ascending from 1; a gap is a number reserved for an open issue's tutorial
    assert numbers[0] == 1 and len(set(numbers)) == len(numbers) and numbers[:8] == list(range(1, 9))
    assert len(found) >= 8


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_tutorial_is_sphinx_gallery_percent_format(name):
    """The format the documentation's gallery (sphinx-gallery) reads: a module docstring holding a
    reST title and introduction, then ``# %%`` cells, prose ones being reST in comment lines."""
    text = (TUTORIALS / name).read_text()
    doc = ast.get_docstring(ast.parse(text))
    assert doc, "no module docstring: sphinx-gallery takes the title and introduction from it"
    title, underline = doc.strip().split("\n")[:2]
    assert title.startswith(f"{int(name[:2])}. "), "the title starts with the tutorial's number"
    assert set(underline) == {"="} and len(underline) >= len(title), "the title needs an ===== underline"
    cells = re.split(r"^# %%\n", text, flags=re.M)[1:]
    prose = [c for c in cells if c.startswith("#")]
    assert len(prose) >= 2, "too little prose: fewer than 2 text cells after the introduction"
    assert len(cells) - len(prose) >= 3, "fewer than 3 code cells"
    assert "# %% [markdown]" not in text and "$$" not in text, "Markdown prose: the gallery reads reST"
    assert "plt.show(" not in text, "plt.show() would block a script run"
    assert "np.random.seed(" not in text, "no global seeding: pass seeds explicitly"
    for banned in ("import torch", "import jax", "import jupytext"):
        assert banned not in text


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_tutorial_has_an_exercise_with_a_checked_solution(name):
    """An "Exercises" cell naming its solution module in ``tutorials/solutions/`` (run by
    ``tests/test_exercises.py``), which exists and defines ``check``."""
    text = (TUTORIALS / name).read_text()
    assert re.search(r"^# Exercises?\n# -+$", text, flags=re.M), f"{name} has no 'Exercises' section"
    found = re.findall(r"solutions/(s\d\d_[a-z0-9_]+\.py)", text)
    assert found, f"{name} does not name its solutions module (tutorials/solutions/sNN_*.py)"
    for module in found:
        path = TUTORIALS / "solutions" / module
        assert path.is_file() and "def check(" in path.read_text(), f"{path} missing or has no check()"


def _run(name, tmp_path):
    env = dict(os.environ)
    env.update(MINILR_QUICK="1", MPLBACKEND="Agg", MINILR_FIGURES=str(tmp_path / "figures"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    # The arrays are small: a threaded BLAS only adds overhead, and on a busy 2-core machine its
    # spinning threads made the quick runs several times slower. Respect an explicit setting.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(TUTORIALS / name)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=4 * QUICK_BUDGET_S)
    return proc, time.perf_counter() - t0


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_tutorial_runs_quick_and_saves_its_figures(name, tmp_path):
    proc, seconds = _run(name, tmp_path)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "quick mode" in proc.stdout, "the tutorial did not honour MINILR_QUICK=1"
    assert seconds < QUICK_BUDGET_S, f"{name} took {seconds:.1f} s in quick mode (budget {QUICK_BUDGET_S} s)"
    # what the run shows is printed as verdicts computed from its numbers (minilr.plots.verdicts),
    # and every one of them holds in quick mode
    verdicts = plots.parse_verdicts(proc.stdout)
    assert verdicts, f"{name} prints no verdict: end it with a 'what this run shows' cell"
    wrong = {c: v["evidence"] for c, v in verdicts.items() if not v["holds"]}
    assert not wrong, f"{name}: claims the quick run contradicts: {wrong}"
    import matplotlib.image as mpimg

    for fig in FIGURES[name]:
        path = tmp_path / "figures" / fig
        assert path.is_file(), f"{name} did not save {fig}; saved {sorted(os.listdir(tmp_path / 'figures'))}"
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5_000, f"{fig} is not a real PNG ({len(data)} bytes)"
        img = mpimg.imread(path)
        assert img.shape[0] >= 200 and img.shape[1] >= 300, f"{fig} is too small: {img.shape}"
        assert img[..., :3].std() > 0.01, f"{fig} is blank"
