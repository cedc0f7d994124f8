"""What the tutorial gallery needs beyond sphinx-gallery's defaults.

minilr's figures are built without pyplot (``minilr.plots``), so sphinx-gallery's matplotlib
scraper, which looks at pyplot's open figures, sees none. The tutorials save every figure as a PNG
instead, into ``tutorials/figures/`` as when a reader runs them. :func:`reset_figures` notes, before
each tutorial, what that folder holds; :func:`scrape_figures` picks up, after each code cell, the
PNGs the cell wrote, so each figure appears under the cell that drew it. Both are named in
``conf.py`` by their qualified names, which keeps the configuration picklable.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from sphinx_gallery.scrapers import figure_rst

FIGURES = Path(__file__).resolve().parents[2] / "tutorials" / "figures"
_seen: dict[str, int] = {}  # png name -> mtime_ns, for the PNGs already there or already shown


def reset_figures(gallery_conf, fname, when=None):
    """Before each tutorial: remember which figures exist, and send the new ones to FIGURES."""
    # Relative on purpose: the gallery runs each tutorial from tutorials/, so this is FIGURES, and
    # the output the page shows names no folder of the machine that built it.
    os.environ["MINILR_FIGURES"] = "figures"
    FIGURES.mkdir(parents=True, exist_ok=True)
    _seen.clear()
    _seen.update({p.name: p.stat().st_mtime_ns for p in FIGURES.glob("*.png")})


def scrape_figures(block, block_vars, gallery_conf):
    """After each code cell: the reST showing the PNGs it saved (new or rewritten), in name order."""
    new = []
    for png in sorted(FIGURES.glob("*.png")):
        stamp = png.stat().st_mtime_ns
        if _seen.get(png.name) != stamp:
            _seen[png.name] = stamp
            new.append(png)
    names = []
    for png, target in zip(new, block_vars["image_path_iterator"]):
        shutil.copyfile(png, target)
        names.append(target)
    return figure_rst(names, gallery_conf["src_dir"]) if names else ""
