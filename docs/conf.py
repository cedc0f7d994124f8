"""Sphinx configuration of minilr's documentation.

Build (quick mode, warnings are errors, a failing tutorial fails the build)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

``MINILR_QUICK=0`` in the environment runs the tutorials in full mode instead (tens of minutes).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

# Before numpy is imported: quick tutorials by default, and one BLAS thread, since the arrays are
# small and a threaded BLAS only spins on a busy 2-core machine (the same as tests/test_tutorials.py).
os.environ.setdefault("MINILR_QUICK", "1")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("MPLBACKEND", "Agg")

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import minilr  # noqa: E402

project = "minilr"
author = "the minilr authors"
copyright = "2026, the minilr authors"
release = version = minilr.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # serves MathJax 3 from the build: no CDN is reachable
    "sphinx_gallery.gen_gallery",
    "sphinx_design",  # the two-column layout of "The paper in code"
]

exclude_patterns = ["_build", "tutorials/*.ipynb", "tutorials/*.py", "tutorials/*.zip"]
templates_path = []
html_theme = "pydata_sphinx_theme"
html_title = f"minilr {release}"
html_static_path = ["_static"]
html_css_files = ["minilr.css"]
html_favicon = "_static/favicon.svg"
# browsers also ask for /favicon.ico by themselves: without one, a 404 in the console
html_extra_path = ["_extra"]
html_context = {"default_mode": "light"}  # unset, the theme logs an error on a first visit
html_theme_options = {
    "navbar_align": "left",
    "show_prev_next": True,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "paper": [], "cli": [], "saving": [], "mpi": [], "gpu": []}
html_show_sourcelink = True
toc_object_entries = False  # the page tables of contents list sections, not every function

# -- autodoc / napoleon: the API reference from the NumPy-style docstrings ----------------------------
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_typehints = "description"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# docstrings cite each other with single backticks; don't turn those into broken references
default_role = "literal"

# -- the tutorials as an executed gallery ----------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "tutorials"),
    "gallery_dirs": "tutorials",
    "filename_pattern": r"/\d\d_[a-z0-9_]+\.py$",  # every numbered tutorial is executed
    "ignore_pattern": r"__init__\.py|/figures/|/solutions/",  # solutions: opened, not shown
    "within_subsection_order": "FileNameSortKey",
    "image_scrapers": ("minilr_gallery.scrape_figures",),
    "reset_modules": ("minilr_gallery.reset_figures",),
    "abort_on_example_error": False,  # run them all, then fail the build listing every failure
    "only_warn_on_example_error": False,
    "download_all_examples": True,
    "run_stale_examples": True,  # a tutorial broken by a library change must fail the build
    "min_reported_time": 0,
    # each page states its own running time; the summary pages load jQuery from a CDN (no network)
    "write_computation_times": False,
    "remove_config_comments": True,
    "show_signature": False,
    "capture_repr": (),
}


# -- the command line, captured at build time -------------------------------------------------------
def _capture_cli_help(app):
    """Write ``--help`` of ``python -m minilr`` and of ``train`` where cli.rst includes them."""
    out = DOCS / "_build" / "generated"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, COLUMNS="100", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for name, args in (("help", ["--help"]), ("train_help", ["train", "--help"])):
        text = subprocess.run([sys.executable, "-m", "minilr", *args], env=env, capture_output=True,
                              text=True, check=True).stdout
        path = out / f"cli_{name}.txt"
        if not path.exists() or path.read_text() != text:  # unchanged output keeps cli.html up to date
            path.write_text(text)


def setup(app):
    app.connect("builder-inited", _capture_cli_help)
