"""Figures the tutorials draw more than once: learning curves, cosine vs copies, trajectories.

Every function builds a :class:`matplotlib.figure.Figure` directly (no ``pyplot``), so nothing here
opens a window or blocks, whatever backend is configured; it returns the Figure and, given
``path``, also saves it (as PNG, or whatever the suffix says). In a notebook a returned Figure
displays as the cell's value.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["figures_dir", "new_figure", "save", "learning_curves", "cosine_vs_copies", "trajectories",
           "verdicts", "parse_verdicts", "recorded", "show_recorded"]

_METRICS = {
    "train_loss": "training loss",
    "train_accuracy": "training accuracy",
    "val_loss": "validation loss",
    "val_accuracy": "validation accuracy",
    "seconds": "seconds per epoch",
}


def figures_dir(here=None) -> Path:
    """The folder tutorials save figures into, created if missing.

    ``$MINILR_FIGURES`` if set, else ``<here>/figures`` (``here`` defaults to the working folder).
    """
    env = os.environ.get("MINILR_FIGURES")
    d = Path(env) if env else Path(here if here is not None else ".") / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d


def verdicts(claims: dict) -> dict:
    """Print what a tutorial's run shows, one line per claim; return ``{claim: holds}``.

    ``claims`` maps a sentence to ``(holds, evidence)``: ``holds`` is computed from the run's own
    numbers, ``evidence`` is those numbers as text. Each line reads
    ``verdict: <claim>: yes (<evidence>)``, or ``NO`` where the run contradicts the claim. The
    tutorial tests require every claim printed in quick mode to hold, and
    ``benchmarks/tutorials_full.py`` records the full-mode lines.
    """
    out = {}
    for claim, (holds, evidence) in claims.items():
        out[claim] = bool(holds)
        print(f"verdict: {claim}: {'yes' if holds else 'NO'} ({evidence})")
    return out


def parse_verdicts(text: str) -> dict:
    """The claims :func:`verdicts` printed in ``text``: ``{claim: {"holds": bool, "evidence": str}}``."""
    import re

    out = {}
    for m in re.finditer(r"^verdict: (.*): (yes|NO) \((.*)\)$", text, flags=re.M):
        out[m.group(1)] = {"holds": m.group(2) == "yes", "evidence": m.group(3)}
    return out


def recorded(tutorial: str, here=None):
    """The full-mode record of a tutorial (``benchmarks/tutorials_full.py``), or ``None`` if absent.

    ``tutorial`` is the file's stem (``"03_alr_signs"``); ``here`` is the tutorials folder (default:
    ``tutorials/`` beside the installed package's checkout). The record holds ``seconds`` (the
    full-mode runtime), ``verdicts`` (``{claim: {"holds": bool, "evidence": str}}``) and
    ``figures`` (file names under ``benchmarks/tutorials_full/``).
    """
    import json

    root = Path(here).resolve().parent if here is not None else Path(__file__).resolve().parents[1]
    path = root / "benchmarks" / "tutorials_full" / f"{tutorial}.json"
    if not path.is_file():
        return None
    with open(path) as f:
        rec = json.load(f)
    rec["folder"] = str(path.parent)
    return rec


def show_recorded(tutorial: str, here=None):
    """Print the full-mode verdicts of :func:`recorded` (or how to record them); return the record."""
    rec = recorded(tutorial, here)
    if rec is None:
        print(f"full mode: not recorded yet (python benchmarks/tutorials_full.py {tutorial[:2]})")
        return None
    print(f"full mode (recorded: {rec['cpu_seconds']:.0f} CPU-seconds):")
    for claim, v in rec["verdicts"].items():
        print(f"   {claim}: {'yes' if v['holds'] else 'NO'} ({v['evidence']})")
    return rec


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6, **kwargs):
    """A Figure and its axes (``ncols * nrows`` of them, squeezed), without pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True, **kwargs)
    return fig, axes


def save(fig, path, dpi: int = 110):
    """Save ``fig`` to ``path`` (parent folders created) and return the path as a :class:`Path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _finish(fig, path):
    if path is not None:
        save(fig, path)
    return fig


def learning_curves(histories, metrics=("train_loss", "val_accuracy"), path=None, title=None):
    """One panel per metric, one line per run, against the epoch.

    Parameters
    ----------
    histories : History or dict[str, History]
        Runs to compare, keyed by their legend label (a single History gets no legend).
    metrics : sequence of str
        Attributes of :class:`minilr.History`: ``"train_loss"``, ``"train_accuracy"``,
        ``"val_loss"``, ``"val_accuracy"``, ``"seconds"``. Runs that did not record a metric
        (no ``val_data``, say) are left out of its panel.
    path : str or Path, optional
        Also save the figure there.
    """
    if not isinstance(histories, dict):
        histories = {"": histories}
    if not histories:
        raise ValueError("histories is empty: give at least one History")
    if isinstance(metrics, str):
        metrics = (metrics,)
    for m in metrics:
        if m not in _METRICS:
            raise ValueError(f"unknown metric {m!r}; expected one of {sorted(_METRICS)}")
    for label, h in histories.items():
        if not all(hasattr(h, m) for m in metrics):
            raise TypeError(f"histories[{label!r}] is a {type(h).__name__}, not a minilr History")
    from matplotlib.ticker import MaxNLocator

    fig, axes = new_figure(ncols=len(metrics), width=4.6)
    axes = np.atleast_1d(axes)
    for ax, m in zip(axes, metrics):
        for label, h in histories.items():
            values = list(getattr(h, m))
            if values:
                ax.plot(np.arange(1, len(values) + 1), values, marker="o" if len(values) < 30 else None,
                        ms=3, label=label or None)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(_METRICS[m])
        ax.grid(alpha=0.3)
        if m.endswith("loss"):
            ax.set_yscale("log")
        if any(label for label in histories) and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def cosine_vs_copies(copies, cosines, path=None, ax=None, title=None, ylabel="cosine to the exact gradient",
                     band: str = "minmax", logx: bool = True):
    """Cosine similarity (or any score) against the number of copies, one line per estimator.

    Parameters
    ----------
    copies : 1-D sequence of int
    cosines : dict[str, array]
        Per label an array of shape ``(len(copies),)`` or ``(runs, len(copies))``; with several
        runs the line is their mean and a shaded band shows the spread (paper Fig. 1 and 5).
    band : "minmax" | "std"
        The band: the runs' range, or their mean +- one standard deviation.
    ax : matplotlib Axes, optional
        Draw into this axes (of an existing figure) instead of a new figure.
    """
    copies = np.asarray(copies, dtype=float)
    if copies.ndim != 1 or copies.size < 1:
        raise ValueError("copies must be a non-empty 1-D sequence")
    if band not in ("minmax", "std"):
        raise ValueError(f"band must be 'minmax' or 'std', got {band!r}")
    if not isinstance(cosines, dict) or not cosines:
        raise TypeError("cosines must be a non-empty dict {label: array}")
    if ax is None:
        fig, ax = new_figure()
    else:
        fig = ax.figure
    for label, c in cosines.items():
        c = np.atleast_2d(np.asarray(c, dtype=float))
        if c.shape[1] != copies.size:
            raise ValueError(f"cosines[{label!r}] has {c.shape[1]} columns but there are {copies.size} copies")
        mean = c.mean(axis=0)
        (line,) = ax.plot(copies, mean, marker="o", ms=3, label=label)
        if c.shape[0] > 1:
            lo, hi = ((c.min(axis=0), c.max(axis=0)) if band == "minmax"
                      else (mean - c.std(axis=0), mean + c.std(axis=0)))
            ax.fill_between(copies, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel("copies K")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _finish(fig, path)


def trajectories(paths, fn=None, extent=None, start=None, optimum=None, levels: int = 30, path=None,
                 title=None, log_levels: bool = True, ax=None):
    """Optimisation paths in the plane over the contours of ``fn`` (paper Fig. 6).

    Parameters
    ----------
    paths : dict[str, array of shape (steps, 2)]
    fn : callable ``fn(X, Y) -> Z`` on NumPy grids, optional
        Drawn as contour lines (of ``log(1 + Z)`` when ``log_levels``).
    extent : (xmin, xmax, ymin, ymax), optional
        Defaults to the paths' bounding box with a margin.
    start, optimum : (x, y), optional
        Marked with a black dot and a star.
    ax : matplotlib Axes, optional
        Draw into this axes (of an existing figure) instead of a new figure.
    """
    if not isinstance(paths, dict) or not paths:
        raise TypeError("paths must be a non-empty dict {label: (steps, 2) array}")
    arrays = {}
    for label, p in paths.items():
        p = np.asarray(p, dtype=float)
        if p.ndim != 2 or p.shape[1] != 2 or len(p) < 1:
            raise ValueError(f"paths[{label!r}] must have shape (steps, 2), got {p.shape}")
        arrays[label] = p
    if extent is None:
        allp = np.concatenate(list(arrays.values()))
        lo, hi = allp.min(axis=0), allp.max(axis=0)
        pad = 0.1 * np.maximum(hi - lo, 1e-3)
        extent = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    if ax is None:
        fig, ax = new_figure(width=5.6, height=4.4)
    else:
        fig = ax.figure
    if fn is not None:
        X, Y = np.meshgrid(np.linspace(extent[0], extent[1], 300), np.linspace(extent[2], extent[3], 300))
        Z = np.asarray(fn(X, Y), dtype=float)
        ax.contour(X, Y, np.log1p(Z) if log_levels else Z, levels=levels, cmap="Greys", linewidths=0.6)
    for label, p in arrays.items():
        (line,) = ax.plot(p[:, 0], p[:, 1], lw=1.5, label=label)
        ax.plot(*p[-1], marker="s", ms=5, color=line.get_color())
    if start is not None:
        ax.plot(*start, "ko", ms=6, label="start")
    if optimum is not None:
        ax.plot(*optimum, "k*", ms=12, label="minimum")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _finish(fig, path)
