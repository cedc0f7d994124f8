"""Render the tutorials as HTML pages with their printed output and figures, in one command.

    python tutorials/build_pages.py                 # all tutorials, quick mode -> docs/_build/
    python tutorials/build_pages.py --full 03 06    # some of them, full mode
    python tutorials/build_pages.py --out /tmp/site

Each tutorial (jupytext "percent" format: ``# %%`` code cells, ``# %% [markdown]`` prose cells) is
run in its own process, cell after cell in one namespace as a notebook would, with
``MINILR_QUICK=1`` (unless ``--full``) and ``MPLBACKEND=Agg``. What a cell prints and the figures
it saves (every ``Figure.savefig`` to a PNG) are recorded with it; the page shows the prose, the
code, the output and the figures in order. ``index.html`` links the pages.

No notebook tooling is needed (no jupytext, nbconvert or Jupyter): the prose is the small subset of
Markdown the tutorials use (headings, paragraphs, lists, ``code``, **bold**, *italic*, links), and
TeX math is shown as written. The pages are static files with no scripts.
"""
from __future__ import annotations

import argparse
import contextlib
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = ROOT / "docs" / "_build"

CSS = """
body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.5; color: #222; }
pre { background: #f6f8fa; padding: .6rem .8rem; overflow-x: auto; border-radius: 4px; font-size: .85rem; }
pre.output { background: #fff; border-left: 3px solid #8a8; }
pre.error { background: #fee; border-left: 3px solid #c44; }
img { max-width: 100%; display: block; margin: .5rem 0; }
code { background: #f0f0f0; padding: 0 .2rem; border-radius: 3px; }
nav { font-size: .9rem; margin-bottom: 1rem; }
"""


# -- parsing -----------------------------------------------------------------------------------------
def cells(text: str):
    """``[(kind, source)]`` with kind ``"markdown"`` or ``"code"``; the jupytext header is skipped."""
    out, kind, lines = [], None, []
    for line in text.splitlines():
        m = re.match(r"^# %%( \[markdown\])?\s*$", line)
        if m:
            if kind is not None:
                out.append((kind, "\n".join(lines).strip("\n")))
            kind, lines = ("markdown" if m.group(1) else "code"), []
        elif kind is not None:
            lines.append(line)
    if kind is not None:
        out.append((kind, "\n".join(lines).strip("\n")))
    return [(k, s) for k, s in out if s.strip()]


def markdown_text(source: str) -> str:
    """A markdown cell's text without the leading ``# `` of each line."""
    return "\n".join(re.sub(r"^# ?", "", line) for line in source.splitlines())


# -- running (in the child process) -----------------------------------------------------------------
def run_tutorial(path: Path, record: Path) -> int:
    """Run ``path`` cell by cell; write ``[{kind, source, output, figures, error}]`` to ``record``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        original(self, fname, *args, **kwargs)
        if isinstance(fname, (str, os.PathLike)):
            saved.append(str(Path(fname).resolve()))

    Figure.savefig = savefig
    namespace = {"__name__": "__main__", "__file__": str(path)}
    sys.path.insert(0, str(path.parent))
    result, status = [], 0
    for kind, source in cells(path.read_text()):
        entry = {"kind": kind, "source": source, "output": "", "figures": [], "error": None}
        result.append(entry)
        if kind != "code":
            continue
        buf = io.StringIO()
        saved.clear()
        try:
            with contextlib.redirect_stdout(buf):
                exec(compile(source, f"{path.name} (cell {len(result)})", "exec"), namespace)
        except BaseException:  # noqa: BLE001 - shown on the page, and the build fails
            entry["error"] = traceback.format_exc(limit=-3)
            status = 1
        entry["output"] = buf.getvalue()
        entry["figures"] = list(dict.fromkeys(saved))
        if status:
            break
    record.write_text(json.dumps(result))
    return status


# -- rendering ----------------------------------------------------------------------------------------
def _inline(text: str) -> str:
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for p in parts:
        if p.startswith("`") and p.endswith("`") and len(p) > 1:
            out.append(f"<code>{html.escape(p[1:-1])}</code>")
            continue
        p = html.escape(p, quote=False)
        p = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>', p)
        p = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", p)
        p = re.sub(r"(?<![*\w$\\])\*([^*\s][^*]*?)\*(?![*\w])", r"<em>\1</em>", p)
        out.append(p)
    return "".join(out)


def markdown_html(text: str) -> str:
    """The Markdown subset of the tutorials as HTML."""
    blocks, para, items, ordered = [], [], [], False

    def flush():
        nonlocal para, items
        if para:
            blocks.append(f"<p>{_inline(' '.join(para))}</p>")
            para = []
        if items:
            tag = "ol" if ordered else "ul"
            blocks.append(f"<{tag}>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + f"</{tag}>")
            items = []

    for line in text.splitlines():
        if not line.strip():
            flush()
            continue
        h = re.match(r"^(#{1,6})\s+(.*)", line)
        li = re.match(r"^\s*([*-]|\d+\.)\s+(.*)", line)
        if h:
            flush()
            n = len(h.group(1))
            blocks.append(f"<h{n}>{_inline(h.group(2))}</h{n}>")
        elif li:
            if para:
                flush()
            ordered = li.group(1)[0].isdigit()
            items.append(li.group(2))
        elif items and line.startswith((" ", "\t")):
            items[-1] += " " + line.strip()
        else:
            para.append(line.strip())
    flush()
    return "\n".join(blocks)


def page(title: str, entries, figure_names, nav: str) -> str:
    body = []
    for e in entries:
        if e["kind"] == "markdown":
            body.append(markdown_html(markdown_text(e["source"])))
            continue
        body.append(f"<pre class=\"code\"><code>{html.escape(e['source'])}</code></pre>")
        if e["output"].strip():
            body.append(f"<pre class=\"output\">{html.escape(e['output'].rstrip())}</pre>")
        for f in e["figures"]:
            name = figure_names.get(f)
            if name:
                body.append(f'<img src="figures/{html.escape(name)}" alt="{html.escape(name)}">')
        if e["error"]:
            body.append(f"<pre class=\"error\">{html.escape(e['error'])}</pre>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n{nav}\n"
            + "\n".join(body) + "\n</body></html>\n")


def title_of(entries, default: str) -> str:
    for e in entries:
        if e["kind"] == "markdown":
            m = re.search(r"^#\s+(.*)$", markdown_text(e["source"]), flags=re.M)
            if m:
                return m.group(1).strip()
    return default


def build(names=None, out: Path = DEFAULT_OUT, quick: bool = True, timeout: float = 1800) -> list:
    """Run and render the tutorials (all, or those whose file name starts with one of ``names``).

    Returns ``[(html path, seconds, ok)]``; pages are written even for a failing tutorial (with
    the error shown), and ``ok`` says whether it ran to the end.
    """
    tutorials = sorted(HERE.glob("[0-9][0-9]_*.py"))
    if names:
        tutorials = [t for t in tutorials if any(t.name.startswith(n) for n in names)]
        if not tutorials:
            raise SystemExit(f"no tutorial matches {names}")
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    results, links = [], []
    for t in tutorials:
        work = out / ".work" / t.stem
        shutil.rmtree(work, ignore_errors=True)
        (work / "figures").mkdir(parents=True)
        env = {**os.environ, "MPLBACKEND": "Agg", "MINILR_FIGURES": str(work / "figures"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        env["MINILR_QUICK"] = "1" if quick else "0"
        record = work / "cells.json"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--run", str(t), str(record)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - t0
        if record.exists():
            entries = json.loads(record.read_text())
        else:  # the runner itself failed
            entries = [{"kind": "code", "source": "", "output": proc.stdout, "figures": [],
                        "error": proc.stderr[-5000:] or "the tutorial runner failed"}]
        names_map = {}
        for e in entries:
            for f in e["figures"]:
                src = Path(f)
                if src.suffix.lower() == ".png" and src.exists():
                    shutil.copyfile(src, out / "figures" / src.name)
                    names_map[f] = src.name
        title = title_of(entries, t.stem)
        nav = '<nav><a href="index.html">minilr tutorials</a></nav>'
        target = out / f"{t.stem}.html"
        target.write_text(page(title, entries, names_map, nav), encoding="utf-8")
        ok = proc.returncode == 0
        results.append((target, seconds, ok))
        links.append((target.name, title, ok))
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out / ".work", ignore_errors=True)
    existing = {p.name: p for p in out.glob("[0-9][0-9]_*.html")}
    items = "\n".join(f'<li><a href="{html.escape(n)}">{html.escape(title_of_page(existing[n]))}</a></li>'
                      for n in sorted(existing))
    (out / "index.html").write_text(
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>minilr tutorials</title>"
        f"<style>{CSS}</style></head>\n<body>\n<h1>minilr tutorials</h1>\n<p>Rendered by "
        f"<code>python tutorials/build_pages.py</code> ({'quick' if quick else 'full'} mode).</p>\n"
        f"<ol>\n{items}\n</ol>\n</body></html>\n", encoding="utf-8")
    return results


def title_of_page(path: Path) -> str:
    m = re.search(r"<title>(.*?)</title>", path.read_text(encoding="utf-8"))
    return html.unescape(m.group(1)) if m else path.stem


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run"]:
        return run_tutorial(Path(argv[1]), Path(argv[2]))
    p = argparse.ArgumentParser(description="Render the tutorials to HTML pages with their figures.")
    p.add_argument("names", nargs="*", help="tutorial file name prefixes (e.g. 03 06); default all")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    p.add_argument("--full", action="store_true", help="full mode (default: quick, MINILR_QUICK=1)")
    args = p.parse_args(argv)
    results = build(args.names, Path(args.out), quick=not args.full)
    for target, seconds, ok in results:
        print(f"{'ok  ' if ok else 'FAIL'} {target}  ({seconds:.1f} s)")
    print(f"index: {Path(args.out) / 'index.html'}")
    return 0 if all(ok for _, _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
